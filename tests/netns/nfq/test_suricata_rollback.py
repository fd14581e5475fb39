"""A Suricata that ``suricata -T`` accepted but that does not run: the previous one
runs again. The agent's Suricata engine (``SuricataEngine``, the real binary in
cs-gw-a) with a fail-closed policy on queue 0: a change to queues 0-1 while another
process holds queue 1 (a queue number collision: ``-T`` cannot see it) fails the apply
with Suricata's reason, the previous configuration is back on disk and running, traffic
is inspected as before, status names the rollback, and the same change applied again
is refused without touching the running Suricata; a new configuration whose
Suricata dies right after its start is rolled back the same way instead of being
restarted with the configuration that killed it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from control.steps.base import ConvergeError
from control.steps.inspection_engines import EngineSpec, SuricataEngine, bound_queues
from nfq import netfilter
from nfq.policy import InspectionPolicy, QueueRange
from perf.lab import INET_SERVICE_IP, ns_exec
from tests.netns.helpers import sh, wait_for
from tests.netns.nfq.conftest import GW, ROOT, WS

pytestmark = pytest.mark.timeout(240)
DENY = (
    'drop http any any -> any any (msg:"denied host"; flow:established,to_server; '
    'http.host; content:"denied.example"; sid:1001;)'
)
HOME = "[10.0.0.0/8,172.16.0.0/12,192.168.0.0/16]"
HOLD_QUEUE_1 = (
    "import netfilterqueue,signal,sys\n"
    "q=netfilterqueue.NetfilterQueue()\n"
    "q.bind(1,lambda p:p.accept())\n"
    "signal.signal(signal.SIGTERM,lambda *a:sys.exit(0))\n"
    "q.run()\n"
)


def policy(**kw: Any) -> InspectionPolicy:
    return InspectionPolicy(engine="suricata", fail_open=False, rules=(DENY,), **kw)


def curl(host: str) -> int:
    url = f"http://{INET_SERVICE_IP}/"
    return sh(WS, "curl", "-s", "-m", "3", "-o", "/dev/null", "-H", f"Host: {host}", url).returncode


def in_gateway_ns(fn: Any) -> Any:
    """/proc/net/netfilter is per namespace: read it from a child in cs-gw-a."""
    code = f"from control.steps.inspection_engines import {fn.__name__} as f; print(sorted(f()))"
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run(ns_exec(GW, sys.executable, "-c", code), capture_output=True,
                         text=True, cwd=ROOT, env=env, check=True)  # fmt: skip
    return out.stdout.strip()


def test_suricata_that_does_not_run_rolls_back(nat_gateway: dict[str, Any], tmp_path: Path) -> None:
    first = policy()
    netfilter.apply(first, in_interface="inside", netns=GW)
    engine = SuricataEngine(tmp_path / "run", tmp_path / "log", netns=GW)
    holder: subprocess.Popen[bytes] | None = None
    try:
        engine.apply(EngineSpec(first, HOME))
        assert engine.sup is not None and engine.sup.alive()
        yaml = engine.paths.config.read_text()
        assert curl("ok.example") == 0 and curl("denied.example") != 0

        # queue 1 held by another process: -T passes, the start fails
        holder = subprocess.Popen(ns_exec(GW, sys.executable, "-c", HOLD_QUEUE_1), cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": ROOT})  # fmt: skip
        wait_for(lambda: "1" in in_gateway_ns(bound_queues), 10, "queue 1 held")
        wider = policy(queues=QueueRange(first=0, last=1))
        engine.validate(EngineSpec(wider, HOME))  # suricata -T has nothing against it
        with pytest.raises(ConvergeError) as err:
            engine.apply(EngineSpec(wider, HOME))
        assert "did not start with the new configuration" in str(err.value)
        assert "queue" in str(err.value).lower()
        rollback = engine.tick()["suricata_rollback"]
        assert rollback["restored"] is True and "queue" in rollback["reason"].lower()
        assert engine.paths.config.read_text() == yaml and engine.bound == (0,)
        assert engine.sup is not None and engine.sup.alive()
        assert curl("ok.example") == 0 and curl("denied.example") != 0
        # the agent retries a failed document: the same configuration is not tried again
        # for a while (no stop/start of the working Suricata at every retry)
        running = engine.sup.pid
        with pytest.raises(ConvergeError, match="not tried again"):
            engine.apply(EngineSpec(wider, HOME))
        assert engine.sup.pid == running and engine.sup.alive()

        # a new configuration whose Suricata dies right after its start
        deeper = policy(stream_depth=4096)
        engine.apply(EngineSpec(deeper, HOME))
        assert engine.paths.config.read_text() != yaml
        dead = engine.sup.pid
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        wait_for(lambda: not engine.sup or not engine.sup.alive(), 10, "the new suricata gone")
        status = engine.tick()
        assert "exited" in status["suricata_rollback"]["reason"]
        assert status["suricata_rollback"]["restored"] is True
        assert engine.paths.config.read_text() == yaml
        assert engine.sup is not None and engine.sup.alive() and engine.sup.pid != dead
        assert engine.sup.restarts == 0  # rolled back, not restarted with what died
        assert curl("ok.example") == 0 and curl("denied.example") != 0
    finally:
        if holder is not None:
            holder.terminate()
            holder.wait(timeout=10)
        engine.stop()
        # the denied requests' sockets, orphaned by curl, would retransmit into the next
        # test's engine for minutes
        sh(WS, "ss", "-K", "dst", INET_SERVICE_IP)
