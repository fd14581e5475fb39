"""A Squid reconfigure that loses no connection: new connections held while Squid
reopens its listening sockets.

Measured with Squid 5.7 (8 clients opening a connection per request, 10 ``squid -k
reconfigure``): a reconfigure closes every listening socket and opens a new one 30 to
120 ms later. A connection attempted in between is refused (the kernel answers its SYN
with a reset: 257 and 303 refused connections in two of the ten reconfigures), and one
the kernel had already completed into the old socket's accept queue is reset when that
socket closes (one such reset). Requests on connections Squid had accepted complete.

So during a reconfigure the table ``inet spectra_squid_hold`` drops (rather than
refuses) the SYNs of new connections to Squid's listeners; the client's TCP sends its
SYN again after its initial retransmission timeout (1 s, RFC 6298 section 2), by when
Squid listens again. The table is in place before Squid is signalled and stays until a
listening socket with a new inode is on every listener address; in between, the old
sockets' accept queues are left to drain (Squid accepts them) before the signal. The
cost is up to one retransmission timeout of connect latency for connections begun in
the window; nothing is refused.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from control.nftables import apply_ruleset
from nfq.marks import SKB_MARK_TPROXY

TABLE = "spectra_squid_hold"
DRAIN_SECONDS = 1.0
REOPEN_SECONDS = 15.0
_LISTEN, _SYN_RECV = "0A", "03"


@dataclass(frozen=True, slots=True)
class Socket:
    """One TCP socket of /proc/net/tcp on a listener's address."""

    state: str
    accept_queue: int  # rx_queue; for a listening socket, connections not yet accepted
    inode: int


def _hex_address(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{int.from_bytes(socket.inet_aton(host), 'little'):08X}:{int(port):04X}"


def sockets(address: str, table: Path = Path("/proc/net/tcp")) -> list[Socket]:
    """The sockets whose local address is ``address`` (ip:port) in this namespace."""
    wanted = _hex_address(address)
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return []
    return [
        Socket(f[3], int(f[4].split(":")[1], 16), int(f[9]))
        for f in (ln.split() for ln in lines)
        if len(f) > 9 and f[1] == wanted
    ]


def listener_inodes(addresses: Sequence[str]) -> dict[str, int | None]:
    """The inode of the listening socket on each address (None: nothing listens)."""
    out: dict[str, int | None] = {}
    for a in addresses:
        found = [s.inode for s in sockets(a) if s.state == _LISTEN]
        out[a] = found[0] if found else None
    return out


def drained(addresses: Sequence[str]) -> bool:
    """No connection is half-open or waiting in an accept queue on ``addresses``."""
    return not any(
        (s.state == _LISTEN and s.accept_queue) or s.state == _SYN_RECV
        for a in addresses
        for s in sockets(a)
    )


def hold_ruleset(addresses: Sequence[str], intercepted: bool = False) -> str:
    """The hold table: an input chain ahead of every filter chain dropping the SYNs of
    new connections to ``addresses`` (ip:port) and, with ``intercepted``, of the
    connections the transparent mode hands to Squid (their packets keep their own
    destination and carry ``SKB_MARK_TPROXY``)."""
    syn = "tcp flags & (syn | ack) == syn drop"
    rules = []
    for a in sorted(set(addresses)):
        host, _, port = a.rpartition(":")
        rules.append(f"    ip daddr {host} tcp dport {port} {syn}")
    if intercepted:
        rules.append(f"    meta mark & {SKB_MARK_TPROXY:#x} == {SKB_MARK_TPROXY:#x} {syn}")
    return "\n".join([
        f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{",
        "  chain input {", "    type filter hook input priority -300; policy accept;",
        *rules, "  }", "}", "",
    ])  # fmt: skip


def release() -> None:
    """Delete the hold table (create-then-delete: no error when it is absent)."""
    apply_ruleset(f"table inet {TABLE}\ndelete table inet {TABLE}\n")


def _wait(done: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def held(
    old: Sequence[str], new: Sequence[str], intercepted: bool = False
) -> Iterator[Callable[[], bool]]:
    """Hold new connections to the ``old`` and ``new`` listener addresses for the body
    (which signals Squid). Yields the wait for Squid's reopen: a listening socket with a
    new inode on every ``new`` address (True: within ``REOPEN_SECONDS``). The hold is
    released on every way out."""
    every = sorted({*old, *new})
    before = listener_inodes(every)
    apply_ruleset(hold_ruleset(every, intercepted))
    try:
        _wait(lambda: drained(old), DRAIN_SECONDS)

        def reopened() -> bool:
            def fresh() -> bool:
                now = listener_inodes(new)
                return all(now[a] is not None and now[a] != before[a] for a in new)

            return _wait(fresh, REOPEN_SECONDS)

        yield reopened
    finally:
        release()
