"""The AI gateway's Redis round trip: redis-py asyncio against the lean client (ai.resp).

``python -m perf.redisclient [--json FILE] [--calls N] [--concurrency C]`` starts a
loopback ``redis-server`` (no persistence), then runs the gateway's reservation script
(``ai.redis_budget.RESERVE``) N times through :class:`ai.redis_link.RedisLink` both
ways: ``redispy`` (``RedisLink.call`` over a registered redis-py script, what the
gateway used before) and ``lean`` (``RedisLink.script``, the lean pipelined client),
sequentially (one call at a time: the latency a request waits) and C at a time (how a
loaded gateway issues them). It reports the process CPU time and the wall time per
call, and the lean client's figures as a ratio of redis-py's measured in the same run.
The server's own time per call is in ``INFO commandstats`` (printed as ``server_us``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ai.config import RedisConfig
from ai.redis_budget import RESERVE
from ai.redis_link import RedisLink
from perf.ai import free_port


def _args(i: int) -> tuple[list[str], list[str]]:
    keys = [f"spectra:ai:{{tbench}}:budget:k{i % 16}", f"spectra:ai:{{tbench}}:window:k{i % 16}"]
    return keys, ["1000000", "", "", "", "10", "50", "0.0", "60"]


async def _timed(
    calls: int, concurrency: int, one: Callable[[int], Awaitable[Any]]
) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, calls, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(calls, start + concurrency))))
    return {
        "cpu_us_per_call": (time.process_time() - cpu) / calls * 1e6,
        "wall_us_per_call": (time.perf_counter() - wall) / calls * 1e6,
    }


async def _measure(port: int, calls: int, concurrency: int) -> dict[str, Any]:
    config = RedisConfig.model_validate({"host": "127.0.0.1", "port": port})
    link = RedisLink(config, {})
    await link.open()
    registered = link.client.register_script(RESERVE.body)
    try:

        async def redispy(i: int) -> Any:
            keys, args = _args(i)
            return await link.call(lambda: registered(keys=keys, args=args), "bench")

        async def lean(i: int) -> Any:
            keys, args = _args(i)
            return await link.script(RESERVE, keys, args, "bench")

        results: dict[str, Any] = {}
        for name, one in (("redispy", redispy), ("lean", lean)):
            await _timed(200, concurrency, one)  # warm: connections, script cache
            results[name] = {
                "sequential": await _timed(calls, 1, one),
                f"concurrent_{concurrency}": await _timed(calls, concurrency, one),
            }
        return results
    finally:
        await link.close()


def _server_us(port: int) -> float:
    info = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "commandstats"],
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    ).stdout
    for line in info.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            fields = dict(f.split("=") for f in line.split(":", 1)[1].split(","))
            return float(fields["usec_per_call"])
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (make deps installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        server = subprocess.Popen([*argv, "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            wait_for(port)
            results = asyncio.run(_measure(port, args.calls, args.concurrency))
            results["server_us"] = _server_us(port)
        finally:
            server.kill()
            server.wait()
    for mode in results["lean"]:
        for figure in ("cpu_us_per_call", "wall_us_per_call"):
            before, after = results["redispy"][mode][figure], results["lean"][mode][figure]
            results.setdefault("ratio", {})[f"{mode}_{figure}"] = after / before
            print(
                f"{mode:14} {figure:18} redis-py {before:7.1f}  lean {after:7.1f}  "
                f"lean/redis-py {after / before:.2f}"
            )
    print(f"server time per EVALSHA: {results['server_us']:.1f} us")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


def wait_for(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"redis-server did not listen in {timeout_s:.0f} s")


if __name__ == "__main__":
    main()
