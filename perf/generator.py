"""The packet generator: trafgen sending one fixed 64-byte UDP flow at a fixed rate,
pinned to the generator CPU.

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

from perf.method import GENERATOR_CPU
from perf.target import Host, PerfError

FRAME_LEN = 60  # 64 bytes on the wire with the FCS
UDP_PAYLOAD = FRAME_LEN - 14 - 20 - 8
_SUMMARY = re.compile(r"(\d+) sec, (\d+) usec on CPU\d+ \((\d+) packets\)")


@dataclass(frozen=True, slots=True)
class UdpFlow:
    src_mac: str
    dst_mac: str
    saddr: str
    daddr: str
    sport: int = 40000
    dport: int = 9


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


def send(host: Host, dev: str, flow: UdpFlow, rate_pps: int, seconds: float) -> GeneratorResult:
    """Send ``rate_pps * seconds`` packets; the achieved rate is trafgen's own count
    over its own send time."""
    count = int(rate_pps * seconds)
    with tempfile.NamedTemporaryFile("w", suffix=".trafgen") as cfg:
        cfg.write(trafgen_config(flow))
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
