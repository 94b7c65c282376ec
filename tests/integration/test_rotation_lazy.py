"""Lazy re-encryption on read (SPEC 8): a read through veil that meets an old key version
answers at once and queues the item; the queue rewrites it onto the active version. With the
background walk off, only the items that were read move -- Redis keys and S3 objects."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from proxy.app import App
from proxy.config import Settings
from proxy.crypto import meta
from proxy.crypto.envelope import HEADER, MAGIC
from tests.servers import (
    MotoServer,
    RedisServer,
    VeilResp,
    init_keyring,
    start_veil_resp,
    veil_settings,
)

ACCESS, SECRET = "lazy-client", "lazy-client-secret"


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


async def test_s3_gets_on_an_old_version_are_rewrapped(
    tmp_path: Path, moto_server: MotoServer
) -> None:
    """The same for S3: a GET (whole or ranged) that meets an old version queues the object;
    the queue rewraps it (metadata-only copy); objects nobody read stay where they were."""
    settings = veil_settings(
        tmp_path,
        s3={
            "listen": "127.0.0.1:0",
            "upstream": moto_server.url,
            "access_key": ACCESS,
            "secret_key": SECRET,
            "upstream_access_key": "testing",
            "upstream_secret_key": "testing",
        },
        admin={"listen": "off"},
    )
    assert isinstance(settings, Settings)
    await init_keyring(settings)
    app = App(settings, migrate=False)
    ctx = await app.start()
    try:
        host, port = ctx.listeners["s3"].address
        client = boto3.client(
            "s3",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id=ACCESS,
            aws_secret_access_key=SECRET,
        )
        direct = boto3.client(
            "s3",
            endpoint_url=moto_server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

        def stored_version(key: str) -> int:
            head = direct.head_object(Bucket="lazy", Key=key)
            header, _ = meta.decode(head["Metadata"]["veil-env"])
            return int.from_bytes(header[9:11], "big")

        bodies = {f"o{i}": os.urandom(100_000 + i) for i in range(6)}

        def fill() -> None:
            direct.create_bucket(Bucket="lazy")
            for key, body in bodies.items():
                client.put_object(Bucket="lazy", Key=key, Body=body, Metadata={"m": key})

        await asyncio.to_thread(fill)
        old = await asyncio.to_thread(stored_version, "o0")
        new = await rotate(app)

        def read() -> None:
            assert client.get_object(Bucket="lazy", Key="o0")["Body"].read() == bodies["o0"]
            got = client.get_object(Bucket="lazy", Key="o1", Range="bytes=10-99")["Body"].read()
            assert got == bodies["o1"][10:100]

        await asyncio.to_thread(read)
        for _ in range(200):
            versions = await asyncio.to_thread(lambda: [stored_version(k) for k in bodies])
            if versions[:2] == [new, new]:
                break
            await asyncio.sleep(0.05)
        assert versions == [new, new, old, old, old, old]

        def check() -> None:
            for key, body in bodies.items():
                got = client.get_object(Bucket="lazy", Key=key)
                assert got["Body"].read() == body and got["Metadata"] == {"m": key}

        await asyncio.to_thread(check)
    finally:
        await app.stop(grace=1.0)
