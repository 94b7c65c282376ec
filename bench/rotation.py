"""Migration throughput and its effect on clients, in one run.

    python3 bench/rotation.py [--values 1000000] [--objects 1000] [--quick]

Starts its own redis-server and moto server on free ports and a local keyring in a temp dir.

Redis: writes N small encrypted values (as veil writes them), rotates, and measures
1. the unloaded migration rate (``reencrypt.rate`` unlimited): values re-encrypted per second;
2. client latency (a redis-py client doing GET+SET in a loop, directly against Redis) without a
   migration, and during a migration at the default ``reencrypt.rate``.

S3: uploads objects of 1 MiB (and a few of 64 MiB) through veil with boto3, rotates, and times
the rewrap pass, counting the body bytes veil reads from the store (a rewrap is a metadata-only
copy: it should read none).

Targets (issue 5): unloaded Redis migration >= 20,000 values/s; at the default rate client p99
rises by <= 50%; S3 rewrap moves 0 body bytes through veil and reaches >= 200 objects/s on 1 MiB
objects.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from proxy import wiring
from proxy.config import parse_settings
from proxy.crypto.context import Role
from proxy.metrics import Metrics
from proxy.redis.values import RedisValues
from proxy.rotation.engine import Engine
from proxy.rotation.redis_walk import RedisMigrator, RedisWalker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(values: RedisValues, r: aioredis.Redis, n: int) -> None:
    batch = 5000
    payload = os.urandom(100)
    for start in range(0, n, batch):
        async with r.pipeline(transaction=False) as p:
            for i in range(start, min(n, start + batch)):
                key = b"v:%d" % i
                p.set(key, values.seal(key, Role.STRING, payload))
            await p.execute()


async def client_latencies(url: str, seconds: float) -> list[float]:
    r = aioredis.Redis.from_url(url)
    out = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        await r.set(b"client:%d" % (i % 1000), b"x" * 100)
        await r.get(b"client:%d" % (i % 1000))
        out.append(time.perf_counter() - t)
        i += 1
    await r.aclose()
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1e3


async def bench_s3(tmp: Path, objects: int, big: int) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    from proxy import _moto_conditions
    from proxy.app import App

    _moto_conditions.install()  # copy conditions as S3 checks them (as veil demo and tests do)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log
    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    settings = parse_settings(
        {
            "redis": {"listen": "off"},
            "admin": {"listen": "off"},
            "s3": {
                "listen": f"127.0.0.1:{free_port()}",
                "upstream": f"http://127.0.0.1:{moto_port}",
                "access_key": "bench",
                "secret_key": "bench-secret-key",
                "upstream_access_key": "testing",
                "upstream_secret_key": "testing",
            },
            "keys": {
                "store": f"file:{tmp / 's3kr.json'}",
                "root_key_file": str(tmp / "s3root"),
                "local_copy": str(tmp / "s3copy"),
                "propagation_delay": "0s",
            },
            "reencrypt": {"rate": 1e8, "concurrency": 16, "batch": 500},
            "audit": {"path": str(tmp / "s3audit")},
        },
        {},
    )
    store = wiring.build_store(settings.keys)
    provider = wiring.build_provider(settings.keys, create_root=True)
    ops = wiring.build_ops(settings, store, provider)
    await ops.init([])
    app = App(settings, migrate=False)
    ctx = await app.start()
    host, port = ctx.listeners["s3"].address
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench-secret-key",
    )
    raw = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{moto_port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    raw.create_bucket(Bucket="bench")
    body = os.urandom(1 << 20)
    huge = os.urandom(64 << 20)

    def upload() -> None:
        for i in range(objects):
            client.put_object(Bucket="bench", Key=f"small/{i}", Body=body)
        for i in range(big):
            client.put_object(Bucket="bench", Key=f"big/{i}", Body=huge)

    t = time.perf_counter()
    await asyncio.get_running_loop().run_in_executor(None, upload)
    print(
        f"\nS3: uploaded {objects:,} x 1 MiB and {big} x 64 MiB objects through veil in "
        f"{time.perf_counter() - t:.1f}s"
    )
    change = await ops.rotate("default")
    await ctx.runtime.refresh()
    await ops.promote("default", int(change.events[0]["version"]))
    await ctx.runtime.refresh()
    deps = ctx.listeners["s3"].deps
    read = 0
    original = deps.upstream.send

    async def counting_send(method: str, target: Any, *a: Any, **kw: Any) -> Any:
        nonlocal read
        resp = await original(method, target, *a, **kw)
        if method == "GET" and target.key is not None and not target.query:
            read += int(resp.headers.get("Content-Length", 0))  # an object body
        return resp

    deps.upstream.send = counting_send  # type: ignore[method-assign]
    assert ctx.engine is not None
    t = time.perf_counter()
    status = await ctx.engine.run_pass("s3", ctx.engine.plan(ctx.runtime.keyset.keyring)[0])
    dt = time.perf_counter() - t
    total = objects + big
    print(
        f"S3 rewrap pass: {status.migrated:,} of {total:,} objects in {dt:.1f}s = "
        f"{status.migrated / dt:,.0f} objects/s (target >= 200); body bytes read through "
        f"veil: {read:,} (target 0)"
    )
    # the store's own ceiling for the same three calls (HEAD, GET ?acl, conditional self-copy)
    # made directly with boto3 at the same concurrency: a rewrap cannot go faster than this
    from concurrent.futures import ThreadPoolExecutor

    def same_calls(i: int) -> None:
        key = f"small/{i}"
        head = raw.head_object(Bucket="bench", Key=key)
        raw.get_object_acl(Bucket="bench", Key=key)
        raw.copy_object(
            Bucket="bench",
            Key=key,
            CopySource={"Bucket": "bench", "Key": key},
            MetadataDirective="REPLACE",
            Metadata=head["Metadata"],
            CopySourceIfMatch=head["ETag"],
        )

    def direct_calls() -> float:
        t = time.perf_counter()
        with ThreadPoolExecutor(settings.reencrypt.concurrency) as pool:
            list(pool.map(same_calls, range(objects)))
        return objects / (time.perf_counter() - t)

    ceiling = await asyncio.get_running_loop().run_in_executor(None, direct_calls)
    print(
        f"the store's ceiling (boto3 making the same 3 calls directly): {ceiling:,.0f} "
        f"objects/s; veil's rewrap runs at {status.migrated / dt / ceiling:.2f}x of it"
    )
    await app.stop(1)
    moto.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--values", type=int, default=1_000_000)
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="100,000 values, 200 objects")
    args = ap.parse_args()
    n = 100_000 if args.quick else args.values
    tmp = Path(tempfile.mkdtemp(prefix="veil-bench-rot-"))
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        await asyncio.sleep(0.3)
        settings = parse_settings(
            {
                "redis": {"listen": f"127.0.0.1:{free_port()}", "upstream": url},
                "s3": {"listen": "off"},
                "admin": {"listen": "off"},
                "keys": {
                    "store": f"file:{tmp / 'kr.json'}",
                    "root_key_file": str(tmp / "root"),
                    "local_copy": str(tmp / "copy"),
                    "propagation_delay": "0s",
                },
                "audit": {"path": str(tmp / "audit")},
            },
            {},
        )
        store = wiring.build_store(settings.keys)
        provider = wiring.build_provider(settings.keys, create_root=True)
        ops = wiring.build_ops(settings, store, provider)
        await ops.init([])
        runtime = wiring.build_runtime(settings, store, provider)
        await runtime.start()
        values = RedisValues(settings.redis, settings.keys, runtime)
        r = aioredis.Redis.from_url(url)
        t = time.perf_counter()
        await fill(values, r, n)
        print(f"wrote {n:,} encrypted values in {time.perf_counter() - t:.1f}s")

        async def rotate() -> None:
            change = await ops.rotate("default")
            await runtime.refresh()
            await ops.promote("default", int(change.events[0]["version"]))
            await runtime.refresh()

        def engine(rate: float) -> Engine:
            clients: dict[int, Any] = {}

            def client(db: int) -> Any:
                return clients.setdefault(db, aioredis.Redis.from_url(url, db=db))

            return Engine(
                runtime=runtime,
                store=store,
                ops=ops,
                metrics=Metrics(),
                audit=lambda e: None,
                walkers=[RedisWalker(RedisMigrator(values, client, batch=500))],
                rate=rate,
                lease_ttl=60,
                breaker_threshold=100,
                breaker_window=60,
                rotation_periods={},
                auto_revoke=False,
                clock=runtime._clock,
            )

        await rotate()
        e = engine(0)
        t = time.perf_counter()
        status = await e.run_pass("redis", e.plan(runtime.keyset.keyring)[0])
        dt = time.perf_counter() - t
        print(
            f"\nunloaded migration: {status.migrated:,} values in {dt:.1f}s = "
            f"{status.migrated / dt:,.0f} values/s  (target >= 20,000)"
        )

        phase = 5.0 if args.quick else 15.0
        base = await client_latencies(url, phase)
        await rotate()
        default_rate = settings.reencrypt.rate
        e = engine(default_rate)
        walk = asyncio.create_task(e.run_pass("redis", e.plan(runtime.keyset.keyring)[0]))
        during = await client_latencies(url, phase)
        walk.cancel()
        print(
            f"\nclient GET+SET round trip, direct to Redis, {phase:.0f}s each "
            f"(migration at the default reencrypt.rate = {default_rate:g} items/s):"
        )
        print(f"{'':<22}{'ops':>8}{'p50 ms':>10}{'p99 ms':>10}")
        for label, lat in (("no migration", base), ("during migration", during)):
            print(f"{label:<22}{len(lat):>8,}{p(lat, 50):>10.3f}{p(lat, 99):>10.3f}")
        print(f"p99 rise: {p(during, 99) / p(base, 99) - 1:+.0%}  (target <= +50%)")
        await r.aclose()
        await bench_s3(tmp, 200 if args.quick else args.objects, 1 if args.quick else 4)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
