"""conntrackd (conntrack-tools) for the appliance: its config file, its client commands.

conntrackd replicates the kernel's conntrack table between the leader and its standby
in FTFW mode (conntrackd.conf(5): "a reliable protocol that performs message
tracking ... can recover from message loss, re-ordering and corruption") over unicast
UDP. The leader's daemon keeps its flows in its *internal* cache and sends every
change; the standby's keeps them in its *external* cache, outside its kernel, until a
takeover commits them (``conntrackd -c``). The daemon's NAT attributes travel with each
entry, so a committed entry has the leader's mapping: same public address and ports.

What is replicated follows the manual's advice for a firewall cluster (conntrackd.conf(5)
``FILTER``; the ``sync/ftfw`` example): only forwarded flows, so every address of the
gateway itself (loopback, the sync link, its own interface addresses) is ignored; TCP
only in the states the manual's example accepts (ESTABLISHED, CLOSED, TIME_WAIT,
CLOSE_WAIT: a replica that is lazy about handshakes in progress); UDP and ICMP as they
are. Filtering happens in the kernel (``Filter From Kernelspace``, which the manual
prefers). TCP window tracking stays off on replicated entries (``TCPWindowTracking
no``, the default), so the new leader picks up mid-stream sequence numbers.

Every path the daemon uses (control socket, lock file, log) is per instance, so two
instances in two network namespaces of one host do not meet in ``/var/run``.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BINARY = "conntrackd"
# The manual: HashLimit "should be double of nf_conntrack_max" (the kernel's default
# nf_conntrack_max is 262144); socket buffers as in its examples, ~12x the ~100 kB
# default it calls "fairly small for busy firewalls".
HASH_SIZE = 32768
HASH_LIMIT = 2 * 262144
SOCKET_BUFFER = 1249280
NETLINK_BUFFER = 2097152
NETLINK_BUFFER_MAX = 8388608
PROTOCOLS = ("TCP", "UDP", "ICMP")
TCP_STATES = ("ESTABLISHED", "CLOSED", "TIME_WAIT", "CLOSE_WAIT")
LOOPBACK = "127.0.0.0/8"
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with its terminating NUL

_CACHE_RE = re.compile(r"cache (internal|external):\s*\ncurrent active connections:\s*(\d+)")


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """What one instance's conntrackd does: sync with ``peer`` from ``local`` over
    ``interface``, ignoring the flows of ``ignore`` (the gateway's own addresses)."""

    interface: str
    local: str
    peer: str
    port: int
    ignore: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DaemonPaths:
    """Where one instance's conntrackd keeps its files."""

    config: Path
    socket: Path
    lock: Path
    log: Path

    @classmethod
    def under(cls, run_dir: Path, log_dir: Path) -> DaemonPaths:
        return cls(
            run_dir / "conntrackd.conf",
            run_dir / "conntrackd.ctl",
            run_dir / "conntrackd.lock",
            log_dir / "conntrackd.log",
        )


def render_config(settings: SyncSettings, paths: DaemonPaths) -> str:
    """conntrackd.conf(5) text for ``settings``; pure."""
    ignore = "".join(f"\t\t\tIPv4_address {a}\n" for a in settings.ignore)
    protocols = "".join(f"\t\t\t{p}\n" for p in PROTOCOLS)
    return (
        "Sync {\n"
        "\tMode FTFW {\n"
        "\t\tResendQueueSize 131072\n"
        "\t\tPurgeTimeout 60\n"
        "\t\tACKWindowSize 300\n"
        "\t\tDisableExternalCache no\n"
        "\t\tStartupResync yes\n"
        "\t}\n"
        "\tUDP {\n"
        f"\t\tIPv4_address {settings.local}\n"
        f"\t\tIPv4_Destination_Address {settings.peer}\n"
        f"\t\tPort {settings.port}\n"
        f"\t\tInterface {settings.interface}\n"
        f"\t\tSndSocketBuffer {SOCKET_BUFFER}\n"
        f"\t\tRcvSocketBuffer {SOCKET_BUFFER}\n"
        "\t\tChecksum on\n"
        "\t}\n"
        "\tOptions {\n"
        "\t\tTCPWindowTracking no\n"
        "\t}\n"
        "}\n"
        "General {\n"
        "\tSystemd no\n"
        f"\tHashSize {HASH_SIZE}\n"
        f"\tHashLimit {HASH_LIMIT}\n"
        f"\tLogFile {paths.log}\n"
        "\tSyslog no\n"
        f"\tLockFile {paths.lock}\n"
        "\tUNIX {\n"
        f"\t\tPath {paths.socket}\n"
        "\t}\n"
        f"\tNetlinkBufferSize {NETLINK_BUFFER}\n"
        f"\tNetlinkBufferSizeMaxGrowth {NETLINK_BUFFER_MAX}\n"
        "\tNetlinkOverrunResync on\n"
        "\tFilter From Kernelspace {\n"
        "\t\tProtocol Accept {\n"
        f"{protocols}"
        "\t\t}\n"
        "\t\tAddress Ignore {\n"
        f"{ignore}"
        "\t\t}\n"
        "\t\tState Accept {\n"
        f"\t\t\t{' '.join(TCP_STATES)} for TCP\n"
        "\t\t}\n"
        "\t}\n"
        "}\n"
    )


@dataclass(frozen=True, slots=True)
class CommandResult:
    """One ``conntrackd -C <config> <flag>`` client command and how it went."""

    flag: str
    what: str
    returncode: int
    seconds: float
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def command(config: Path, flag: str, what: str, timeout: float = 60.0) -> CommandResult:
    """Run one client command against the daemon of ``config``; never raises."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [BINARY, "-C", str(config), flag],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        code, output = proc.returncode, (proc.stdout + proc.stderr).strip()
    except subprocess.TimeoutExpired:
        code, output = -1, f"no answer within {timeout:.0f}s"
    except OSError as exc:
        code, output = -1, str(exc)
    return CommandResult(flag, what, code, round(time.monotonic() - started, 4), output[-2000:])


def cache_sizes(stats: str) -> dict[str, int]:
    """``{"internal": n, "external": m}`` active entries from ``conntrackd -s`` output."""
    return {kind: int(count) for kind, count in _CACHE_RE.findall(stats)}


def version() -> str | None:
    """conntrackd's version (``1.4.7``), or None when it cannot be run."""
    try:
        proc = subprocess.run([BINARY, "-v"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"v(\d+(?:\.\d+)+)", proc.stdout + proc.stderr)
    return found.group(1) if found else None
