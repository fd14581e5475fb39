"""Test-only servers for cs-inet: a TCP sink that counts what each connection sent
(stands in for a TLS server: the ClientHello is what matters), and a DNS responder
answering every query with NXDOMAIN.

    python -m tests.netns.nfq.servers tcp-sink ADDRESS PORT OUTFILE
    python -m tests.netns.nfq.servers dns ADDRESS PORT
"""

from __future__ import annotations

import socket
import sys
import threading


def tcp_sink(address: str, port: int, out: str) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((address, port))
    srv.listen(16)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        got = b""
        try:
            while chunk := conn.recv(65536):
                got += chunk
        except OSError:
            pass
        with open(out, "a") as fh:
            fh.write(f"{len(got)} {got[:1].hex()}\n")
        conn.close()

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def dns(address: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    while True:
        data, peer = sock.recvfrom(4096)
        if len(data) >= 12:
            flags = 0x8183  # response, recursion desired + available, NXDOMAIN
            sock.sendto(data[:2] + flags.to_bytes(2, "big") + data[4:], peer)


if __name__ == "__main__":
    kind, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "tcp-sink":
        tcp_sink(addr, port, sys.argv[4])
    else:
        dns(addr, port)
