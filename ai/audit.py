"""Append-only, hash-chained audit log (JSON lines) with rotation and verification.

Each line is one canonical JSON object carrying ``seq``, ``prev`` (the ``h`` of the
record before it, across rotations; 64 zeros for the very first) and ``h``, the
SHA-256 of the record's canonical JSON without ``h``. Editing, deleting or reordering
any line breaks a hash or a link, which :func:`verify` reports with the file and line.

Keyed chain (``audit.key``, a secret reference: an SSM SecureString delivered as a file
or environment variable in production): ``h`` is then HMAC-SHA256 (RFC 2104) under
that key and every record says ``"keyed": true``, so rewriting the whole file needs the
key, not only SHA-256. Verified with the key, every record must be keyed (a rewritten,
unkeyed log fails at its first record); without it, a keyed log is refused. Switch the
key on with a new log file. With several workers each writes its own chain
(``ai.workers``).

Removing the last records leaves a valid chain; anchors catch it. With
``audit.anchor_path`` (keyed logs only; a file on storage the gateway's log directory
does not share, e.g. another volume or a mount replicated off the host) the writer
appends the chain head ``{"seq", "h", "at", "sig"}``, ``sig`` an HMAC-SHA256 of the
rest, every ``anchor_every`` records or ``anchor_interval_s`` seconds and at a clean
stop; ``verify(..., anchors=...)`` requires every anchored record to be in the log with
that hash, so a truncated or rewritten log fails, naming the first missing record.

Memory is bounded: requests hand records to a bounded queue and wait when it is full
(backpressure); one writer task drains it in batches to the file, waiting
``batch_window_s`` after a record for others to join it, so a busy gateway pays one
thread hop per batch rather than per request. Rotation renames
the active file to ``<path>.<n>`` between batches, so no record is lost, and the chain
continues into the new file.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ai.anchors import CredentialSource, S3Anchors
from ai.canonical import canonical_json
from ai.config import AuditConfig
from ai.keys import resolve_secret

log = logging.getLogger("spectra.ai")
GENESIS = "0" * 64


def record_hash(record: dict[str, Any], key: bytes | None = None) -> str:
    """SHA-256 of the record's canonical JSON without ``h``; HMAC-SHA256 with ``key``."""
    body = canonical_json({k: v for k, v in record.items() if k != "h"}).encode()
    if key is None:
        return hashlib.sha256(body).hexdigest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def audit_key(config: AuditConfig, env: Mapping[str, str]) -> bytes | None:
    """The chain's HMAC key, resolved from its secret reference (None: unkeyed)."""
    return None if config.key is None else resolve_secret(config.key, env).encode()


def segments(path: Path) -> list[Path]:
    """Rotated segments oldest first, then the active file."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)$")
    rotated = sorted(
        (int(m.group(1)), p)
        for p in path.parent.glob(path.name + ".*")
        if (m := pattern.match(p.name))
    )
    return [p for _, p in rotated] + ([path] if path.exists() else [])


def _last_record(path: Path) -> dict[str, Any] | None:
    for segment in reversed(segments(path)):
        with segment.open("rb") as f:
            lines = f.read().splitlines()
        for line in reversed(lines):
            if line.strip():
                parsed: dict[str, Any] = json.loads(line)
                return parsed
    return None


class AuditLog:
    """Writer of one audit log file; ``write`` applies backpressure when the queue is full."""

    def __init__(
        self,
        config: AuditConfig,
        key: bytes | None = None,
        anchor_credentials: CredentialSource | None = None,
    ) -> None:
        assert config.path is not None
        self._key = key
        self.s3: S3Anchors | None = None
        if config.anchor_s3 is not None:  # credentials: the session factory's s3 role
            self.s3 = S3Anchors(config.anchor_s3, config.path, anchor_credentials)
        self._anchored = (-1, time.monotonic())  # (seq, monotonic time) of the last anchor
        self._config = config
        self._path = config.path
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(config.queue_size)
        self._task: asyncio.Task[None] | None = None
        self._file: IO[bytes] | None = None
        self._seq = 0
        self._prev = GENESIS

    async def start(self) -> None:
        await asyncio.to_thread(self._open)
        self._task = asyncio.create_task(self._run(), name="spectra-ai-audit")

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        last = _last_record(self._path)
        if last is not None:
            self._seq, self._prev = int(last["seq"]) + 1, str(last["h"])
        self._file = self._path.open("ab")

    async def write(self, record: dict[str, Any]) -> None:
        await self._queue.put(record)

    async def drain(self) -> None:
        """Wait until every record handed over so far is written."""
        await self._queue.join()

    async def close(self) -> None:
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        if self._file is not None:
            await asyncio.to_thread(self._anchor, True)
            self._file.close()
            self._file = None
        if self.s3 is not None:
            self.s3.close()

    async def _run(self) -> None:
        done = False
        while not done:
            batch = [await self._queue.get()]
            if batch[0] is not None and self._config.batch_window_s > 0:
                await asyncio.sleep(self._config.batch_window_s)  # one hop for many records
            while not self._queue.empty() and len(batch) < 512:
                batch.append(self._queue.get_nowait())
            done = None in batch
            records = [r for r in batch if r is not None]
            try:
                if records:
                    await asyncio.to_thread(self._append, records)
            except OSError:
                log.exception("audit log write failed; %d records lost", len(records))
                raise
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _append(self, records: list[dict[str, Any]]) -> None:
        lines = []
        for record in records:
            chained = {**record, "seq": self._seq, "prev": self._prev}
            if self._key is not None:
                chained["keyed"] = True
            chained["h"] = record_hash(chained, self._key)
            lines.append(canonical_json(chained).encode() + b"\n")
            self._seq, self._prev = self._seq + 1, chained["h"]
        assert self._file is not None
        self._file.write(b"".join(lines))
        self._file.flush()
        if self._config.fsync:
            os.fsync(self._file.fileno())
        self._anchor(False)
        if self._file.tell() >= self._config.rotate_bytes:
            self._rotate()

    def _anchor(self, now: bool) -> None:
        """(On the writer's thread.) Append the signed chain head to the anchor file
        when due (or ``now``), after the records it covers are on disk."""
        path, key, head = self._config.anchor_path, self._key, self._seq - 1
        if path is None and self.s3 is None:
            return
        if key is None or head < 0 or head == self._anchored[0]:
            return
        clock = time.monotonic()
        due = head - self._anchored[0] >= self._config.anchor_every or (
            clock - self._anchored[1] >= self._config.anchor_interval_s
        )
        if not (now or due):
            return
        assert self._file is not None
        os.fsync(self._file.fileno())
        anchor: dict[str, Any] = {"seq": head, "h": self._prev, "at": round(time.time(), 3)}
        anchor["sig"] = hmac.new(key, canonical_json(anchor).encode(), "sha256").hexdigest()
        line = canonical_json(anchor).encode() + b"\n"
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        if self.s3 is not None:
            self.s3.put(head, line)
        self._anchored = (head, clock)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        existing = segments(self._path)[:-1]
        index = 1 + max((int(p.name.rsplit(".", 1)[1]) for p in existing), default=0)
        self._path.rename(self._path.with_name(f"{self._path.name}.{index}"))
        self._file = self._path.open("ab")


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The outcome of :func:`verify`."""

    ok: bool
    records: int
    files: tuple[str, ...]
    error: str | None = None
    file: str | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "files": list(self.files),
            "error": self.error,
            "file": self.file,
            "line": self.line,
        }


def verify(
    path: Path | str,
    *,
    allow_pruned: bool = False,
    key: bytes | None = None,
    anchors: Path | None = None,
    anchor_entries: list[tuple[str, int, bytes]] | None = None,
) -> AuditReport:
    """Check the hash chain of ``path`` and its rotated segments.

    With ``allow_pruned`` the oldest kept record may link to a deleted one (old
    segments removed by retention); otherwise the chain must start at genesis. With
    ``key`` every record must be keyed and carry its HMAC under it; with ``anchors``
    (needs ``key``) every anchored record must be there with the anchored hash;
    ``anchor_entries`` are anchors read elsewhere (``(where, number, line)``: the S3
    objects of :func:`ai.anchors.s3_anchor_entries`), checked the same way.
    """
    path = Path(path)
    files = segments(path)
    names = tuple(str(f) for f in files)
    prev, seq, count = GENESIS, 0, 0
    seen: dict[int, tuple[str, Path, int]] = {}

    def fail(message: str, where: Path, line: int) -> AuditReport:
        return AuditReport(False, count, names, message, str(where), line)

    if not files:
        return AuditReport(False, 0, (), f"no audit log at {path}")
    for segment in files:
        with segment.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    return fail("line is not JSON", segment, number)
                if not isinstance(record, dict):
                    return fail("line is not a JSON object", segment, number)
                keyed = record.get("keyed") is True
                if keyed and key is None:
                    return fail("keyed record: verify with the audit key", segment, number)
                if key is not None and not keyed:
                    return fail("record is not keyed (log rewritten?)", segment, number)
                if not hmac.compare_digest(str(record.get("h")), record_hash(record, key)):
                    what = (
                        "record MAC mismatch (edited, or another key)"
                        if keyed
                        else ("record hash mismatch (record edited)")
                    )
                    return fail(what, segment, number)
                if count == 0 and allow_pruned and record.get("prev") != GENESIS:
                    # A pruned log: the oldest kept record anchors the chain.
                    prev, seq = str(record.get("prev")), int(record.get("seq", 0))
                if record.get("prev") != prev:
                    return fail(
                        "chain broken: prev does not match the record before", segment, number
                    )
                if record.get("seq") != seq:
                    return fail(f"sequence gap: expected {seq}", segment, number)
                seen[seq] = (str(record["h"]), segment, number)
                prev, seq, count = str(record["h"]), seq + 1, count + 1
    entries = list(anchor_entries or [])
    if anchors is not None:
        try:
            lines = anchors.read_bytes().splitlines()
        except OSError as exc:
            return AuditReport(False, count, names, f"cannot read anchors {anchors}: {exc}")
        entries = [(str(anchors), n, raw) for n, raw in enumerate(lines, start=1)] + entries
    if anchors is not None or anchor_entries is not None:
        return _check_anchors(entries, key, seen, count, names, files)
    return AuditReport(True, count, names)


def _check_anchors(
    entries: list[tuple[str, int, bytes]],
    key: bytes | None,
    seen: dict[int, tuple[str, Path, int]],
    count: int,
    names: tuple[str, ...],
    files: list[Path],
) -> AuditReport:
    """The verified chain (``seen``: seq -> hash, file, line) against the anchors
    (``(where, number, line)``: the anchor file's lines, S3 objects)."""
    if key is None:
        return AuditReport(False, count, names, "anchors are checked with the audit key")
    last_seq = max(seen, default=-1)
    for anchors, number, raw in entries:
        label = f"{anchors}:{number}" if number > 0 else anchors
        try:
            anchor = json.loads(raw)
            body = {k: v for k, v in anchor.items() if k != "sig"}
            seq, head = int(anchor["seq"]), str(anchor["h"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return AuditReport(False, count, names, "anchor is not valid", str(anchors), number)
        sig = hmac.new(key, canonical_json(body).encode(), "sha256").hexdigest()
        if not hmac.compare_digest(str(anchor.get("sig")), sig):
            return AuditReport(
                False, count, names, "anchor signature mismatch", str(anchors), number
            )
        if seq not in seen:
            end = str(files[-1]) if files else anchors
            return AuditReport(
                False,
                count,
                names,
                f"truncated: record {last_seq + 1} is missing (anchor {label} covers up "
                f"to record {seq}; the log ends at record {last_seq})",
                str(end),
                (seen[last_seq][2] + 1) if last_seq in seen else 1,
            )
        recorded, where, line = seen[seq]
        if recorded != head:
            return AuditReport(
                False, count, names, f"record {seq} differs from anchor {label}", str(where), line
            )
    return AuditReport(True, count, names)


class NullAudit:
    """Stand-in when no audit path is configured."""

    async def start(self) -> None:
        return None

    async def write(self, record: dict[str, Any]) -> None:
        return None

    async def drain(self) -> None:
        return None

    async def close(self) -> None:
        return None
