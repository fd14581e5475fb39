"""XDP deny samples into the firewall log (no privileges; a fake data plane): each
sample is named by the rules of the generation it matched, in the NFLOG record's shape;
an unknown rule id is counted; rate 0 stops the reader and the program's sampling."""

from __future__ import annotations

import json
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, cast

from control.logfile import Feed, RecordLog, Rotation
from control.xdp_denylog import XdpDenyLog
from xdp import Dataplane
from xdp.deny_samples import DenySample, parse
from xdp.maps import DenySampleC


class FakeReader:
    def __init__(self, on_sample: Callable[[DenySample], object]) -> None:
        self.on_sample, self.read, self.running = on_sample, 0, False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False


class FakeDeny:
    gen = 0

    def active_generation(self) -> int:
        return self.gen


class FakeDataplane:
    def __init__(self) -> None:
        self.deny = FakeDeny()
        self.rates: list[int] = []
        self.readers: list[FakeReader] = []

    def set_deny_sample_rate(self, per_second: int) -> None:
        self.rates.append(per_second)

    def deny_sample_reader(self, on_sample: Callable[[DenySample], object]) -> FakeReader:
        self.readers.append(FakeReader(on_sample))
        return self.readers[-1]

    def deny_sample_counters(self) -> dict[str, int]:
        return {"sampled": 2, "suppressed": 0, "ring_full": 0}


def sample(rule: int, gen: int, proto: int = 17) -> DenySample:
    src, dst = IPv4Address("10.0.1.10"), IPv4Address("198.51.100.5")
    if proto == 1:
        return DenySample(rule, gen, src, dst, 1, 8, 0, 98)
    return DenySample(rule, gen, src, dst, proto, 40000, 53, 60)


def test_samples_are_named_by_their_generation(tmp_path: Path) -> None:
    dp = FakeDataplane()
    out = RecordLog(Rotation(tmp_path / "firewall.jsonl", 1 << 20, 2), capacity=16, name="t")
    feed = Feed()
    feed.target = out
    log = XdpDenyLog(cast(Dataplane, dp), feed)
    log.configure(50, (("rules.entries[0]", "no DNS"),))
    dp.deny.gen = 1
    log.configure(50, (("rules.entries[1]", "no ICMP"), ("rules.entries[3]", "no DNS")))
    assert dp.rates == [50] and len(dp.readers) == 1 and dp.readers[0].running
    on_sample = dp.readers[0].on_sample
    on_sample(sample(0, 4))  # generation 0 (epoch 4): the first rule set's rule 0
    on_sample(sample(1, 5))  # generation 1: the second set's rule 1
    on_sample(sample(0, 7, proto=1))
    on_sample(sample(9, 5))  # no such rule
    assert log.unnamed == 1
    assert log.counters()["sampled"] == 2
    log.configure(0, ())
    assert dp.rates == [50, 0] and not dp.readers[0].running
    out.start()
    out.stop()
    rows: list[dict[str, Any]] = [
        json.loads(x) for x in (tmp_path / "firewall.jsonl").read_text().splitlines()
    ]
    assert [(r["source"], r["rule"], r["comment"]) for r in rows] == [
        ("xdp", "rules.entries[0]", "no DNS"),
        ("xdp", "rules.entries[3]", "no DNS"),
        ("xdp", "rules.entries[1]", "no ICMP"),
        ("xdp", "xdp rule 9", ""),
    ]
    assert (rows[0]["src_ip"], rows[0]["dest_port"], rows[0]["proto"]) == ("10.0.1.10", 53, "UDP")
    assert (rows[2]["icmp_type"], rows[2]["src_port"]) == (8, None)


def test_the_sample_layout_parses() -> None:
    c = DenySampleC(rule=3, deny_gen=6, proto=6, pkt_len=74)
    raw = bytearray(bytes(c))
    raw[8:12], raw[12:16] = bytes([10, 0, 1, 10]), bytes([198, 51, 100, 5])
    raw[16:18], raw[18:20] = (443).to_bytes(2, "big"), (25).to_bytes(2, "big")
    s = parse(bytes(raw))
    assert (s.rule, s.deny_gen, s.proto, s.sport, s.dport, s.pkt_len) == (3, 6, 6, 443, 25, 74)
    assert (str(s.src), str(s.dst)) == ("10.0.1.10", "198.51.100.5")
    assert DenySampleC.be_saddr.offset == 8 and DenySampleC.be_sport.offset == 16
