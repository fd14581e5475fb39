"""Audit anchors outside the host: S3 objects under Object Lock in compliance mode.

The audit writer (:class:`ai.audit.AuditLog`) signs its chain head ``{"seq", "h",
"at", "sig"}`` every ``anchor_every`` records or ``anchor_interval_s`` seconds and at a
clean stop. With ``audit.anchor_s3`` each anchor is also written as the object
``<prefix><chain>/<seq, 12 digits>.json`` with ``ObjectLockMode=COMPLIANCE`` and a
retain-until date ``retention_days`` ahead
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-lock.html): until then
no one, the account's root user included, can delete or overwrite it, so a host
attacker who truncates or rewrites the log (and the local anchor file) cannot remove
the evidence. ``chain`` defaults to ``<host name>/<audit file stem>``: every instance,
and every worker of one (the stem carries ``-w<I>``), writes its own chain's anchors.

Credentials: on the appliance the agent hands the gateway its session factory's
operational role for ``s3`` (:func:`control.aws.anchor_credentials`); standalone,
botocore's default chain. A failed write is logged and counted (``failures``); the
next anchor covers the records since, so one failure only delays detection.

:func:`s3_anchor_entries` reads a chain's anchors back for ``spectra ai audit verify
--s3-anchors``, refusing an object that is not under compliance-mode retention.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ai.config import S3AnchorConfig

log = logging.getLogger("spectra.ai")
# botocore credentials (refreshing or not): what ``AwsCredentialSource`` returns
CredentialSource = Callable[[], Any]


class AnchorUnreadable(ValueError):
    """An anchor object that cannot count as one (unreadable, or not locked)."""


def default_chain(audit_path: Path) -> str:
    return f"{socket.gethostname()}/{audit_path.stem}"


def _client(region: str | None, endpoint_url: str | None, frozen: Any = None) -> Any:
    import boto3
    from botocore.config import Config

    keys: dict[str, Any] = {}
    if frozen is not None:
        keys = {
            "aws_access_key_id": frozen.access_key,
            "aws_secret_access_key": frozen.secret_key,
            "aws_session_token": frozen.token,
        }
    config = Config(
        connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3}
    )
    return boto3.client("s3", region_name=region, endpoint_url=endpoint_url, config=config, **keys)


class S3Anchors:
    """Writes one chain's anchors to S3 (called on the audit writer's thread)."""

    def __init__(
        self, config: S3AnchorConfig, audit_path: Path, credentials: CredentialSource | None
    ) -> None:
        self.config = config
        self.chain = config.chain or default_chain(audit_path)
        self._credentials = credentials
        self._lock = threading.Lock()
        self._client: Any = None
        self._keys: Any = None  # the frozen credentials the client was made with
        self.written = 0
        self.failures = 0
        self.last_error: str | None = None

    def key(self, seq: int) -> str:
        return f"{self.config.prefix}{self.chain}/{seq:012d}.json"

    def _s3(self) -> Any:
        frozen = None if self._credentials is None else self._credentials().get_frozen_credentials()
        if self._client is None or frozen != self._keys:  # refreshed role keys: a new client
            self._client = _client(self.config.region, self.config.endpoint_url, frozen)
            self._keys = frozen
        return self._client

    def put(self, seq: int, body: bytes) -> bool:
        """Store the anchor of record ``seq``; False (logged, counted) if S3 refused."""
        until = datetime.now(UTC) + timedelta(days=self.config.retention_days)
        with self._lock:
            try:
                self._s3().put_object(
                    Bucket=self.config.bucket,
                    Key=self.key(seq),
                    Body=body,
                    ContentType="application/json",
                    ObjectLockMode="COMPLIANCE",
                    ObjectLockRetainUntilDate=until,
                    ChecksumAlgorithm="SHA256",
                )
            except Exception as exc:  # botocore's errors, credentials, the network
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error(
                    "audit anchor %d not written to s3://%s/%s: %s",
                    seq,
                    self.config.bucket,
                    self.key(seq),
                    self.last_error,
                )
                return False
            self.written += 1
            return True

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def status(self) -> dict[str, Any]:
        return {
            "bucket": self.config.bucket,
            "chain": self.chain,
            "written": self.written,
            "failures": self.failures,
            "last_error": self.last_error,
        }


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (bucket, prefix); ValueError naming the form."""
    if not url.startswith("s3://") or "/" not in url[5:]:
        raise ValueError(f"{url!r}: expected s3://BUCKET/PREFIX/CHAIN/")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix if prefix.endswith("/") or not prefix else prefix + "/"


def s3_anchor_entries(
    url: str, *, region: str | None = None, endpoint_url: str | None = None
) -> list[tuple[str, int, bytes]]:
    """Every anchor object of one chain (``s3://bucket/<prefix><chain>/``) as
    ``(s3 URL, 0, body)`` in sequence order; :class:`AnchorUnreadable` for an object
    without compliance-mode retention (it could have been replaced)."""
    bucket, prefix = parse_s3_url(url)
    s3 = _client(region, endpoint_url)
    entries: list[tuple[str, int, bytes]] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                name = item["Key"]
                if not name.endswith(".json") or "/" in name[len(prefix) :]:
                    continue  # another chain's (deeper) objects
                got = s3.get_object(Bucket=bucket, Key=name)
                with contextlib.closing(got["Body"]) as body:
                    raw = body.read()
                where = f"s3://{bucket}/{name}"
                if got.get("ObjectLockMode") != "COMPLIANCE":
                    raise AnchorUnreadable(f"{where} is not under compliance-mode Object Lock")
                entries.append((where, 0, raw))
    finally:
        s3.close()
    return entries
