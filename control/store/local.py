"""The ``local`` config store: an embedded SQLite database with the full history.

The default store.  One row per revision; ``version`` is the primary
key, and a write runs in a ``BEGIN IMMEDIATE`` transaction that re-reads the newest
version first, so concurrent writers (threads or processes) serialise and the loser gets
:class:`~control.store.base.VersionConflict`.  Secrets are stored inline: the file is
created mode 0600 in a 0700 directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from control.config import ConfigDocument, canonical_json, dump_document, parse_document
from control.config.errors import ConfigValidationError
from control.store.base import (
    CorruptRevision,
    StoreError,
    VersionConflict,
    VersionInfo,
    VersionNotFound,
    WritesByRevision,
    change_summary,
    clean_actor,
    now,
)

DEFAULT_PATH = Path("/var/lib/spectra/config.db")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    version     INTEGER PRIMARY KEY,
    document    TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    summary     TEXT    NOT NULL,
    rollback_of INTEGER
)
"""
_INFO_COLUMNS = "version, actor, created_at, summary, sha256, rollback_of"


class SqliteStore(WritesByRevision):
    """:class:`~control.store.base.ConfigStore` in one SQLite file."""

    def __init__(self, path: Path | str = DEFAULT_PATH) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # No os.open()/close() of the database file: closing any descriptor of it drops
        # every POSIX lock this process holds on it, including other connections' (a
        # second store in the same process would make SQLite delete a live WAL).
        old_umask = os.umask(0o077)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._prepare()  # creates the files: 0600
        finally:
            os.umask(old_umask)

    def _prepare(self, seconds: float = 10.0) -> None:
        """WAL mode and the schema. Switching the journal mode takes an exclusive lock
        that SQLite's busy handler does not wait for, so concurrent first opens (two
        agents starting together) retry."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreError(f"config store {self.path}: {exc}") from exc
                time.sleep(0.05)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> tuple[Any, ...] | None:
        """One row, with the statement run to completion: a half-read SELECT keeps its
        read transaction (and a stale WAL snapshot) open on this connection."""
        try:
            with self._lock:
                rows = self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:  # locked, unreadable, gone: the store is unreachable
            raise StoreError(f"config store {self.path}: {exc}") from exc
        return tuple(rows[0]) if rows else None

    def head(self) -> int:
        row = self._one("SELECT MAX(version) FROM revisions")
        return int(row[0] or 0) if row else 0

    def latest(self) -> tuple[int, ConfigDocument]:
        version = self.head()
        if version == 0:
            raise VersionNotFound(0)
        return version, self.get(version)

    def get(self, version: int) -> ConfigDocument:
        row = self._one("SELECT document, sha256 FROM revisions WHERE version = ?", (version,))
        if row is None:
            raise VersionNotFound(version)
        text, digest = row
        if hashlib.sha256(text.encode()).hexdigest() != digest:
            raise CorruptRevision(f"config version {version}: content hash mismatch")
        try:
            return parse_document(json.loads(text))
        except ConfigValidationError as exc:
            raise CorruptRevision(f"config version {version}: {exc}") from None

    def info(self, version: int) -> VersionInfo:
        row = self._one(f"SELECT {_INFO_COLUMNS} FROM revisions WHERE version = ?", (version,))
        if row is None:
            raise VersionNotFound(version)
        return VersionInfo(*row)

    def versions(self, limit: int = 100) -> list[VersionInfo]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_INFO_COLUMNS} FROM revisions ORDER BY version DESC LIMIT ?", (limit,)
            ).fetchall()
        return [VersionInfo(*row) for row in rows]

    def _write(
        self, doc: ConfigDocument, expected: int, actor: str, rollback_of: int | None
    ) -> int:
        text = canonical_json(dump_document(doc, reveal_secrets=True))
        digest = hashlib.sha256(text.encode()).hexdigest()
        old = self.get(expected) if expected > 0 and expected == self.head() else None
        summary = change_summary(old, doc)
        if rollback_of is not None:
            summary = f"rollback to version {rollback_of}: {summary}"
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                current = int(
                    self._db.execute("SELECT MAX(version) FROM revisions").fetchone()[0] or 0
                )
                if current != expected:
                    raise VersionConflict(expected, current)
                self._db.execute(
                    "INSERT INTO revisions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (current + 1, text, digest, clean_actor(actor), now(), summary, rollback_of),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return current + 1
