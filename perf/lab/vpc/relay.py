"""A TCP relay in front of the lab's moto endpoint, for one service's calls alone.

In AWS every service has its own regional endpoint (``ssm.<region>.amazonaws.com``,
``dynamodb.<region>.amazonaws.com``; "Service endpoints" in the AWS General Reference),
so one can be unreachable while the other answers. The lab's moto server is one endpoint
for all of them; the agents reach SSM through this relay instead (botocore's
``AWS_ENDPOINT_URL_SSM``, "Service-specific endpoints" in the AWS SDKs reference), so
stopping the relay makes the config store unreachable while the leader lease in
DynamoDB stays reachable.

Run as ``python -m perf.lab.vpc.relay --listen HOST:PORT --to HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _serve(listen: tuple[str, int], to: tuple[str, int]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*to)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )

    server = await asyncio.start_server(handle, *listen, reuse_address=True)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.lab.vpc.relay")
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--to", type=_address, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.listen, args.to))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
