"""The user-data contract (control/userdata.py): every key, its defaults, its refusals."""

from __future__ import annotations

import json

import pytest

from control.userdata import KEYS, UserData, UserDataError, parse_user_data

FULL = {
    "name": "prod",
    "store": "ssm:/spectra/prod",
    "region": "us-east-1",
    "az": "us-east-1a",
    "operational_role": {
        "name": "prod-cross-account-role1",
        "external_id": "ext-123",
        "account": "123456789012",
    },
    "lease_table": "spectra-lease",
    "admin_token_parameter": "/spectra/prod/admin-token",
    "mode": "fleet",
}


@pytest.mark.parametrize("raw", [None, "", "  \n", b""])
def test_no_user_data_is_every_default(raw: str | bytes | None) -> None:
    ud = parse_user_data(raw)
    assert ud == UserData()
    assert (ud.mode, ud.store, ud.name) == ("standalone", "local", "spectra")
    assert ud.token_parameter == "/spectra/admin-token"


def test_every_key_is_read() -> None:
    ud = parse_user_data(json.dumps(FULL).encode())
    assert set(FULL) == set(KEYS)
    assert (ud.name, ud.store, ud.region, ud.az) == (
        "prod",
        "ssm:/spectra/prod",
        "us-east-1",
        "us-east-1a",
    )
    assert ud.operational_role is not None
    assert (ud.operational_role.name, ud.operational_role.external_id) == (
        "prod-cross-account-role1",
        "ext-123",
    )
    assert ud.operational_role.account_id == "123456789012"
    assert (ud.lease_table, ud.mode) == ("spectra-lease", "fleet")
    assert ud.token_parameter == "/spectra/prod/admin-token"


def test_token_parameter_defaults_under_the_ssm_prefix() -> None:
    ud = parse_user_data(json.dumps({"store": "ssm:/acme/gw/"}))
    assert ud.token_parameter == "/acme/gw/admin-token"


@pytest.mark.parametrize(
    ("data", "field", "accepted"),
    [
        ({"colour": "blue"}, "unknown key(s) ['colour']", "accepted ['name', 'store'"),
        ({"mode": "cluster"}, "user-data mode: 'cluster'", "['standalone', 'fleet']"),
        ({"store": "s3://bucket"}, "user-data store: 's3://bucket'", "ssm:/PREFIX"),
        ({"store": "local:relative.db"}, "user-data store", "local:/ABSOLUTE/PATH"),
        ({"store": 3}, "user-data store: 3", "local"),
        ({"region": "Europe"}, "user-data region: 'Europe'", "like eu-west-1"),
        ({"az": "us-east-1"}, "user-data az: 'us-east-1'", "like eu-west-1a"),
        ({"name": "Prod Gateway"}, "user-data name", "lower-case letters"),
        ({"lease_table": "x"}, "user-data lease_table: 'x'", "3-255"),
        ({"admin_token_parameter": "token"}, "user-data admin_token_parameter", "/spectra/prod"),
        ({"operational_role": "role1"}, "user-data operational_role: 'role1'", "external_id"),
        (
            {"operational_role": {"name": "r", "external_id": "e1", "arn": "x"}},
            "operational_role: unknown key(s) ['arn']",
            "['name', 'external_id', 'account']",
        ),
        (
            {"operational_role": {"name": "r"}},
            "user-data operational_role.external_id",
            "required",
        ),
        (
            {"operational_role": {"name": "r", "external_id": "e1", "account": "12"}},
            "user-data operational_role.account: '12'",
            "12-digit",
        ),
    ],
)
def test_bad_fields_are_named_with_what_is_accepted(
    data: dict[str, object], field: str, accepted: str
) -> None:
    with pytest.raises(UserDataError) as exc:
        parse_user_data(json.dumps(data))
    assert field in str(exc.value)
    assert accepted in str(exc.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("#!/bin/bash\necho hi", "expected one JSON object"), ("[1, 2]", "got list")],
)
def test_not_a_json_object(raw: str, expected: str) -> None:
    with pytest.raises(UserDataError, match=expected):
        parse_user_data(raw)


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(UserDataError, match="expected UTF-8 JSON"):
        parse_user_data(b"\xff{}")
