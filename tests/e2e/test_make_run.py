"""The whole appliance as ``make run`` starts it: up within 60 s, translating, clean exit."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from typing import Any

from control.cli_config import Api
from perf.lab import TOPOLOGY, Lab
from tests.netns.helpers import http_get_json, sh


def test_lab_run_serves_translated_traffic_and_tears_down(lab: Any) -> None:
    lab.down()
    before = sh("cs-ws-a", "true").returncode  # namespace gone: ip netns exec fails
    assert before != 0
    started = time.monotonic()
    with subprocess.Popen(
        [sys.executable, "-m", "control", "lab", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        elapsed = time.monotonic() - started
        assert proc.poll() is None, "".join(lines)
        assert elapsed < 60, f"appliance took {elapsed:.1f}s to come up"
        status = Lab().status()
        for gw in TOPOLOGY.gateways:
            assert f"gateway {gw.netns}" in "".join(lines)
            http = status["services"]["http"]
            seen = http_get_json(gw.workload_netns, f"http://{http['address']}/")
            assert seen["client_ip"] == status["gateways"][gw.az]["outside_ip"]
        st = json.loads(
            subprocess.run(
                [sys.executable, "-m", "control", "status", "--json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert all(st[gw.netns]["converged"] for gw in TOPOLOGY.gateways)
        # the admin token it printed opens each gateway's config API
        token = re.search(r"admin token \(this run only\): (\S+)", "".join(lines))
        assert token, "".join(lines)
        for gw in TOPOLOGY.gateways:
            code, body, _ = Api(f"http://{gw.mgmt_ip}:8080", token.group(1)).call(
                "GET", "/v1/config"
            )
            assert code == 200 and body["version"] == 1, body
            assert Api(f"http://{gw.mgmt_ip}:8080", "spk_wrong").call("GET", "/v1/config")[0] == 401
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    assert "lab removed" in rest
    assert not Lab().status()["up"]
