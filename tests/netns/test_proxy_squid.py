"""The Squid forward proxy driven by the document through the agent of ``cs-gw-a``,
used with curl from the workload ``cs-ws-a``: authentication, domain lists, cache,
bandwidth limits, CONNECT by domain, the JSON access log, a reconfigure under load.

The origin (:mod:`tests.netns.proxy_origin`) runs in the internet namespace; Squid
resolves the test names from the document's ``hosts``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from control.agent import read_state
from control.config import parse_document
from control.store import SqliteStore
from perf.lab import TOPOLOGY, ns_exec
from perf.lab.topology import INET_SERVICE_IP
from tests.netns.helpers import STORE_DIR, agent, document, sh, wait_for

GW = TOPOLOGY.gateway("a")
ORIGIN_PORT, TUNNEL_PORT = 8081, 8443
PROXY = f"http://{GW.inside_ip}:3128"
ALICE, BOB = ("alice", "wonder-land"), ("bob", "builder-42")
KBPS = 800  # bob's limit: 100,000 bytes per second
NAMES = ("www.allowed.test", "blocked.allowed.test", "other.test", "tunnel.allowed.test")


def proxy_doc(**changes: Any) -> dict[str, Any]:
    proxy = {
        "enabled": True,
        "auth": {"mode": "basic", "users": [
            {"name": ALICE[0], "password": ALICE[1]}, {"name": BOB[0], "password": BOB[1]}]},
        "allowed_domains": [".allowed.test"],
        "denied_domains": ["blocked.allowed.test"],
        "connect_ports": [TUNNEL_PORT],
        "connect_domains": ["tunnel.allowed.test"],
        "cache": {"enabled": True, "size_mb": 64},
        "bandwidth_limits": [{"name": "bob", "kbps": KBPS, "users": [BOB[0]]}],
        "hosts": dict.fromkeys(NAMES, INET_SERVICE_IP),
        **changes,
    }  # fmt: skip
    return document(interfaces={"data_plane": "kernel"}, proxy=proxy)


@pytest.fixture
def origin(lab: Any) -> Iterator[None]:
    argv = ns_exec(TOPOLOGY.inet_netns, sys.executable, "-m", "tests.netns.proxy_origin",
                   INET_SERVICE_IP, str(ORIGIN_PORT), str(TUNNEL_PORT))  # fmt: skip
    with subprocess.Popen(argv, cwd=Path(__file__).parents[2]) as proc:
        try:
            wait_for(lambda: sh(TOPOLOGY.inet_netns, "curl", "-s", "-o", "/dev/null",
                                f"http://{INET_SERVICE_IP}:{ORIGIN_PORT}/bytes/1").returncode == 0,
                     10, "the origin server")  # fmt: skip
            yield
        finally:
            proc.terminate()


def curl(url: str, *opts: str, user: tuple[str, str] | None = ALICE) -> dict[str, Any]:
    """One request through the proxy from the workload; curl's own measurements."""
    auth = ["--proxy-user", f"{user[0]}:{user[1]}"] if user else []
    out = sh(GW.workload_netns, "curl", "-s", "-o", "/dev/null", "-m", "20", "-x", PROXY,
             *auth, *opts, "-w", "%{json}", url, timeout=30)  # fmt: skip
    data = json.loads(out.stdout)
    return {"rc": out.returncode, "code": data["http_code"], "connect": data["http_connect"],
            "speed": data["speed_download"], "size": data["size_download"]}  # fmt: skip


def direct(name: str) -> int:
    """A plain-HTTP GET from the workload with no proxy configured: the status code
    (port 80 of the internet service is the lab's own HTTP server, perf/lab/servers.py)."""
    out = sh(GW.workload_netns, "curl", "-s", "-o", "/dev/null", "-m", "20", "--noproxy", "*",
             "--resolve", f"{name}:80:{INET_SERVICE_IP}", "-w", "%{http_code}",
             f"http://{name}/bytes/10", timeout=30)  # fmt: skip
    return int(out.stdout)


def access_log() -> list[dict[str, Any]]:
    path = Path(read_state(GW.netns)["proxy"]["access_log"])  # type: ignore[index]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(doc: dict[str, Any]) -> int:
    store = SqliteStore(STORE_DIR / f"{GW.netns}.db")
    try:
        return store.put(parse_document(doc), store.head(), "test")
    finally:
        store.close()


def applied(version: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        st = read_state(GW.netns) or {}
        return st if st.get("applied_version") == version else None

    result: dict[str, Any] = wait_for(done, 20, f"version {version} applied")
    return result


@contextmanager
def proxy_agent(doc: dict[str, Any]) -> Iterator[None]:
    """The agent on ``doc``; on the way out, the proxy disabled through the document
    (the product stops the Squid it started, which outlives the agent otherwise)."""
    with agent(GW.netns, doc):
        try:
            wait_for(lambda: (read_state(GW.netns) or {}).get("proxy", {}).get("healthy"),
                     10, "squid healthy")  # fmt: skip
            yield
        finally:
            applied(write(document(interfaces={"data_plane": "kernel"})))


def test_forward_proxy(origin: None) -> None:
    url = f"http://www.allowed.test:{ORIGIN_PORT}"
    with proxy_agent(proxy_doc(bandwidth_limits=[])):
        st = read_state(GW.netns) or {}
        assert st["proxy"]["version"].startswith("5.") and "proxy" not in st["not_yet_rendered"]

        assert curl(f"{url}/bytes/10", user=None)["code"] == 407
        assert curl(f"{url}/bytes/10", user=("alice", "wrong"))["code"] == 407
        assert curl(f"{url}/bytes/10")["code"] == 200
        assert curl(f"http://other.test:{ORIGIN_PORT}/bytes/10")["code"] == 403
        assert curl(f"http://blocked.allowed.test:{ORIGIN_PORT}/bytes/10")["code"] == 403

        # the second fetch of a cacheable object is served from the cache
        assert curl(f"{url}/cacheable/2000")["code"] == 200
        assert curl(f"{url}/cacheable/2000")["code"] == 200
        log = wait_for(lambda: [e for e in access_log() if "cacheable" in e["url"]][1:] and
                       access_log(), 5, "two cacheable fetches logged")  # fmt: skip
        fetches = [e for e in log if e["url"].endswith("/cacheable/2000")]
        assert fetches[0]["squid_status"] == "TCP_MISS"
        assert "HIT" in fetches[1]["squid_status"], fetches
        assert fetches[1]["user"] == "alice" and fetches[1]["status"] == 200
        assert fetches[1]["client"] == GW.workload_ip
        denied = [e for e in log if e["host"] == "other.test"]
        assert denied and denied[0]["status"] == 403

        # CONNECT: only to connect_ports, only to connect_domains
        tunnel = curl(f"http://tunnel.allowed.test:{TUNNEL_PORT}/bytes/10", "-p")
        assert (tunnel["connect"], tunnel["code"]) == (200, 200)
        # refused: no tunnel (curl sees Squid's 403 or the closed connection)
        for refused in (f"www.allowed.test:{TUNNEL_PORT}", f"tunnel.allowed.test:{ORIGIN_PORT}"):
            answer = curl(f"http://{refused}/bytes/10", "-p")
            assert answer["connect"] in (0, 403) and answer["code"] != 200, answer

        assert (read_state(GW.netns) or {})["proxy"]["restarts"] == 0  # Squid never died


def test_a_bandwidth_limit_holds_within_20_percent(origin: None) -> None:
    """Bob's delay pool: 800 kbit/s within 20 %; alice is not limited."""
    url = f"http://www.allowed.test:{ORIGIN_PORT}"
    with proxy_agent(proxy_doc()):
        # ~10 s at the limit: Squid refills its buckets once a second, so the phase of
        # that tick moves a 5 s transfer's average by up to 20 %
        size = 1_000_000
        slow = curl(f"{url}/bytes/{size}", user=BOB)
        assert slow["code"] == 200 and slow["size"] == size
        rate = KBPS * 1000 / 8
        assert 0.8 * rate <= slow["speed"] <= 1.2 * rate, slow
        assert curl(f"{url}/bytes/{size}")["speed"] > 3 * rate


def test_a_denied_connect_with_a_per_user_delay_pool_is_403_and_squid_lives(
    origin: None,
) -> None:
    """With a per-user delay pool, Squid 5.7 died of a segmentation fault on a CONNECT
    denied before authentication (``delay_access`` looking up credentials no rule had
    checked); authentication is now the first rule. Each user, right or wrong
    credentials, to a port and to a domain CONNECT may not reach."""
    with proxy_agent(proxy_doc()):
        pid = (read_state(GW.netns) or {})["proxy"]["pid"]
        refused = (f"www.allowed.test:{TUNNEL_PORT}", f"tunnel.allowed.test:{ORIGIN_PORT}")
        for user in (BOB, ALICE):
            for target in refused:
                answer = curl(f"http://{target}/bytes/10", "-p", user=user)
                assert answer["connect"] == 403 and answer["code"] != 200, (user, target, answer)
        for target in refused:
            assert curl(f"http://{target}/bytes/10", "-p", user=(BOB[0], "wrong"))["connect"] == 407
        tunnel = curl(f"http://tunnel.allowed.test:{TUNNEL_PORT}/bytes/10", "-p", user=BOB)
        assert (tunnel["connect"], tunnel["code"]) == (200, 200)
        st = (read_state(GW.netns) or {})["proxy"]
        assert (st["pid"], st["restarts"], st["running"]) == (pid, 0, True), st


def test_a_reconfigure_under_load_loses_no_request(origin: None, tmp_path: Path) -> None:
    """8 clients, a new connection per request, while the document's proxy section
    changes 10 times (each change: ``squid -k parse``, then ``squid -k reconfigure``
    with new connections held): every request gets its 200 and its whole body."""
    url = f"http://www.allowed.test:{ORIGIN_PORT}/bytes/1000"
    with proxy_agent(proxy_doc(bandwidth_limits=[])):
        before = (read_state(GW.netns) or {})["proxy"]["reconfigures"]
        stop, holds = tmp_path / "stop", []
        argv = ns_exec(GW.workload_netns, sys.executable, "-m", "tests.netns.proxy_load",
                       f"{GW.inside_ip}:3128", url, ":".join(ALICE), "8", str(stop))  # fmt: skip
        with subprocess.Popen(argv, cwd=Path(__file__).parents[2], stdout=subprocess.PIPE,
                              text=True) as load:  # fmt: skip
            try:
                time.sleep(1)
                for i in range(10):
                    denied = ["blocked.allowed.test", f"n{i}.other.test"]
                    st = applied(write(proxy_doc(bandwidth_limits=[], denied_domains=denied)))
                    holds.append(st["proxy"]["reconfigure_hold_ms"])
                    time.sleep(0.5)
            finally:
                stop.touch()
            out, _ = load.communicate(timeout=60)
        result = json.loads(out)
        print("outcomes", result["outcomes"], "new connections held (ms)", holds)
        st = (read_state(GW.netns) or {})["proxy"]
        assert st["reconfigures"] - before == 10 and st["restarts"] == 0, st
        assert set(result["outcomes"]) == {"200"}, result
        assert result["outcomes"]["200"] >= 200, result  # the load ran all along


def test_transparent_mode_applies_the_domain_lists_to_a_workload_without_a_proxy(
    origin: None,
) -> None:
    """``proxy.transparent``: the workload's plain HTTP to the internet is handed to
    Squid by TPROXY; allowed 200, denied 403, no authentication asked (users and a
    per-user delay pool are configured), logged with the workload's address. Off: the
    table is gone and port 80 goes straight to the origin again."""
    with proxy_agent(proxy_doc(transparent={"enabled": True})):
        st = (read_state(GW.netns) or {})["proxy"]
        assert st["transparent"] == f"{GW.inside_ip}:3129", st
        assert direct("www.allowed.test") == 200
        assert direct("other.test") == 403
        assert direct("blocked.allowed.test") == 403
        log = wait_for(lambda: [e for e in access_log() if e["host"] == "other.test"] and
                       access_log(), 5, "intercepted requests logged")  # fmt: skip
        seen = {e["host"]: e for e in log if e["url"].endswith("/bytes/10")}
        assert seen["www.allowed.test"]["status"] == 200 and seen["other.test"]["status"] == 403
        assert seen["www.allowed.test"]["client"] == GW.workload_ip
        assert seen["www.allowed.test"]["user"] == "-"
        # the configured proxy still asks for credentials
        assert curl(f"http://www.allowed.test:{ORIGIN_PORT}/bytes/10", user=None)["code"] == 407
        assert (read_state(GW.netns) or {})["proxy"]["restarts"] == 0
    assert sh(GW.netns, "nft", "list", "table", "ip", "spectra_tproxy").returncode != 0
    assert direct("other.test") == 200  # not intercepted any more


def test_a_restarted_agent_adopts_the_running_squid(origin: None) -> None:
    doc = proxy_doc(bandwidth_limits=[])
    with agent(GW.netns, doc):
        wait_for(lambda: (read_state(GW.netns) or {}).get("proxy", {}).get("healthy"),
                 10, "squid healthy")  # fmt: skip
        pid = (read_state(GW.netns) or {})["proxy"]["pid"]
    # the agent is gone; Squid (its own session) still serves
    assert curl(f"http://www.allowed.test:{ORIGIN_PORT}/bytes/10")["code"] == 200
    with proxy_agent(doc):
        st = read_state(GW.netns) or {}
        assert st["proxy"]["pid"] == pid and st["proxy"]["restarts"] == 0
