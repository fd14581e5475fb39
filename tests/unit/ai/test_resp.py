"""The lean RESP client (``ai.resp``) and the link's stance over it, against a real
``redis-server``: replies matched to their commands in pipelining order, error replies,
scripts the store lost, a caller that goes away, reconnect after a restart, a store
that stops answering (timeout -> the store-down stance), TLS with an ACL user."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.exceptions import ResponseError

from ai.config import RedisConfig
from ai.redis_link import RedisLink, StoreUnavailable
from ai.resp import AuthenticationError, Endpoint, ReplyError, RespClient, Script, encode
from tests.certs import make_cert
from tests.redisd import RedisServer

ECHO = Script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert (
        encode(["SET", "k", b"\x00v", 7])
        == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00v\r\n$1\r\n7\r\n"
    )
    assert encode(["GET", "é"]) == "*2\r\n$3\r\nGET\r\n$2\r\né\r\n".encode()


@pytest.mark.asyncio
async def test_pipelined_replies_reach_their_commands_in_order(
    redis_server: RedisServer,
) -> None:
    client = RespClient(Endpoint("127.0.0.1", redis_server.port, op_timeout_s=5))
    try:
        # 500 commands in flight at once on one connection, of mixed kinds and sizes
        sets = [client.execute("SET", f"k{i}", "v" * i) for i in range(250)]
        assert await asyncio.gather(*sets) == ["OK"] * 250
        mixed = []
        for i in range(250):
            mixed.append(client.execute("GET", f"k{i}"))
            mixed.append(client.execute("INCR", "counter"))
        replies = await asyncio.gather(*mixed)
        assert replies[0::2] == ["v" * i for i in range(250)]
        assert replies[1::2] == list(range(1, 251))
        assert await client.execute("GET", "missing") is None
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_an_error_reply_fails_its_own_command_only(redis_server: RedisServer) -> None:
    client = RespClient(Endpoint("127.0.0.1", redis_server.port))
    try:
        await client.execute("SET", "text", "not a number")
        replies = await asyncio.gather(
            client.execute("INCR", "n"),
            client.execute("INCR", "text"),
            client.execute("INCR", "n"),
            return_exceptions=True,
        )
        assert replies[0] == 1 and replies[2] == 2
        assert isinstance(replies[1], ReplyError) and "not an integer" in str(replies[1])
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_a_script_the_store_lost_is_sent_again(redis_server: RedisServer) -> None:
    client = RespClient(Endpoint("127.0.0.1", redis_server.port))
    try:
        assert await client.evalsha(ECHO, ["s"], ["a"]) == ["s", "a", 1]
        assert redis_server.cli("SCRIPT", "EXISTS", ECHO.sha) == "1"
        redis_server.cli("SCRIPT", "FLUSH")
        assert await client.evalsha(ECHO, ["s"], ["b"]) == ["s", "b", 2]
        with pytest.raises(ReplyError):
            await client.evalsha(Script("return redis.call('NOSUCHCOMMAND')"), [], [])
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_a_caller_that_went_away_does_not_shift_the_replies(
    redis_server: RedisServer,
) -> None:
    client = RespClient(Endpoint("127.0.0.1", redis_server.port, op_timeout_s=5))
    try:
        blocked = asyncio.ensure_future(client.execute("BLPOP", "empty", "0.3"))
        await asyncio.sleep(0.05)
        blocked.cancel()
        # queued behind the blocked command: gets its own reply, not BLPOP's nil
        assert await client.execute("ECHO", "mine") == "mine"
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_reconnects_after_the_server_restarts(redis_server: RedisServer) -> None:
    client = RespClient(Endpoint("127.0.0.1", redis_server.port))
    try:
        assert await client.execute("PING") == "PONG"
        redis_server.kill()
        with pytest.raises(OSError):
            await client.execute("PING")
        redis_server.start()
        assert await client.execute("SET", "after", "restart") == "OK"
        assert redis_server.cli("GET", "after") == "restart"
        # the new server lacks the script: loaded on the new connection ahead of the
        # EVALSHA, so a command sent after it still runs after it (no NOSCRIPT detour)
        ran, seen = await asyncio.gather(
            client.evalsha(ECHO, ["r"], ["1"]), client.execute("GET", "r")
        )
        assert ran == ["r", "1", 1] and seen == "1"
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_a_store_that_stops_answering_times_out_to_the_stance(
    redis_server: RedisServer,
) -> None:
    config = RedisConfig.model_validate(
        {"host": "127.0.0.1", "port": redis_server.port, "op_timeout_s": 0.2}
    )
    link = RedisLink(config, {})
    await link.open()
    try:
        assert await link.script(ECHO, ["p"], ["x"], "echo") == ["p", "x", 1]
        redis_server.cli("CLIENT", "PAUSE", "800", "ALL")  # the server stops answering
        started = time.monotonic()
        waiting = [link.script(ECHO, ["p"], ["x"], "echo") for _ in range(5)]
        failed = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(f, StoreUnavailable) for f in failed), failed
        assert time.monotonic() - started < 0.6  # the deadline held: 0.2 s, not 0.8
        assert not link.available and "TimeoutError" in (link.last_error or "")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):  # refused at once while down
            await link.command("get", "GET", "p")
        assert time.monotonic() - started < 0.05
        deadline = time.monotonic() + 5
        while not link.available and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert link.available  # the probe found it answering again
        assert await link.command("get", "GET", "p") in ("1", "2", "3", "4", "5", "6")
    finally:
        await link.close()


@pytest.mark.asyncio
async def test_the_gateways_own_loop_lag_is_not_the_stores_silence(
    redis_server: RedisServer,
) -> None:
    """An overloaded gateway: its loop stalls past op_timeout_s between issuing commands
    and writing them. The deadline runs from the write, and the replies (read before the
    timers of the next loop iteration) win: no false timeout, the link stays up."""
    config = RedisConfig.model_validate(
        {"host": "127.0.0.1", "port": redis_server.port, "op_timeout_s": 0.2}
    )
    link = RedisLink(config, {})
    await link.open()
    try:
        await link.command("ping", "PING")
        issued = [
            asyncio.ensure_future(link.script(ECHO, ["lag"], ["x"], "echo")) for _ in range(5)
        ]
        await asyncio.sleep(0)  # issued, not yet written
        time.sleep(0.3)  # the loop stalls (a burst of requests), past the deadline
        await asyncio.sleep(0)  # the write; the next iteration reads the replies
        time.sleep(0.3)  # stalls again before it reads them
        assert [r[2] for r in await asyncio.gather(*issued)] == [1, 2, 3, 4, 5]
        assert link.available and link.failures == 0
    finally:
        await link.close()


@pytest.mark.asyncio
async def test_tls_with_an_acl_user(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "localhost")
    server = RedisServer(tmp_path, tls=(cert, key), user=("gateway", "s3cret-token"))
    server.start()
    try:
        good = RespClient(
            Endpoint("localhost", server.port, "gateway", "s3cret-token", 0, True, cert)
        )
        assert await good.execute("ACL", "WHOAMI") == "gateway"
        assert await good.evalsha(ECHO, ["tls"], ["y"]) == ["tls", "y", 1]
        await good.close()
        wrong = RespClient(Endpoint("localhost", server.port, "gateway", "x", 0, True, cert))
        with pytest.raises(AuthenticationError, match="WRONGPASS"):
            await wrong.execute("PING")
        await wrong.close()
        plain = RespClient(Endpoint("localhost", server.port, "gateway", "s3cret-token"))
        with pytest.raises(OSError):  # no TLS against a TLS port: no answer, closed
            await plain.execute("PING")
        await plain.close()
    finally:
        server.kill()


@pytest.mark.asyncio
async def test_without_the_lean_client_redis_py_carries_the_same_calls(
    redis_server: RedisServer,
) -> None:
    """What a cluster-mode endpoint uses (redis-py follows MOVED): the same scripts and
    commands, the same stance."""
    config = RedisConfig.model_validate({"host": "127.0.0.1", "port": redis_server.port})
    link = RedisLink(config, {})
    link.lean = None  # as with `cluster: true`, on a standalone server
    await link.open()
    try:
        assert await link.script(ECHO, ["c"], ["z"], "echo") == ["c", "z", 1]
        assert await link.script(ECHO, ["c"], ["z"], "echo") == ["c", "z", 2]
        assert await link.command("get", "GET", "c") == "2"
        with pytest.raises(ResponseError):
            await link.command("bad", "INCR", "nonsense", "extra")
        redis_server.kill()
        with pytest.raises(StoreUnavailable):
            await link.command("get", "GET", "c")
        assert not link.available
    finally:
        await link.close()
