"""A lean RESP2 client for the gateway's hot path: pipelined commands on one connection.

Why not redis-py here: a call through redis-py asyncio (pool checkout, command packing,
a reader task wake-up, ``asyncio.timeout``) costs 100-350 us of the gateway's CPU while
the server spends ~5 us on the script (perf/README.md); the gateway is CPU-bound on one
core, so that overhead is its rate. This client is an :class:`asyncio.Protocol` whose
``data_received`` feeds ``hiredis.Reader`` and resolves the waiting futures in order
(RESP replies arrive in the order the commands were sent: https://redis.io/docs/latest/develop/reference/protocol-spec/),
so a command costs one encode and one future, and any number of callers share one
connection without a pool. Commands issued in one event-loop iteration are written
together with one ``send`` at the start of the next (auto-pipelining, as ioredis's
``enableAutoPipelining`` does): a request's reservation and cache read, or the
settlements and cache writes of several requests, cost one system call, not one each.

Deadlines: every command carries ``op_timeout_s`` from when it is written (not from
when it is issued: an overloaded gateway's own loop lag is not the store's silence, and
the reply, read before timers run in the next loop iteration, wins); one timer per
connection, armed
for the oldest command still waiting, fails the waiting commands with
:class:`TimeoutError` and drops the connection (a store that stopped answering; the next
command reconnects), so there is no timer object per call (nor per reply batch: it
stays armed when nothing waits and then finds nothing to expire). Connecting (TCP, TLS, then
``AUTH [user] password`` and ``SELECT db``, as ElastiCache's in-transit encryption and
AUTH/RBAC use them: https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/auth.html)
is bounded by ``connect_timeout_s``. A lost connection fails its waiting commands with
:class:`ConnectionError`; the next command reconnects (the caller, :class:`ai.redis_link.RedisLink`,
owns the up/down state and the backoff). Scripts run by ``EVALSHA``, each loaded
(``SCRIPT LOAD``, pipelined just before) the first time on each connection, so a
restarted or failed-over store has them before they run.

Not for cluster mode (no ``MOVED`` handling): a cluster endpoint stays on redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis

Arg = str | bytes | int


class ReplyError(Exception):
    """The store answered a command with an error reply (a bug, not an outage)."""


class AuthenticationError(ConnectionError):
    """The store refused the connection's AUTH (wrong user name or password)."""


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1 (what ``EVALSHA`` names)."""

    body: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.body.encode()).hexdigest())


def encode(args: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False
    tls_ca_file: str | None = None
    connect_timeout_s: float = 0.5
    op_timeout_s: float = 0.25


class _Connection(asyncio.Protocol):
    """One connection: writes commands, resolves their futures in reply order."""

    def __init__(self, op_timeout_s: float) -> None:
        self._reader = hiredis.Reader(encoding="utf-8", errors="surrogateescape")
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._timeout = op_timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._late: asyncio.Future[Any] | None = None  # past its deadline, given one more pass
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []  # commands of this loop iteration, not yet written
        self._queued: list[asyncio.Future[Any]] = []  # their futures
        self.scripts: set[str] = set()  # SHA1s loaded (SCRIPT LOAD sent) on this connection
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(payload)
        self._queued.append(future)
        return future

    def _flush(self) -> None:
        """Write the commands issued since the last flush with one ``send``; their
        deadlines run from now: a gateway whose loop lags (overloaded) must not take
        its own lag for a store that stopped answering."""
        if self._transport is None or self.closed:
            self._fail(ConnectionError("connection to the store closed"))
            return
        out, self._out = self._out, []
        queued, self._queued = self._queued, []
        deadline = self._loop.time() + self._timeout
        self._waiting.extend((future, deadline) for future in queued)
        if self._timer is None:
            self._timer = self._loop.call_at(self._waiting[0][1], self._expire)
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while True:
            reply = reader.gets()
            if reply is False:
                break
            if not waiting:  # nothing asked for it: the stream is out of step
                self._drop(ConnectionError("unexpected reply from the store"))
                return
            future, _ = waiting.popleft()
            if future.done():  # its caller went away
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ReplyError(str(reply)))
            else:
                future.set_result(reply)
        # the deadline timer stays armed when nothing waits: it then finds nothing to
        # expire (at most once per op_timeout_s), where a cancel and a new timer per
        # reply batch cost more

    def _expire(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        oldest, deadline = self._waiting[0]
        now = self._loop.time()
        if now < deadline:
            self._timer = self._loop.call_at(deadline, self._expire)
        elif self._late is not oldest:
            # past its deadline, but the loop may have stalled with the reply already in
            # the socket: one more iteration (its reads run before its timers) decides
            self._late = oldest
            self._timer = self._loop.call_at(now, self._expire)
        else:
            self._drop(TimeoutError(f"no reply from the store within {self._timeout} s"))

    def _drop(self, error: Exception) -> None:
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, deque()
        queued, self._queued, self._out = self._queued, [], []  # issued, not yet written
        for future in itertools.chain((f for f, _ in waiting), queued):
            if not future.done():
                future.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection to the store lost ({exc or 'closed'})"))

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


def is_noscript(exc: BaseException) -> bool:
    """An ``EVALSHA`` of a script the store does not have (flushed, or a new store)."""
    return isinstance(exc, ReplyError) and str(exc).startswith("NOSCRIPT")


def _retrieve(done: asyncio.Future[Any]) -> None:
    """Mark a future's exception retrieved (no one else may await it)."""
    if not done.cancelled():
        done.exception()


class RespClient:
    """Commands to one Redis endpoint over one long-lived, pipelined connection."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._ssl: ssl.SSLContext | None = None
        if endpoint.tls:  # built once: loading a CA bundle costs milliseconds
            self._ssl = ssl.create_default_context(cafile=endpoint.tls_ca_file)

    async def execute(self, *args: Arg) -> Any:
        """One command's reply; :class:`ReplyError` for an error reply,
        :class:`ConnectionError` / :class:`TimeoutError` / :class:`OSError` when the
        store cannot be reached or does not answer within ``op_timeout_s``."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        return await conn.send(encode(args))

    def send_evalsha(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> asyncio.Future[Any] | None:
        """``EVALSHA`` of ``script`` queued now on the open connection (no task, no
        coroutine: what a write sent behind an answer costs), its raw reply to come in
        the future; None when there is no open connection (:meth:`evalsha` connects).
        The first time on a connection ``SCRIPT LOAD`` goes just before it, so commands
        keep their order (an ``EVAL`` resent after a ``NOSCRIPT`` would run after
        commands sent later); a ``NOSCRIPT`` reply all the same (someone flushed the
        scripts) is the caller's to resend with :meth:`eval`."""
        conn = self._conn
        if conn is None or conn.closed:
            return None
        if script.sha not in conn.scripts:
            conn.scripts.add(script.sha)
            loading = conn.send(encode(["SCRIPT", "LOAD", script.body]))
            loading.add_done_callback(_retrieve)  # a failure shows as NOSCRIPT
        return conn.send(encode(["EVALSHA", script.sha, len(keys), *keys, *args]))

    async def eval(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """``script`` sent whole (``EVAL``), after a ``NOSCRIPT``."""
        return await self.execute("EVAL", script.body, len(keys), *keys, *args)

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run ``script`` (:meth:`send_evalsha`, connecting first if need be; ``EVAL``
        after a ``NOSCRIPT``)."""
        sent = self.send_evalsha(script, keys, args)
        if sent is None:
            await self._connection()
            sent = self.send_evalsha(script, keys, args)
            if sent is None:
                raise ConnectionError("connection to the store lost (closed)")
        try:
            return await sent
        except ReplyError as exc:
            if not is_noscript(exc):
                raise
        return await self.eval(script, keys, args)

    async def _connection(self) -> _Connection:
        if self._connecting is None:  # one connect at a time; the others wait for it
            self._connecting = asyncio.ensure_future(self._connect())
            # retrieved here too: every waiter may have been cancelled meanwhile
            self._connecting.add_done_callback(_retrieve)
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Connection:
        endpoint = self.endpoint
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(endpoint.connect_timeout_s):
            _, conn = await loop.create_connection(
                lambda: _Connection(endpoint.op_timeout_s),
                endpoint.host,
                endpoint.port,
                ssl=self._ssl,
                server_hostname=endpoint.host if self._ssl is not None else None,
            )
            try:
                if endpoint.password is not None:
                    auth: list[Arg] = ["AUTH", endpoint.password]
                    if endpoint.username is not None:
                        auth.insert(1, endpoint.username)
                    try:
                        await conn.send(encode(auth))
                    except ReplyError as exc:
                        raise AuthenticationError(f"Authentication failed: {exc}") from None
                if endpoint.db:
                    await conn.send(encode(["SELECT", endpoint.db]))
            except BaseException:
                conn.close()
                raise
        self._conn = conn
        return conn

    async def close(self) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.done():
            connecting.cancel()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
