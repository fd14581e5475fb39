"""The alert stream (``control.alerts``): eve.json alerts and drops into a bounded store
with per-signature counts; rotation by size with the writer reopening, nothing lost;
a restarted reader resumes without duplicates; ``spectra alerts`` prints the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner

from control.alerts import AlertStream, instance_alerts
from control.logfile import Feed, RecordLog, Rotation

pytestmark = pytest.mark.timeout(30)


def alert(sid: int, action: str = "blocked", kind: str = "alert") -> dict[str, Any]:
    meta = {"action": action, "signature_id": sid, "signature": f"s{sid}", "rev": 1}
    return {"timestamp": f"t{sid}", "event_type": kind, "src_ip": "10.0.1.10", "src_port": 1,
            "dest_ip": "198.51.100.10", "dest_port": 80, "proto": "TCP", "app_proto": "http",
            "http": {"hostname": "denied.example"}, "alert": meta}  # fmt: skip


class Writer:
    """An engine appending to eve.json, reopening it when told (as after rotation)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: IO[str] = path.open("a", buffering=1)

    def write(self, *records: dict[str, Any]) -> None:
        for r in records:
            self.fh.write(json.dumps(r) + "\n")

    def close(self) -> None:
        self.fh.close()

    def reopen(self) -> None:
        self.fh.close()
        self.fh = self.path.open("a", buffering=1)


def test_alerts_and_drops_kept_bounded_with_counts_per_signature(tmp_path: Path) -> None:
    eve, store = tmp_path / "eve.json", tmp_path / "run" / "alerts.json"
    w = Writer(eve)
    stream = AlertStream(eve, store, keep=3)
    w.write(alert(1), {"event_type": "flow"}, {"event_type": "stats"}, alert(2, "allowed"))
    w.write(alert(1), alert(1, kind="drop"), alert(3))
    assert stream.tick() == 5
    data = instance_alerts(store.parent, limit=10)
    assert data["total"] == 5
    assert [a["signature_id"] for a in data["alerts"]] == [3, 1, 1]  # newest first, 3 kept
    assert data["signatures"]["1"]["actions"] == {"alert_blocked": 2, "drop_blocked": 1}
    assert data["signatures"]["2"] == {"signature": "s2", "actions": {"alert_allowed": 1}}
    assert instance_alerts(store.parent, sid=3)["alerts"][0]["http"]["hostname"] == (
        "denied.example"
    )
    stream.close()
    w.close()


def test_rotation_loses_nothing_and_restart_resumes(tmp_path: Path) -> None:
    eve, store = tmp_path / "eve.json", tmp_path / "alerts.json"
    w = Writer(eve)
    stream = AlertStream(eve, store, rotate_bytes=2000)
    sid = 0
    for _ in range(20):
        for _ in range(3):
            sid += 1
            w.write(alert(sid))
        stream.tick(w.reopen)
    assert (tmp_path / "eve.json.1").exists(), "never rotated"
    assert eve.stat().st_size < 2000
    w.write(alert(sid + 1))  # written after the last tick: the next reader must get it
    stream.close()
    again = AlertStream(eve, store, rotate_bytes=2000)
    again.tick(w.reopen)
    again.close()
    w.close()
    data = instance_alerts(tmp_path, limit=1000)
    assert data["total"] == sid + 1
    assert sorted(int(s) for s in data["signatures"]) == list(range(1, sid + 2))


def test_cli_prints_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from control import status
    from control.cli import main

    (tmp_path / "gw-a").mkdir()
    eve = tmp_path / "eve.json"
    w = Writer(eve)
    w.write(alert(7))
    w.close()
    stream = AlertStream(eve, tmp_path / "gw-a" / "alerts.json")
    stream.tick()
    stream.close()
    monkeypatch.setattr(status, "RUN_ROOT", tmp_path)
    out = CliRunner().invoke(main, ["alerts", "--instance", "gw-a"]).output
    assert "gw-a: 1 alerts" in out and "alert/blocked sid 7" in out and "denied.example" in out
    data = json.loads(CliRunner().invoke(main, ["alerts", "--json"]).output)
    assert data["gw-a"]["alerts"][0]["signature_id"] == 7


def test_alerts_join_the_firewall_stream_once_with_their_rule(tmp_path: Path) -> None:
    eve, store, out = tmp_path / "eve.json", tmp_path / "run" / "alerts.json", tmp_path / "fw"
    feed = Feed()
    w = Writer(eve)
    w.write(alert(7))
    stream = AlertStream(eve, store, engine="builtin", forward=feed.offer)
    assert stream.tick() == 1, "no log connected (firewall logs off): nothing forwarded"
    log = RecordLog(Rotation(out / "firewall.jsonl", 1 << 20, 2), capacity=16, name="t")
    feed.target = log
    log.start()
    w.write(alert(8, "allowed"), {"event_type": "flow"}, alert(9, kind="drop"))
    assert stream.tick() == 2
    stream.close()
    again = AlertStream(eve, store, engine="builtin", forward=feed.offer)  # a restart
    assert again.tick() == 0, "resumed: nothing forwarded twice"
    again.close()
    log.stop()
    rows = [json.loads(x) for x in (out / "firewall.jsonl").read_text().splitlines()]
    assert [(r["event_type"], r["source"], r["rule"], r["comment"], r["action"]) for r in rows] == [
        ("alert", "builtin", "sid:8", "s8", "allowed"),
        ("drop", "builtin", "sid:9", "s9", "blocked"),
    ]
    assert (rows[0]["src_ip"], rows[0]["dest_port"], rows[0]["signature_id"]) == (
        "10.0.1.10", 80, 8,
    )  # fmt: skip
    assert rows[0]["http"] == {"hostname": "denied.example"}
    assert "signature" not in rows[0], "the signature's message is the comment"
    w.close()
