"""perf.lab.flowprobe: the failover probe's gap arithmetic, and a run against echo servers on
loopback (every connection survives an undisturbed run; a server that resets is seen)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator

import pytest

from perf.lab.echo import serve_udp_echo
from perf.lab.flowprobe import Gap, Probe, Summary, longest_gap

pytestmark = pytest.mark.unit

MS = 1_000_000


def test_no_loss_is_no_gap() -> None:
    assert longest_gap([0, 10 * MS, 20 * MS], {0, 1, 2}) == Gap(0.0, 0, None)


def test_gap_runs_from_first_lost_to_first_delivered() -> None:
    sends = [i * 10 * MS for i in range(10)]
    # 2..4 lost (30 ms), 7 lost (10 ms): the longest run wins
    gap = longest_gap(sends, {0, 1, 5, 6, 8, 9})
    assert gap == Gap(30.0, 3, 0.02)


def test_a_run_open_at_the_end_is_measured_to_the_last_send() -> None:
    sends = [i * 10 * MS for i in range(5)]
    assert longest_gap(sends, {0, 1}) == Gap(20.0, 3, 0.02)


@pytest.fixture
def udp_echo() -> Iterator[int]:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    threading.Thread(target=serve_udp_echo, args=("127.0.0.1", port), daemon=True).start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ping:  # until it answers
        ping.settimeout(0.1)
        for _ in range(50):
            ping.sendto(b"ping", ("127.0.0.1", port))
            with contextlib.suppress(OSError):
                if ping.recv(16) == b"ping":
                    break
    yield port


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _run(
    handler: Handler, udp_port: int, connections: int, seconds: float
) -> tuple[Probe, Summary]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    tcp_port = server.sockets[0].getsockname()[1]
    probe = Probe("127.0.0.1", tcp_port, udp_port, connections, 0.02, 200.0, stall_s=1.0)
    async with server:
        return probe, await probe.run(seconds)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _reset_after_a_while(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(16)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()


def test_an_undisturbed_run_keeps_every_connection(udp_echo: int) -> None:
    probe, s = asyncio.run(_run(_echo, udp_echo, connections=20, seconds=1.5))
    assert (s.connections, s.survived, s.reset, s.stalled) == (20, 20, 0, 0), s.failures
    assert s.udp_sent >= 200 and s.udp_received == s.udp_sent
    assert s.udp_gap.lost == 0
    assert all(c.echoed == c.sent > 50 for c in probe.conns)


def test_a_reset_is_counted_and_nothing_survives(udp_echo: int) -> None:
    _, s = asyncio.run(_run(_reset_after_a_while, udp_echo, connections=5, seconds=1.0))
    assert s.survived == 0
    assert s.reset + s.errored + s.stalled == 5, s.failures


def test_the_stream_starts_once_the_path_answers() -> None:
    """A path that drops its first datagrams (a neighbour being resolved) delays the
    measured stream; the warm-up datagrams are neither sent nor lost in the summary."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    port = int(server.getsockname()[1])
    dropped: list[bytes] = []

    def serve() -> None:
        while True:
            data, peer = server.recvfrom(64)
            if len(dropped) < 3:
                dropped.append(data)
            else:
                server.sendto(data, peer)

    threading.Thread(target=serve, daemon=True).start()
    _, s = asyncio.run(_run(_echo, port, connections=2, seconds=1.0))
    assert len(dropped) == 3
    assert s.udp_sent > 0 and s.udp_received == s.udp_sent and s.udp_gap.lost == 0
