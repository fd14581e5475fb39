"""Semantic-cache integration: partitioning and eligibility, with an in-memory fake."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ai.semcache_api import SemanticCache, SemanticHit, partition_key, semantic_text
from tests.unit.ai.conftest import KEY_B, Fakes, GatewayFactory, audit_records, client_for


@dataclass
class FakeSemanticCache:
    """Matches texts equal after lower-casing and stripping punctuation."""

    entries: dict[str, dict[str, str]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)

    @staticmethod
    def _norm(text: str) -> str:
        return "".join(ch for ch in text.lower() if ch.isalnum() or ch == " ").strip()

    async def lookup(self, partition: str, text: str) -> SemanticHit | None:
        self.lookups.append(partition)
        for stored, entry_id in self.entries.get(partition, {}).items():
            if self._norm(stored) == self._norm(text):
                return SemanticHit(entry_id, 0.97, stored)
        return None

    async def add(self, partition: str, text: str, entry_id: str, tenant: str = "") -> None:
        self.entries.setdefault(partition, {})[text] = entry_id


def test_fake_implements_protocol() -> None:
    cache: SemanticCache = FakeSemanticCache()
    assert cache is not None


def test_eligibility() -> None:
    user = {"role": "user", "content": "hi"}
    assert semantic_text({"messages": [user]}, 8) == "hi"
    assert semantic_text({"messages": [user], "tools": [{}]}, 8) is None
    assert semantic_text({"messages": [user], "n": 2}, 8) is None
    assert semantic_text({"messages": [user] * 9}, 8) is None
    assert semantic_text({"messages": [{"role": "assistant", "content": "x"}]}, 8) is None
    assert semantic_text({"messages": [{"role": "tool", "content": "x"}, user]}, 8) is None


def test_partition_covers_everything_but_last_user_message() -> None:
    base = {
        "model": "m",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}],
    }
    same = {**base, "messages": [base["messages"][0], {"role": "user", "content": "q2"}]}
    assert partition_key("t", "p", base) == partition_key("t", "p", same)
    assert partition_key("t", "p", base) != partition_key("u", "p", base)
    assert partition_key("t", "p", base) != partition_key("t", "p", {**base, "temperature": 1})
    other_system = {**base, "messages": [{"role": "system", "content": "x"}, base["messages"][1]]}
    assert partition_key("t", "p", base) != partition_key("t", "p", other_system)


@pytest.mark.asyncio
async def test_semantic_hit_replays_within_tenant_only(
    make_gateway: GatewayFactory, fakes: Fakes
) -> None:
    sem = FakeSemanticCache()
    server = await make_gateway(semcache=sem)
    async with client_for(server) as a, client_for(server, KEY_B) as b:
        first = await a.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        hit = await a.chat.completions.create(
            model="gpt-4o-mini",
            stream=True,
            messages=[{"role": "user", "content": "what is the capital of france"}],
        )
        text = "".join([c.choices[0].delta.content or "" async for c in hit if c.choices])
        assert text == first.choices[0].message.content
        assert fakes.requests("openai") == 1
        other = await b.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "what is the capital of france"}],
        )
        assert other.choices[0].message.content == "Echo: what is the capital of france"
        assert fakes.requests("openai") == 2
        await a.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    records = await audit_records(server)
    assert [r["cache"]["outcome"] for r in records] == ["miss", "semantic_hit", "miss", "miss"]
    assert records[1]["cache"]["similarity"] == 0.97
    assert len(sem.lookups) == 3  # the tool request never consulted it


@pytest.mark.asyncio
async def test_shipped_semantic_cache_through_config(
    make_gateway: GatewayFactory, fakes: Fakes
) -> None:
    """The gateway builds ai.semcache's cache from its config section and uses it."""
    server = await make_gateway(semantic_cache={"settings": {}})
    async with client_for(server) as a, client_for(server, KEY_B) as b:
        first = await a.chat.completions.create(
            model="claude-sonnet-4",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        again = await a.chat.completions.create(
            model="claude-sonnet-4",
            messages=[{"role": "user", "content": "what is the capital of france?"}],
        )
        other = await b.chat.completions.create(
            model="claude-sonnet-4",
            messages=[{"role": "user", "content": "what is the capital of france?"}],
        )
    assert again.choices[0].message.content == first.choices[0].message.content
    assert other.choices[0].message.content == "Echo: what is the capital of france?"
    assert fakes.requests("anthropic") == 2
    outcomes = [r["cache"]["outcome"] for r in await audit_records(server)]
    assert outcomes == ["miss", "semantic_hit", "miss"]


@pytest.mark.asyncio
async def test_semantic_entries_survive_a_gateway_restart(
    make_gateway: GatewayFactory, fakes: Fakes, tmp_path: Path
) -> None:
    """Fill, stop the gateway, start a new one over the same files: a similar prompt is
    a semantic hit without reaching the upstream (the store defaults next to the exact
    cache)."""
    first = await make_gateway(semantic_cache={"settings": {}})
    async with client_for(first) as a:
        stored = await a.chat.completions.create(
            model="claude-sonnet-4",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
    await first.close()
    assert (tmp_path / "cache-semantic.sqlite3").exists()
    second = await make_gateway(semantic_cache={"settings": {}})
    async with client_for(second) as a:
        again = await a.chat.completions.create(
            model="claude-sonnet-4",
            messages=[{"role": "user", "content": "what is the capital of france?"}],
        )
    assert again.choices[0].message.content == stored.choices[0].message.content
    assert fakes.requests("anthropic") == 1
    records = await audit_records(second)
    assert [r["cache"]["outcome"] for r in records] == ["miss", "semantic_hit"]
