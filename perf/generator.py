"""The packet generator: trafgen at a fixed rate, pinned to the generator CPU, sending
either one fixed 64-byte UDP flow (cost per forwarded packet) or TCP SYNs that each
open a new 5-tuple (cost per new connection: conntrack entry + NAT mapping).

``-b <rate>pps`` is required: without a rate trafgen dies with "Flushing TX_RING
failed" when the gateway pushes back, and an unpaced generator saturates before the
gateway does (the cost per packet is only meaningful below saturation).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from perf.method import GENERATOR_CPU
from perf.target import Host, PerfError

FRAME_LEN = 60  # 64 bytes on the wire with the FCS
UDP_PAYLOAD = FRAME_LEN - 14 - 20 - 8
_SUMMARY = re.compile(r"(\d+) sec, (\d+) usec on CPU\d+ \((\d+) packets\)")


class Packets(Protocol):
    """What trafgen sends: its packet configuration."""

    def config(self) -> str: ...


@dataclass(frozen=True, slots=True)
class UdpFlow:
    src_mac: str
    dst_mac: str
    saddr: str
    daddr: str
    sport: int = 40000
    dport: int = 9

    def config(self) -> str:
        return trafgen_config(self)


# Source port 1024..65535 (64,512 values) and destination port 1..251 (prime, so
# coprime with 64,512) step together: 16.2 million distinct 5-tuples before one
# repeats, and the NAT never runs out of reply tuples (one port space per dport).
SYN_SPORTS = (1024, 65535)
SYN_DPORTS = (1, 251)


@dataclass(frozen=True, slots=True)
class SynFlood:
    """TCP SYNs from one workload address, every packet a new 5-tuple: each one makes
    the gateway create a conntrack entry and choose a NAT mapping, the work that
    bounds a NAT's connection-setup rate."""

    src_mac: str
    dst_mac: str
    saddr: str
    daddr: str

    def config(self) -> str:
        (slo, shi), (dlo, dhi) = SYN_SPORTS, SYN_DPORTS
        return f"""{{
  eth(da={self.dst_mac}, sa={self.src_mac}),
  ipv4(sa={self.saddr}, da={self.daddr}, ttl=64, df),
  tcp(sp=dinc({slo}, {shi}), dp=dinc({dlo}, {dhi}), seq=drnd(), syn, win=64240)
}}
"""


def _bytes(text: str, sep: str, base: int) -> str:
    return ", ".join(f"0x{int(b, base):02x}" for b in text.split(sep))


def trafgen_config(flow: UdpFlow) -> str:
    """A trafgen packet: Ethernet / IPv4 (DF, TTL 64) / UDP with checksums."""
    ip_len = FRAME_LEN - 14
    return f"""{{
  {_bytes(flow.dst_mac, ":", 16)}, {_bytes(flow.src_mac, ":", 16)}, 0x08, 0x00,
  0x45, 0x00, const16({ip_len}), const16(0), 0x40, 0x00, 64, 17, csumip(14, 33),
  {_bytes(str(IPv4Address(flow.saddr)), ".", 10)}, {_bytes(str(IPv4Address(flow.daddr)), ".", 10)},
  const16({flow.sport}), const16({flow.dport}), const16({ip_len - 20}), csumudp(14, 34),
  fill(0x41, {UDP_PAYLOAD})
}}
"""


@dataclass(frozen=True, slots=True)
class GeneratorResult:
    sent: int
    seconds: float
    ok: bool
    message: str

    @property
    def achieved_pps(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def send(host: Host, dev: str, flow: Packets, rate_pps: int, seconds: float) -> GeneratorResult:
    """Send ``rate_pps * seconds`` packets; the achieved rate is trafgen's own count
    over its own send time."""
    count = int(rate_pps * seconds)
    with tempfile.NamedTemporaryFile("w", suffix=".trafgen") as cfg:
        cfg.write(flow.config())
        cfg.flush()
        if not host.local:
            remote = f"/tmp/spectra-perf-{rate_pps}.trafgen"
            subprocess.run(["scp", "-q", cfg.name, f"{host.ssh}:{remote}"], check=True)
            path = remote
        else:
            path = cfg.name
        argv = host.argv(
            "taskset",
            "-c",
            str(GENERATOR_CPU),
            "trafgen",
            "-o",
            dev,
            "-i",
            path,
            "-b",
            f"{rate_pps}pps",
            "-n",
            str(count),
            "-P",
            "1",
            "-q",
        )
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=seconds * 3 + 10, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise PerfError(f"trafgen did not finish within {seconds * 3 + 10:.0f}s") from exc
    out = proc.stdout + proc.stderr
    m = _SUMMARY.search(out)
    if proc.returncode != 0 or m is None:
        tail = " ".join(out.strip().splitlines()[-2:])
        return GeneratorResult(0, seconds, False, f"trafgen exit {proc.returncode}: {tail}")
    secs = int(m.group(1)) + int(m.group(2)) / 1e6
    return GeneratorResult(int(m.group(3)), secs, True, "")
