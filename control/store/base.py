"""The :class:`ConfigStore` protocol every config store implements, and its errors.

A store keeps every revision of the config document with who wrote it, when, and a
summary of what changed.  Revisions are numbered 1, 2, 3 ...; 0 means "empty store".
Writes are optimistic: ``put`` names the version it was based on and fails with
:class:`VersionConflict` when another writer got there first, so two writers can never
silently overwrite each other.  Stores are synchronous and thread-safe; the API calls
them from a worker thread.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from control.config import SECRET_FIELDS, ConfigDocument, diff_documents, dump_document, summarize

MAX_ACTOR = 128


class StoreError(RuntimeError):
    """The config store could not be read or written."""


class VersionConflict(StoreError):
    """The document changed since the version the writer based its change on."""

    def __init__(self, expected: int, current: int | None) -> None:
        self.expected = expected
        self.current = current
        now = "unknown" if current is None else str(current)
        super().__init__(f"version conflict: expected version {expected}, the store is at {now}")


class VersionNotFound(StoreError):
    """No revision with that number exists (never written, or pruned)."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"config version {version} does not exist")


class CorruptRevision(StoreError):
    """A stored revision failed its integrity check (content hash or document schema)."""


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """Metadata of one revision: who wrote it, when, what changed."""

    version: int
    actor: str
    created_at: float
    summary: str
    sha256: str
    rollback_of: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class ConfigStore(Protocol):
    """Versioned storage of the config document."""

    def head(self) -> int:
        """Number of the newest revision; 0 when the store is empty.  Cheap: pollers call it."""
        ...

    def latest(self) -> tuple[int, ConfigDocument]:
        """The newest revision; :class:`VersionNotFound` (version 0) when empty."""
        ...

    def get(self, version: int) -> ConfigDocument:
        """Revision ``version``; :class:`VersionNotFound` if absent."""
        ...

    def info(self, version: int) -> VersionInfo:
        """Metadata of revision ``version``; :class:`VersionNotFound` if absent."""
        ...

    def versions(self, limit: int = 100) -> list[VersionInfo]:
        """Metadata of the newest ``limit`` revisions, newest first."""
        ...

    def put(self, doc: ConfigDocument, expected_version: int, actor: str) -> int:
        """Store ``doc`` as the revision after ``expected_version``; return its number.

        Raises :class:`VersionConflict` unless ``expected_version`` is the newest
        revision (0 for an empty store) at the moment of the write.
        """
        ...

    def rollback(self, to_version: int, actor: str, expected_version: int | None = None) -> int:
        """Store the content of ``to_version`` as a new revision; return its number."""
        ...

    def close(self) -> None:
        """Release connections and clients."""
        ...


class WritesByRevision:
    """``put`` and ``rollback`` for stores that implement one ``_write`` (a rollback is a
    new revision holding an old one's content)."""

    def get(self, version: int) -> ConfigDocument:
        raise NotImplementedError

    def head(self) -> int:
        raise NotImplementedError

    def _write(
        self, doc: ConfigDocument, expected: int, actor: str, rollback_of: int | None
    ) -> int:
        raise NotImplementedError

    def put(self, doc: ConfigDocument, expected_version: int, actor: str) -> int:
        return self._write(doc, expected_version, actor, None)

    def rollback(self, to_version: int, actor: str, expected_version: int | None = None) -> int:
        doc = self.get(to_version)
        expected = self.head() if expected_version is None else expected_version
        return self._write(doc, expected, actor, to_version)


def clean_actor(actor: str) -> str:
    """Actor names are short printable text (they end up in logs and SSM parameters)."""
    printable = "".join(c if c.isprintable() else "?" for c in actor).strip()
    return (printable or "unknown")[:MAX_ACTOR]


def change_summary(old: ConfigDocument | None, new: ConfigDocument) -> str:
    """One-line summary of what changed from ``old`` to ``new`` (secrets masked)."""
    if old is None:
        return "initial document"
    return summarize(
        diff_documents(
            dump_document(old, reveal_secrets=True),
            dump_document(new, reveal_secrets=True),
            SECRET_FIELDS,
        )
    )


def now() -> float:
    return round(time.time(), 3)
