"""Long-lived flows through the gateway, watched packet by packet: the failover probe.

``N`` TCP connections each send a small numbered message every ``interval`` and check
that every echo comes back byte for byte, in order; one UDP stream sends a numbered
datagram every ``1 / udp_rate`` seconds and records which echoes return. Run in a
workload namespace against echo servers on the lab's internet side while an instance is
killed, it answers the two questions of a failover:

* the **data-path gap**: on the UDP stream, from the first datagram that was lost to
  the first one delivered after it (send times, one clock), the longest such run;
* **survival**: the TCP connections that still echo correctly after the event, with no
  reset, no mismatch and no stall (a connection that stops echoing for ``stall_s`` is
  counted as lost even if its socket stays open).

``python -m perf.lab.flowprobe --target IP --duration S --json F`` prints and saves one JSON
summary (:class:`Summary`); it stops early on SIGTERM/SIGINT and still writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

MESSAGE = struct.Struct("!IIQ")  # connection id, sequence number, send time (ns)
DATAGRAM = struct.Struct("!IQ")  # sequence number, send time (ns)
WARM_UP_SEQ = 0xFFFFFFFF  # a warm-up datagram's sequence number (never measured)
WARM_UP_S = 5.0


@dataclass(slots=True)
class Connection:
    """What one TCP connection saw."""

    conn_id: int
    sent: int = 0
    echoed: int = 0
    state: str = "connecting"  # connecting | open | reset | mismatch | error | closed
    error: str | None = None
    last_echo_ns: int = 0
    max_echo_delay_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Gap:
    """The longest run of lost datagrams: first lost to first delivered after it."""

    gap_ms: float
    lost: int
    first_lost_at_s: float | None  # seconds after the stream started


@dataclass(frozen=True, slots=True)
class Summary:
    target: str
    duration_s: float
    connections: int
    survived: int
    reset: int
    mismatched: int
    errored: int
    stalled: int
    never_opened: int
    udp_sent: int
    udp_received: int
    udp_gap: Gap
    tcp_max_echo_delay_ms: float
    failures: list[str] = field(default_factory=list)

    @property
    def survival(self) -> float:
        return self.survived / self.connections if self.connections else 0.0


def longest_gap(send_ns: Sequence[int], received: set[int]) -> Gap:
    """The longest run of lost sequence numbers in a stream sent at ``send_ns[seq]``.

    The run's length is the send time of the first datagram delivered after it minus
    the send time of its first lost one; a run still open at the end is measured to the
    last send time. ``Gap(0, 0, None)`` when nothing was lost.
    """
    best = Gap(0.0, 0, None)
    start: int | None = None
    for seq in range(len(send_ns) + 1):
        delivered = seq == len(send_ns) or seq in received
        if not delivered and start is None:
            start = seq
        elif delivered and start is not None:
            end_ns = send_ns[seq] if seq < len(send_ns) else send_ns[-1]
            gap_ms = (end_ns - send_ns[start]) / 1e6
            if gap_ms >= best.gap_ms:
                at = (send_ns[start] - send_ns[0]) / 1e9
                best = Gap(round(gap_ms, 3), seq - start, round(at, 3))
            start = None
    return best


class Probe:
    """The TCP connections and the UDP stream of one run."""

    def __init__(
        self,
        target: str,
        tcp_port: int,
        udp_port: int,
        connections: int,
        interval_s: float,
        udp_rate: float,
        stall_s: float,
    ) -> None:
        self.target = target
        self.tcp_port = tcp_port
        self.udp_port = udp_port
        self.interval_s = interval_s
        self.udp_interval_s = 1.0 / udp_rate
        self.stall_ns = int(stall_s * 1e9)
        self.conns = [Connection(i) for i in range(connections)]
        self.udp_send_ns: list[int] = []
        self.udp_received: set[int] = set()
        self._stop = asyncio.Event()
        self._warm = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, duration_s: float) -> Summary:
        started = time.monotonic()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect((self.target, self.udp_port))
        receiving = asyncio.create_task(self._udp_receive(sock))
        await self._warm_up(sock)
        tasks = [asyncio.create_task(self._tcp(c)) for c in self.conns]
        tasks.append(asyncio.create_task(self._udp(sock, receiving)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), duration_s)
        self._stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return self.summary(time.monotonic() - started)

    async def _tcp(self, conn: Connection) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.target, self.tcp_port), timeout=10
            )
        except (OSError, TimeoutError) as exc:
            conn.state, conn.error = "error", f"connect: {exc}"
            return
        conn.state = "open"
        conn.last_echo_ns = time.monotonic_ns()
        receiving = asyncio.create_task(self._tcp_receive(conn, reader))
        try:
            while not self._stop.is_set() and conn.state == "open":
                message = MESSAGE.pack(conn.conn_id, conn.sent, time.monotonic_ns())
                writer.write(message)
                conn.sent += 1
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval_s)
        except ConnectionResetError as exc:
            conn.state, conn.error = "reset", str(exc)
        except OSError as exc:
            conn.state, conn.error = "error", f"send: {exc}"
        # the last messages' echoes get a moment to come back before the check ends
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(receiving), 2.0)
        receiving.cancel()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def _tcp_receive(self, conn: Connection, reader: asyncio.StreamReader) -> None:
        try:
            while conn.echoed < conn.sent or not self._stop.is_set():
                data = await reader.readexactly(MESSAGE.size)
                conn_id, seq, sent_ns = MESSAGE.unpack(data)
                if conn_id != conn.conn_id or seq != conn.echoed:
                    conn.state = "mismatch"
                    conn.error = f"expected ({conn.conn_id}, {conn.echoed}), got ({conn_id}, {seq})"
                    return
                now = time.monotonic_ns()
                conn.echoed += 1
                conn.last_echo_ns = now
                conn.max_echo_delay_ms = max(conn.max_echo_delay_ms, (now - sent_ns) / 1e6)
        except asyncio.IncompleteReadError:
            if conn.state == "open":
                conn.state, conn.error = "closed", "the server closed the connection"
        except ConnectionResetError as exc:
            conn.state, conn.error = "reset", str(exc)
        except OSError as exc:
            if conn.state == "open":
                conn.state, conn.error = "error", f"receive: {exc}"

    async def _warm_up(self, sock: socket.socket) -> None:
        """Send unnumbered datagrams until one echo returns (at most ``WARM_UP_S``)
        before any measured packet: the path's first packets wait for neighbour
        resolution, whose queue is bounded (``unres_qlen_bytes``), and 200 SYNs sent at
        once can overflow it. The probe measures failovers, not an unresolved path."""
        deadline = time.monotonic() + WARM_UP_S
        while not self._warm.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                sock.send(DATAGRAM.pack(WARM_UP_SEQ, time.monotonic_ns()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._warm.wait(), 0.1)

    async def _udp(self, sock: socket.socket, receiving: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        try:
            next_at = time.monotonic()
            while not self._stop.is_set():
                seq = len(self.udp_send_ns)
                now_ns = time.monotonic_ns()
                self.udp_send_ns.append(now_ns)
                with contextlib.suppress(OSError):  # no route for a moment is a loss
                    sock.send(DATAGRAM.pack(seq, now_ns))
                next_at += self.udp_interval_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.sleep(0.5)  # late echoes of the last datagrams
        finally:
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
            loop.remove_reader(sock.fileno())
            sock.close()

    async def _udp_receive(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(sock, 64)
            except OSError:  # ICMP unreachable while the path moves
                await asyncio.sleep(0.001)
                continue
            if len(data) == DATAGRAM.size:
                seq = DATAGRAM.unpack(data)[0]
                if seq == WARM_UP_SEQ:
                    self._warm.set()
                else:
                    self.udp_received.add(seq)

    def summary(self, duration_s: float) -> Summary:
        now = time.monotonic_ns()
        states = {"reset": 0, "mismatch": 0, "error": 0}
        stalled = never = survived = 0
        failures: list[str] = []
        for c in self.conns:
            if c.state in states:
                states[c.state] += 1
                failures.append(f"connection {c.conn_id}: {c.state}: {c.error}")
            elif c.state == "connecting" or c.sent == 0:
                never += 1
            elif c.state == "closed" or now - c.last_echo_ns > self.stall_ns + 2_000_000_000:
                stalled += 1
                failures.append(f"connection {c.conn_id}: stalled after {c.echoed} echoes")
            elif c.echoed < c.sent:
                stalled += 1
                failures.append(f"connection {c.conn_id}: {c.sent - c.echoed} echoes missing")
            else:
                survived += 1
        return Summary(
            target=self.target,
            duration_s=round(duration_s, 3),
            connections=len(self.conns),
            survived=survived,
            reset=states["reset"],
            mismatched=states["mismatch"],
            errored=states["error"],
            stalled=stalled,
            never_opened=never,
            udp_sent=len(self.udp_send_ns),
            udp_received=len(self.udp_received),
            udp_gap=longest_gap(self.udp_send_ns, self.udp_received),
            tcp_max_echo_delay_ms=round(
                max((c.max_echo_delay_ms for c in self.conns), default=0), 3
            ),
            failures=failures[:20],
        )


async def _main(args: argparse.Namespace) -> Summary:
    probe = Probe(
        args.target,
        args.tcp_port,
        args.udp_port,
        args.connections,
        args.interval,
        args.udp_rate,
        args.stall,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, probe.stop)
    if args.ready:
        Path(args.ready).write_text("started\n")
    return await probe.run(args.duration)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.lab.flowprobe", description=__doc__)
    parser.add_argument("--target", required=True, help="echo servers' address")
    parser.add_argument("--tcp-port", type=int, default=7)
    parser.add_argument("--udp-port", type=int, default=7)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between messages")
    parser.add_argument("--udp-rate", type=float, default=100.0, help="datagrams per second")
    parser.add_argument("--stall", type=float, default=10.0, help="seconds without an echo")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--ready", help="a file written once the probe runs")
    parser.add_argument("--json", help="write the summary here too")
    args = parser.parse_args(argv)
    summary = asyncio.run(_main(args))
    text = json.dumps(asdict(summary) | {"survival": summary.survival}, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
