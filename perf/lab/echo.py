"""Echo servers for the lab's internet namespace: an HTTP server that tells each client
the source address it saw (so tests can check the gateway's translation) and serves
``/bytes/N``, a UDP echo and a TCP echo (the failover probe's long-lived connections,
:mod:`perf.lab.flowprobe`). :mod:`perf.lab.servers` runs them as
``python -m perf.lab.echo http|udp-echo|tcp-echo ADDRESS PORT``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/bytes/"):
            body = b"x" * min(int(self.path.rsplit("/", 1)[1] or 0), 1 << 30)
            ctype = "application/octet-stream"
        else:
            peer = {"client_ip": self.client_address[0], "client_port": self.client_address[1]}
            body = json.dumps(peer).encode() + b"\n"
            ctype = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.client_address[0]} {format % args}\n")


def serve_http(address: str, port: int) -> None:
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((address, port), _Handler).serve_forever()


def serve_udp_echo(address: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve_tcp_echo(address: str, port: int) -> None:
    server = await asyncio.start_server(_echo, address, port, backlog=1024)
    async with server:
        await server.serve_forever()


def serve_tcp_echo(address: str, port: int) -> None:
    asyncio.run(_serve_tcp_echo(address, port))


SERVERS = {"http": serve_http, "udp-echo": serve_udp_echo, "tcp-echo": serve_tcp_echo}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in SERVERS:
        print(f"usage: python -m perf.lab.echo {'|'.join(SERVERS)} ADDRESS PORT", file=sys.stderr)
        return 2
    SERVERS[argv[0]](argv[1], int(argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
