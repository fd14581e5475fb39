"""The ``ssm`` config store: SSM Parameter Store through boto3, for fleets.

Layout under ``prefix`` (all Standard tier, 4 KB values; the document is chunked, so
the Advanced tier's cost and 8 KB limit buy nothing)::

    <prefix>/head                       String      hint: newest version number
    <prefix>/versions/<n:08d>           String      manifest of revision n (the commit)
    <prefix>/blobs/<id>/<i:04d>         String      chunk i of the public JSON
    <prefix>/blobs/<id>/secrets/<j:04d> SecureString  secret j of the document

Concurrency.  SSM has no compare-and-swap, but ``PutParameter(Overwrite=False)`` is an
atomic create-if-absent, and that is the commit: a writer based on version ``e`` first
writes its content under a fresh blob id (nobody else writes there), then creates
``versions/<e+1>``; of two writers based on the same ``e`` exactly one creates it and
the other gets ``ParameterAlreadyExists`` -> :class:`VersionConflict` (it deletes its
blob).  A writer also checks that ``versions/<e>`` exists, so versions are contiguous.
``head`` is written after the commit and is only a hint: readers take it and probe
forward (one ``GetParameters`` call for head..head+9), so a late or lost head write
never hides a newer revision.  A crash between blob and commit leaves an unreferenced
blob and nothing else.  Readers verify the blob's SHA-256 recorded in the manifest.

Secrets (:data:`control.config.types.Secret` fields) never go into the String chunks:
each is a SecureString (KMS key ``kms_key_id`` or the account's ``alias/aws/ssm``).
Identities.  ``client`` reads (the instance role: the agent must read the document, which
itself names the operational role, even while that role is unusable); ``writer``, when
given, returns the client that writes (the operational role, through the session factory
of :mod:`control.aws`): while it is inert a write fails with a :class:`StoreError` naming
the reason, and reads keep working.  Without ``writer``, ``client`` does both.

History is pruned to ``keep_versions`` revisions (Standard tier allows 10,000
parameters per region).  The client should use standard retries: PutParameter is
throttled at a few TPS by default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from control.aws.session import RoleInert
from control.config import ConfigDocument, canonical_json, dump_document, parse_document
from control.config.errors import ConfigValidationError
from control.config.secrets import get_at, secret_paths, set_at
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

if TYPE_CHECKING:
    from mypy_boto3_ssm.client import SSMClient

log = logging.getLogger("spectra.control")

CHUNK_CHARS = 4096  # Standard tier value limit; canonical JSON is ASCII, so chars = bytes
BATCH = 10  # GetParameters / DeleteParameters take at most 10 names


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class SsmStore(WritesByRevision):
    """:class:`~control.store.base.ConfigStore` in SSM Parameter Store."""

    def __init__(
        self,
        client: SSMClient,
        prefix: str = "/spectra/config",
        *,
        keep_versions: int = 100,
        kms_key_id: str | None = None,
        writer: Callable[[], SSMClient] | None = None,
    ) -> None:
        if not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
            raise StoreError(f"ssm prefix {prefix!r}: expected a path like /spectra/config")
        if keep_versions < 2:
            raise StoreError(f"keep_versions={keep_versions}: expected at least 2")
        self.client = client
        self._writer = writer
        self.prefix = prefix
        self.keep_versions = keep_versions
        self.kms_key_id = kms_key_id

    def close(self) -> None:
        self.client.close()

    # -- names ---------------------------------------------------------------------
    def _version_name(self, version: int) -> str:
        return f"{self.prefix}/versions/{version:08d}"

    def _chunk_name(self, blob: str, i: int) -> str:
        return f"{self.prefix}/blobs/{blob}/{i:04d}"

    def _secret_name(self, blob: str, j: int) -> str:
        return f"{self.prefix}/blobs/{blob}/secrets/{j:04d}"

    # -- low level -----------------------------------------------------------------
    def _writes(self) -> SSMClient:
        if self._writer is None:
            return self.client
        try:
            return self._writer()
        except RoleInert as exc:
            raise StoreError(f"ssm writes under {self.prefix} are inert: {exc.reason}") from None

    def _get_many(self, names: Sequence[str], decrypt: bool = False) -> dict[str, str]:
        found: dict[str, str] = {}
        try:
            for start in range(0, len(names), BATCH):
                reply = self.client.get_parameters(
                    Names=list(names[start : start + BATCH]), WithDecryption=decrypt
                )
                for param in reply["Parameters"]:
                    found[param["Name"]] = param["Value"]
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"ssm read under {self.prefix}: {exc}") from exc
        return found

    def _put(self, name: str, value: str, *, secure: bool = False, overwrite: bool = True) -> None:
        args: dict[str, Any] = {
            "Name": name,
            "Value": value,
            "Type": "SecureString" if secure else "String",
            "Overwrite": overwrite,
            "Tier": "Standard",
        }
        if secure and self.kms_key_id:
            args["KeyId"] = self.kms_key_id
        self._writes().put_parameter(**args)

    def _delete(self, names: Iterable[str]) -> None:
        todo = list(names)
        for start in range(0, len(todo), BATCH):
            try:
                self._writes().delete_parameters(Names=todo[start : start + BATCH])
            except (ClientError, BotoCoreError, StoreError) as exc:
                log.warning("ssm cleanup under %s failed: %s", self.prefix, exc)

    # -- reads ---------------------------------------------------------------------
    def _manifest(self, version: int) -> dict[str, Any]:
        found = self._get_many([self._version_name(version)])
        if not found:
            raise VersionNotFound(version)
        data: dict[str, Any] = json.loads(next(iter(found.values())))
        return data

    def head(self) -> int:
        hint = self._get_many([f"{self.prefix}/head"]).get(f"{self.prefix}/head", "0")
        version = int(hint) if hint.isdigit() else 0
        while True:
            window = [self._version_name(v) for v in range(max(version, 1), version + BATCH)]
            found = self._get_many(window)
            if version > 0 and self._version_name(version) not in found:
                return self._scan_head()
            present = [
                v for v in range(max(version, 1), version + BATCH) if self._version_name(v) in found
            ]
            newest = max(present, default=version)
            if newest < version + BATCH - 1:
                return newest
            version = newest

    def _scan_head(self) -> int:
        """Newest version by listing ``versions/`` (when the head hint is unusable)."""
        newest = 0
        paginator = self.client.get_paginator("get_parameters_by_path")
        try:
            for page in paginator.paginate(Path=f"{self.prefix}/versions"):
                for param in page["Parameters"]:
                    newest = max(newest, int(param["Name"].rsplit("/", 1)[1]))
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"ssm list under {self.prefix}: {exc}") from exc
        return newest

    def latest(self) -> tuple[int, ConfigDocument]:
        version = self.head()
        if version == 0:
            raise VersionNotFound(0)
        return version, self.get(version)

    def get(self, version: int) -> ConfigDocument:
        manifest = self._manifest(version)
        blob, chunks, secrets = manifest["blob"], manifest["chunks"], manifest["secrets"]
        names = [self._chunk_name(blob, i) for i in range(chunks)]
        found = self._get_many(names)
        text = "".join(found.get(name, "") for name in names)
        if hashlib.sha256(text.encode()).hexdigest() != manifest["sha256"]:
            raise CorruptRevision(f"config version {version}: content hash mismatch")
        public = json.loads(text)
        document, paths = public["document"], public["secret_paths"]
        secret_names = [self._secret_name(blob, j) for j in range(secrets)]
        values = self._get_many(secret_names, decrypt=True)
        if len(values) != len(paths):
            raise CorruptRevision(f"config version {version}: secret parameters missing")
        for path, name in zip(paths, secret_names, strict=True):
            set_at(document, tuple(path), values[name])
        try:
            return parse_document(document)
        except ConfigValidationError as exc:
            raise CorruptRevision(f"config version {version}: {exc}") from None

    def info(self, version: int) -> VersionInfo:
        return self._info(version, self._manifest(version))

    @staticmethod
    def _info(version: int, m: dict[str, Any]) -> VersionInfo:
        return VersionInfo(
            version, m["actor"], m["created_at"], m["summary"], m["sha256"], m["rollback_of"]
        )

    def versions(self, limit: int = 100) -> list[VersionInfo]:
        newest = self.head()
        wanted = list(range(newest, max(newest - limit, 0), -1))
        found = self._get_many([self._version_name(v) for v in wanted])
        return [
            self._info(v, json.loads(found[self._version_name(v)]))
            for v in wanted
            if self._version_name(v) in found
        ]

    # -- writes --------------------------------------------------------------------
    def _write(
        self, doc: ConfigDocument, expected: int, actor: str, rollback_of: int | None
    ) -> int:
        old: ConfigDocument | None = None
        if expected > 0:
            try:
                old = self.get(expected)
            except VersionNotFound:
                raise VersionConflict(expected, self.head()) from None
        summary = change_summary(old, doc)
        if rollback_of is not None:
            summary = f"rollback to version {rollback_of}: {summary}"
        blob = uuid.uuid4().hex
        written = self._write_blob(blob, doc)
        manifest = {
            "blob": blob,
            **written,
            "actor": clean_actor(actor),
            "created_at": now(),
            "summary": summary,
            "rollback_of": rollback_of,
        }
        version = expected + 1
        try:
            self._put(self._version_name(version), json.dumps(manifest), overwrite=False)
        except ClientError as exc:
            self._delete_blob(blob, written["chunks"], written["secrets"])
            if _code(exc) == "ParameterAlreadyExists":
                raise VersionConflict(expected, self.head()) from None
            raise StoreError(f"ssm commit of version {version}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"ssm commit of version {version}: {exc}") from exc
        try:
            self._put(f"{self.prefix}/head", str(version))
        except (ClientError, BotoCoreError) as exc:  # only a hint; readers probe forward
            log.warning("ssm head hint for version %d not written: %s", version, exc)
        self._prune(version - self.keep_versions)
        log.info("config version %d committed to ssm %s by %s", version, self.prefix, actor)
        return version

    def _write_blob(self, blob: str, doc: ConfigDocument) -> dict[str, Any]:
        document = dump_document(doc, reveal_secrets=True)
        paths = secret_paths(doc)
        secrets = [str(get_at(document, path)) for path in paths]
        for path in paths:
            set_at(document, path, None)
        text = canonical_json({"document": document, "secret_paths": [list(p) for p in paths]})
        chunks = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
        try:
            for i, chunk in enumerate(chunks):
                self._put(self._chunk_name(blob, i), chunk)
            for j, secret in enumerate(secrets):
                self._put(self._secret_name(blob, j), secret, secure=True)
        except (ClientError, BotoCoreError) as exc:
            self._delete_blob(blob, len(chunks), len(secrets))
            raise StoreError(f"ssm write under {self.prefix}: {exc}") from exc
        digest = hashlib.sha256(text.encode()).hexdigest()
        return {"chunks": len(chunks), "secrets": len(secrets), "sha256": digest}

    def _delete_blob(self, blob: str, chunks: int, secrets: int) -> None:
        self._delete(
            [self._chunk_name(blob, i) for i in range(chunks)]
            + [self._secret_name(blob, j) for j in range(secrets)]
        )

    def _prune(self, version: int) -> None:
        if version < 1:
            return
        try:
            manifest = self._manifest(version)
        except (VersionNotFound, StoreError):
            return
        self._delete_blob(manifest["blob"], manifest["chunks"], manifest["secrets"])
        self._delete([self._version_name(version)])
