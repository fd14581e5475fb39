"""Helpers for tests that run real traffic in the lab."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from control.agent import read_state
from control.config import parse_document
from control.store import SqliteStore
from perf.lab import TOPOLOGY, ns_exec
from xdp import loader


def sh(ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ns_exec(ns, *argv), capture_output=True, text=True, timeout=timeout, check=False
    )


def http_get_json(ns: str, url: str) -> dict[str, Any]:
    proc = sh(ns, "curl", "-s", "-m", "5", url)
    assert proc.returncode == 0, f"curl {url} from {ns} failed: rc={proc.returncode}"
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def reset_gateway(netns: str) -> None:
    """The gateway ``netns`` back to what the lab built, as far as the data plane goes:
    no XDP program on its inside and outside interfaces, no pins of the product, an
    empty conntrack table."""
    (gw,) = (g for g in TOPOLOGY.gateways if g.netns == netns)
    for ifname in (gw.inside_if, gw.outside_if):
        sh(netns, "ip", "link", "set", "dev", ifname, "xdp", "off")
    loader.unpin(loader.pin_dir_for(netns))
    sh(netns, "conntrack", "-F")


def agent_status(netns: str) -> dict[str, Any]:
    """The status the agent of ``netns`` last wrote (``spectra status`` reads the same)."""
    state = read_state(netns)
    assert state is not None, f"no agent state for {netns}"
    return state


STORE_DIR = Path("/run/spectra-test")


def document(**sections: Any) -> dict[str, Any]:
    """A config document for the lab gateways: the bootstrap one plus ``sections``."""
    doc: dict[str, Any] = {"interfaces": {"inside": "inside", "outside": "outside"}}
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(name), dict):
            doc[name] = {**doc[name], **value}
        else:
            doc[name] = value
    return doc


def fresh_store(netns: str, doc: dict[str, Any]) -> Path:
    """A new local store for ``netns`` holding ``doc`` as version 1."""
    STORE_DIR.mkdir(parents=True, exist_ok=True)
    path = STORE_DIR / f"{netns}.db"
    for leftover in STORE_DIR.glob(f"{netns}.db*"):
        leftover.unlink()
    store = SqliteStore(path)
    try:
        store.put(parse_document(doc), 0, "test")
    finally:
        store.close()
    return path


@contextmanager
def agent(
    netns: str, doc: dict[str, Any] | None = None, *extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``spectra run`` inside ``netns`` on a fresh store holding ``doc``, converged,
    stopped on exit."""
    path = fresh_store(netns, doc or document())
    with (
        tempfile.TemporaryFile() as err,
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "control",
                "run",
                "--netns",
                netns,
                "--store",
                f"local:{path}",
                "--poll",
                "0.2",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        ) as proc,
    ):
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                st = read_state(netns)
                if st and st["pid"] == proc.pid and st["converged"]:
                    break
                if proc.poll() is not None:
                    err.seek(0)
                    raise AssertionError(f"agent exited: {err.read().decode()}")
                time.sleep(0.05)
            else:
                raise AssertionError(f"agent in {netns} did not converge in 30 s")
            yield proc
        finally:
            _stop_agent(proc, err)


def _stop_agent(proc: subprocess.Popen[bytes], err: IO[bytes], within: float = 10.0) -> None:
    """SIGTERM; an agent still running after ``within`` seconds has its threads' stacks
    dumped (SIGUSR1), is killed -- the next test needs its ports -- and fails the test
    with the end of its log."""
    proc.terminate()
    try:
        proc.wait(timeout=within)
        return
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        proc.kill()
        proc.wait()
    err.seek(0)
    tail = err.read().decode(errors="replace")[-20000:]
    raise AssertionError(f"agent did not stop within {within:.0f} s of SIGTERM:\n{tail}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` every 50 ms until it returns something truthy (returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)
