"""Audit log: hash chain, tamper detection, rotation without loss, CLI, backpressure."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import openai
import pytest
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from ai.audit import AuditLog, verify
from ai.cli import ai_group
from ai.config import AuditConfig
from tests.unit.ai.conftest import GatewayFactory, audit_records, client_for


async def write_records(path: Path, count: int, **config: object) -> None:
    log = AuditLog(AuditConfig(path=path, **config))  # type: ignore[arg-type]
    await log.start()
    try:
        await asyncio.gather(*(log.write({"n": i, "pad": "x" * 100}) for i in range(count)))
    finally:
        await log.close()


@pytest.mark.asyncio
async def test_chain_verifies_and_edits_fail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 20)
    report = verify(path)
    assert report.ok and report.records == 20
    lines = path.read_text().splitlines()
    record = json.loads(lines[7])
    record["n"] = 999
    edited = [*lines[:7], json.dumps(record, sort_keys=True, separators=(",", ":")), *lines[8:]]
    path.write_text("\n".join(edited) + "\n")
    report = verify(path)
    assert not report.ok and report.line == 8 and "edited" in (report.error or "")


@pytest.mark.asyncio
async def test_deleting_or_reordering_fails(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 5)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    assert not verify(path).ok
    path.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    assert not verify(path).ok
    path.write_text("\n".join(lines[1:]) + "\n")
    assert not verify(path).ok and verify(path, allow_pruned=True).ok


@pytest.mark.asyncio
async def test_rotation_keeps_every_record_and_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_records(path, 300, rotate_bytes=4096, queue_size=8)
    await write_records(path, 50, rotate_bytes=4096)  # a restart continues the chain
    report = verify(path)
    assert report.ok and report.records == 350 and len(report.files) > 5
    seen = sorted(
        json.loads(line)["n"] for f in report.files for line in Path(f).read_text().splitlines()
    )
    assert seen == sorted(list(range(300)) + list(range(50)))


@pytest.mark.asyncio
async def test_bounded_queue_applies_backpressure(tmp_path: Path) -> None:
    log = AuditLog(AuditConfig(path=tmp_path / "a.jsonl", queue_size=2))
    await log.write({"n": 0})
    await log.write({"n": 1})
    blocked = asyncio.ensure_future(log.write({"n": 2}))  # writer not started: queue full
    await asyncio.sleep(0.05)
    assert not blocked.done()
    await log.start()
    await asyncio.wait_for(blocked, 5)
    await log.close()
    assert verify(tmp_path / "a.jsonl").records == 3


def test_cli_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    asyncio.run(write_records(path, 3))
    runner = CliRunner()
    ok = runner.invoke(ai_group, ["audit", "verify", str(path)])
    assert ok.exit_code == 0 and "ok: 3 records" in ok.output
    path.write_text(path.read_text().replace('"n":1', '"n":7'))
    bad = runner.invoke(ai_group, ["audit", "verify", "--json", str(path)])
    assert bad.exit_code == 1 and json.loads(bad.output)["line"] == 2


def test_cli_new_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from ai.keys import hash_key

    monkeypatch.setenv("SPECTRA_AI_KEY_SECRET", "s3")
    out = CliRunner().invoke(ai_group, ["keys", "new"])
    data = json.loads(out.output)
    assert data["hash"] == hash_key("s3", data["key"])


@pytest.mark.asyncio
async def test_gateway_records_have_the_fields(
    gateway: TestServer, client: openai.AsyncOpenAI
) -> None:
    await client.chat.completions.create(
        model="claude-cached-1", messages=[{"role": "user", "content": "audit me"}]
    )
    record = (await audit_records(gateway))[-1]
    for field in (
        "key_hash",
        "tenant",
        "model_requested",
        "model_routed",
        "provider",
        "region",
        "cache",
        "overflow",
        "commit",
        "usage",
        "latency_ms",
        "prev",
        "h",
    ):
        assert field in record
    assert record["tenant"] == "tenant-a" and record["provider"] == "anthropic"
    assert record["usage"]["cached"] == 3 and record["usage"]["cache_write"] == 1
    assert "content" not in record
    assert {"auth", "upstream_start", "upstream_done", "total"} <= set(record["latency_ms"])


@pytest.mark.asyncio
async def test_content_only_when_configured(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    server = await make_gateway(
        audit={"include_content": True, "path": str(tmp_path / "content.jsonl")}
    )
    async with client_for(server) as c:
        await c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "secret words"}]
        )
    record = (await audit_records(server))[-1]
    assert record["content"]["messages"][0]["content"] == "secret words"
    assert record["content"]["response"] == "Echo: secret words"
