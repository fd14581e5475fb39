"""Flow logs and firewall logs without a kernel: ctnetlink DESTROY messages built with
the offloader's own encoder parsed into version-5 records; rotation, counted drops and
sampling of the record log; NFLOG datagrams parsed into records naming the rule; the
document's fields and the deny rules' NFLOG twins."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import threading
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from control.config import ConfigValidationError, parse_document
from control.firewall_log import NFULNL_MSG_PACKET, parse, record
from control.flowlog import (
    CTA_COUNTERS_BYTES,
    CTA_COUNTERS_ORIG,
    CTA_COUNTERS_PACKETS,
    CTA_COUNTERS_REPLY,
    CTA_TIMESTAMP,
    CTA_TIMESTAMP_START,
    CTA_TIMESTAMP_STOP,
    SHARE_WAIT_NS,
    V5_FIELDS,
    FlowLogger,
    Known,
    Sampler,
    destroyed,
)
from control.flowlog import record as flow_record
from control.logfile import RecordLog, RotatingFile, Rotation, netlink_drops
from control.steps.nftables import render_nftables
from control.steps.traffic_logs import TrafficLogsStep
from tests.unit.control.conftest import minimal
from xdp.ctevents import (
    CTA_STATUS,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_REPLY,
    HDR,
    MSG_DELETE,
    MSG_NEW,
    NLM_F_CREATE,
    _msg,
    _nla,
    tuple_attr,
)
from xdp.fastpath_share import FastpathShares, Share
from xdp.offload import IPS_ASSURED, IPS_SEEN_REPLY, IPS_SRC_NAT, CtTuple

CLIENT, SERVER, NAT = (
    IPv4Address("10.0.1.10"),
    IPv4Address("198.51.100.5"),
    IPv4Address("203.0.113.2"),
)


def _counters(kind: int, packets: int, octets: int) -> bytes:
    body = _nla(CTA_COUNTERS_PACKETS, struct.pack(">Q", packets))
    body += _nla(CTA_COUNTERS_BYTES, struct.pack(">Q", octets))
    return _nla(kind | 0x8000, body)


def destroy_message(sport: int = 40000, nat_port: int = 61000, proto: int = 6, *,
                    kind: int = MSG_DELETE, timestamps: bool = True) -> bytes:  # fmt: skip
    payload = tuple_attr(CTA_TUPLE_ORIG, proto, CtTuple(CLIENT, SERVER, sport, 443))
    payload += tuple_attr(CTA_TUPLE_REPLY, proto, CtTuple(SERVER, NAT, 443, nat_port))
    status = IPS_SRC_NAT | IPS_SEEN_REPLY | IPS_ASSURED
    payload += _nla(CTA_STATUS, struct.pack(">I", status))
    payload += _counters(CTA_COUNTERS_ORIG, 7, 900)
    payload += _counters(CTA_COUNTERS_REPLY, 5, 4000)
    if timestamps:
        ts = _nla(CTA_TIMESTAMP_START, struct.pack(">Q", 1_700_000_000 * 10**9))
        ts += _nla(CTA_TIMESTAMP_STOP, struct.pack(">Q", 1_700_000_042 * 10**9))
        payload += _nla(CTA_TIMESTAMP | 0x8000, ts)
    return _msg(kind, 0 if kind == MSG_DELETE else NLM_F_CREATE, 1, payload)


def test_a_destroy_event_becomes_a_version_5_record_with_the_nat_translation() -> None:
    data = destroy_message() + destroy_message(40001, 61001, proto=17)
    data += destroy_message(kind=MSG_NEW)  # not an end: no record
    got = destroyed(data)
    assert len(got) == 2
    flow, acct = got[0]
    rec = flow_record(flow, acct, Known(instance_id="gw-a", region="eu-west-1"), 0)
    assert list(rec)[: len(V5_FIELDS)] == list(V5_FIELDS)
    assert V5_FIELDS[:8] == ("version", "account-id", "interface-id", "srcaddr", "dstaddr",
                             "srcport", "dstport", "protocol")  # fmt: skip
    assert (rec["version"], rec["srcaddr"], rec["dstaddr"], rec["srcport"], rec["dstport"]) == (
        5, "10.0.1.10", "198.51.100.5", 40000, 443,
    )  # fmt: skip
    assert (rec["protocol"], rec["packets"], rec["bytes"]) == (6, 12, 4900)
    assert (rec["start"], rec["end"], rec["action"], rec["log-status"]) == (
        1_700_000_000, 1_700_000_042, "ACCEPT", "OK",
    )  # fmt: skip
    assert (rec["nat-srcaddr"], rec["nat-srcport"]) == ("203.0.113.2", 61000)
    assert (rec["flow-direction"], rec["instance-id"], rec["region"]) == (
        "egress",
        "gw-a",
        "eu-west-1",
    )
    assert (rec["vpc-id"], rec["tcp-flags"], rec["nat-dstaddr"]) == ("-", "-", "-")
    assert got[1][0].proto == 17


def test_without_timestamps_the_end_is_when_the_event_was_read() -> None:
    ((flow, acct),) = destroyed(destroy_message(timestamps=False))
    rec = flow_record(flow, acct, Known(), 1_800_000_000 * 10**9 + 5)
    assert (rec["start"], rec["end"]) == ("-", 1_800_000_000)


def test_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    f = RotatingFile(Rotation(tmp_path / "flow.jsonl", max_bytes=100, keep=2))
    for i in range(5):
        f.write([json.dumps({"n": i, "pad": "x" * 90}) + "\n"])
    f.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["flow.jsonl.1", "flow.jsonl.2"]  # each write passed 100 bytes
    assert json.loads((tmp_path / "flow.jsonl.1").read_text())["n"] == 4
    assert json.loads((tmp_path / "flow.jsonl.2").read_text())["n"] == 3
    assert f.rotations == 5


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    out = RecordLog(Rotation(tmp_path / "f.jsonl", 1 << 20, 2), capacity=16, name="t")
    accepted = [out.offer({"n": i}) for i in range(20)]  # the writer is not running
    assert accepted == [True] * 16 + [False] * 4
    out.start()
    out.stop()
    lines = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [x["n"] for x in lines] == list(range(16))
    assert out.counters() | {} == {"written": 16, "dropped": 4, "write_errors": 0,
                                   "rotations": 0, "queued": 0}  # fmt: skip


def test_a_failed_write_is_counted(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    out = RecordLog(Rotation(blocker / "f.jsonl", 1 << 20, 2), capacity=16, name="t")
    out.start()
    out.offer({"n": 1})
    out.stop()
    assert (out.written, out.dropped, out.write_errors) == (0, 1, 1)


def test_sampling_keeps_one_flow_in_n() -> None:
    s = Sampler(10)
    kept = [s.keep() for _ in range(1000)]
    assert sum(kept) == 100 and s.skipped == 900 and kept[0]


def test_the_logger_samples_and_counts(tmp_path: Path) -> None:
    logger = FlowLogger(Rotation(tmp_path / "flow.jsonl", 1 << 20, 2), sampling=3,
                        capacity=1024, known=Known(),
        open_socket=lambda _: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))  # fmt: skip
    try:
        logger.out.start()
        for i in range(9):
            logger.ingest(destroy_message(40000 + i), 0)
    finally:
        logger.stop()
    rows = [json.loads(x) for x in (tmp_path / "flow.jsonl").read_text().splitlines()]
    assert [r["srcport"] for r in rows] == [40000, 40003, 40006]
    c = logger.counters()
    assert (c["flows"], c["sampled_out"], c["written"], c["dropped"]) == (9, 6, 3, 0)


def nflog_message(prefix: str, packet: bytes) -> bytes:
    attrs = _nla(1, struct.pack(">HBx", 0x0800, 2))  # NFULA_PACKET_HDR: IPv4, forward hook
    attrs += _nla(3, struct.pack(">QQ", 1_700_000_000, 250_000))
    attrs += _nla(4, struct.pack(">I", 1))  # in: lo
    attrs += _nla(9, packet) + _nla(10, prefix.encode() + b"\0")
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(7)) + attrs
    return HDR.pack(HDR.size + len(body), NFULNL_MSG_PACKET, 0, 0, 0) + body


def ipv4_udp(src: str, dst: str, sport: int, dport: int) -> bytes:
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return header + struct.pack(">HHHH", sport, dport, 8, 0)


def test_an_nflog_packet_becomes_a_drop_record_naming_the_rule() -> None:
    data = nflog_message("rules.entries[1]", ipv4_udp("10.0.1.10", "198.51.100.5", 5353, 53))
    data += nflog_message("rules.default", b"\x60" + b"\0" * 39)  # IPv6: skipped
    (d,) = parse(data)
    rec = record(d, {"rules.entries[1]": "no DNS out"}, 0)
    assert rec["timestamp"] == "2023-11-14T22:13:20.250000+00:00"
    assert (rec["event_type"], rec["rule"], rec["comment"], rec["proto"]) == (
        "drop", "rules.entries[1]", "no DNS out", "UDP",
    )  # fmt: skip
    assert (rec["src_ip"], rec["src_port"], rec["dest_ip"], rec["dest_port"]) == (
        "10.0.1.10", 5353, "198.51.100.5", 53,
    )  # fmt: skip
    assert rec["in_iface"] == "lo"


def logs_doc(**logging: Any) -> dict[str, Any]:
    doc = minimal()
    doc["logging"] = logging
    doc["rules"] = {"default": "deny", "entries": [
        {"action": "deny", "proto": "udp", "ports": [53, 53], "comment": "no DNS out"},
        {"action": "allow", "proto": "tcp", "ports": [443, 443]},
    ]}  # fmt: skip
    return doc


def test_the_document_fields_and_their_shorthand() -> None:
    doc = parse_document(logs_doc(flow_logs=True, firewall_logs={"enabled": True, "group": 9}))
    assert doc.logging.flow_logs.enabled and doc.logging.flow_logs.sampling == 1
    assert doc.logging.firewall_logs.group == 9
    with pytest.raises(ConfigValidationError, match="sampling"):
        parse_document(logs_doc(flow_logs={"enabled": True, "sampling": 0}))


def test_deny_rules_get_rate_limited_nflog_twins_only_when_asked() -> None:
    plain = render_nftables(parse_document(logs_doc()), ["203.0.113.2"])
    assert " log " not in plain
    on = parse_document(logs_doc(firewall_logs={"enabled": True, "rate_per_second": 50}))
    text = render_nftables(on, ["203.0.113.2"])
    lines = [x.strip() for x in text.splitlines()]
    twin = next(i for i, x in enumerate(lines) if 'log prefix "rules.entries[0]"' in x)
    assert lines[twin].endswith('limit rate 50/second log prefix "rules.entries[0]" group 7')
    assert lines[twin + 1].startswith(lines[twin].split(" limit ")[0])  # same match, drops
    assert lines[twin + 1].split(" comment ")[0].endswith("counter drop")
    default = lines.index('limit rate 50/second log prefix "rules.default" group 7')
    assert lines[default + 1] == 'counter drop comment "rules.default: deny"'
    assert TrafficLogsStep.render(on, _Host()).comments == (
        ("rules.entries[0]", "no DNS out"), ("rules.default", "rules.default: deny"),
    )  # fmt: skip
    if os.geteuid() == 0 and shutil.which("nft") and shutil.which("unshare"):
        checked = subprocess.run(["unshare", "--net", "nft", "-c", "-f", "-"], input=text,
                                 capture_output=True, text=True, check=False)  # fmt: skip
        assert checked.returncode == 0, checked.stderr


class _Host:
    def addresses(self, ifname: str) -> list[str]:
        return ["203.0.113.2"]

    def networks(self, ifname: str) -> list[str]:
        return ["203.0.113.2/24"]

    def zone(self) -> str | None:
        return "eu-west-1a"


def test_no_thread_is_left_behind(tmp_path: Path) -> None:
    before = threading.active_count()
    out = RecordLog(Rotation(tmp_path / "f.jsonl", 1 << 20, 2), capacity=16, name="t")
    out.start()
    out.stop()
    assert threading.active_count() == before


def _flow_logger(tmp_path: Path, shares: FastpathShares) -> FlowLogger:
    return FlowLogger(Rotation(tmp_path / "flow.jsonl", 1 << 20, 2), sampling=1,
                      capacity=1024, known=Known(), shares=shares,
        open_socket=lambda _: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))  # fmt: skip


def test_a_record_adds_the_fast_path_share_it_waited_for(tmp_path: Path) -> None:
    shares = FastpathShares()
    shares.enabled = True
    ((offloaded, _),) = destroyed(destroy_message(40000))
    shares.offloaded(offloaded.key)
    logger = _flow_logger(tmp_path, shares)
    try:
        logger.out.start()
        logger.ingest(destroy_message(40000) + destroy_message(40001), 0)
        assert logger.counters()["fastpath_waiting"] == 1, "40000 is still offloaded"
        shares.removed(offloaded.key, Share(100, 10_000, 90, 90_000))
        logger.idle(1)
    finally:
        logger.stop()
    rows = {
        r["srcport"]: r for r in map(json.loads, (tmp_path / "flow.jsonl").read_text().splitlines())
    }
    fast, slow = rows[40000], rows[40001]
    assert (fast["fastpath-packets"], fast["fastpath-bytes"]) == (190, 100_000)
    assert (fast["packets"], fast["bytes"]) == (12 + 190, 4900 + 100_000)
    assert (fast["packets-orig"], fast["bytes-reply"]) == (7 + 100, 4000 + 90_000)
    assert (slow["fastpath-packets"], slow["packets"]) == (0, 12), "never offloaded: 0"
    assert logger.counters()["fastpath_unknown"] == 0


def test_a_share_that_never_comes_is_written_as_unknown(tmp_path: Path) -> None:
    shares = FastpathShares()
    ((flow, _),) = destroyed(destroy_message(40000))
    shares.offloaded(flow.key)
    logger = _flow_logger(tmp_path, shares)
    try:
        logger.out.start()
        logger.ingest(destroy_message(40000), 0)
        logger.idle(SHARE_WAIT_NS - 1)
        assert logger.counters()["fastpath_waiting"] == 1
        logger.idle(SHARE_WAIT_NS)
    finally:
        logger.stop()
    (row,) = map(json.loads, (tmp_path / "flow.jsonl").read_text().splitlines())
    assert (row["fastpath-packets"], row["packets"]) == ("-", 12)
    assert logger.counters()["fastpath_unknown"] == 1 and len(shares) == 0


def test_waiting_records_leave_in_arrival_order(tmp_path: Path) -> None:
    shares = FastpathShares()
    shares.enabled = True
    (a, _), (b, _) = destroyed(destroy_message(40000) + destroy_message(40001))
    shares.offloaded(a.key)
    shares.offloaded(b.key)
    logger = _flow_logger(tmp_path, shares)
    try:
        logger.out.start()
        logger.ingest(destroy_message(40000), 0)
        logger.ingest(destroy_message(40001), 10)
        shares.removed(b.key, Share(1, 100, 1, 100))
        logger.idle(20)
        assert logger.counters()["fastpath_waiting"] == 2, "b waits behind a, still in time"
        logger.idle(SHARE_WAIT_NS)  # a's wait is over: a with '-', then b with its share
        assert logger.counters()["fastpath_waiting"] == 0
    finally:
        logger.stop()
    rows = [json.loads(x) for x in (tmp_path / "flow.jsonl").read_text().splitlines()]
    assert [(r["srcport"], r["fastpath-packets"]) for r in rows] == [(40000, "-"), (40001, 2)]


def _table(tmp_path: Path, sock: socket.socket, drops: int) -> Path:
    inode = os.fstat(sock.fileno()).st_ino
    path = tmp_path / "netlink"
    path.write_text(
        "sk        Eth Pid    Groups   Rmem Wmem Dump Locks Drops    Inode\n"
        "93c1b915  0   0      00000000 0    0    0    2     9        4\n"
        f"0922475a  12  24428  00000004 0    0    0    2     {drops}  {inode}\n"
    )
    return path


def test_the_kernel_drop_count_is_read_by_the_socket_inode(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        assert netlink_drops(sock, _table(tmp_path, sock, 122_491)) == 122_491
        assert netlink_drops(sock, tmp_path / "absent") is None
        (tmp_path / "other").write_text("sk Eth Pid\n1 2 3\n")
        assert netlink_drops(sock, tmp_path / "other") is None


def test_a_full_queue_waits_when_asked_then_counts(tmp_path: Path) -> None:
    out = RecordLog(Rotation(tmp_path / "f.jsonl", 1 << 20, 2), capacity=1, name="t")
    assert out.offer({"a": 1}) and not out.offer({"a": 2}, wait=0.05)
    assert out.dropped == 1, "the writer never started: the wait ends and counts"
    threading.Timer(0.05, out.start).start()  # room comes while the producer waits
    assert out.offer({"a": 3}, wait=2.0) and out.dropped == 1
    out.stop()
    assert out.written == 2


def _unix_logger(tmp_path: Path, *, reliable: bool, capacity: int = 1024) -> FlowLogger:
    return FlowLogger(Rotation(tmp_path / "flow.jsonl", 1 << 20, 2), sampling=1,
                      capacity=capacity, known=Known(), reliable=reliable,
        open_socket=lambda _: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))  # fmt: skip


def test_reliable_waits_once_for_a_stuck_writer_then_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("control.flowlog.OFFER_WAIT_S", 0.05)
    logger = _unix_logger(tmp_path, reliable=True, capacity=1)
    logger.ingest(b"".join(destroy_message(40000 + i) for i in range(5)), 0)  # no writer
    c = logger.counters()
    assert (c["flows"], c["queued"], c["dropped"], c["writer_stalls"]) == (5, 1, 4, 1)
    assert c["reliable"] is True and c["kernel_lost"] == 0
    logger.out.start()
    logger.out.stop()  # the queue drains: the next offer waits again
    logger.ingest(destroy_message(40005), 0)
    assert not logger._stalled and logger.counters()["writer_stalls"] == 1
    logger.stop_reading()


def test_unreliable_kernel_loss_is_exact_or_flagged_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = _unix_logger(tmp_path, reliable=False)
    try:
        assert logger.counters()["kernel_lost"] == 0, "no table row, no overflow seen"
        logger.kernel_overflows = 1
        assert logger.counters()["kernel_lost"] == "unknown"
        table = _table(tmp_path, logger._sock, 0)
        monkeypatch.setattr("control.logfile.netlink_drops", lambda s: netlink_drops(s, table))
        logger._drops_at_start = 0  # the socket's row existed at the start, 0 drops
        _table(tmp_path, logger._sock, 700)
        assert logger.counters()["kernel_lost"] == 700
        logger.reliable = True
        c = logger.counters()
        assert (c["kernel_lost"], c["kernel_redelivered"]) == (0, 700)
    finally:
        logger.stop()


def test_reliable_is_a_document_field() -> None:
    assert parse_document(logs_doc(flow_logs=True)).logging.flow_logs.reliable is True
    doc = parse_document(logs_doc(flow_logs={"enabled": True, "reliable": False}))
    assert doc.logging.flow_logs.reliable is False
    with pytest.raises(ConfigValidationError, match="reliable"):
        parse_document(logs_doc(flow_logs={"enabled": True, "reliable": "sometimes"}))


def test_a_reader_that_dies_closes_its_socket(tmp_path: Path) -> None:
    logger = _unix_logger(tmp_path, reliable=True)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    logger._sock.close()
    logger._sock = a
    a.settimeout(0.2)

    def broken(data: bytes, now_ns: int) -> None:
        raise ValueError("a parser bug")

    logger.ingest = broken  # type: ignore[method-assign]
    logger.start()
    b.send(b"x")
    logger._thread.join(2.0)
    assert not logger._thread.is_alive() and a.fileno() == -1, "the kernel may let go"
    assert logger.counters()["reader_error"] == "ValueError: a parser bug"
    logger.stop()
    b.close()
