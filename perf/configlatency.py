"""Config-change-to-applied latency for the ``local`` and the moto-SSM config store.

``python -m perf.configlatency --json FILE [--quick] [--store local|ssm|both]``

One sample: an admin PUTs a changed document to the config API (HTTP, loopback); a
poller with the agent's poll interval (1 s local, 5 s SSM by default) sees the new
version, reads it and renders it through every converge step (``control.steps``; the
real agent then applies the parts: ``nft -f``, map updates).  Latency = PUT sent ->
render done.  Baselines measured in the same run: the bare store write
(``put_ms``) and the poll interval, so the figures are ratios (``latency / poll``,
``latency / put``).  Goal: <= 1 s for the local store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from control.api import ApiSettings, create_app, hash_token, new_token
from control.config import parse_document
from control.config.operations import ApiToken
from control.steps import dry_run
from control.store import ConfigStore, SqliteStore, SsmStore

DEFAULT_POLL = {"local": 1.0, "ssm": 5.0}


def _document(i: int) -> dict[str, Any]:
    return {
        "interfaces": {"inside": "inside", "outside": "outside"},
        "rules": {"entries": [{"action": "deny", "dst": f"198.51.100.{i % 250}/32"}]},
    }


class Poller:
    """The agent's loop, reduced: poll head, read, converge (render), record when."""

    def __init__(self, store: ConfigStore, poll: float) -> None:
        self.store, self.poll = store, poll
        self.applied: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.last = store.head()

    def _run(self) -> None:
        while not self._stop.is_set():
            version = self.store.head()
            if version != self.last:
                doc = self.store.get(version)
                dry_run(doc, ("203.0.113.2",))
                self.applied[version] = time.monotonic()
                self.last = version
            self._stop.wait(self.poll)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)


@contextmanager
def serve(store: ConfigStore, token: str) -> Iterator[str]:
    """The config API over ``store`` on a loopback port, in a thread."""
    entry = {"name": "perf", "role": "admin", "hash": hash_token(token)}
    settings = ApiSettings(extra_tokens=(ApiToken.model_validate(entry),))
    runner = web.AppRunner(create_app(store, dict, settings), access_log=None)
    loop = asyncio.new_event_loop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def _put(url: str, token: str, doc: dict[str, Any], version: int) -> None:
    body = json.dumps({"version": version, "document": doc}).encode()
    request = urllib.request.Request(
        f"{url}/v1/config",
        data=body,
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def measure(store: ConfigStore, poll: float, samples: int) -> dict[str, Any]:
    """Latency samples (seconds) for one store, plus the same-run baselines."""
    token = new_token()
    put_times = []
    for i in range(3):  # baseline: the bare store write
        start = time.monotonic()
        store.put(parse_document(_document(i)), store.head(), "perf-baseline")
        put_times.append(time.monotonic() - start)
    latencies = []
    with serve(store, token) as url, Poller(store, poll) as poller:
        for i in range(samples):
            version = store.head()
            time.sleep(poll * (i % 4) / 4)  # spread PUTs over the poll phase
            sent = time.monotonic()
            _put(url, token, _document(i + 10), version)
            deadline = sent + poll * 4 + 30
            while version + 1 not in poller.applied and time.monotonic() < deadline:
                time.sleep(0.005)
            latencies.append(poller.applied.get(version + 1, float("nan")) - sent)
    put = statistics.median(put_times)
    median = statistics.median(latencies)
    return {
        "poll_seconds": poll,
        "samples": len(latencies),
        "latency_seconds": latencies,
        "median_seconds": median,
        "max_seconds": max(latencies),
        "put_baseline_seconds": put,
        "median_over_poll": median / poll,
        "median_over_put": median / put if put else None,
    }


def _ssm_store(prefix: str) -> tuple[SsmStore, Any]:
    import boto3
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client(
        "ssm",
        endpoint_url=f"http://{host}:{port}",
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard"}),
    )
    return SsmStore(client, prefix), server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.configlatency", description=__doc__)
    p.add_argument("--json", type=Path, required=True, metavar="FILE")
    p.add_argument("--store", choices=("local", "ssm", "both"), default="both")
    p.add_argument("--quick", action="store_true", help="5 samples per store")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--poll-local", type=float, default=DEFAULT_POLL["local"])
    p.add_argument("--poll-ssm", type=float, default=DEFAULT_POLL["ssm"])
    args = p.parse_args(argv)
    samples = 5 if args.quick else args.samples
    results: dict[str, Any] = {}
    if args.store in ("local", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            local = SqliteStore(Path(tmp) / "config.db")
            try:
                results["local"] = measure(local, args.poll_local, samples)
            finally:
                local.close()
    if args.store in ("ssm", "both"):
        ssm, server = _ssm_store("/perf/config")
        try:
            results["ssm_moto"] = measure(ssm, args.poll_ssm, samples)
        finally:
            ssm.close()
            server.stop()
    args.json.write_text(json.dumps({"suite": "configlatency", "results": results}, indent=2))
    print("| store | poll s | median s | max s | median/poll | median/put |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['poll_seconds']:.1f} | {r['median_seconds']:.3f} | "
            f"{r['max_seconds']:.3f} | {r['median_over_poll']:.2f} | {r['median_over_put']:.1f} |"
        )
    ok = all(r["median_seconds"] == r["median_seconds"] for r in results.values())  # no NaN
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
