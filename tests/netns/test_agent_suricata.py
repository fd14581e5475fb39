"""The real Suricata run by the agent (``inspection.engine: suricata``): it starts in
its own session and drops a denied host (in the product's alert stream), status and
metrics report its version, rule counts and packets, an invalid rule fails the
converge with its position while the running Suricata and rules stay, a rule change
is a ``reload-rules`` (same process), a killed Suricata is restarted by the agent with
the fail-closed policy holding traffic in between, and a restarted agent adopts the
running Suricata."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from control.agent import RUN_ROOT
from control.alerts import instance_alerts
from control.status import instance_status
from nfq import process
from tests.netns.helpers import agent, document, sh, wait_for
from tests.netns.test_agent_inspection import DENY_HOST, GW, curl, wait_applied, write

pytestmark = pytest.mark.timeout(240)
SURICATA_DIR = RUN_ROOT / GW / "suricata"
DENY = DENY_HOST.replace(" nocase;", "")  # Suricata refuses nocase on http.host
ALERT = 'alert http any any -> any any (msg:"seen"; http.host; content:"seen.example"; sid:7003;)'


def suricata_doc(*rules: str, fail_open: bool = False) -> dict[str, Any]:
    return document(
        interfaces={"data_plane": "kernel"},
        inspection={"enabled": True, "engine": "suricata", "fail_open": fail_open,
                    "selectors": [{"proto": "tcp", "ports": [80, 80]}], "rules": list(rules)},
    )  # fmt: skip


def inspection_state(**want: Any) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = instance_status(GW) or {}
        insp: dict[str, Any] = st.get("inspection", {})
        return insp if all(insp.get(k) == v for k, v in want.items()) else None

    result: dict[str, Any] = wait_for(check, 20, f"inspection status {want}")
    return result


def stop_leftover() -> None:
    pid = process.read_pid(SURICATA_DIR / "run" / "spectra-suricata.pid")
    if pid is not None:
        process.terminate(pid, str(SURICATA_DIR / "etc" / "suricata.yaml"))


def test_agent_runs_and_supervises_suricata(lab_status: Any) -> None:
    url = f"http://{lab_status['services']['http']['address']}/"
    try:
        with agent(GW, suricata_doc(DENY)):
            insp = inspection_state(suricata_state="running", rules_loaded=1)
            assert insp["engine"] == "suricata" and insp["rules_failed"] == 0
            assert str(insp["suricata_version"]).startswith("7.0.")
            pid = insp["engine_pid"]
            assert os.getsid(pid) == pid  # its own session: outlives the agent
            assert curl("ok.example", url) == 0
            assert curl("denied.example", url) != 0
            counters = wait_for(
                lambda: (c := (instance_status(GW) or {}).get("counters", {})).get(
                    "inspection_packets", 0) > 0 and c, 15, "packet counters in /metrics",
            )  # fmt: skip
            assert counters["inspection_rules_loaded"] == 1
            # the drop is in the product's alert stream, counted per signature
            got = wait_for(lambda: instance_alerts(RUN_ROOT / GW, sid=7001)["alerts"], 10,
                           "the alert in the stream")  # fmt: skip
            first = next(a for a in got if a["event_type"] == "alert")
            assert first["action"] == "blocked" and first["http"]["hostname"] == "denied.example"
            sigs = inspection_state()["signatures"]
            assert sigs["7001"]["actions"].get("alert_blocked", 0) >= 1

            # a rule Suricata refuses: the converge fails naming it; nothing changes
            bad = 'alert http any any -> any any (msg:"x"; http.host; nosuchkw; sid:7002;)'
            st = wait_applied(write(suricata_doc(DENY, bad)))
            assert "inspection.rules[1]" in st["last_error"] and "nosuchkw" in st["last_error"]
            assert st["applied_version"] == 1 and st["inspection"]["engine_pid"] == pid
            assert curl("denied.example", url) != 0

            # a rule change: reload-rules in the same process
            st = wait_applied(write(suricata_doc(DENY, ALERT)))
            insp = inspection_state(rules_loaded=2)
            assert insp["engine_pid"] == pid and insp["engine_restarts"] == 0

            # killed: fail-closed blocks until the agent has restarted it
            os.kill(pid, signal.SIGKILL)
            quick = sh("cs-ws-a", "curl", "-s", "-m", "0.5", "-o", "/dev/null", url)
            assert quick.returncode != 0, "fail-closed: nothing passes while Suricata is down"
            insp = inspection_state(suricata_state="running", engine_restarts=1)
            assert insp["engine_pid"] != pid and insp["rules_loaded"] == 2
            assert curl("ok.example", url) == 0 and curl("denied.example", url) != 0
            pid = insp["engine_pid"]

        # the agent stopped: Suricata keeps inspecting; a new agent adopts it
        assert process.is_running(pid) and curl("denied.example", url) != 0
        with agent(GW, suricata_doc(DENY, ALERT)):
            insp = inspection_state(suricata_state="running")
            assert insp["engine_pid"] == pid and insp["engine_restarts"] == 0
            wait_applied(write(document(interfaces={"data_plane": "kernel"})))
            wait_for(lambda: not process.is_running(pid), 15, "suricata stopped when disabled")
            assert sh(GW, "iptables", "-t", "mangle", "-S", "SPECTRA_INSPECT").returncode != 0
            time.sleep(0.2)
            assert curl("denied.example", url) == 0
    finally:
        stop_leftover()
