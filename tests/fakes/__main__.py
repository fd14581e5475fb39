"""``python -m tests.fakes``: run the fake upstreams on loopback, print their URLs as JSON.

One line on stdout: ``{"openai": url, "local": url, "anthropic": url, "bedrock": url}``;
runs until terminated.
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web

from tests.fakes.anthropic_fake import create_anthropic_fake
from tests.fakes.bedrock_fake import create_bedrock_fake
from tests.fakes.openai_fake import create_openai_fake, create_vllm_fake


async def _serve() -> None:
    factories = {
        "openai": create_openai_fake,
        "local": create_vllm_fake,
        "anthropic": create_anthropic_fake,
        "bedrock": create_bedrock_fake,
    }
    runners, urls = [], {}
    for name, factory in factories.items():
        runner = web.AppRunner(factory(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        urls[name] = f"http://127.0.0.1:{port}"
        runners.append(runner)
    print(json.dumps(urls), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


if __name__ == "__main__":
    try:
        asyncio.run(_serve())
    except KeyboardInterrupt:
        sys.exit(0)
