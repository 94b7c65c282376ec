"""Lazy re-encryption on read (SPEC 8): a GET through veil that meets an old key version
answers at once and queues the key; the queue rewrites it onto the active version. With the
background walk off, only the keys that were read move."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.crypto.envelope import HEADER, MAGIC
from tests.servers import RedisServer, VeilResp, start_veil_resp


@pytest.fixture
def veil(tmp_path: Path, redis_server: RedisServer) -> Iterator[VeilResp]:
    redis_server.cli("FLUSHALL")
    v = start_veil_resp(tmp_path, redis_server, migrate=False)
    yield v
    v.stop()


def version(stored: bytes) -> int:
    assert stored[:3] == MAGIC, stored
    return int(HEADER.unpack_from(stored)[4])


async def rotate(app: Any) -> int:
    ctx = app.ctx
    ops = ctx.engine.ops
    change = await ops.rotate("default")
    v = int(change.events[0]["version"])
    await ctx.runtime.refresh()
    await ctx.runtime.heartbeat()
    await ops.promote("default", v)
    await ctx.runtime.refresh()
    return v


def test_reads_on_an_old_version_are_rewritten_and_unread_keys_stay(veil: VeilResp) -> None:
    c: Any = veil.client()
    d: Any = veil.direct()
    keys = [f"lazy:{i}" for i in range(40)]
    c.mset({k: f"value {k}".encode() for k in keys})
    c.hset("lazyh", mapping={"f": b"field value"})
    old = version(d.get(keys[0]))
    new = veil.call(rotate(veil.app))
    assert new != old
    # reads on the old version answer at once (the plaintext), through both the GET fast
    # path (a pipeline of GETs) and the general path (MGET, HGET)
    pipe = c.pipeline(transaction=False)
    for k in keys[:10]:
        pipe.get(k)
    assert pipe.execute() == [f"value {k}".encode() for k in keys[:10]]
    assert c.mget(keys[10:20]) == [f"value {k}".encode() for k in keys[10:20]]
    assert c.hget("lazyh", "f") == b"field value"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        moved = [version(d.get(k)) == new for k in keys[:20]]
        if all(moved) and version(d.hget("lazyh", "f")) == new:
            break
        time.sleep(0.05)
    assert [version(d.get(k)) for k in keys[:20]] == [new] * 20
    assert version(d.hget("lazyh", "f")) == new
    # keys nobody read stay where they were (the background walk is off here)
    assert {version(d.get(k)) for k in keys[20:]} == {old}
    # and everything still reads back
    assert c.mget(keys) == [f"value {k}".encode() for k in keys]
