"""Real clients through veil's RESP listener (issue 3): redis-py asyncio, pub/sub, blocking
commands, go-redis/node-redis/Lettuce-style handshakes, redis-cli (``--pipe`` too),
redis-benchmark, upstream faults, bad input, TLS and the bind guard.

Every test also reads the upstream directly: encrypted keys and channels hold envelopes (veil's
magic, not the plaintext), keys under ``plain:*`` and plaintext channels hold exactly the
client's bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from proxy.crypto.envelope import MAGIC
from proxy.errors import ConfigError
from tests.servers import (
    RedisServer,
    VeilResp,
    init_keyring,
    start_veil_resp,
    veil_settings,
)

SETTINGS: dict[str, Any] = {
    "plaintext": ["plain:*"],
    "encrypt_channels": ["enc:*"],
}
UNAVAILABLE = "veil: upstream unavailable"  # SPEC 13: -ERR veil: upstream unavailable
# clients expected to fail at connect: redis-py's default retries back off for seconds
NO_RETRY = Retry(NoBackoff(), 0)


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


def converse(port: int, steps: list[tuple[bytes | Any, int]]) -> bytes:
    """Sends each step's bytes (or runs it, if callable), reading its count of replies/pushes."""
    reader = hiredis.Reader()
    raw = b""
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        for step, expected in steps:
            if callable(step):
                step()
            else:
                s.sendall(step)
            count = 0
            while count < expected:
                chunk = s.recv(65536)
                assert chunk, raw
                raw += chunk
                reader.feed(chunk)
                while reader.gets() is not False:
                    count += 1
    return raw


SUBSCRIBED = {
    # RESP3: any command between pushes
    3: [
        (b"HELLO", b"3"),
        (b"SUBSCRIBE", b"enc:c", b"plain-c"),
        (b"SET", b"k", b"v"),
        (b"GET", b"k"),
        "publish",
        (b"GET", b"k"),
        (b"PING",),
        (b"UNSUBSCRIBE",),
        (b"GET", b"k"),
    ],
    # RESP2: only the subscription commands, PING, QUIT and RESET while subscribed
    2: [
        (b"SET", b"k", b"v"),
        (b"SUBSCRIBE", b"enc:c"),
        (b"GET", b"k"),
        (b"PING",),
        (b"PSUBSCRIBE", b"plain-*"),
        "publish",
        (b"PUNSUBSCRIBE",),
        (b"UNSUBSCRIBE",),
        (b"PING",),
        (b"GET", b"k"),
    ],
}
REPLIES = {b"HELLO": 1, b"SUBSCRIBE": 2, b"UNSUBSCRIBE": 2}  # RESP3 script; default 1


@PROTOCOLS
def test_subscriber_sees_what_a_redis_subscriber_sees(
    veil: VeilResp, d: Any, protocol: int
) -> None:
    """A subscriber through veil gets the same bytes as one on Redis whose publisher published
    the plaintext: confirmations, pushes or RESP2 messages, replies in between, errors."""
    c = veil.client()

    def steps(publisher: Any) -> list[tuple[bytes | Any, int]]:
        def publish() -> None:
            assert publisher.publish("enc:c", b"hello sub") == 1
            assert publisher.publish("plain-c", b"clear") == 1

        out: list[tuple[bytes | Any, int]] = []
        for cmd in SUBSCRIBED[protocol]:
            if cmd == "publish":
                out.append((publish, 2))
            else:
                n = REPLIES.get(cmd[0], 1) if protocol == 3 else 1
                out.append((pack(*cmd), n))
        return out

    try:
        expected = converse(veil.upstream.port, steps(d))
        d.flushall()
        got = converse(veil.port, steps(c))
    finally:
        c.close()
    assert without_client_id(got) == without_client_id(expected)
    assert b"hello sub" in got and b"clear" in got
    sealed(d.get("k"), b"v")


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

        await pusher.xgroup_create("st", "workers", id="$")
        task = await blocked(blocker.xreadgroup("workers", "w1", {"st": ">"}, block=5000))
        entry_id = await pusher.xadd("st", {"field": b"for the group"})
        read = await asyncio.wait_for(task, 5)
        entries = read[b"st"][0] if isinstance(read, dict) else read[0][1]
        assert entries == [(entry_id, {b"field": b"for the group"})]
        sealed(d.xrange("st")[1][1][b"field"], b"for the group")

        task = await blocked(blocker.blmpop(5, 2, "m1", "m2", direction="LEFT", count=2))
        await pusher.rpush("m2", b"one", b"two", b"three")
        assert await asyncio.wait_for(task, 5) == [b"m2", [b"one", b"two"]]
        sealed(d.lindex("m2", 0), b"three")

        task = await blocked(blocker.bzmpop(5, 1, ["zm"], max=True))
        await pusher.zadd("zm", {b"low": 1, b"high": 2})
        popped = await asyncio.wait_for(task, 5)
        assert popped[0] == b"zm" and [(m, float(x)) for m, x in popped[1]] == [(b"high", 2.0)]

        # CLIENT UNBLOCK from another client reaches the blocked client's own connection
        blocked_id = await blocker.client_id()
        task = await blocked(blocker.brpoplpush("never", "dst", 5))
        assert await bystander.client_unblock(blocked_id) == 1
        assert await asyncio.wait_for(task, 5) is None

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


def test_client_gone_while_blocked_loses_no_item(veil: VeilResp, d: Any) -> None:
    """A client that disconnects during BLPOP must not leave a blocked upstream connection
    behind that would pop (and lose) the next item pushed."""
    s = socket.create_connection(("127.0.0.1", veil.port), 5)
    s.sendall(pack("BLPOP", "jobs", "0"))
    deadline = time.monotonic() + 5
    while d.info("clients")["blocked_clients"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    s.close()
    while d.info("clients")["blocked_clients"] != 0:
        assert time.monotonic() < deadline, "veil kept the upstream BLPOP of a gone client"
        time.sleep(0.01)
    c = veil.client()
    try:
        assert c.rpush("jobs", b"precious") == 1
        assert c.lrange("jobs", 0, -1) == [b"precious"]
    finally:
        c.close()
    sealed(d.lindex("jobs", 0), b"precious")


# --- 4. handshakes of go-redis v9, node-redis, Lettuce: HELLO 3, CLIENT SETINFO, ACL users -----


def pack(*args: str | bytes) -> bytes:
    return bytes(hiredis.pack_command(args))


def exchange(port: int, data: bytes, replies: int, timeout: float = 5.0) -> bytes:
    """Sends ``data`` on a fresh connection; the raw bytes of the first ``replies`` replies."""
    reader = hiredis.Reader()
    raw = b""
    count = 0
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(data)
        while count < replies:
            chunk = s.recv(65536)
            assert chunk, f"connection closed after {count} of {replies} replies: {raw!r}"
            raw += chunk
            reader.feed(chunk)
            while reader.gets() is not False:
                count += 1
    return raw


def without_client_id(raw: bytes) -> bytes:
    """HELLO's map names the connection's id, which differs between two connections."""
    return re.sub(rb"(\$2\r\nid\r\n):\d+\r\n", rb"\1:0\r\n", raw)


HANDSHAKE = [
    ("HELLO", "3"),
    ("CLIENT", "SETINFO", "LIB-NAME", "go-redis(,go1.22.1)"),
    ("CLIENT", "SETINFO", "LIB-VER", "9.5.1"),
    ("CLIENT", "SETNAME", "worker-1"),
    ("SET", "k", "value one"),
    ("GET", "k"),
    ("HSET", "h", "field", "hash value"),
    ("HGETALL", "h"),
    ("SADD", "s", "member"),
    ("SMEMBERS", "s"),
    ("ZADD", "z", "1.5", "zmember"),
    ("ZRANGE", "z", "0", "-1", "WITHSCORES"),
    ("GET", "missing"),
    ("CLIENT", "GETNAME"),
    ("SET", "plain:k", "clear"),
]


def test_hello_3_and_client_setinfo_answer_as_redis_does(veil: VeilResp, d: Any) -> None:
    """The same pipelined handshake (go-redis v9 sends HELLO 3 and CLIENT SETINFO together,
    ignoring SETINFO errors from servers before 7.2) gets the same bytes from veil as from
    Redis itself: RESP3 map, set, double and null, and whatever Redis says about SETINFO."""
    data = b"".join(pack(*cmd) for cmd in HANDSHAKE)
    expected = exchange(veil.upstream.port, data, len(HANDSHAKE))
    d.flushall()
    got = exchange(veil.port, data, len(HANDSHAKE))
    assert without_client_id(got) == without_client_id(expected)
    assert got.startswith(b"%") and b"$5\r\nproto\r\n:3\r\n" in got
    sealed(d.get("k"), b"value one")
    sealed(d.hget("h", "field"), b"hash value")
    assert all(m[:3] == MAGIC for m in d.smembers("s"))
    assert all(m[:3] == MAGIC for m in d.zrange("z", 0, -1))
    assert d.get("plain:k") == b"clear"


def test_resp3_client_tracking_invalidation_pushes(veil: VeilResp, d: Any) -> None:
    """Client-side caching (RESP3 CLIENT TRACKING): invalidation pushes pass between replies."""
    c = veil.client()

    def steps(writer: Any) -> list[tuple[bytes | Any, int]]:
        hello = pack("HELLO", "3") + pack("CLIENT", "TRACKING", "ON")
        return [
            (hello + pack("SET", "cached", "v1") + pack("GET", "cached"), 4),
            (lambda: writer.set("cached", b"v2"), 1),  # the invalidation push
            (pack("GET", "cached"), 1),
        ]

    try:
        expected = converse(veil.upstream.port, steps(d))
        d.flushall()
        got = converse(veil.port, steps(c))
    finally:
        c.close()
    assert without_client_id(got) == without_client_id(expected)
    assert got.endswith(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$6\r\ncached\r\n$2\r\nv2\r\n")
    sealed(d.get("cached"), b"v2")


@pytest.fixture
def acl_user(veil: VeilResp) -> Iterator[tuple[str, str]]:
    """An upstream ACL user allowed ``app:*`` keys only."""
    user, password = "veil-app", "s3cret-pw"
    veil.upstream.cli(
        "ACL", "SETUSER", user, "reset", "on", f">{password}", "~app:*", "&*", "+@all"
    )
    yield user, password
    veil.upstream.cli("ACL", "DELUSER", user)


def test_hello_3_auth_with_an_acl_user(veil: VeilResp, d: Any, acl_user: tuple[str, str]) -> None:
    user, password = acl_user
    commands = [
        ("HELLO", "3", "AUTH", user, "wrong"),
        ("HELLO", "3", "AUTH", user, password, "SETNAME", "lettuce"),
        ("CLIENT", "SETINFO", "lib-name", "Lettuce"),
        ("CLIENT", "SETINFO", "lib-ver", "6.3.2.RELEASE"),
        ("ACL", "WHOAMI"),
        ("SET", "app:k", "acl value"),
        ("GET", "app:k"),
        ("SET", "other:k", "denied"),
        ("GET", "other:k"),
    ]
    data = b"".join(pack(*cmd) for cmd in commands)
    expected = exchange(veil.upstream.port, data, len(commands))
    assert b"-WRONGPASS" in expected and b"-NOPERM" in expected
    d.flushall()
    got = exchange(veil.port, data, len(commands))
    assert without_client_id(got) == without_client_id(expected)
    sealed(d.get("app:k"), b"acl value")
    assert d.exists("other:k") == 0

    # redis-py's own HELLO 3 AUTH; the emulated APPEND runs as the client's user (ACL DRYRUN)
    c = veil.client(protocol=3, username=user, password=password)
    try:
        assert c.acl_whoami() == user.encode()
        assert c.append("app:k", b"!") == len(b"acl value!")
        assert c.get("app:k") == b"acl value!"
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.append("other:k", b"x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.set("other:k", b"x")
    finally:
        c.close()
    sealed(d.get("app:k"), b"acl value!")
    assert d.exists("other:k") == 0


# --- 5. redis-cli --------------------------------------------------------------------------


def run(
    *args: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    if shutil.which(args[0]) is None:  # part of the suite, not optional: .ci/run installs it
        pytest.fail(f"{args[0]} not found: apt-get install -y redis-tools (see .ci/run)")
    return subprocess.run(list(args), input=stdin, capture_output=True, timeout=60)


def test_redis_cli_commands_and_pipe_mass_insertion(veil: VeilResp, d: Any) -> None:
    port = str(veil.port)
    assert run("redis-cli", "-p", port, "SET", "greeting", "hello world").stdout == b"OK\n"
    assert run("redis-cli", "-p", port, "GET", "greeting").stdout == b"hello world\n"
    assert run("redis-cli", "-3", "-p", port, "HSET", "h", "f", "v").stdout == b"1\n"
    assert (
        run("redis-cli", "-3", "--no-raw", "-p", port, "HGETALL", "h").stdout == b'1# "f" => "v"\n'
    )
    script = b"SET plain:cli 'in clear'\nGET plain:cli\nINCR greeting\nGET greeting\n"
    out = run("redis-cli", "-p", port, stdin=script).stdout
    assert out == (
        b"OK\nin clear\n"
        b"ERR veil: INCR is not supported on encrypted key 'greeting' "
        b"(counters belong under plaintext patterns)\n\n"  # redis-cli's raw error format
        b"hello world\n"
    )
    sealed(d.get("greeting"), b"hello world")
    sealed(d.hget("h", "f"), b"v")
    assert d.get("plain:cli") == b"in clear"

    n = 10_000
    mass = b"".join(pack("SET", b"mass:%d" % i, b"mass value %d" % i) for i in range(n))
    piped = run("redis-cli", "-p", port, "--pipe", stdin=mass)
    assert piped.returncode == 0, piped.stderr
    assert b"errors: 0, replies: 10000" in piped.stdout, piped.stdout
    assert d.dbsize() == n + 3
    c = veil.client()
    try:
        sample = [0, 1, 4_999, 9_998, 9_999]
        assert c.mget([f"mass:{i}" for i in sample]) == [b"mass value %d" % i for i in sample]
    finally:
        c.close()
    for i in sample:
        sealed(d.get(f"mass:{i}"), b"mass value %d" % i)


# --- 6. redis-benchmark ----------------------------------------------------------------------


@pytest.mark.parametrize("depth", ["1", "16"])
def test_redis_benchmark(veil: VeilResp, d: Any, depth: str) -> None:
    args = ["-p", str(veil.port), "-t", "set,get", "-n", "2000", "-c", "10", "-P", depth, "-q"]
    result = run("redis-benchmark", *args)
    out = result.stdout.replace(b"\r", b"\n") + result.stderr
    assert result.returncode == 0, out
    assert b"Error" not in out and b"WARN" not in out, out
    for test in (b"SET", b"GET"):
        assert re.search(rb"\n" + test + rb": [0-9.]+ requests per second", out), out
    # redis-benchmark writes one key (key:__rand_int__ without -r) with a short random value
    assert d.keys("*") == [b"key:__rand_int__"]
    c = veil.client()
    try:
        value = c.get("key:__rand_int__")
    finally:
        c.close()
    assert isinstance(value, bytes) and len(value) == 3
    sealed(d.get("key:__rand_int__"), value)


def test_redis_benchmark_collections(veil: VeilResp, d: Any) -> None:
    """redis-benchmark's list, set, hash, sorted-set and MSET tests: no errors, and what they
    leave upstream is ciphertext (list elements, members, hash values, MSET values)."""

    def bench(tests: str) -> None:
        args = ["-p", str(veil.port), "-t", tests, "-n", "1000", "-c", "10", "-P", "16", "-q"]
        result = run("redis-benchmark", *args)
        out = result.stdout.replace(b"\r", b"\n") + result.stderr
        assert result.returncode == 0 and b"Error" not in out, out
        for test in tests.upper().encode().split(b","):
            assert re.search(rb"\n" + test + rb"[^:\n]*: [0-9.]+ requests per second", out), out

    bench("lpush,rpush,rpop,sadd,hset,zadd,mset")
    assert d.llen("mylist") >= 1000  # -P 16 overshoots -n a little, as against Redis itself
    assert all(e[:3] == MAGIC for e in d.lrange("mylist", 0, -1))
    assert d.hvals("myhash") and all(v[:3] == MAGIC for v in d.hvals("myhash"))
    assert d.smembers("myset") and all(m[:3] == MAGIC for m in d.smembers("myset"))
    assert d.zcard("myzset") and all(m[:3] == MAGIC for m in d.zrange("myzset", 0, -1))
    assert d.get("key:__rand_int__")[:3] == MAGIC  # MSET's keys
    c = veil.client()
    try:
        assert c.smembers("myset") == {b"element:__rand_int__"}
        assert len(c.lindex("mylist", 0)) == 3 and len(c.get("key:__rand_int__")) == 3
    finally:
        c.close()
    bench("spop,zpopmin,lpop")  # pops decrypt what the pushes sealed
    assert d.scard("myset") == 0 and d.zcard("myzset") == 0


# --- 7. faults: the upstream goes away and comes back; bad input closes only its client -------


def read_until_closed(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[VeilResp]:
    """veil in front of a redis-server of its own, which the test stops and restarts."""
    upstream = RedisServer().start()
    v = start_veil_resp(tmp_path, upstream)
    yield v
    v.stop()
    upstream.cleanup()


def test_upstream_down_then_back_without_restarting_veil(flaky: VeilResp) -> None:
    c = flaky.client()
    assert c.set("k", b"before") is True
    blocked = socket.create_connection(("127.0.0.1", flaky.port), 5)
    blocked.sendall(pack("BLPOP", "q", "10"))
    time.sleep(0.1)

    flaky.upstream.stop()
    # a command in flight on a dropped upstream connection is answered, then the client closed
    # (its server-side state is gone: a silent reconnect would hide that)
    assert read_until_closed(blocked) == b"-ERR veil: upstream unavailable\r\n"
    blocked.close()
    # meanwhile every command is answered with the error, in order, on a connection that stays
    idle = socket.create_connection(("127.0.0.1", flaky.port), 5)
    idle.sendall(pack("GET", "k") + pack("SET", "k", "v") + pack("PING"))
    assert exchange_on(idle, 3) == b"-ERR veil: upstream unavailable\r\n" * 3
    with pytest.raises(redis.ResponseError, match=f"^{UNAVAILABLE}$"):
        c.get("k")

    flaky.upstream.start()  # the same port; veil itself was never restarted
    idle.sendall(pack("SET", "k", "after") + pack("GET", "k"))
    assert exchange_on(idle, 2) == b"+OK\r\n$5\r\nafter\r\n"
    idle.close()
    assert c.get("k") == b"after"
    assert c.set("k2", b"second") is True
    assert c.append("k2", b"!") == 7  # the emulation's side connection recovered too
    c.close()
    d = flaky.direct()
    sealed(d.get("k2"), b"second!")
    d.close()


def exchange_on(s: socket.socket, replies: int) -> bytes:
    """The raw bytes of the next ``replies`` replies on an open connection."""
    reader = hiredis.Reader()
    raw = b""
    count = 0
    while count < replies:
        chunk = s.recv(65536)
        assert chunk, raw
        raw += chunk
        reader.feed(chunk)
        while reader.gets() is not False:
            count += 1
    return raw


BAD_INPUT = [
    (b"*1\r\n$abc\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*1\r\n*1\r\n", b"-ERR Protocol error: expected '$', got '*'\r\n"),
    (b"*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b'GET "unbalanced\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
    # oversized: a bulk over proto-max-bulk-len (512 MiB), refused on its header alone
    (b"*2\r\n$3\r\nGET\r\n$536870913\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    # an inline request over 64 KiB without a newline
    (b"GET " + b"k" * 70_000, b"-ERR Protocol error: too big inline request\r\n"),
]


@pytest.mark.parametrize(("bad", "error"), BAD_INPUT, ids=lambda v: repr(v[:12]))
def test_bad_request_closes_only_its_client(
    veil: VeilResp, d: Any, bad: bytes, error: bytes
) -> None:
    """The commands before the bad bytes run and are answered in order, then the protocol
    error, then that connection closes -- as Redis does; another client keeps working."""
    bystander = veil.client()
    try:
        assert bystander.set("k", b"mine") is True
        conn_id = bystander.client_id()
        good = pack("SET", "k2", "sealed before the error") + pack("SET", "plain:x", "1")
        good += pack("GET", "k") + b"GET plain:x\r\n"
        replies = b"+OK\r\n+OK\r\n$2\r\n\xff\xff\r\n$1\r\n1\r\n"
        for port, value in (
            (d.connection_pool.connection_kwargs["port"], d.get("k")),
            (veil.port, b"mine"),
        ):
            with socket.create_connection(("127.0.0.1", port), 5) as s:
                s.sendall(good + bad)
                expected = replies.replace(b"$2\r\n\xff\xff", b"$%d\r\n%s" % (len(value), value))
                assert read_until_closed(s) == expected + error
        assert bystander.get("k") == b"mine"
        assert bystander.client_id() == conn_id  # the same connection, never dropped
    finally:
        bystander.close()
    sealed(d.get("k"), b"mine")
    sealed(d.get("k2"), b"sealed before the error")


def test_quit_answers_then_closes_and_runs_nothing_after(veil: VeilResp, d: Any) -> None:
    data = pack("SET", "k", "before quit") + pack("QUIT") + pack("SET", "after", "quit")
    for port in (veil.upstream.port, veil.port):
        with socket.create_connection(("127.0.0.1", port), 5) as s:
            s.sendall(data)
            assert read_until_closed(s) == b"+OK\r\n+OK\r\n"
        assert d.exists("after") == 0
    sealed(d.get("k"), b"before quit")


def test_oversized_array_is_refused_before_buffering(veil: VeilResp, d: Any) -> None:
    """More than 1 Mi arguments: veil refuses on the header (Redis 7 would wait for them)."""
    bystander = veil.client()
    try:
        with socket.create_connection(("127.0.0.1", veil.port), 5) as s:
            s.sendall(b"*1048577\r\n$3\r\nSET\r\n")
            assert read_until_closed(s) == b"-ERR Protocol error: invalid multibulk length\r\n"
        assert bystander.set("k", b"still here") is True and bystander.get("k") == b"still here"
    finally:
        bystander.close()
    sealed(d.get("k"), b"still here")


# --- 8. TLS on the listener and the bind guard -------------------------------------------------


@dataclass
class Pem:
    cert: Path
    key: Path
    obj: Any  # the x509 certificate
    private: Any  # its key


def issue(tmp: Path, name: str, signer: Pem | None = None, *, ca: bool = False) -> Pem:
    """A certificate for ``name`` (also valid for 127.0.0.1), self-signed unless ``signer``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.obj.subject if signer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(signer.private if signer else key, hashes.SHA256())
    pem = Pem(tmp / f"{name}.crt", tmp / f"{name}.key", cert, key)
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem


def test_tls_listener_with_redis_py(tmp_path: Path, redis_server: RedisServer) -> None:
    redis_server.cli("FLUSHALL")
    server = issue(tmp_path, "localhost")
    v = start_veil_resp(
        tmp_path, redis_server, tls_cert=str(server.cert), tls_key=str(server.key), **SETTINGS
    )
    try:
        for protocol in (2, 3):
            c = v.client(ssl=True, ssl_ca_certs=str(server.cert), protocol=protocol)
            try:
                assert c.set("tls:k", b"over tls %d" % protocol) is True
                assert c.get("tls:k") == b"over tls %d" % protocol
                pipe = c.pipeline(transaction=True)
                pipe.set("plain:tls", b"clear").get("plain:tls")
                assert pipe.execute() == [True, b"clear"]
                big = bytes(range(256)) * 8192  # 2 MiB: many TLS records each way
                pipe = c.pipeline(transaction=False)
                pipe.set("tls:big", big).get("tls:big").set("tls:big2", big).get("tls:big2")
                assert pipe.execute() == [True, big, True, big]
            finally:
                c.close()
        # a client that does not speak TLS never gets an answer
        with socket.create_connection(("127.0.0.1", v.port), 5) as s:
            s.sendall(pack("PING"))
            with contextlib.suppress(ConnectionResetError):
                assert b"PONG" not in read_until_closed(s)
        with pytest.raises(redis.ConnectionError):
            v.client(retry=NO_RETRY).ping()
    finally:
        v.stop()
    d = redis.Redis(port=redis_server.port)
    sealed(d.get("tls:k"), b"over tls 3")
    sealed(d.get("tls:big"), bytes(range(256)) * 8192)
    assert d.get("plain:tls") == b"clear"
    d.close()


async def start_app(tmp: Path, **redis_settings: object) -> Any:
    """veil's App with a RESP listener (``redis_settings``) on this test's event loop."""
    from proxy.app import App

    settings = veil_settings(tmp, redis=redis_settings, admin={"listen": "off"})
    await init_keyring(settings)
    return App(settings, migrate=False)  # type: ignore[arg-type]


async def test_bind_guard_refuses_an_exposed_plaintext_oracle(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    app = await start_app(tmp_path, listen="0.0.0.0:0", upstream=redis_server.url)
    try:
        with pytest.raises(ConfigError, match="refusing to expose a plaintext oracle"):
            await app.start()
        assert "resp" not in app.ctx.listeners
    finally:
        await app.stop(grace=0)


async def test_bind_guard_allows_an_upstream_that_requires_auth(tmp_path: Path) -> None:
    upstream = RedisServer(extra=["--requirepass", "upstream-pw"]).start()
    url = f"redis://:upstream-pw@127.0.0.1:{upstream.port}/0"
    app = await start_app(tmp_path, listen="0.0.0.0:0", upstream=url)
    try:
        ctx = await app.start()
        port = ctx.listeners["resp"].address[1]
        anonymous = aioredis.Redis(port=port, socket_timeout=5, retry=AsyncRetry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            await anonymous.get("k")  # veil never authenticates a client on its behalf
        await anonymous.aclose()
        c = aioredis.Redis(port=port, password="upstream-pw", protocol=3, socket_timeout=5)
        assert await c.set("k", b"behind auth") is True and await c.get("k") == b"behind auth"
        assert await c.append("k", b"!") == len(b"behind auth!")  # side connection authenticates
        await c.aclose()
        d = aioredis.Redis(port=upstream.port, password="upstream-pw")
        sealed(await d.get("k"), b"behind auth!")
        await d.aclose()
    finally:
        await app.stop(grace=0)
        upstream.cleanup()


async def test_bind_guard_allows_client_certificates(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    ca = issue(tmp_path, "veil-test-ca", ca=True)
    server = issue(tmp_path, "localhost", ca)
    client = issue(tmp_path, "app-1", ca)
    app = await start_app(
        tmp_path,
        listen="0.0.0.0:0",
        upstream=redis_server.url,
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_client_ca=str(ca.cert),
    )
    try:
        ctx = await app.start()
        port = ctx.listeners["resp"].address[1]
        tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(ca.cert), "socket_timeout": 5}
        no_cert = aioredis.Redis(port=port, retry=AsyncRetry(NoBackoff(), 0), **tls)
        with pytest.raises(redis.ConnectionError):
            await no_cert.ping()
        await no_cert.aclose()
        c = aioredis.Redis(
            port=port, ssl_certfile=str(client.cert), ssl_keyfile=str(client.key), **tls
        )
        assert await c.set("mtls:k", b"mutual tls") is True
        assert await c.get("mtls:k") == b"mutual tls"
        await c.aclose()
    finally:
        await app.stop(grace=0)
    d = redis.Redis(port=redis_server.port)
    sealed(d.get("mtls:k"), b"mutual tls")
    d.close()
