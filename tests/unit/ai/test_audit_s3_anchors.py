"""Audit anchors in S3 under Object Lock (``audit.anchor_s3``), against a real moto
server through boto3: each anchor is an object with compliance-mode retention that
cannot be deleted, ``spectra ai audit verify --s3-anchors`` passes an intact log and
names the first missing record of a truncated one, and refuses an anchor object that
is not locked."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from click.testing import CliRunner
from moto.server import ThreadedMotoServer

from ai.anchors import s3_anchor_entries
from ai.audit import AuditLog, verify
from ai.cli import ai_group
from ai.config import AuditConfig

KEY = b"audit-hmac-key-from-the-document"
BUCKET = "spectra-audit-anchors"
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A bucket with Object Lock; the verifier's credentials from the environment."""
    for name, value in {**{k.upper(): v for k, v in CREDS.items()}}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    client = boto3.client("s3", endpoint_url=moto_url, region_name="eu-west-1", **CREDS)
    client.create_bucket(
        Bucket=BUCKET,
        CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
        ObjectLockEnabledForBucket=True,
    )
    yield client
    # locked objects cannot be deleted (that is the point): moto's own reset clears them
    with urllib.request.urlopen(
        urllib.request.Request(moto_url + "/moto-api/reset", b""), timeout=5
    ):
        pass
    client.close()


def _config(path: Path, moto_url: str, **extra: Any) -> AuditConfig:
    return AuditConfig.model_validate(
        {
            "path": str(path),
            "key": {"env": "UNUSED"},
            "anchor_every": 3,
            "anchor_s3": {
                "bucket": BUCKET,
                "prefix": "anchors/",
                "chain": "host-a/audit-w0",
                "region": "eu-west-1",
                "endpoint_url": moto_url,
                "retention_days": 30,
            },
            **extra,
        }
    )


def _role() -> Credentials:
    """What the session factory's s3 role hands over (here moto's test keys)."""
    return Credentials("testing", "testing")


async def _write(config: AuditConfig, count: int) -> AuditLog:
    log = AuditLog(config, KEY, _role)
    await log.start()
    try:
        for i in range(count):
            await log.write({"n": i})
            await log.drain()
    finally:
        await log.close()
    return log


@pytest.mark.asyncio
async def test_each_anchor_is_a_locked_object(tmp_path: Path, moto_url: str, s3: Any) -> None:
    path = tmp_path / "audit.jsonl"
    log = await _write(_config(path, moto_url), 7)
    assert log.s3 is not None and log.s3.failures == 0
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="anchors/host-a/audit-w0/")
    keys = [o["Key"] for o in listed["Contents"]]
    # every 3 records (seq 2, 5) and the clean stop (seq 6)
    assert keys == [f"anchors/host-a/audit-w0/{seq:012d}.json" for seq in (2, 5, 6)]
    for key in keys:
        head = s3.head_object(Bucket=BUCKET, Key=key)  # (moto's GetObjectRetention fails)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        until = head["ObjectLockRetainUntilDate"]
        assert timedelta(days=29) < until - datetime.now(UTC) <= timedelta(days=30)
    head = json.loads(s3.get_object(Bucket=BUCKET, Key=keys[-1])["Body"].read())
    last = json.loads(path.read_text().splitlines()[-1])
    assert (head["seq"], head["h"]) == (6, last["h"])
    # compliance mode: not even a bypass deletes the anchor before its date
    version = s3.list_object_versions(Bucket=BUCKET, Prefix=keys[0])["Versions"][0]
    with pytest.raises(ClientError):
        s3.delete_object(
            Bucket=BUCKET,
            Key=keys[0],
            VersionId=version["VersionId"],
            BypassGovernanceRetention=True,
        )


@pytest.mark.asyncio
async def test_a_truncated_log_fails_against_the_s3_anchors(
    tmp_path: Path, moto_url: str, s3: Any
) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(_config(path, moto_url), 7)
    url = f"s3://{BUCKET}/anchors/host-a/audit-w0/"
    entries = s3_anchor_entries(url, region="eu-west-1", endpoint_url=moto_url)
    assert verify(path, key=KEY, anchor_entries=entries).ok
    (tmp_path / "key").write_text(KEY.decode() + "\n")
    argv = ["audit", "verify", str(path), "--key-file", str(tmp_path / "key")]
    argv += ["--s3-anchors", url, "--s3-endpoint-url", moto_url, "--json"]
    intact = CliRunner().invoke(ai_group, argv)
    assert intact.exit_code == 0 and json.loads(intact.output)["records"] == 7
    # the last two records removed: the chain left is valid, the anchors say otherwise
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5]) + "\n")
    assert verify(path, key=KEY).ok
    cut = CliRunner().invoke(ai_group, argv)
    assert cut.exit_code == 1
    report = json.loads(cut.output)
    assert report["error"].startswith("truncated: record 5 is missing")
    assert f"{url}000000000005.json covers up to record 5" in report["error"]
    assert report["line"] == 6


@pytest.mark.asyncio
async def test_an_unlocked_anchor_object_fails_verification(
    tmp_path: Path, moto_url: str, s3: Any
) -> None:
    path = tmp_path / "audit.jsonl"
    await _write(_config(path, moto_url), 3)
    forged = "anchors/host-a/audit-w0/000000000099.json"
    s3.put_object(Bucket=BUCKET, Key=forged, Body=b"{}")  # no retention
    (tmp_path / "key").write_text(KEY.decode() + "\n")
    argv = ["audit", "verify", str(path), "--key-file", str(tmp_path / "key")]
    argv += ["--s3-anchors", f"s3://{BUCKET}/anchors/host-a/audit-w0/"]
    out = CliRunner().invoke(ai_group, [*argv, "--s3-endpoint-url", moto_url])
    assert out.exit_code == 1
    assert "not under compliance-mode Object Lock" in out.output


@pytest.mark.asyncio
async def test_a_refused_write_is_counted_and_the_log_goes_on(
    tmp_path: Path, moto_url: str, s3: Any
) -> None:
    config = _config(tmp_path / "audit.jsonl", moto_url)
    broken = config.model_copy(
        update={"anchor_s3": config.anchor_s3.model_copy(update={"bucket": "no-such-bucket"})}  # type: ignore[union-attr]
    )
    log = await _write(broken, 4)
    assert log.s3 is not None and log.s3.failures == 2 and log.s3.written == 0
    assert "NoSuchBucket" in (log.s3.last_error or "")
    assert verify(tmp_path / "audit.jsonl", key=KEY).records == 4


def test_anchor_s3_needs_the_key() -> None:
    with pytest.raises(ValueError, match=r"audit.anchor_s3 needs audit.key"):
        AuditConfig.model_validate({"path": "/tmp/a.jsonl", "anchor_s3": {"bucket": "abc"}})
