"""Suricata integration without Suricata: golden suricata.yaml, the unix-socket client
and the supervisor against a stand-in process, eve.json tailing across rotation."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from nfq.policy import InspectionPolicy
from nfq.suricata import EveTailer, Supervisor, SuricataPaths, UnixSocketClient, write_config
from nfq.suricata.config import render_yaml
from nfq.suricata.unixsock import UnixSocketError

GOLDEN = Path(__file__).parent / "golden"
FAKE = Path(__file__).with_name("fake_suricata.py")
POLICY = InspectionPolicy(
    rules=('drop tls any any -> any 443 (msg:"sni"; tls.sni; content:"bad"; sid:1;)',),
    rule_files=(Path("/etc/spectra/rules/et-open.rules"),),
    vars={"HOME_NET": "[10.0.0.0/8]", "HTTP_PORTS": "[80,8080]"},
    stream_depth=65536,
    fail_open=False,
)


def test_suricata_yaml_golden() -> None:
    text = render_yaml(POLICY, SuricataPaths.under(Path("/var/lib/spectra/suricata")))
    assert text == (GOLDEN / "suricata.yaml").read_text()
    doc = yaml.safe_load(text)
    assert doc["nfq"] == {"mode": "repeat", "repeat-mark": 4, "repeat-mask": 4,
                          "bypass-mark": 2, "bypass-mask": 2, "fail-open": False}  # fmt: skip
    assert doc["runmode"] == "workers" and "batchcount" not in doc["nfq"]
    assert doc["stream"]["reassembly"]["depth"] == 65536 and doc["stream"]["bypass"] is True
    assert doc["vars"]["address-groups"]["EXTERNAL_NET"] == "!$HOME_NET"
    assert doc["rule-files"] == ["spectra-inline.rules", "spectra-file-0.rules"]
    assert doc["max-pending-packets"] == 4096  # NFQ queue-maxlen 16384


def _supervisor(tmp_path: Path, **kw: object) -> Supervisor:
    paths = SuricataPaths.under(tmp_path)
    source = tmp_path / "et-open.rules"
    source.write_text('alert tcp any any -> any any (msg:"x"; sid:99;)\n')
    write_config(POLICY.model_copy(update={"rule_files": (source,)}), paths)
    wrapper = tmp_path / "suricata"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    wrapper.chmod(0o755)
    return Supervisor(
        paths,
        (0, 1),
        binary=str(wrapper),
        backoff_min=0.1,
        backoff_max=0.4,
        startup_grace=10.0,
        health_interval=0.0,
        **kw,
    )  # type: ignore[arg-type]


def _wait(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_supervisor_health_stats_reload_restart_and_adoption(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path)
    assert sup.argv()[-4:] == ["-q", "0", "-q", "1"]
    sup.start(wait=10)
    try:
        assert sup.healthy and sup.version == "7.0.10-fake"
        assert sup.ruleset == {"rules_loaded": 3, "rules_failed": 0}
        assert sup.packets["blocked"] == 1 and sup.packets["packets"] == 10
        assert sup.reload_rules() == "done"
        sup.tick()
        assert sup.ruleset["rules_loaded"] == 4
        with (
            UnixSocketClient(sup.paths.socket) as c,
            pytest.raises(UnixSocketError, match="Unknown command"),
        ):
            c.command("nope")
        # its own session: a new supervisor (a restarted agent) adopts the same process
        assert sup.pid is not None and os.getsid(sup.pid) == sup.pid
        other = _supervisor(tmp_path)
        assert other.adopt() and other.pid == sup.pid
        # killed: restarted after backoff, healthy again
        first = sup.pid
        os.kill(first, signal.SIGKILL)
        _wait(lambda: (sup.tick(), sup.pid is not None and sup.pid != first and sup.healthy)[1])
        assert sup.restarts == 1 and sup.status()["state"] == "running"
    finally:
        sup.stop()
    assert sup.pid is None and not sup.pid_file.exists()
    assert not _supervisor(tmp_path).adopt()


def test_supervisor_backoff_grows_when_it_keeps_dying(tmp_path: Path) -> None:
    os.environ["FAKE_SURICATA_EXIT"] = "3"
    try:
        sup = _supervisor(tmp_path)
        sup.start()
        now = time.monotonic()
        waits = []
        for _ in range(4):
            _wait(lambda: not sup.alive())
            sup.tick(now)
            waits.append(round(sup._restart_at - now, 2))
            now = sup._restart_at
            sup.tick(now)  # respawn
        sup.stop()
    finally:
        del os.environ["FAKE_SURICATA_EXIT"]
    assert waits == [0.1, 0.2, 0.4, 0.4]


def test_log_tail_names_the_errors_of_the_last_run(tmp_path: Path) -> None:
    paths = SuricataPaths.under(tmp_path)
    sup = Supervisor(paths, (0,))
    assert sup.log_tail() == "(no output)"
    paths.log_dir.mkdir(parents=True)
    (paths.log_dir / "suricata.stdout").write_text("spawned\n")
    assert sup.log_tail() == "spawned"
    banner = "[1 - Suricata-Main] 2026-12-07 02:00:00 Notice: suricata: This is Suricata version 7"
    (paths.log_dir / "suricata.log").write_text(
        f"{banner}\n[2 - W-NFQ#0] Error: nfq: old run\n"
        f"{banner}\n[3 - W-NFQ#0] Info: nfq: binding this thread 0 to queue '1'\n"
        "[3 - W-NFQ#0] Error: nfq: nfq_create_queue failed\n"
        '[3 - Suricata-Main] Error: threads: thread "W-NFQ#0" failed to start\n'
    )
    tail = sup.log_tail().splitlines()
    assert tail == [
        "[3 - W-NFQ#0] Error: nfq: nfq_create_queue failed",
        '[3 - Suricata-Main] Error: threads: thread "W-NFQ#0" failed to start',
    ]


def test_unix_socket_unreachable(tmp_path: Path) -> None:
    with pytest.raises(UnixSocketError, match="cannot connect"):
        UnixSocketClient(tmp_path / "none.socket").connect()


def test_eve_tailer_partial_lines_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "eve.json"
    t = EveTailer(path)
    assert t.read() == []
    rec = {"event_type": "alert", "alert": {"signature_id": 1, "action": "allowed"}}
    line = json.dumps(rec)
    path.write_text(line + "\n" + line[:10])
    assert len(t.ingest()) == 1
    with path.open("a") as fh:
        fh.write(line[10:] + "\nnot json\n")
    assert len(t.ingest()) == 1 and t.counters["eve_bad_lines"] == 1
    # logrotate "create": rest of the old file, then the new one from the start
    with path.open("a") as fh:
        fh.write(line + "\n")
    path.rename(tmp_path / "eve.json.1")
    path.write_text(line + "\n" + line + "\n")
    assert len(t.ingest()) == 3
    # copytruncate
    path.write_text(line + "\n")
    assert len(t.ingest()) == 1
    assert t.counters["alerts_sid_1"] == 6
    t.close()


def test_cli_writes_config(tmp_path: Path) -> None:
    from nfq.__main__ import main

    pol = tmp_path / "p.json"
    pol.write_text(POLICY.model_dump_json())
    out = ["suricata-config", "--policy", str(pol), "--out", str(tmp_path / "s")]
    assert main(out) == 1  # its rule file is not on this host
    source = tmp_path / "et-open.rules"
    source.write_text('pass tcp any any -> any 22 (msg:"ssh"; sid:2;)\n')
    pol.write_text(POLICY.model_copy(update={"rule_files": (source,)}).model_dump_json())
    assert main(out) == 0
    assert (tmp_path / "s/rules/spectra-inline.rules").read_text().count("sid:1;") == 1
    assert "sid:2; bypass;)" in (tmp_path / "s/rules/spectra-file-0.rules").read_text()
    assert sys.executable
