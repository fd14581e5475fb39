"""The HTTP servers ``spectra run`` builds from the config store (``control.cli``): the
AI gateway it serves takes the store as its source, so a new document version applies
without a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest
from aiohttp.test_utils import TestServer

from ai.keys import hash_key
from control.cli import _servers
from control.config import parse_document
from control.store import open_store
from tests.unit.ai import conftest as ai_fixtures
from tests.unit.ai.conftest import ENV, KEY_B, SECRET, Fakes, client_for, config_dict

fakes = ai_fixtures.fakes  # the fake upstreams the AI section's routes point at


@pytest.mark.asyncio
async def test_spectra_run_ai_gateway_follows_the_config_store(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``spectra run`` serves the AI gateway with the store as its source: a key added
    by a new document version is accepted without a restart."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    data = config_dict(fakes, tmp_path, listen_port=18090)  # never bound here
    data["keys"] = [k for k in data["keys"] if k["id"] != "key-b"]
    url = f"local:{tmp_path / 'config.db'}"
    store = open_store(url)
    interfaces = {"inside": "inside", "outside": "outside"}
    store.put(parse_document({"interfaces": interfaces, "ai": data}), 0, "test")
    (gateway,) = [s for s in _servers(url, store, None, lambda: None) if s.name == "AI gateway"]
    server = TestServer(gateway.factory(), host="127.0.0.1")
    await server.start_server()
    try:
        async with client_for(server, key=KEY_B) as b:
            with pytest.raises(openai.AuthenticationError):
                await b.models.list()
            data["keys"].append(
                {"id": "key-b", "hash": hash_key(SECRET, KEY_B), "tenant": "tenant-b"}
            )
            store.put(parse_document({"interfaces": interfaces, "ai": data}), 1, "test")
            for _ in range(100):  # the gateway polls its source every second
                try:
                    assert (await b.models.list()).data
                    break
                except openai.AuthenticationError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the key added in version 2 was not accepted within 5 s")
    finally:
        await server.close()
