"""The product's alert stream: the inspection engine's eve.json alerts and drops
(Suricata's "EVE JSON Output" format, which the built-in engine writes too), tailed by
the agent into a bounded store that ``GET /v1/alerts``, ``spectra alerts`` and
``/metrics`` read.

The store (``alerts.json`` in the instance's run directory, replaced atomically) keeps
the newest :data:`KEEP` records, every signature's count per action, and the eve.json
position read so far, so a restarted agent continues where it stopped (no alert twice,
none skipped). eve.json is rotated here when it passes ``rotate_bytes``: renamed to
``eve.json.1``, then the engine is told to reopen its log (Suricata: the command
socket's ``reopen-log-files``; the built-in engine: SIGUSR1); the tailer reads the rest
of the old file before the new one, so rotation loses nothing.

Each new alert or drop is also handed, as :func:`stream_record`, to ``forward`` (the
firewall log's :class:`control.logfile.Feed`): with ``logging.firewall_logs`` on,
inspection verdicts and firewall drops are one JSON stream naming the rule that matched
(``sid:<signature id>`` here, ``rules.entries[i]`` for the firewall's deny rules).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nfq.suricata.eve import EveTailer

log = logging.getLogger("spectra.control")

KEEP = 1000
ROTATE_BYTES = 64 * 1024 * 1024
STORE = "alerts.json"
KINDS = ("alert", "drop")


def summary(rec: dict[str, Any]) -> dict[str, Any]:
    """The fields of an eve record the alert stream keeps."""
    alert = rec.get("alert") if isinstance(rec.get("alert"), dict) else {}
    assert isinstance(alert, dict)
    out = {k: rec.get(k) for k in ("timestamp", "event_type", "src_ip", "src_port",
                                   "dest_ip", "dest_port", "proto", "app_proto")}  # fmt: skip
    out.update(
        {k: alert.get(k) for k in ("action", "signature_id", "rev", "signature", "category")}
    )
    for app in ("http", "tls", "dns"):
        if isinstance(rec.get(app), dict):
            out[app] = rec[app]
    return out


def stream_record(item: dict[str, Any], engine: str) -> dict[str, Any]:
    """An alert-stream item in the firewall log's record shape (``source`` the engine,
    ``rule`` its signature, ``comment`` the signature's message)."""
    sid = item.get("signature_id")
    head = {
        "timestamp": item.get("timestamp"),
        "event_type": item.get("event_type"),
        "source": engine,
        "rule": f"sid:{sid}" if sid is not None else None,
        "comment": item.get("signature"),
        "action": item.get("action"),
    }
    return head | {k: v for k, v in item.items() if k not in head and k != "signature"}


class AlertStream:
    """Tails one eve.json into the bounded store at ``store``."""

    def __init__(self, eve: Path, store: Path, *, keep: int = KEEP,
                 rotate_bytes: int = ROTATE_BYTES, engine: str = "suricata",
                 forward: Callable[[dict[str, Any]], object] | None = None) -> None:  # fmt: skip
        self.eve, self.store, self.rotate_bytes = eve, store, rotate_bytes
        self.engine, self.forward = engine, forward
        saved = read_store(store)
        self.recent: deque[dict[str, Any]] = deque(saved.get("alerts", []), maxlen=keep)
        self.signatures: dict[str, dict[str, Any]] = saved.get("signatures", {})
        self.total: int = int(saved.get("total", 0))
        pos = saved.get("position") if saved.get("eve") == str(eve) else None
        resume = (int(pos[0]), int(pos[1])) if isinstance(pos, list) and len(pos) == 2 else None
        self.tailer = EveTailer(eve, resume=resume)

    def tick(self, reopen: Callable[[], None] | None = None) -> int:
        """Ingest what is new (then rotate when due, and ingest the rest of the old file
        and the start of the new one); returns the records added."""
        records = self.tailer.read()
        if reopen is not None and self._maybe_rotate(reopen):
            records += self.tailer.read()
        added = 0
        for rec in records:
            if rec.get("event_type") not in KINDS:
                continue
            item = summary(rec)
            if self.forward is not None:
                self.forward(stream_record(item, self.engine))
            self.recent.append(item)
            self.total += 1
            added += 1
            if item["signature_id"] is not None:
                sig = self.signatures.setdefault(
                    str(item["signature_id"]), {"signature": item["signature"], "actions": {}}
                )
                action = f"{item['event_type']}_{item['action']}"
                sig["actions"][action] = sig["actions"].get(action, 0) + 1
        if added or not self.store.exists():
            self._write()
        return added

    def _maybe_rotate(self, reopen: Callable[[], None]) -> bool:
        try:
            size = self.eve.stat().st_size
        except FileNotFoundError:
            return False
        if size < self.rotate_bytes:
            return False
        self.eve.replace(self.eve.with_name(self.eve.name + ".1"))
        try:
            reopen()
        except Exception as exc:  # the engine keeps writing the old file; retried next time
            log.warning("eve.json rotated but the engine did not reopen it: %s", exc)
        log.info("rotated %s at %d bytes", self.eve, size)
        return True

    def _write(self) -> None:
        data = {
            "eve": str(self.eve),
            "position": self.tailer.position,
            "total": self.total,
            "signatures": self.signatures,
            "alerts": list(self.recent),
        }
        self.store.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.store.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.store)

    def status(self) -> dict[str, Any]:
        return {"alerts_total": self.total}

    def close(self) -> None:
        self.tailer.close()


def read_store(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def instance_alerts(run_dir: Path, limit: int = 100, sid: int | None = None) -> dict[str, Any]:
    """The newest ``limit`` alerts of one instance (newest first) and its signature counts."""
    data = read_store(run_dir / STORE)
    alerts = [a for a in data.get("alerts", []) if sid is None or a.get("signature_id") == sid]
    return {
        "total": data.get("total", 0),
        "signatures": data.get("signatures", {}),
        "alerts": alerts[::-1][:limit],
    }
