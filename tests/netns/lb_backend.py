"""Backends and clients of the L4 load-balancer tests, run in lab namespaces.

``serve NAME ADDRESS PORT``: a TCP server that greets each connection with
``NAME PEER\\n`` (PEER: the client address it sees) and then echoes lines.
``spread HOST PORT N``: N connections in turn, each reading the greeting; prints the
count per NAME as JSON (and the peers each NAME saw).
``hold HOST PORT NAME``: connects until NAME greets, prints ``ready``, then sends each
stdin line and prints the echo (an established connection kept across a map change).
"""

from __future__ import annotations

import json
import socket
import socketserver
import sys
from collections import Counter


class _Greeter(socketserver.StreamRequestHandler):
    name = ""

    def handle(self) -> None:
        self.wfile.write(f"{self.name} {self.client_address[0]}\n".encode())
        for line in self.rfile:
            self.wfile.write(line)


def serve(name: str, address: str, port: int) -> None:
    handler = type("Greeter", (_Greeter,), {"name": name})
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    with socketserver.ThreadingTCPServer((address, port), handler) as server:
        print("listening", flush=True)
        server.serve_forever()


def greet(host: str, port: int) -> tuple[socket.socket, str, str]:
    sock = socket.create_connection((host, port), timeout=5)
    reader = sock.makefile("r")
    name, _, peer = reader.readline().strip().partition(" ")
    return sock, name, peer


def spread(host: str, port: int, n: int) -> None:
    counts: Counter[str] = Counter()
    peers: dict[str, set[str]] = {}
    for _ in range(n):
        try:
            sock, name, peer = greet(host, port)
            sock.close()
        except OSError as exc:
            name, peer = f"error:{type(exc).__name__}", ""
        counts[name] += 1
        peers.setdefault(name, set()).add(peer)
    print(json.dumps({"counts": counts, "peers": {k: sorted(v) for k, v in peers.items()}}))


def hold(host: str, port: int, want: str) -> None:
    for _ in range(100):
        sock, name, _peer = greet(host, port)
        if name == want:
            break
        sock.close()
    else:
        raise SystemExit(f"{want} never answered")
    print("ready", flush=True)
    reader = sock.makefile("r")
    for line in sys.stdin:
        sock.sendall(line.encode())
        print(reader.readline().strip(), flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "serve":
        serve(args[0], args[1], int(args[2]))
    elif mode == "spread":
        spread(args[0], int(args[1]), int(args[2]))
    else:
        hold(args[0], int(args[1]), args[2])
