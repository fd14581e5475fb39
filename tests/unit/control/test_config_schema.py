"""The config document: defaults, unknown-field rejection, error paths, secrets, schema."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control.config import (
    MASK,
    ConfigValidationError,
    diff_documents,
    dump_document,
    json_schema,
    parse_document,
    summarize,
)

SECRET = "hunter2-proxy"


def errors_of(data: Any) -> list[dict[str, Any]]:
    with pytest.raises(ConfigValidationError) as info:
        parse_document(data)
    return [dict(e) for e in info.value.errors]


def with_(base: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {**base, **sections}


def test_minimal_document_gets_every_default(minimal_doc: dict[str, Any]) -> None:
    doc = parse_document(minimal_doc)
    assert doc.schema_version == 1
    assert doc.nat.port_range == (1024, 65535)
    assert doc.gwlb.flow_idle_timeout_seconds == 350
    assert doc.api.port == 8080
    assert doc.interfaces.data_plane == "xdp"


def test_round_trip_is_stable(full_doc: dict[str, Any]) -> None:
    doc = parse_document(full_doc)
    dumped = dump_document(doc, reveal_secrets=True)
    assert parse_document(json.dumps(dumped)) == doc


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ({"colour": "blue"}, "colour"),
        ({"nat": {"port_rang": [1, 2]}}, "nat.port_rang"),
        (
            {"rules": {"entries": [{"action": "deny", "protocol": "tcp"}]}},
            "rules.entries[0].protocol",
        ),
        ({"ai": {"listen_prot": 1}}, "ai.listen_prot"),
    ],
)
def test_unknown_fields_are_rejected_with_their_path(
    minimal_doc: dict[str, Any], section: dict[str, Any], path: str
) -> None:
    errors = errors_of({**minimal_doc, **section})
    assert [e["path"] for e in errors] == [path]


def test_unknown_field_error_lists_the_accepted_fields(minimal_doc: dict[str, Any]) -> None:
    (error,) = errors_of(with_(minimal_doc, nat={"port_rang": [1, 2]}))
    assert (
        "accepted fields here: outside_addresses, address_selection, port_range, "
        "random_fully, timeouts, conntrack"
    ) in error["message"]


def test_port_out_of_range_names_path_value_and_accepted(minimal_doc: dict[str, Any]) -> None:
    (error,) = errors_of(with_(minimal_doc, nat={"port_range": [1024, 70000]}))
    assert error["path"] == "nat.port_range[1]"
    assert error["value"] == 70000
    assert "65535" in error["message"]


@pytest.mark.parametrize(
    ("section", "path", "words"),
    [
        ({"nat": {"port_range": [2000, 1000]}}, "nat.port_range", "low <= high"),
        (
            {"nat": {"outside_addresses": ["1.2.3.4", "1.2.3.4"]}},
            "nat.outside_addresses[1]",
            "duplicate",
        ),
        ({"nat": {"outside_addresses": "eth0"}}, "nat.outside_addresses", "'interface'"),
        (
            {"rules": {"entries": [{"action": "deny", "src": "10.0.0.1/8"}]}},
            "rules.entries[0].src",
            "host bits",
        ),
        (
            {"rules": {"entries": [{"action": "deny", "ports": [80, 80]}]}},
            "rules.entries[0].proto",
            "tcp",
        ),
        (
            {"rules": {"entries": [{"action": "block"}]}},
            "rules.entries[0].action",
            "'allow' or 'deny'",
        ),
        (
            {"interfaces": {"inside": "a", "outside": "a"}},
            "interfaces.outside",
            "other than inside",
        ),
        ({"interfaces": {"inside": "a b", "outside": "c"}}, "interfaces.inside", "interface name"),
        (
            {"port_forwards": [{"proto": "tcp", "port": 0, "to_address": "10.0.0.1"}]},
            "port_forwards[0].port",
            "1",
        ),
        (
            {
                "tls": {
                    "listeners": [
                        {
                            "name": "x",
                            "certificate_arn": "arn:bad",
                            "backends": [{"address": "10.0.0.1", "port": 80}],
                        }
                    ]
                }
            },
            "tls.listeners[0].certificate_arn",
            "ACM",
        ),
    ],
)
def test_errors_name_the_path(
    minimal_doc: dict[str, Any], section: dict[str, Any], path: str, words: str
) -> None:
    errors = errors_of({**minimal_doc, **section})
    assert path in [e["path"] for e in errors], errors
    assert words in next(e["message"] for e in errors if e["path"] == path)


def test_duplicate_port_forwards_and_port_clashes(minimal_doc: dict[str, Any]) -> None:
    fwd = {"proto": "tcp", "port": 2222, "to_address": "10.0.1.10"}
    errors = errors_of(with_(minimal_doc, port_forwards=[fwd, fwd, {**fwd, "port": 8080}]))
    assert {e["path"]: e["message"] for e in errors} == {
        "port_forwards[1].port": "tcp/2222 is already used by port_forwards[0].port",
        "port_forwards[2].port": "tcp/8080 is already used by api.port",
    }


def test_same_port_different_protocols_is_fine(minimal_doc: dict[str, Any]) -> None:
    fwd = {"proto": "tcp", "port": 53, "to_address": "10.0.1.10"}
    parse_document(with_(minimal_doc, port_forwards=[fwd, {**fwd, "proto": "udp"}]))


def test_deny_rules_are_limited_by_the_xdp_deny_list(minimal_doc: dict[str, Any]) -> None:
    fits = {
        "entries": [{"action": "deny", "dst": f"10.{i // 256}.{i % 256}.0/24"} for i in range(4096)]
    }
    parse_document(with_(minimal_doc, rules=fits))
    rules = {"entries": [*fits["entries"], {"action": "deny", "proto": "icmp"}]}
    (error,) = errors_of(with_(minimal_doc, rules=rules))
    assert error["path"] == "rules.entries"
    assert error["message"] == "expected at most 4096 deny rules with data_plane xdp"
    kernel = {**minimal_doc["interfaces"], "data_plane": "kernel"}
    parse_document(with_(minimal_doc, rules=rules, interfaces=kernel))


def test_gwlb_one_arm_may_use_one_interface(minimal_doc: dict[str, Any]) -> None:
    parse_document(
        with_(minimal_doc, interfaces={"inside": "eth0", "outside": "eth0"}, gwlb={"enabled": True})
    )


def test_secrets_never_render(full_doc: dict[str, Any]) -> None:
    doc = parse_document(full_doc)
    for text in (repr(doc), str(doc), json.dumps(dump_document(doc))):
        assert SECRET not in text
    assert dump_document(doc)["proxy"]["auth"]["users"][0]["password"] == MASK
    revealed = dump_document(doc, reveal_secrets=True)
    assert revealed["proxy"]["auth"]["users"][0]["password"] == SECRET


def test_secrets_never_appear_in_errors(full_doc: dict[str, Any]) -> None:
    full_doc["api"]["tokens"][0]["hash"] = "sha256:not-hex-" + SECRET
    full_doc["proxy"]["auth"]["users"].append({"name": "bob", "password": SECRET, "x": 1})
    with pytest.raises(ConfigValidationError) as info:
        parse_document(full_doc)
    text = json.dumps(info.value.errors) + str(info.value)
    assert SECRET not in text
    assert "api.tokens[0].hash" in text and "proxy.auth.users[1].x" in text


def test_json_schema_rejects_unknown_fields_everywhere() -> None:
    schema = json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    objects = [schema, *schema["$defs"].values()]
    closed = [o for o in objects if o.get("type") == "object" and "properties" in o]
    assert len(closed) > 20
    assert all(o.get("additionalProperties") is False for o in closed)
    assert {
        "interfaces",
        "nat",
        "rules",
        "inspection",
        "port_forwards",
        "proxy",
        "tls",
        "load_balancer",
        "gwlb",
        "ai",
        "logging",
        "metrics",
        "api",
    } <= set(schema["properties"])


def test_diff_reports_paths_and_masks_secrets(full_doc: dict[str, Any]) -> None:
    old = dump_document(parse_document(full_doc), reveal_secrets=True)
    full_doc["nat"]["port_range"] = [20000, 50000]
    full_doc["proxy"]["auth"]["users"][0]["password"] = "changed-secret"
    del full_doc["port_forwards"][1]
    full_doc["rules"]["entries"].append({"action": "allow", "proto": "icmp"})
    new = dump_document(parse_document(full_doc), reveal_secrets=True)
    from control.config import SECRET_FIELDS

    changes = {c.path: c for c in diff_documents(old, new, SECRET_FIELDS)}
    assert changes["nat.port_range[1]"].old == 40000 and changes["nat.port_range[1]"].new == 50000
    assert changes["proxy.auth.users[0].password"].new == MASK
    assert changes["port_forwards[1]"].op == "removed"
    assert changes["rules.entries[4]"].op == "added"
    assert "changed-secret" not in repr(changes) and SECRET not in repr(changes)
    assert summarize(list(changes.values())).startswith("4 changes: ")
    assert diff_documents(old, old) == []
