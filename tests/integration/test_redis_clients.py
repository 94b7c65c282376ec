"""Real clients through veil's RESP listener (issue 3): redis-py asyncio, pub/sub, blocking
commands, go-redis/node-redis/Lettuce-style handshakes, redis-cli (``--pipe`` too),
redis-benchmark, upstream faults, bad input, TLS and the bind guard.

Every test also reads the upstream directly: encrypted keys and channels hold envelopes (veil's
magic, not the plaintext), keys under ``plain:*`` and plaintext channels hold exactly the
client's bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from proxy.crypto.envelope import MAGIC
from tests.servers import RedisServer, VeilResp, start_veil_resp

SETTINGS: dict[str, Any] = {
    "plaintext": ["plain:*"],
    "encrypt_channels": ["enc:*"],
}
UNAVAILABLE = "veil: upstream unavailable"  # SPEC 13: -ERR veil: upstream unavailable


@pytest.fixture(scope="module")
def veil(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[VeilResp]:
    v = start_veil_resp(tmp_path_factory.mktemp("veil"), redis_server, **SETTINGS)
    yield v
    v.stop()


@pytest.fixture
def d(veil: VeilResp) -> Iterator[Any]:
    """The upstream itself, flushed."""
    veil.upstream.cli("FLUSHALL")
    client = veil.direct()
    yield client
    client.close()


def sealed(raw: Any, plain: bytes) -> None:
    """What Redis holds is an envelope, not the plaintext."""
    assert isinstance(raw, bytes), raw
    assert raw[:3] == MAGIC and raw != plain, raw
    if len(plain) >= 4:  # a short plaintext may occur in random bytes by chance
        assert plain not in raw, raw


PROTOCOLS = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


# --- 1. redis-py asyncio: pipelines with and without MULTI ------------------------------------


@PROTOCOLS
async def test_asyncio_pipelines(veil: VeilResp, d: Any, protocol: int) -> None:
    c = aioredis.Redis(port=veil.port, protocol=protocol, socket_timeout=10)
    try:
        pipe = c.pipeline(transaction=False)
        for i in range(50):
            pipe.set(f"a:{i}", b"value %d" % i)
        pipe.set("plain:a", b"clear").get("a:7").hset("h", mapping={"f": b"hv"}).hgetall("h")
        pipe.rpush("l", b"x", b"y").lrange("l", 0, -1).incr("plain:n").get("plain:a")
        out = await pipe.execute()
        assert out[:50] == [True] * 50
        assert out[50:] == [True, b"value 7", 1, {b"f": b"hv"}, 2, [b"x", b"y"], 1, b"clear"]

        async with c.pipeline(transaction=True) as tx:
            tx.set("t", b"in a transaction").get("t").mget("a:1", "plain:a", "nope")
            tx.sadd("s", b"m1", b"m2").smembers("s").get("plain:n")
            out = await tx.execute()
        assert out == [
            True,
            b"in a transaction",
            [b"value 1", b"clear", None],
            2,
            {b"m1", b"m2"},
            b"1",
        ]
        # WATCH through the asyncio client: a write by another client aborts EXEC
        other = aioredis.Redis(port=veil.port, protocol=protocol, socket_timeout=10)
        async with c.pipeline(transaction=True) as tx:
            await tx.watch("t")
            assert await tx.get("t") == b"in a transaction"
            await other.set("t", b"changed")
            tx.multi()
            tx.set("t", b"lost")
            with pytest.raises(redis.WatchError):
                await tx.execute()
        await other.aclose()
        assert await c.get("t") == b"changed"
    finally:
        await c.aclose()
    for key, plain in [("a:7", b"value 7"), ("t", b"changed")]:
        sealed(d.get(key), plain)
    sealed(d.hget("h", "f"), b"hv")
    assert all(m[:3] == MAGIC for m in d.smembers("s"))
    assert d.get("plain:a") == b"clear" and d.get("plain:n") == b"1"


# --- 2. pub/sub --------------------------------------------------------------------------------


def next_messages(p: Any, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The next ``n`` data messages (subscription confirmations skipped)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = p.get_message(timeout=0.2)
        if m is not None and m["type"] in ("message", "pmessage", "smessage"):
            out.append(m)
    return out


def wait_subscribed(p: Any, n: int, timeout: float = 5.0) -> None:
    """Reads ``n`` subscription confirmations."""
    got = 0
    deadline = time.monotonic() + timeout
    while got < n and time.monotonic() < deadline:
        m = p.get_message(timeout=0.2)
        if m is not None and m["type"] in ("subscribe", "psubscribe", "ssubscribe"):
            got += 1
    assert got == n, f"{got} of {n} subscriptions confirmed"


@PROTOCOLS
def test_pubsub_encrypted_and_plaintext_channels(veil: VeilResp, d: Any, protocol: int) -> None:
    c = veil.client(protocol=protocol)
    sub = veil.client(protocol=protocol).pubsub()
    spy = d.pubsub()  # a subscriber on the upstream itself
    try:
        sub.subscribe("enc:news", "plain-news")
        sub.psubscribe("enc:*")
        wait_subscribed(sub, 3)
        spy.subscribe("enc:news", "plain-news")
        wait_subscribed(spy, 2)

        secret = b"the launch code is 0000"
        assert c.publish("enc:news", secret) == 3  # two on veil's connection, one direct
        clear = bytes(range(256))
        assert c.publish("plain-news", clear) == 2
        got = next_messages(sub, 3)
        assert [(m["type"], m["channel"], m["data"]) for m in got] == [
            ("message", b"enc:news", secret),
            ("pmessage", b"enc:news", secret),
            ("message", b"plain-news", clear),
        ]
        assert got[1]["pattern"] == b"enc:*"
        raw = next_messages(spy, 2)
        assert raw[0]["channel"] == b"enc:news"
        sealed(raw[0]["data"], secret)
        assert raw[1]["channel"] == b"plain-news" and raw[1]["data"] == clear

        # a plaintext message injected upstream on an encrypted channel is dropped (refuse)
        d.publish("enc:news", b"forged")
        assert c.publish("enc:news", b"after the forgery") == 3
        assert [m["data"] for m in next_messages(sub, 2)] == [b"after the forgery"] * 2

        # PING while subscribed pairs with its reply; unsubscribing confirms every channel
        sub.ping(b"hi")
        pong = None
        while pong is None or pong["type"] != "pong":
            pong = sub.get_message(timeout=1)
            assert pong is not None
        assert pong["data"] == b"hi"
        sub.unsubscribe()
        sub.punsubscribe()
        left = [sub.get_message(timeout=1) for _ in range(3)]
        assert sorted((m["type"], m["channel"]) for m in left if m) == [
            ("punsubscribe", b"enc:*"),
            ("unsubscribe", b"enc:news"),
            ("unsubscribe", b"plain-news"),
        ]
        assert not sub.subscribed
    finally:
        sub.close()
        spy.close()
        c.close()


@PROTOCOLS
def test_sharded_pubsub(veil: VeilResp, d: Any, protocol: int) -> None:
    c = veil.client(protocol=protocol)
    sub = veil.client(protocol=protocol).pubsub()
    spy = d.pubsub()
    try:
        sub.ssubscribe("enc:shard", "plain-shard")
        wait_subscribed(sub, 2)
        spy.ssubscribe("enc:shard")
        wait_subscribed(spy, 1)
        assert c.spublish("enc:shard", b"sharded secret") == 2
        assert c.spublish("plain-shard", b"sharded clear") == 1
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            m = sub.get_sharded_message(timeout=0.2)
            if m is not None and m["type"] == "smessage":
                got.append((m["channel"], m["data"]))
        assert got == [(b"enc:shard", b"sharded secret"), (b"plain-shard", b"sharded clear")]
        m = None
        deadline = time.monotonic() + 5
        while m is None or m["type"] != "smessage":
            assert time.monotonic() < deadline
            m = spy.get_sharded_message(timeout=0.2)
        sealed(m["data"], b"sharded secret")
    finally:
        sub.close()
        spy.close()
        c.close()


# --- 3. blocking commands --------------------------------------------------------------------


@PROTOCOLS
async def test_blocking_commands_decrypt_and_block_only_their_client(
    veil: VeilResp, d: Any, protocol: int
) -> None:
    def client() -> Any:
        return aioredis.Redis(port=veil.port, protocol=protocol, socket_timeout=10)

    blocker, pusher, bystander = client(), client(), client()

    async def blocked(coro: Any) -> Any:
        """Starts a blocking call, shows another client is served meanwhile, then waits."""
        task = asyncio.ensure_future(coro)
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await bystander.set("other", b"served") is True
        assert await bystander.get("other") == b"served"
        assert time.monotonic() - started < 1.0
        assert not task.done()
        return task

    try:
        task = await blocked(blocker.blpop(["q", "q2"], timeout=5))
        await pusher.rpush("q2", b"first job")
        assert tuple(await asyncio.wait_for(task, 5)) == (b"q2", b"first job")

        task = await blocked(blocker.blmove("src", "dst", 5, "LEFT", "RIGHT"))
        await pusher.rpush("src", b"moved")
        assert await asyncio.wait_for(task, 5) == b"moved"
        assert await pusher.lrange("dst", 0, -1) == [b"moved"]
        sealed(d.lindex("dst", 0), b"moved")

        task = await blocked(blocker.bzpopmin("z", timeout=5))
        await pusher.zadd("z", {b"lowest member": 1.5})
        assert tuple(await asyncio.wait_for(task, 5)) == (b"z", b"lowest member", 1.5)

        task = await blocked(blocker.xread({"st": "$"}, block=5000))
        entry_id = await pusher.xadd("st", {"field": b"streamed value"})
        read = await asyncio.wait_for(task, 5)
        entries = read[b"st"][0] if isinstance(read, dict) else read[0][1]
        assert entries == [(entry_id, {b"field": b"streamed value"})]
        sealed(d.xrange("st")[0][1][b"field"], b"streamed value")

        # WAIT with no replica blocks for its timeout, only on its own connection
        task = await blocked(blocker.wait(1, 400))
        assert await asyncio.wait_for(task, 5) == 0

        # a timeout answers the null array the client expects
        assert await blocker.blpop(["empty"], timeout=0.1) is None
        assert await blocker.get("other") == b"served"
    finally:
        for c in (blocker, pusher, bystander):
            await c.aclose()
    sealed(d.get("other"), b"served")
