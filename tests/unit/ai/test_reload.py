"""A changed ``ai`` section takes effect without a restart (``ai.reload``): new keys,
routes and budgets apply to the next requests, used totals are kept, a section that
cannot be applied leaves the running one in place, and the ``--config`` file is
re-read only when it changed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from ai.config import AIConfig
from ai.keys import hash_key
from ai.reload import FileSource, restart_only_changes
from ai.server import GATEWAY, create_app, load_config
from tests.unit.ai.conftest import ENV, KEY_B, SECRET, Fakes, client_for, config_dict

MSG: Any = [{"role": "user", "content": "hello there"}]


class Document:
    """A mutable ``ai`` section, the source the gateway polls."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.reads = 0

    def __call__(self) -> AIConfig:
        self.reads += 1
        return AIConfig.model_validate(self.data)


@pytest_asyncio.fixture
async def live(fakes: Fakes, tmp_path: Path) -> AsyncIterator[tuple[TestServer, Document]]:
    data = config_dict(fakes, tmp_path, budget_a={"max_tokens": 10})
    data["keys"] = [k for k in data["keys"] if k["id"] != "key-b"]
    data["routes"] = [r for r in data["routes"] if r["pattern"] != "claude-*"]
    doc = Document(data)
    app = create_app(doc(), env=ENV, source=doc, reload_s=0.02)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, doc
    finally:
        await server.close()


async def _reloaded(doc: Document) -> None:
    reads = doc.reads
    while doc.reads < reads + 2:  # a whole poll after the edit
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_keys_routes_and_budgets_change_while_running(
    live: tuple[TestServer, Document],
) -> None:
    server, doc = live
    async with client_for(server) as a, client_for(server, key=KEY_B) as b:
        with pytest.raises(openai.AuthenticationError):
            await b.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        with pytest.raises(openai.NotFoundError):
            await a.chat.completions.create(model="claude-sonnet-4", messages=MSG)
        first = await a.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        with pytest.raises(openai.RateLimitError):  # 10 tokens: the budget is spent
            await a.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        used = server.app[GATEWAY].budgets.used("key-a")

        base = json.loads(json.dumps(doc.data))
        base["keys"].append({"id": "key-b", "hash": hash_key(SECRET, KEY_B), "tenant": "tenant-b"})
        base["keys"][0]["budget"] = {"max_tokens": 10_000}
        base["routes"].append({"pattern": "claude-*", "provider": "anthropic"})
        doc.data = base
        await _reloaded(doc)

        assert (await b.chat.completions.create(model="gpt-4o-mini", messages=MSG)).choices
        got = await a.chat.completions.create(model="claude-sonnet-4", messages=MSG, max_tokens=5)
        assert got.choices[0].message.content == "Echo: hello there"
        assert server.app[GATEWAY].budgets.used("key-a")[0] >= used[0] > 0  # totals kept
        assert first.usage is not None


@pytest.mark.asyncio
async def test_a_section_that_cannot_be_applied_keeps_the_running_one(
    live: tuple[TestServer, Document],
) -> None:
    server, doc = live
    before = server.app[GATEWAY].config
    broken = json.loads(json.dumps(doc.data))
    broken["providers"]["openai"]["api_key"] = {"env": "NOT_SET_ANYWHERE"}
    doc.data = broken
    await _reloaded(doc)
    assert server.app[GATEWAY].config is before
    async with client_for(server) as a:
        assert (await a.chat.completions.create(model="gpt-4o-mini", messages=MSG)).choices


def test_listener_and_storage_changes_wait_for_a_restart(fakes: Fakes, tmp_path: Path) -> None:
    old = AIConfig.model_validate(config_dict(fakes, tmp_path))
    new = old.model_copy(update={"listen_port": 9999, "keys": ()})
    assert restart_only_changes(old, new) == ["listen_port"]


def test_the_config_file_is_read_again_only_when_it_changed(fakes: Fakes, tmp_path: Path) -> None:
    path = tmp_path / "ai.json"
    path.write_text(json.dumps({"ai": config_dict(fakes, tmp_path)}))
    loads: list[Path] = []

    def load(p: Path) -> AIConfig:
        loads.append(p)
        return load_config(p)

    source = FileSource(path, load)
    first = source()
    assert source() is first and len(loads) == 1
    data = config_dict(fakes, tmp_path)
    data["completion_reserve_tokens"] = 7
    path.write_text(json.dumps(data) + "\n")
    assert source().completion_reserve_tokens == 7 and len(loads) == 2
