"""The EC2 user-data contract of the appliance image: one JSON object, every key optional.

EC2 hands an instance the user data given at launch ("Run commands when you launch an EC2
instance with user data input", EC2 user guide; read from IMDS ``/latest/user-data``,
404 when there is none).  The AMI's first-boot helper (:mod:`control.firstboot`) parses
it here; the CloudFormation templates render the same JSON into the launch template.
The contract (``docs/user-data.md``)::

    {"name": "spectra", "store": "ssm:/spectra/prod", "region": "us-east-1",
     "az": "us-east-1a", "operational_role": {"name": ..., "external_id": ...,
     "account": "123456789012"}, "lease_table": "spectra-lease",
     "admin_token_parameter": "/spectra/prod/admin-token", "mode": "standalone"}

Bad input raises :class:`UserDataError` naming the field and what is accepted; unknown
keys are refused with the accepted keys listed.  Nothing is applied from a document that
does not parse as a whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal, cast

from pydantic import ValidationError

from control.config.aws import OperationalRole

KEYS = (
    "name",
    "store",
    "region",
    "az",
    "operational_role",
    "lease_table",
    "admin_token_parameter",
    "mode",
)
ROLE_KEYS = ("name", "external_id", "account")
MODES = ("standalone", "fleet")
Mode = Literal["standalone", "fleet"]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_AZ_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}[a-z]$")
_TABLE_RE = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_PARAMETER_RE = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")


class UserDataError(ValueError):
    """The instance's user data does not follow the contract (the message names the field)."""


@dataclass(frozen=True, slots=True)
class UserData:
    """What the user data asks of this instance (defaults filled in)."""

    name: str = "spectra"
    store: str = "local"
    region: str | None = None  # None: the instance's region (IMDS)
    az: str | None = None  # None: the instance's Availability Zone (IMDS)
    operational_role: OperationalRole | None = None
    lease_table: str | None = None  # None: the document's default
    admin_token_parameter: str | None = None  # None: derived, see token_parameter
    mode: Mode = "standalone"

    @property
    def token_parameter(self) -> str:
        """Where the first boot writes the admin token (SSM SecureString)."""
        if self.admin_token_parameter:
            return self.admin_token_parameter
        kind, _, prefix = self.store.partition(":")
        if kind == "ssm":
            return f"{prefix.rstrip('/') or '/spectra/config'}/admin-token"
        return f"/{self.name}/admin-token"


def _string(data: dict[str, Any], key: str, pattern: re.Pattern[str], accepted: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise UserDataError(f"user-data {key}: {value!r}: expected {accepted}")
    return value


def _store(value: object) -> str:
    kind, _, rest = value.partition(":") if isinstance(value, str) else ("", "", "")
    if (kind == "local" and (not rest or rest.startswith("/"))) or (
        kind == "ssm" and _PARAMETER_RE.match(rest.rstrip("/"))
    ):
        return cast(str, value)
    raise UserDataError(
        f"user-data store: {value!r}: expected local, local:/ABSOLUTE/PATH or ssm:/PREFIX "
        "(letters, digits and _.- between slashes)"
    )


def _role(value: object) -> OperationalRole | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UserDataError(
            f"user-data operational_role: {value!r}: expected an object with {list(ROLE_KEYS)}"
        )
    unknown = sorted(set(value) - set(ROLE_KEYS))
    if unknown:
        raise UserDataError(
            f"user-data operational_role: unknown key(s) {unknown}: accepted {list(ROLE_KEYS)}"
        )
    for key in ("name", "external_id"):
        if key not in value:
            raise UserDataError(f"user-data operational_role.{key}: required")
    fields = {"name": value["name"], "external_id": value["external_id"]}
    if value.get("account") is not None:
        fields["account_id"] = value["account"]
    try:
        return OperationalRole.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]).replace("account_id", "account")
        raise UserDataError(
            f"user-data operational_role.{where}: {error['input']!r}: {error['msg']}"
        ) from None


def parse_user_data(raw: bytes | str | None) -> UserData:
    """The contract's fields from raw user data (``None`` or blank: every default)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise UserDataError(f"user-data: expected UTF-8 JSON ({exc})") from None
    if text is None or not text.strip():
        return UserData()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserDataError(f"user-data: expected one JSON object ({exc})") from None
    if not isinstance(data, dict):
        raise UserDataError(f"user-data: expected one JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise UserDataError(f"user-data: unknown key(s) {unknown}: accepted {list(KEYS)}")
    mode = data.get("mode", "standalone")
    if mode not in MODES:
        raise UserDataError(f"user-data mode: {mode!r}: expected one of {list(MODES)}")
    return UserData(
        name=_string(data, "name", _NAME_RE, "1-31 lower-case letters, digits and -") or "spectra",
        store=_store(data["store"]) if "store" in data else "local",
        region=_string(data, "region", _REGION_RE, "an AWS region name like eu-west-1"),
        az=_string(data, "az", _AZ_RE, "an Availability Zone name like eu-west-1a"),
        operational_role=_role(data.get("operational_role")),
        lease_table=_string(
            data, "lease_table", _TABLE_RE, "a DynamoDB table name: 3-255 letters, digits and _.-"
        ),
        admin_token_parameter=_string(
            data,
            "admin_token_parameter",
            _PARAMETER_RE,
            "an SSM parameter name like /spectra/prod/admin-token",
        ),
        mode=cast(Mode, mode),
    )
