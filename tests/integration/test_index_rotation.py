"""Commands on deterministic members while an index rotation is in progress (SPEC 6).

veil runs with ``migrate=False`` and lazy re-encryption off, so after the index keyring is
rotated nothing is rebuilt until the test runs the engine itself: every member written before
the rotation is still stored under the old index version. Each command on an encrypted key is
mirrored on a plaintext key (``plain:*``, passed through byte for byte) and the two replies must
be identical values (doubles with Redis's digits, null bulks vs null arrays), in RESP2 and RESP3.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from protocols.resp import (
    NEED_DATA,
    UPSTREAM_LIMITS,
    ErrorReply,
    ReplyDecoder,
    SimpleString,
    Value,
    encode_command,
)
from proxy.crypto.context import Role
from proxy.crypto.envelope import HEADER
from proxy.crypto.keys import KeyKind
from tests.servers import RedisServer, VeilResp, start_veil_resp

ROTATING = ErrorReply(b"ERR veil: index rotation in progress")


class Raw:
    """A bare RESP connection: replies decoded exactly (types, nulls, a double's text)."""

    def __init__(self, port: int, protocol: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.dec = ReplyDecoder(UPSTREAM_LIMITS)
        if protocol == 3:
            assert not isinstance(self("HELLO", "3"), ErrorReply)

    def __call__(self, *args: object) -> Value:
        words = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.sock.sendall(encode_command(words))
        while True:
            value = self.dec.next()
            if value is not NEED_DATA:
                return value
            self.dec.feed(self.sock.recv(65536))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def veil(tmp_path: Any, redis_server: RedisServer) -> Iterator[VeilResp]:
    redis_server.cli("FLUSHALL")
    v = start_veil_resp(
        tmp_path,
        redis_server,
        migrate=False,
        plaintext=["plain:*"],
        deterministic_lists=["*dl:*"],
        deterministic_fields=["*df:*"],
    )
    v.app.ctx.listeners["resp"].cipher.on_stale = None  # type: ignore[attr-defined]
    yield v
    v.stop()


async def rotate_index(app: Any) -> int:
    ctx = app.ctx
    change = await ctx.engine.ops.rotate("default", KeyKind.INDEX)
    version = int(change.events[0]["version"])
    await ctx.runtime.refresh()
    await ctx.engine.ops.promote("default", version, KeyKind.INDEX)
    await ctx.runtime.refresh()
    return version


def index_version(stored: bytes) -> int:
    return int(HEADER.unpack_from(stored)[4])


def fill(c: Raw, key: str) -> None:
    """The same data under an encrypted and (``plain:``) a plaintext name."""
    for k in (key, f"plain:{key}"):
        assert c("SADD", f"{k}:s", "a", "b", "c") == 3
        assert c("SADD", f"{k}:t", "b", "c", "d") == 3
        assert c("ZADD", f"{k}:z", 1, "a", 2.5, "b", 3.1, "c") == 3
        assert c("RPUSH", f"{k}:dl:1", "a", "b", "a", "c") == 4
        assert c("HSET", f"{k}:df:1", "email", "a@example.com", "name", "Ann") == 2
        assert c("GEOADD", f"{k}:g", 13.361389, 38.115556, "pa", 15.087269, 37.502669, "ca") == 2


SCRIPT: list[tuple[object, ...]] = [
    # sets
    ("SISMEMBER", "{}:s", "a"),
    ("SISMEMBER", "{}:s", "nope"),
    ("SMISMEMBER", "{}:s", "a", "nope", "c"),
    ("SADD", "{}:s", "a"),
    ("SADD", "{}:s", "a", "e"),
    ("SCARD", "{}:s"),
    ("SREM", "{}:s", "c", "nope"),
    ("SCARD", "{}:s"),
    ("SMOVE", "{}:s", "{}:s2", "b"),
    ("SISMEMBER", "{}:s2", "b"),
    ("SCARD", "{}:s"),
    ("ZSCORE", "{}:s", "a"),
    # sorted sets
    ("ZSCORE", "{}:z", "a"),
    ("ZSCORE", "{}:z", "nope"),
    ("ZMSCORE", "{}:z", "a", "nope", "b"),
    ("ZRANK", "{}:z", "b"),
    ("ZREVRANK", "{}:z", "b"),
    ("ZRANK", "{}:z", "nope"),
    ("ZADD", "{}:z", 5, "a"),
    ("ZADD", "{}:z", "XX", "CH", 7, "b"),
    ("ZADD", "{}:z", "NX", 9, "a"),
    ("ZADD", "{}:z", "INCR", 1.5, "c"),
    ("ZADD", "{}:z", "NX", "INCR", 1, "a"),
    ("ZADD", "{}:z", "GT", 0, "c"),
    ("ZINCRBY", "{}:z", 0.1, "a"),
    ("ZREM", "{}:z", "b", "nope"),
    ("ZCARD", "{}:z"),
    ("ZRANGE", "{}:z", 0, -1, "WITHSCORES"),
    ("SADD", "{}:z", "x"),
    # geo
    ("GEOPOS", "{}:g", "pa", "nope"),
    ("GEOHASH", "{}:g", "pa", "nope"),
    ("GEODIST", "{}:g", "pa", "ca", "km"),
    ("GEODIST", "{}:g", "pa", "nope"),
    (
        "GEOSEARCH",
        "{}:g",
        "FROMMEMBER",
        "pa",
        "BYRADIUS",
        500,
        "km",
        "ASC",
        "WITHCOORD",
        "WITHDIST",
        "WITHHASH",
    ),
    ("GEORADIUSBYMEMBER", "{}:g", "ca", 500, "km", "ASC", "WITHCOORD"),
    ("GEOSEARCH", "{}:g", "FROMMEMBER", "nope", "BYRADIUS", 500, "km"),
    ("GEOSEARCHSTORE", "{}:g2", "{}:g", "FROMMEMBER", "pa", "BYRADIUS", 500, "km"),
    ("ZCARD", "{}:g2"),
    ("GEOADD", "{}:g", 13.4, 38.2, "pa"),
    ("ZCARD", "{}:g"),
    # deterministic hash field names
    ("HGET", "{}:df:1", "email"),
    ("HEXISTS", "{}:df:1", "email"),
    ("HEXISTS", "{}:df:1", "nope"),
    ("HMGET", "{}:df:1", "email", "nope", "name"),
    ("HSTRLEN", "{}:df:1", "email"),
    ("HSET", "{}:df:1", "email", "b@example.com"),
    ("HSETNX", "{}:df:1", "name", "Bob"),
    ("HLEN", "{}:df:1"),
    ("HGET", "{}:df:1", "email"),
    ("HDEL", "{}:df:1", "name", "nope"),
    ("HLEN", "{}:df:1"),
    # deterministic lists
    ("LREM", "{}:dl:1", 0, "a"),
    ("LINSERT", "{}:dl:1", "BEFORE", "c", "x"),
    ("LPOS", "{}:dl:1", "c"),
    ("LRANGE", "{}:dl:1", 0, -1),
]


def run(c: Raw, key: str, cmd: tuple[object, ...]) -> Value:
    return c(*[a.format(key) if isinstance(a, str) and "{}" in a else a for a in cmd])


def test_members_are_found_under_every_index_version_until_the_rebuild(veil: VeilResp) -> None:
    raws = {p: Raw(veil.port, p) for p in (2, 3)}
    try:
        for p, c in raws.items():
            fill(c, f"k{p}")
        old = 1
        assert veil.call(rotate_index(veil.app)) == 2
        server = veil.app.ctx.listeners["resp"]  # type: ignore[attr-defined]
        dispatch = server.dispatch
        sadd = [b"SADD", b"k2:s", b"a"]
        assert dispatch.plan(dispatch.row(sadd), sadd)[0][0] == b"EVAL"  # the one-step script

        # every command answers exactly what it answers on plaintext, in both protocols
        upstream = Raw(veil.upstream.port, 2)
        assert upstream("CONFIG", "SET", "slowlog-log-slower-than", 0) == SimpleString(b"OK")
        upstream("CONFIG", "SET", "slowlog-max-len", 10000)
        upstream("SLOWLOG", "RESET")
        for p, c in raws.items():
            for cmd in SCRIPT:
                got, want = run(c, f"k{p}", cmd), run(c, f"plain:k{p}", cmd)
                assert got == want, (p, cmd, got, want)
        # ... and what reached Redis for the encrypted keys never held a plaintext member
        secrets = {b"a", b"b", b"c", b"e", b"x", b"nope", b"pa", b"ca", b"email", b"name",
                   b"Bob", b"b@example.com"}  # fmt: skip
        log = upstream("SLOWLOG", "GET", -1)
        upstream("CONFIG", "SET", "slowlog-log-slower-than", 10000)
        upstream.close()
        assert isinstance(log, list)
        sent = [e[3] for e in log if isinstance(e, list) and isinstance(e[3], list)]
        ours = [
            a
            for a in sent
            if any(isinstance(w, bytes) and w.startswith((b"k2:", b"k3:")) for w in a)
        ]
        assert any(a[0] == b"EVAL" for a in ours)
        assert not [a for a in ours if secrets & set(a)]

        c = raws[2]
        # a list element still under the old version: refused, never a partial answer
        assert c("LPOS", "k2:dl:1", "b") == ROTATING
        # multi-key set algebra compares members across keys: refused
        for cmd in [
            ("SINTER", "k2:s", "k2:t"),
            ("SUNION", "k2:s", "k2:t"),
            ("SDIFF", "k2:s", "k2:t"),
            ("SINTERSTORE", "k2:u", "k2:s", "k2:t"),
            ("SINTERCARD", 2, "k2:s", "k2:t"),
            ("ZUNION", 2, "k2:z", "k2:g"),
            ("ZINTERSTORE", "k2:u", 2, "k2:z", "k2:g"),
        ]:
            assert c(*cmd) == ROTATING, cmd
        assert sorted(c("SUNION", "k2:s")) == [b"a", b"e"]  # one key compares nothing

        # inside MULTI the lookups keep their place in EXEC's array
        assert c("MULTI") == SimpleString(b"OK")
        for cmd in (("SADD", "k2:t", "b"), ("SISMEMBER", "k2:t", "d"), ("ZSCORE", "k2:z", "c")):
            assert c(*cmd) == SimpleString(b"QUEUED")
        assert c("EXEC") == [0, 1, b"4.5999999999999996"]

        # upstream: no plaintext under two versions; what was written moved to the new one
        values = server.values
        d: Any = veil.direct()
        for key, role in [("k2:s", Role.SET_MEMBER), ("k2:t", Role.SET_MEMBER),
                          ("k2:z", Role.ZSET_MEMBER), ("k2:g", Role.ZSET_MEMBER)]:  # fmt: skip
            stored = list(d.smembers(key) if role is Role.SET_MEMBER else d.zrange(key, 0, -1))
            plain = Counter(values.open(key.encode(), role, m)[0] for m in stored)
            assert max(plain.values()) == 1, (key, plain)
        versions = {values.open(b"k2:s", Role.SET_MEMBER, m)[0]: index_version(m)
                    for m in d.smembers("k2:s")}  # fmt: skip
        assert versions == {b"a": 2, b"e": 2}
        fields = {index_version(f) for f in d.hkeys("k2:df:1")}
        assert fields == {2}
        t_versions = {values.open(b"k2:t", Role.SET_MEMBER, m)[0]: index_version(m)
                      for m in d.smembers("k2:t")}  # fmt: skip
        assert t_versions == {b"b": 2, b"c": old, b"d": old}  # SADD moved b; reads move nothing

        # the rebuild finishes, its completion is recorded: set algebra answers again
        veil.call(veil.app.ctx.engine.tick())  # type: ignore[attr-defined]
        kr = veil.app.ctx.runtime.keyset.keyring  # type: ignore[attr-defined]
        assert kr.cls("default").index_versions[0].migration_complete is not None
        assert {index_version(m) for m in d.smembers("k2:t")} == {2}
        assert sorted(c("SINTER", "k2:s", "k2:t")) == []
        assert c("SADD", "k2:t", "a") == 1
        assert c("SINTER", "k2:s", "k2:t") == [b"a"]
        assert c("SINTERSTORE", "k2:u", "k2:s", "k2:t") == 1
        assert c("LPOS", "k2:dl:1", "b") == 0
        assert dispatch.plan(dispatch.row(sadd), sadd)[0][0] == b"SADD"  # sealed in place
        d.close()
    finally:
        for c in raws.values():
            c.close()
