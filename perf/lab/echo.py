"""Echo servers for the lab's internet namespace: an HTTP server that tells each client
the source address it saw (so tests can check the gateway's translation) and serves
``/bytes/N``, a UDP echo and a TCP echo (RFC 862; the failover probe's long-lived
connections). :mod:`perf.lab.servers` runs them as
``python -m perf.lab.echo http|udp-echo|tcp-echo ADDRESS PORT``.
"""

from __future__ import annotations

import json
import socket
import socketserver
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


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the address's name (getfqdn): a DNS timeout
        # in a namespace without a resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


def serve_http(address: str, port: int) -> None:
    _HttpServer((address, port), _Handler).serve_forever()


def serve_udp_echo(address: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)


class _TcpEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _TcpEchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # hundreds of clients connect at once (the failover probe)


def serve_tcp_echo(address: str, port: int) -> None:
    _TcpEchoServer((address, port), _TcpEcho).serve_forever()


SERVERS = {"http": serve_http, "udp-echo": serve_udp_echo, "tcp-echo": serve_tcp_echo}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in SERVERS:
        print(f"usage: python -m perf.lab.echo {'|'.join(SERVERS)} ADDRESS PORT", file=sys.stderr)
        return 2
    kind, address, port = argv[0], argv[1], int(argv[2])
    SERVERS[kind](address, port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
