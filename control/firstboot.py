"""First boot of the appliance image: from instance metadata and user data to a running
agent, with no CloudFormation.

Runs on every boot (``spectra firstboot``, the ``spectra-firstboot`` unit, before the
agent) and is idempotent:

1. reads the instance identity and the user data over IMDSv2 (:mod:`control.aws.imds`;
   "Instance metadata and user data", EC2 user guide) and parses the user data
   (:mod:`control.userdata`: bad input stops here, nothing written);
2. writes the agent's settings (``/etc/spectra/agent.env``: store, instance name, AZ
   override, ``--aws`` in fleet mode), which the agent unit reads;
3. only when the config store is empty: writes the first document -- one-arm NAT on the
   primary interface (the ENI with device number 0, found by its MAC), on the **kernel
   path** (XDP redirects between two interfaces; one interface is served by nftables and
   conntrack), the dashboard and config API on, an admin token -- and shows that token
   once: on the console (``/dev/console``, which EC2 keeps as the console output) and in
   the SSM SecureString ``admin_token_parameter`` when the operational role can write it
   (``PutParameter`` with ``Overwrite=false``: an existing parameter is never replaced).
   The token itself is never logged or kept on disk; only its hash is in the document.

What happened is kept in ``/var/lib/spectra/firstboot.json`` (no secret in it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from control.api.auth import token_entry
from control.aws.imds import Imds, ImdsError, InstanceIdentity
from control.config import parse_document
from control.store import ConfigStore, VersionConflict
from control.userdata import UserData, parse_user_data

log = logging.getLogger("spectra.control")

ENV_FILE = Path("/etc/spectra/agent.env")
STATE_FILE = Path("/var/lib/spectra/firstboot.json")
CONSOLE = Path("/dev/console")
SYS_NET = Path("/sys/class/net")
ONE_ARM_NOTE = (
    "one-arm NAT on the primary interface runs on the kernel path (nftables + conntrack): "
    "XDP's fast path redirects between two interfaces"
)


class FirstBootError(Exception):
    """The first boot cannot proceed (metadata unreadable, no primary interface)."""


@dataclass(slots=True)
class FirstBootReport:
    """What this boot did; written to :data:`STATE_FILE`."""

    mode: str
    store: str
    instance: str
    interface: str
    availability_zone: str
    document_written: int | None = None  # the version written, None: the store had one
    data_plane: str | None = None
    note: str | None = None
    token: dict[str, Any] = field(default_factory=dict)


def interface_by_mac(mac: str, sys_net: Path = SYS_NET) -> str:
    """The name of the local interface with ``mac`` (the primary ENI's, from IMDS)."""
    wanted = mac.lower()
    for link in sorted(sys_net.iterdir()):
        with contextlib.suppress(OSError):
            if (link / "address").read_text().strip().lower() == wanted:
                return link.name
    raise FirstBootError(f"no local interface has the primary interface's MAC {mac}")


def agent_environment(ud: UserData, region: str) -> str:
    """The agent unit's ``EnvironmentFile``: what ``spectra run`` is started with (the
    region is boto3's, for the SSM store)."""
    args = ["--aws"] if ud.mode == "fleet" else []
    if ud.az:
        args += ["--az", ud.az]
    return (
        "# written by spectra firstboot from the instance's user data; rewritten every boot\n"
        f"SPECTRA_INSTANCE={ud.name}\n"
        f"SPECTRA_STORE={ud.store}\n"
        f"SPECTRA_AGENT_ARGS={' '.join(args)}\n"
        f"AWS_DEFAULT_REGION={region}\n"
    )


def first_document(ud: UserData, interface: str, token_hash_entry: dict[str, str]) -> Any:
    """The document an empty store gets: one-arm NAT on ``interface``, the API on."""
    aws: dict[str, Any] = {}
    if ud.region:
        aws["region"] = ud.region
    if ud.operational_role is not None:
        aws["operational_role"] = ud.operational_role.model_dump(exclude_none=True)
    if ud.lease_table:
        aws["lease"] = {"table": ud.lease_table}
    return parse_document(
        {
            "interfaces": {"inside": interface, "outside": interface, "data_plane": "kernel"},
            "api": {"tokens": [token_hash_entry]},
            "aws": aws,
        }
    )


def write_console(text: str, console: Path = CONSOLE) -> bool:
    """Write ``text`` to the console; False when there is none to write to."""
    try:
        with console.open("w") as f:
            f.write(text)
        return True
    except OSError as exc:
        log.warning("cannot write to %s: %s", console, exc)
        return False


def put_token_parameter(client: Any, name: str, token: str) -> str:
    """Create the SecureString ``name`` holding ``token``, never overwriting one.

    Returns ``written``, ``exists`` (left as it was) or ``unreachable: <reason>``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.put_parameter(
            Name=name,
            Value=token,
            Type="SecureString",
            Overwrite=False,
            Description="Cloud Spectra Gateway admin token (written once by the first boot)",
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ParameterAlreadyExists":
            return "exists"
        return f"unreachable: {code or exc}"
    except BotoCoreError as exc:
        return f"unreachable: {exc}"
    return "written"


SsmClientFactory = Callable[[UserData, InstanceIdentity], Any]
StoreFactory = Callable[[UserData, InstanceIdentity], ConfigStore]


def _sessions(ud: UserData, identity: InstanceIdentity) -> Any:
    from control.aws.session import OperationalRole, SessionFactory

    role = ud.operational_role
    return SessionFactory(
        ud.region or identity.region,
        role=None
        if role is None
        else OperationalRole(
            name=role.name,
            external_id=role.external_id,
            account_id=role.account_id or identity.account_id,
        ),
    )


def operational_ssm(ud: UserData, identity: InstanceIdentity) -> Any:
    """An SSM client with the operational role (the instance role never writes)."""
    if ud.operational_role is None:
        raise LookupError("no operational_role in the user data")
    return _sessions(ud, identity).client("ssm")


def config_store(ud: UserData, identity: InstanceIdentity) -> ConfigStore:
    """The user data's store; SSM read with the instance role, written with the
    operational one (:func:`control.store.open_store`)."""
    from control.store import open_store

    if ud.store.startswith("ssm:"):
        return open_store(ud.store, aws=_sessions(ud, identity))
    return open_store(ud.store)


@dataclass(frozen=True, slots=True)
class FirstBoot:
    """One run of the first-boot helper; every side effect goes through a field."""

    imds: Imds
    open_store: StoreFactory = config_store
    ssm_client: SsmClientFactory = operational_ssm
    env_file: Path = ENV_FILE
    state_file: Path = STATE_FILE
    console: Path = CONSOLE
    sys_net: Path = SYS_NET

    def run(self) -> FirstBootReport:
        try:
            identity = self.imds.identity()
            ud = parse_user_data(self.imds.user_data())
        except ImdsError as exc:
            raise FirstBootError(f"instance metadata: {exc}") from None
        interface = interface_by_mac(identity.mac, self.sys_net)
        report = FirstBootReport(
            mode=ud.mode,
            store=ud.store,
            instance=ud.name,
            interface=interface,
            availability_zone=ud.az or identity.availability_zone,
        )
        region = ud.region or identity.region
        _write_atomic(self.env_file, agent_environment(ud, region), 0o644)
        store = self.open_store(ud, identity)
        try:
            if store.head() == 0:
                self._first_document(store, ud, identity, interface, report)
        finally:
            store.close()
        _write_atomic(self.state_file, json.dumps(asdict(report), indent=2) + "\n", 0o644)
        return report

    def _first_document(
        self,
        store: ConfigStore,
        ud: UserData,
        identity: InstanceIdentity,
        interface: str,
        report: FirstBootReport,
    ) -> None:
        token, entry = token_entry("admin", "admin")
        doc = first_document(ud, interface, entry)
        try:
            report.document_written = store.put(doc, 0, "spectra firstboot")
        except VersionConflict:  # another instance of the fleet wrote the first one
            log.info("the store got its first document from another instance")
            return
        report.data_plane, report.note = "kernel", ONE_ARM_NOTE
        parameter = ud.token_parameter
        try:
            ssm = put_token_parameter(self.ssm_client(ud, identity), parameter, token)
        except Exception as exc:  # any failure: the console still has the token
            ssm = f"unreachable: {exc}"
        console = write_console(
            "\n*** Cloud Spectra Gateway: admin token (shown once) ***\n"
            f"{token}\n"
            f"config API and dashboard: http://<this instance>:{doc.api.port}/\n"
            f"SSM parameter {parameter}: {ssm}\n\n",
            self.console,
        )
        report.token = {"console": console, "ssm_parameter": parameter, "ssm": ssm}
        log.info(
            "first document v%d written (one-arm NAT on %s); admin token on the console=%s, "
            "SSM %s: %s",
            report.document_written,
            interface,
            console,
            parameter,
            ssm,
        )


def _write_atomic(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    tmp.replace(path)
