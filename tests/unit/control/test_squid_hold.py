"""The reconfigure hold's reading of /proc/net/tcp and its nftables table (the hold
itself, with real connections during reconfigures, is in
tests/netns/test_proxy_squid.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from control import squid_hold
from control.squid_hold import Socket, hold_ruleset, sockets

pytestmark = pytest.mark.timeout(30)

# /proc/net/tcp: 10.0.1.1:3128 listening (inode 111, 2 connections not accepted), a
# half-open connection to it, an established one elsewhere
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0101000A:0C38 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 111 1
   1: 0101000A:0C38 0A01000A:9C40 03 00000000:00000000 00:00000000 00000000     0        0 0 1
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 222 1
"""


def test_sockets_on_a_listener_address(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(TCP)
    assert sockets("10.0.1.1:3128", table) == [Socket("0A", 2, 111), Socket("03", 0, 0)]
    assert sockets("10.0.1.1:3129", table) == []


def test_drained_only_without_queued_or_half_open_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = tmp_path / "tcp"
    monkeypatch.setattr(squid_hold, "sockets", lambda a: sockets(a, table))
    table.write_text(TCP)
    assert not squid_hold.drained(["10.0.1.1:3128"])
    assert squid_hold.listener_inodes(["10.0.1.1:3128", "10.0.2.1:3128"]) == {
        "10.0.1.1:3128": 111, "10.0.2.1:3128": None}  # fmt: skip
    lines = TCP.splitlines()
    table.write_text("\n".join([lines[0], lines[1].replace("00000002", "00000000"), lines[3]]))
    assert squid_hold.drained(["10.0.1.1:3128"])


def test_the_hold_drops_only_new_connections_to_the_listeners() -> None:
    text = hold_ruleset(["10.0.2.1:3128", "10.0.1.1:3128", "10.0.1.1:3128"])
    rules = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("ip daddr")]
    assert rules == [
        "ip daddr 10.0.1.1 tcp dport 3128 tcp flags & (syn | ack) == syn drop",
        "ip daddr 10.0.2.1 tcp dport 3128 tcp flags & (syn | ack) == syn drop",
    ]
    assert "type filter hook input priority -300; policy accept;" in text
