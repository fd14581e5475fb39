"""``GET /v1/flows``: top talkers and destinations from each instance's flow log, and a
search by address, read bounded.

The flow log (:mod:`control.flowlog`) is a JSON-lines file per instance
(``/var/log/spectra/<instance>/flow.jsonl``, one VPC Flow Logs v5 record per ended
connection). The API reads at most the last ``max_bytes`` of the current file (not the
rotated ones), so a request costs the same whatever the log's size; the answer says
how much it read and whether it stopped short of the start. Ranking is by bytes (both
directions of each flow); the search matches an address on either side, before or
after NAT. The matching records are also counted per minute of their ``end`` (flows,
bytes, packets): the search's traffic over time, as far back as the read went.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ADDRESS_FIELDS = ("srcaddr", "dstaddr", "nat-srcaddr", "nat-dstaddr")


def tail_records(path: Path, max_bytes: int) -> tuple[list[dict[str, Any]], int, bool]:
    """The records in the last ``max_bytes`` of ``path`` (a cut first line dropped),
    the bytes read, and whether the read started after the file's beginning."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return [], 0, False
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # most likely cut in the middle
    records = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records, len(data), start > 0


def _num(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def top(records: Iterable[dict[str, Any]], field: str, n: int) -> list[dict[str, Any]]:
    """The ``n`` values of ``field`` with the most bytes, with packets and flows."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for rec in records:
        key = rec.get(field)
        if not isinstance(key, str) or key == "-":
            continue
        t = totals[key]
        t[0] += _num(rec.get("bytes"))
        t[1] += _num(rec.get("packets"))
        t[2] += 1
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]
    return [{"address": a, "bytes": b, "packets": p, "flows": f} for a, (b, p, f) in ranked]


def per_minute(records: Iterable[dict[str, Any]]) -> list[dict[str, int]]:
    """Flows, bytes and packets of ``records`` by the minute (unix seconds, a multiple
    of 60) their flow ended in, oldest first; records without an ``end`` are left out."""
    minutes: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in records:
        end = _num(r.get("end"))
        if end <= 0:
            continue
        m = minutes[end - end % 60]
        m[0] += 1
        m[1] += _num(r.get("bytes"))
        m[2] += _num(r.get("packets"))
    return [
        {"t": t, "flows": f, "bytes": b, "packets": p} for t, (f, b, p) in sorted(minutes.items())
    ]


def summarize(records: list[dict[str, Any]], address: str | None, limit: int) -> dict[str, Any]:
    """Top sources and destinations of ``records``, and the newest ``limit`` records
    naming ``address`` (all of them when no address is given)."""
    matches = [
        r for r in records if address is None or any(r.get(f) == address for f in ADDRESS_FIELDS)
    ]
    return {
        "records": len(records),
        "top_sources": top(records, "srcaddr", limit),
        "top_destinations": top(records, "dstaddr", limit),
        "matches": len(matches),
        "newest": matches[::-1][:limit],
        "per_minute": per_minute(matches),
    }
