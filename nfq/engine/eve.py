"""eve.json alert records (Suricata's EVE JSON format, one object per line), written by
the built-in engine and read back from Suricata by :mod:`nfq.suricata.eve`.

Only the fields the product uses are produced: ``timestamp``, ``flow_id``,
``event_type``, addresses, ``proto``, ``app_proto``, ``alert`` (``action``, ``gid``,
``signature_id``, ``rev``, ``signature``, ``category``, ``severity``) and the matched
app fields (``http.hostname`` / ``http.url``, ``tls.sni``, ``dns.query[].rrname``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import IO, Any

from nfq.engine.flows import Flow
from nfq.engine.packet import Packet
from nfq.engine.rules import Rule

log = logging.getLogger("spectra.nfq")
PROTO = {1: "ICMP", 6: "TCP", 17: "UDP"}
SEVERITY = {"attempted-admin": 1, "trojan-activity": 1, "policy-violation": 2}


def timestamp(epoch: float) -> str:
    """Suricata's format: ``2024-05-01T12:00:00.123456+0000``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def alert_record(rule: Rule, p: Packet, flow: Flow, blocked: bool, epoch: float) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "timestamp": timestamp(epoch),
        "flow_id": flow.flow_id,
        "event_type": "alert",
        "src_ip": str(IPv4Address(p.src)),
        "src_port": p.sport,
        "dest_ip": str(IPv4Address(p.dst)),
        "dest_port": p.dport,
        "proto": PROTO.get(p.proto, str(p.proto)),
        "alert": {
            "action": "blocked" if blocked else "allowed",
            "gid": 1,
            "signature_id": rule.sid,
            "rev": rule.rev,
            "signature": rule.msg,
            "category": rule.classtype or "",
            "severity": SEVERITY.get(rule.classtype or "", 3),
        },
    }
    if flow.app:
        rec["app_proto"] = flow.app
    f = flow.app_fields
    if flow.app == "http" and "http.uri" in f:
        rec["http"] = {
            "hostname": f.get("http.host", b"").decode("latin-1"),
            "url": f["http.uri"].decode("latin-1"),
        }
    elif flow.app == "tls" and "tls.sni" in f:
        rec["tls"] = {"sni": f["tls.sni"].decode("latin-1")}
    elif flow.app == "dns" and "dns.query" in f:
        rec["dns"] = {"query": [{"type": "query", "rrname": f["dns.query"].decode("latin-1")}]}
    return rec


class EveWriter:
    """Appends records to an eve.json file (reopened on SIGHUP-style :meth:`reopen` for
    log rotation); each line is written with one ``write`` and flushed."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh: IO[str] | None = None
        self.reopen()

    def reopen(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
            self._fh = None
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = self.path.open("a", buffering=1)
                os.chmod(self.path, 0o640)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            if self._fh is not None:
                self._fh.write(line + "\n")
        if record.get("event_type") == "alert":
            a = record["alert"]
            log.warning(
                "alert sid=%s action=%s %s:%s -> %s:%s %s",
                a["signature_id"],
                a["action"],
                record["src_ip"],
                record["src_port"],
                record["dest_ip"],
                record["dest_port"],
                a["signature"],
            )

    def alert(self, rule: Rule, p: Packet, flow: Flow, blocked: bool, epoch: float) -> None:
        self.write(alert_record(rule, p, flow, blocked, epoch))

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
