"""Request/response and bulk measurements through a path: sockperf UDP ping-pong
percentiles, TCP connection rate (perf.cps) and iperf3 TCP throughput."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from perf.target import Host, PerfError

_PERCENTILE = re.compile(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)")
CPS_PORT = 18080
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


def parse_sockperf(text: str) -> dict[str, float]:
    """``{"p50": usec, "p99": ..., "p99.9": ...}`` from sockperf's summary lines."""
    found = {float(p): float(v) for p, v in _PERCENTILE.findall(text)}
    out = {}
    for key, pct in (("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9)):
        if pct in found:
            out[key] = found[pct]
    if len(out) != 3:
        raise PerfError(f"sockperf printed no p50/p99/p99.9 percentiles: {text[-300:]!r}")
    return out


def sockperf(
    host: Host, server: str, port: int, seconds: float, client_port: int
) -> dict[str, float]:
    out = host.run(
        "taskset",
        "-c",
        "0",
        "sockperf",
        "ping-pong",
        "-i",
        server,
        "-p",
        str(port),
        "-m",
        "64",
        "-t",
        str(int(seconds)),
        "--client_port",
        str(client_port),
        timeout=seconds + 30,
    )
    return parse_sockperf(out)


def parse_iperf3(text: str) -> float:
    """Received bits per second from ``iperf3 -J``."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PerfError(f"iperf3 printed no JSON: {text[-300:]!r}") from exc
    try:
        return float(data["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError) as exc:
        why = data.get("error", text[-300:]) if isinstance(data, dict) else text[-300:]
        raise PerfError(f"iperf3 gave no received rate: {why!r}") from exc


def iperf3(host: Host, server: str, port: int, seconds: float, cport: int) -> float:
    out = host.run(
        "iperf3",
        "-c",
        server,
        "-p",
        str(port),
        "-t",
        str(int(seconds)),
        "-J",
        "--cport",
        str(cport),
        timeout=seconds + 30,
    )
    return parse_iperf3(out)


class CpsServer:
    """The accept/close server of perf.cps, started in the sink and stopped by pid."""

    def __init__(self, host: Host, address: str, port: int = CPS_PORT) -> None:
        self.host, self.address, self.port = host, address, port
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> CpsServer:
        if not self.host.local:
            raise PerfError("the connection-rate server runs only in lab mode")
        argv = self.host.argv(
            sys.executable, "-m", "perf.cps", "server", self.address, str(self.port), "2"
        )
        env = {**os.environ, "PYTHONPATH": PROJECT_ROOT}
        self.proc = subprocess.Popen(
            argv,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def connection_rate(host: Host, server: str, port: int, seconds: float, procs: int = 2) -> float:
    env_argv = ["env", f"PYTHONPATH={PROJECT_ROOT}"]
    out = host.run(
        *env_argv,
        sys.executable,
        "-m",
        "perf.cps",
        "client",
        server,
        str(port),
        str(seconds),
        str(procs),
        timeout=seconds + 30,
    )
    return float(out.strip().splitlines()[-1])
