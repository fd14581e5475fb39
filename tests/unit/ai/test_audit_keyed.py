"""Keyed audit chain (``audit.key``): HMAC-SHA256 records, a rewrite without the key
fails at its first record, ``spectra ai audit verify --key-file/--key-env``."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ai.audit import AuditLog, record_hash, verify
from ai.canonical import canonical_json
from ai.cli import ai_group
from ai.config import AuditConfig
from tests.unit.ai.conftest import GatewayFactory, audit_records, client_for

KEY = b"audit-hmac-key-from-the-document"


async def write_keyed(path: Path, count: int, key: bytes = KEY) -> None:
    log = AuditLog(AuditConfig(path=path), key)
    await log.start()
    try:
        for i in range(count):
            await log.write({"n": i})
    finally:
        await log.close()


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rewrite(path: Path, records: list[dict[str, Any]], keyed: bool) -> None:
    """What someone without the key can do: edit, then recompute the whole chain."""
    prev = "0" * 64
    lines = []
    for seq, record in enumerate(records):
        body = {k: v for k, v in record.items() if k not in ("h", "keyed")}
        body.update(seq=seq, prev=prev, **({"keyed": True} if keyed else {}))
        body["h"] = hashlib.sha256(canonical_json(body).encode()).hexdigest()
        prev = body["h"]
        lines.append(canonical_json(body))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.asyncio
async def test_keyed_chain_verifies_only_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_keyed(path, 6)
    records = _records(path)
    assert all(r["keyed"] is True and r["h"] == record_hash(r, KEY) for r in records)
    assert verify(path, key=KEY).ok and verify(path, key=KEY).records == 6
    unkeyed = verify(path)
    assert not unkeyed.ok and unkeyed.line == 1 and "audit key" in (unkeyed.error or "")
    wrong = verify(path, key=b"another key")
    assert not wrong.ok and wrong.line == 1 and "MAC mismatch" in (wrong.error or "")


@pytest.mark.asyncio
async def test_a_rewritten_log_fails_at_its_first_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_keyed(path, 5)
    records = _records(path)
    records[3]["n"] = 999
    _rewrite(path, records, keyed=False)
    assert verify(path).ok  # a consistent SHA-256 chain...
    report = verify(path, key=KEY)  # ...but not the keyed one
    assert (report.ok, report.line, report.records) == (False, 1, 0)
    assert "not keyed" in (report.error or "")
    _rewrite(path, records, keyed=True)  # claiming to be keyed does not help
    report = verify(path, key=KEY)
    assert (report.ok, report.line) == (False, 1) and "MAC mismatch" in (report.error or "")


@pytest.mark.asyncio
async def test_first_bad_record_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_keyed(path, 8)
    lines = path.read_text().splitlines()
    edited = json.loads(lines[4])
    edited["n"] = 40
    lines[4] = canonical_json(edited)
    path.write_text("\n".join(lines) + "\n")
    report = verify(path, key=KEY)
    assert (report.ok, report.line, report.records) == (False, 5, 4)


def test_cli_verify_with_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    asyncio.run(write_keyed(path, 3))
    (tmp_path / "key").write_text(KEY.decode() + "\n")
    runner = CliRunner()
    key_file = str(tmp_path / "key")
    ok = runner.invoke(ai_group, ["audit", "verify", "--key-file", key_file, str(path)])
    assert ok.exit_code == 0 and "ok: 3 records" in ok.output
    monkeypatch.setenv("AUDIT_KEY", "not the key")
    bad = runner.invoke(
        ai_group, ["audit", "verify", "--json", "--key-env", "AUDIT_KEY", str(path)]
    )
    assert bad.exit_code == 1 and json.loads(bad.output)["line"] == 1
    missing = runner.invoke(ai_group, ["audit", "verify", "--key-env", "NO_SUCH_VAR", str(path)])
    assert missing.exit_code == 2 and "NO_SUCH_VAR" in missing.output
    without = runner.invoke(ai_group, ["audit", "verify", str(path)])
    assert without.exit_code == 1 and "verify with the audit key" in without.output


@pytest.mark.asyncio
async def test_gateway_writes_a_keyed_chain(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    path, key_file = tmp_path / "keyed.jsonl", tmp_path / "audit-key"
    key_file.write_text(KEY.decode() + "\n")
    server = await make_gateway(audit={"path": str(path), "key": {"file": str(key_file)}})
    async with client_for(server) as client:
        await client.models.list()
    records = await audit_records(server)
    assert records and all(r["keyed"] is True for r in records)
    assert verify(path, key=KEY).ok


async def write_anchored(path: Path, anchors: Path, count: int, every: int) -> None:
    config = AuditConfig(path=path, key={"env": "K"}, anchor_path=anchors, anchor_every=every)
    log = AuditLog(config, KEY)
    await log.start()
    try:
        for i in range(count):
            await log.write({"n": i})
            await log.drain()  # one batch each: anchors fall where anchor_every says
    finally:
        await log.close()


@pytest.mark.asyncio
async def test_anchors_detect_a_truncated_log(tmp_path: Path) -> None:
    path, anchors = tmp_path / "audit.jsonl", tmp_path / "elsewhere" / "anchors.jsonl"
    await write_anchored(path, anchors, 25, every=10)
    heads = [json.loads(line)["seq"] for line in anchors.read_text().splitlines()]
    assert heads == [9, 19, 24]  # every 10 records (batches of one), and at close
    assert verify(path, key=KEY, anchors=anchors).ok
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:22]) + "\n")  # the last three records removed
    assert verify(path, key=KEY).ok  # the chain alone cannot tell
    report = verify(path, key=KEY, anchors=anchors)
    assert not report.ok and report.line == 23 and report.records == 22
    assert "record 22 is missing" in (report.error or "")
    runner = CliRunner()
    (tmp_path / "key").write_text(KEY.decode())
    args = ["audit", "verify", "--key-file", str(tmp_path / "key"), "--anchors", str(anchors)]
    cli = runner.invoke(ai_group, [*args, "--json", str(path)])
    assert cli.exit_code == 1 and json.loads(cli.output)["line"] == 23


@pytest.mark.asyncio
async def test_forged_anchors_and_anchors_without_key_fail(tmp_path: Path) -> None:
    path, anchors = tmp_path / "audit.jsonl", tmp_path / "anchors.jsonl"
    await write_anchored(path, anchors, 5, every=2)
    first = json.loads(anchors.read_text().splitlines()[0])
    first["seq"] = 4
    anchors.write_text(canonical_json(first) + "\n")
    report = verify(path, key=KEY, anchors=anchors)
    assert not report.ok and report.line == 1 and "signature" in (report.error or "")
    assert "audit key" in (verify(path, anchors=anchors).error or "")
    with pytest.raises(ValueError, match=r"audit\.anchor_path needs audit\.key"):
        AuditConfig(path=path, anchor_path=anchors)
