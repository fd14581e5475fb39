"""TCP connection-rate load: a multi-process connect/close loop and an accept/close
server, run as ``python -m perf.cps client|server ADDRESS PORT [SECONDS PROCS]``.

Each connection completes the three-way handshake and is closed with RST
(SO_LINGER 0, so the client never runs out of ports in TIME_WAIT).  Limit, stated
honestly: these are Python processes on the same two cores as the gateway, so the
figure is bounded by the client and server CPU, not by the gateway; only the ratio
between paths measured in the same run means something.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import struct
import sys
import time

_LINGER_RST = struct.pack("ii", 1, 0)


def _client(address: str, port: int, seconds: float, out: multiprocessing.SimpleQueue[int]) -> None:
    done = errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        s.settimeout(1.0)
        try:
            s.connect((address, port))
            done += 1
        except OSError:
            errors += 1
        finally:
            s.close()
    out.put(done)


def run_clients(address: str, port: int, seconds: float, procs: int) -> float:
    """Connections per second over ``procs`` processes."""
    queue: multiprocessing.SimpleQueue[int] = multiprocessing.SimpleQueue()
    workers = [
        multiprocessing.Process(target=_client, args=(address, port, seconds, queue))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(queue.get() for _ in workers) / seconds


def _serve(address: str, port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    srv.bind((address, port))
    srv.listen(4096)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        conn.close()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("client", "server"):
        print(
            "usage: python -m perf.cps client|server ADDRESS PORT [SECONDS PROCS]", file=sys.stderr
        )
        return 2
    address, port = argv[1], int(argv[2])
    if argv[0] == "server":
        for _ in range(1, int(argv[3]) if len(argv) > 3 else 2):
            if os.fork() == 0:
                _serve(address, port)
        _serve(address, port)
        return 0
    seconds = float(argv[3]) if len(argv) > 3 else 3.0
    procs = int(argv[4]) if len(argv) > 4 else 2
    print(f"{run_clients(address, port, seconds, procs):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
