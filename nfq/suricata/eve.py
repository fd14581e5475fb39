"""eve.json ingestion: follow the file Suricata writes, across rotation, and turn alert,
drop and stats events into the product's log lines and counters.

Rotation: when the path's inode changes (logrotate ``create``) the rest of the old file
is read first, then the new one from its start; when the file shrinks (``copytruncate``)
reading restarts at 0. A trailing partial line waits for its newline.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("spectra.nfq")


class EveTailer:
    """Reads new complete eve.json records; :attr:`counters` sums what was ingested."""

    def __init__(
        self, path: Path, *, from_end: bool = False, resume: tuple[int, int] | None = None
    ) -> None:
        """``resume=(inode, offset)``: continue where an earlier reader stopped, if the
        file is still the same one (else from its start)."""
        self.path = path
        self.counters: Counter[str] = Counter()
        self._fh: IO[bytes] | None = None
        self._inode: int | None = None
        self._partial = b""
        self._from_end = from_end
        self._resume = resume

    @property
    def position(self) -> tuple[int, int] | None:
        """(inode, offset of the first byte not yet returned), to resume after a restart."""
        if self._fh is None or self._inode is None:
            return None
        return self._inode, self._fh.tell() - len(self._partial)

    def _open(self) -> bool:
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        if self._from_end:
            fh.seek(0, os.SEEK_END)
            self._from_end = False
        elif self._resume is not None:
            inode, offset = self._resume
            if inode == st.st_ino and offset <= st.st_size:
                fh.seek(offset)
            self._resume = None
        self._fh, self._inode, self._partial = fh, st.st_ino, b""
        return True

    def read(self) -> list[dict[str, Any]]:
        """Every complete record appended since the last call."""
        if self._fh is None and not self._open():
            return []
        assert self._fh is not None
        records = self._drain(self._fh)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return records
        if st.st_ino != self._inode:
            self._fh.close()
            self._fh = None
            if self._open() and self._fh is not None:
                records += self._drain(self._fh)
        elif st.st_size < self._fh.tell():
            self._fh.seek(0)
            self._partial = b""
            records += self._drain(self._fh)
        return records

    def _drain(self, fh: IO[bytes]) -> list[dict[str, Any]]:
        data = self._partial + fh.read()
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                self.counters["eve_bad_lines"] += 1
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def ingest(self) -> list[dict[str, Any]]:
        """Read, log and count; returns the records read."""
        records = self.read()
        for rec in records:
            kind = rec.get("event_type", "unknown")
            self.counters[f"eve_{kind}"] += 1
            if kind == "alert":
                a = rec.get("alert", {})
                action = a.get("action", "allowed")
                self.counters[f"alerts_{action}"] += 1
                self.counters[f"alerts_sid_{a.get('signature_id')}"] += 1
                log.warning(
                    "suricata alert sid=%s action=%s %s:%s -> %s:%s %s",
                    a.get("signature_id"),
                    action,
                    rec.get("src_ip"),
                    rec.get("src_port"),
                    rec.get("dest_ip"),
                    rec.get("dest_port"),
                    a.get("signature"),
                )
        return records

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
