"""Inspection driven by the config document through the agent: the engine starts, the
queueing rules go in, a denied host is dropped and alerted, a rule change is a reload,
an unsupported rule fails the converge and keeps the last good state."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from control.agent import read_state
from control.config import parse_document
from control.store import SqliteStore
from tests.netns.helpers import STORE_DIR, agent, document, sh

GW = "cs-gw-a"
DENY_HOST = (
    'drop http any any -> any any (msg:"denied host"; flow:established,to_server; '
    'http.host; content:"denied.example"; nocase; sid:7001; rev:1;)'
)


def inspection(*rules: str) -> dict[str, Any]:
    return document(
        interfaces={"data_plane": "kernel"},
        inspection={"enabled": True, "engine": "builtin", "fail_open": True,
                    "selectors": [{"proto": "tcp", "ports": [80, 80]}], "rules": list(rules)},
    )  # fmt: skip


def curl(host: str, url: str) -> int:
    return sh("cs-ws-a", "curl", "-s", "-m", "3", "-o", "/dev/null", "-H", f"Host: {host}",
              url).returncode  # fmt: skip


def write(doc: dict[str, Any]) -> int:
    store = SqliteStore(STORE_DIR / f"{GW}.db")
    try:
        head = store.head()
        return store.put(parse_document(doc), head, "test")
    finally:
        store.close()


def wait_applied(version: int, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = read_state(GW) or {}
        if st.get("applied_version") == version or (
            st.get("desired_version") == version and st.get("last_error")
        ):
            return st
        assert time.monotonic() < deadline, f"version {version} not processed: {st}"
        time.sleep(0.1)


def test_document_drives_the_inspection_engine(lab_status: Any) -> None:
    url = f"http://{lab_status['services']['http']['address']}/"
    with agent(GW, inspection(DENY_HOST), "--poll", "0.2"):
        st = read_state(GW) or {}
        assert sh(GW, "iptables", "-t", "mangle", "-S", "SPECTRA_INSPECT").returncode == 0
        time.sleep(1)
        assert curl("ok.example", url) == 0
        assert curl("denied.example", url) != 0
        eve = Path(f"/var/log/spectra/{GW}/eve.json")
        alerts = [json.loads(line) for line in eve.read_text().splitlines() if line.strip()]
        assert any(a.get("alert", {}).get("signature_id") == 7001 for a in alerts)

        # an unsupported keyword: rejected with its sid, last good state kept
        bad = 'alert http any any -> any any (msg:"x"; http.method; content:"GET"; sid:7002;)'
        st = wait_applied(write(inspection(DENY_HOST, bad)))
        assert "7002" in st["last_error"] and "http.method" in st["last_error"]
        assert st["applied_version"] == 1
        assert curl("denied.example", url) != 0

        # the deny rule removed: a reload, same engine process
        pid = st["inspection"]["engine_pid"]
        st = wait_applied(write(inspection()))
        assert st["inspection"]["engine_pid"] == pid
        time.sleep(1.5)  # the engine swaps rule sets between packets
        assert curl("denied.example", url) == 0

        # inspection disabled: rules and engine gone
        wait_applied(write(document(interfaces={"data_plane": "kernel"})))
        assert sh(GW, "iptables", "-t", "mangle", "-S", "SPECTRA_INSPECT").returncode != 0
