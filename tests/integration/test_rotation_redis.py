"""The Redis migration walker and the engine, against a real redis-server (SPEC 8)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy import wiring
from proxy.config import Settings
from proxy.crypto.context import Role
from proxy.crypto.envelope import HEADER, MAGIC
from proxy.keys.model import State
from proxy.keys.ops import KeyOps
from proxy.keys.runtime import KeyringRuntime
from proxy.metrics import Metrics
from proxy.redis.values import RedisValues
from proxy.rotation.control import BREAKER_OPEN, StoreStatus
from proxy.rotation.engine import Engine, Stop
from proxy.rotation.redis_walk import Plan, RedisMigrator, RedisWalker, Tally
from tests.servers import init_keyring, veil_settings


@dataclasses.dataclass
class Rig:
    settings: Settings
    runtime: KeyringRuntime
    ops: KeyOps
    values: RedisValues
    r: aioredis.Redis
    url: str
    events: list[dict[str, Any]]

    def engine(self, **kw: Any) -> Engine:
        clients: dict[int, aioredis.Redis] = {}

        def factory(db: int) -> aioredis.Redis:
            if db not in clients:
                clients[db] = aioredis.Redis.from_url(self.url, db=db)
            return clients[db]

        args: dict[str, Any] = dict(
            runtime=self.runtime,
            store=self.runtime.store,
            ops=self.ops,
            metrics=Metrics(),
            audit=self.events.append,
            walkers=[RedisWalker(RedisMigrator(self.values, factory, batch=50))],
            rate=0,
            lease_ttl=30,
            breaker_threshold=5,
            breaker_window=60,
            rotation_periods={},
            auto_revoke=False,
            clock=self.runtime._clock,
        )
        args.update(kw)
        return Engine(**args)

    async def rotate(self) -> int:
        change = await self.ops.rotate("default")
        v = int(change.events[0]["version"])
        await self.runtime.refresh()
        await self.runtime.heartbeat()
        await self.ops.promote("default", v)
        await self.runtime.refresh()
        return v


@pytest.fixture
async def rig(tmp_path: Path, redis_url: str) -> AsyncIterator[Rig]:
    settings = veil_settings(
        tmp_path,
        redis={
            "upstream": redis_url,
            "plaintext": ["counter:*"],
            "namespaces": [{"pattern": "cache:*", "name": "cache", "drop_on_revoke": True}],
        },
        keys={"grace_period": "0s", "destroy_min_age": "0s"},
    )
    assert isinstance(settings, Settings)
    await init_keyring(settings)
    store = wiring.build_store(settings.keys)
    provider = wiring.build_provider(settings.keys)
    runtime = wiring.build_runtime(settings, store, provider)
    await runtime.start()
    ops = wiring.build_ops(settings, store, provider)
    values = RedisValues(settings.redis, settings.keys, runtime)
    r = aioredis.Redis.from_url(redis_url)
    yield Rig(settings, runtime, ops, values, r, redis_url, [])
    await r.aclose()


def version_of(stored: bytes) -> int:
    assert stored[:3] == MAGIC
    return int(HEADER.unpack_from(stored)[4])


async def fill(rig: Rig, n: int = 300) -> None:
    v = rig.values
    async with rig.r.pipeline(transaction=False) as p:
        for i in range(n):
            p.set(f"s:{i}", v.seal(f"s:{i}".encode(), Role.STRING, b"value %d" % i))
        p.expire("s:0", 1000)
        for i in range(20):
            key = f"h:{i}".encode()
            p.hset(
                key,
                mapping={
                    f"f{j}": v.seal(key, Role.HASH_VALUE, b"v%d" % j, b"f%d" % j) for j in range(5)
                },
            )
        for i in range(10):
            key = f"l:{i}".encode()
            p.rpush(key, *[v.seal(key, Role.LIST_ELEMENT, b"e%d" % j) for j in range(7)])
        p.set("counter:1", b"41")
        p.set("cache:1", v.seal(b"cache:1", Role.STRING, b"cached"))
        await p.execute()


async def all_versions(rig: Rig) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {"string": set(), "hash": set(), "list": set()}
    async for key in rig.r.scan_iter(count=500):
        if key.startswith((b"__veil__", b"counter:", b"cache:")):
            continue
        t = (await rig.r.type(key)).decode()
        if t == "string":
            out[t].add(version_of(await rig.r.get(key)))
        elif t == "hash":
            out[t] |= {version_of(x) for x in (await rig.r.hgetall(key)).values()}
        elif t == "list":
            out[t] |= {version_of(x) for x in await rig.r.lrange(key, 0, -1)}
    return out


async def test_a_pass_moves_every_item_keeping_ttls_and_plaintext(rig: Rig) -> None:
    await fill(rig)
    await rig.rotate()
    assert (await all_versions(rig))["string"] == {1}
    engine = rig.engine()
    await engine.tick()
    assert await all_versions(rig) == {"string": {2}, "hash": {2}, "list": {2}}
    assert 990 < await rig.r.ttl("s:0") <= 1000
    assert await rig.r.get("counter:1") == b"41"  # plaintext patterns are never touched
    plain, version = rig.values.open(b"h:3", Role.HASH_VALUE, await rig.r.hget("h:3", "f4"), b"f4")
    assert (plain, version) == (b"v4", 2)
    assert (await rig.r.lrange("l:2", 0, -1)) and rig.values.open(
        b"l:2", Role.LIST_ELEMENT, (await rig.r.lrange("l:2", 0, -1))[6]
    )[0] == b"e6"
    status = await engine.status_json()
    body = status["stores"]["redis"]
    assert body["complete"] and body["remaining"] == {} and body["migrated"] == 300 + 100 + 70
    assert rig.values.open(b"cache:1", Role.STRING, await rig.r.get("cache:1"))[1] == 1
    assert set(body) == {
        "state",
        "pass_id",
        "pass_started_at",
        "scanned",
        "migrated",
        "remaining",
        "unmigratable",
        "complete",
        "eta_seconds",
    }
    kr = await rig.ops.load()
    v1 = kr.cls("default").find(rig.values.runtime.keyset.active(0).kind, 1)
    assert v1 is not None and v1.migration_complete is not None
    # the census: the cache item stays on v1 until v1 is revoked (then it is dropped)
    assert v1.items["redis"] == 1 and kr.cls("default").versions[1].items["redis"] == 470
    await rig.ops.revoke("default", 1)  # completeness is what revoke requires
    assert [e["event"] for e in rig.events][:2] == ["migration.started", "migration.finished"]


async def test_a_concurrent_client_write_wins(rig: Rig) -> None:
    await rig.r.set("s:x", rig.values.seal(b"s:x", Role.STRING, b"old"))
    await rig.rotate()
    stale = await rig.r.get("s:x")
    newer = rig.values.seal(b"s:x", Role.STRING, b"written by a client")
    await rig.r.set("s:x", newer)  # the client writes between our read and our write
    m = RedisMigrator(rig.values, lambda db: rig.r)
    tally = Tally()
    from proxy.rotation.redis_walk import _CAS_STRING, _Write

    replacement = rig.values.seal(b"s:x", Role.STRING, b"old")
    await m._apply(rig.r, [_Write(_CAS_STRING, b"s:x", (stale, replacement), "0/1")], tally)
    assert tally.conflicts == 1 and await rig.r.get("s:x") == newer


async def test_streams_are_unmigratable_and_block_completion(rig: Rig) -> None:
    key = b"events"
    await rig.r.xadd(key, {"f": rig.values.seal(key, Role.STREAM_VALUE, b"x", b"f")})
    await rig.rotate()
    engine = rig.engine()
    await engine.tick()
    body = (await engine.status_json())["stores"]["redis"]
    assert body["unmigratable"] == {"stream": 1}
    kr = await rig.ops.load()
    assert kr.cls("default").versions[0].migration_complete is None


async def test_tampered_ciphertext_opens_the_breaker(rig: Rig) -> None:
    await fill(rig, 20)
    for i in range(8):
        stored = bytearray(await rig.r.get(f"s:{i}"))
        stored[-1] ^= 1
        await rig.r.set(f"s:{i}", bytes(stored))
    await rig.rotate()
    engine = rig.engine()
    await engine.tick()
    status = await engine.status_json()
    assert status["state"] == BREAKER_OPEN
    assert engine.metrics.breaker_open.labels("redis")._value.get() == 1
    assert any(e["event"] == "migration.breaker_open" for e in rig.events)
    # tampered values are never rewritten: the envelope bytes are left for forensics
    assert version_of(await rig.r.get("s:0")) == 1


async def test_takeover_resumes_from_the_checkpoint(rig: Rig) -> None:
    await fill(rig, 400)
    await rig.rotate()
    first = rig.engine()
    walker = first.walkers["redis"]
    original = walker.run_pass
    calls = 0

    async def dying_pass(plan: Plan, status: StoreStatus, step: Any) -> Tally:
        async def step_then_die(tally: Tally, st: StoreStatus) -> bool:
            nonlocal calls
            calls += 1
            await step(tally, st)
            if calls == 3:
                await first._checkpoint("redis", st)
                raise Stop()  # the holder dies mid-walk
            return True

        return await original(plan, status, step_then_die)

    walker.run_pass = dying_pass  # type: ignore[method-assign]
    await first.run_pass("redis", first.plan(rig.runtime.keyset.keyring)[0])
    saved = StoreStatus.from_json(await rig.runtime.store.get_state("reencrypt:redis"))
    assert saved.state == "running" and saved.cursor and 0 < saved.migrated < 400
    second = rig.engine()
    await second.tick()
    body = (await second.status_json())["stores"]["redis"]
    assert body["complete"] and body["pass_id"] == saved.pass_id
    assert (await all_versions(rig))["string"] == {2}


async def test_cache_namespace_drops_items_of_revoked_versions(rig: Rig) -> None:
    await fill(rig, 5)
    await rig.rotate()
    await rig.ops.revoke("default", 1, force=True)
    await rig.runtime.refresh()
    engine = rig.engine()
    plan = engine.plan(rig.runtime.keyset.keyring)[0]
    await engine.run_pass("redis", plan)
    assert await rig.r.get("cache:1") is None  # deleted, not migrated
    assert rig.runtime.keyset.keyring.cls("default").versions[0].state is State.REVOKED


async def test_emergency_migrates_the_compromised_version_first(rig: Rig) -> None:
    await fill(rig, 30)
    await rig.ops.revoke("default", 1, emergency=True)
    await rig.runtime.refresh()
    engine = rig.engine()
    plan, emergency = engine.plan(rig.runtime.keyset.keyring)
    assert emergency and plan.compromised_only == {(0, 1)}
    await engine.tick()
    assert (await all_versions(rig))["string"] == {2}
    await engine.tick()  # a normal pass then proves completeness; the revocation completes
    kr = await rig.ops.load()
    assert kr.cls("default").versions[0].state is State.REVOKED


async def test_legacy_plaintext_is_encrypted_in_place_when_allowed(
    rig: Rig, tmp_path: Path
) -> None:
    await rig.r.set("legacy:1", b"written before veil")
    rig.values.redis = dataclasses.replace(rig.values.redis, legacy_plaintext="allow")
    engine = rig.engine()
    await engine.set_control(start_requested="now")
    await engine.tick()
    stored = await rig.r.get("legacy:1")
    assert stored[:3] == MAGIC and rig.values.open(b"legacy:1", Role.STRING, stored) == (
        b"written before veil",
        1,
    )


def test_random_values_do_not_start_with_the_magic() -> None:
    assert all(os.urandom(8)[:3] != MAGIC for _ in range(1000))


async def veil_cli(rig: Rig, tmp: Path, *args: str) -> tuple[int, str, str]:
    import asyncio

    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env.update(
        {
            "VEIL_KEYS_STORE": f"file:{tmp / 'keyring.json'}",
            "VEIL_KEYS_ROOT_KEY_FILE": str(tmp / "root.key"),
            "VEIL_REDIS_LISTEN": "127.0.0.1:16380",
            "VEIL_REDIS_UPSTREAM": rig.url,
            "VEIL_S3_LISTEN": "off",
        }
    )
    proc = await asyncio.create_subprocess_exec(
        "veil",
        *args,
        env=env,
        cwd=tmp,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_reencrypt_cli_status_wait_pause_resume(rig: Rig, tmp_path: Path) -> None:
    import json

    await fill(rig, 50)
    await rig.rotate()
    code, out, _ = await veil_cli(rig, tmp_path, "reencrypt", "start", "--dry-run", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["versions"][0]["version"] == 1
    code, out, _ = await veil_cli(rig, tmp_path, "reencrypt", "status", "--wait", "--timeout", "1")
    assert code == 3  # nothing has run yet
    assert (await veil_cli(rig, tmp_path, "reencrypt", "pause"))[0] == 0
    engine = rig.engine()
    await engine.tick()
    assert (await all_versions(rig))["string"] == {1}  # paused: nothing moved
    code, out, _ = await veil_cli(rig, tmp_path, "reencrypt", "status", "--json")
    assert json.loads(out)["state"] == "paused"
    assert (await veil_cli(rig, tmp_path, "reencrypt", "resume"))[0] == 0
    await engine.tick()
    code, out, _ = await veil_cli(
        rig, tmp_path, "reencrypt", "status", "--wait", "--timeout", "5", "--json"
    )
    body = json.loads(out)
    assert code == 0 and body["stores"]["redis"]["complete"]
    code, out, _ = await veil_cli(rig, tmp_path, "reencrypt", "status")
    assert "COMPLETE" in out


async def test_breaker_blocks_start_until_resumed(rig: Rig, tmp_path: Path) -> None:
    await fill(rig, 10)
    for i in range(6):
        stored = bytearray(await rig.r.get(f"s:{i}"))
        stored[-2] ^= 1
        await rig.r.set(f"s:{i}", bytes(stored))
    await rig.rotate()
    await rig.engine().tick()
    code, _, err = await veil_cli(rig, tmp_path, "reencrypt", "start")
    assert code == 3 and "breaker" in err
    assert (await veil_cli(rig, tmp_path, "reencrypt", "resume"))[0] == 0
    code, out, _ = await veil_cli(rig, tmp_path, "reencrypt", "status")
    assert "breaker_open" not in out


async def test_scheduled_rotation_by_age_and_by_nonce_budget(rig: Rig) -> None:
    clock = rig.runtime._clock
    engine = rig.engine(rotation_periods={"default": 3600.0})
    await engine.tick()
    assert [v.state.value for v in rig.runtime.keyset.keyring.cls("default").versions] == ["active"]
    rig.runtime._clock = lambda: clock() + timedelta(hours=2)
    engine.clock = rig.ops.clock = rig.runtime._clock
    await engine.tick()  # due: a pending version is added...
    await rig.runtime.refresh()
    await rig.runtime.heartbeat()
    await engine.tick()  # ...and promoted once every live sidecar holds it
    states = [v.state.value for v in rig.runtime.keyset.keyring.cls("default").versions]
    assert states == ["retired", "active"]
    # a frozen keyring postpones it
    await rig.ops.freeze(rig.runtime._clock() + timedelta(days=1), "x")
    await rig.runtime.refresh()
    rig.runtime._clock = lambda: clock() + timedelta(hours=5)
    engine.clock = rig.ops.clock = rig.runtime._clock
    await engine.tick()
    assert len(rig.runtime.keyset.keyring.cls("default").versions) == 2
    await rig.ops.unfreeze()
    # the nonce budget: a sidecar reports 60% of 2^48 messages under the active version
    await rig.runtime.store.put_state("nonce-budget", {"old-sidecar": {"0/2": int(0.6 * 2**48)}})
    engine.rotation_periods = {}
    await engine.tick()
    assert rig.runtime.keyset.keyring.cls("default").versions[-1].state.value in (
        "pending",
        "active",
    )
    assert len(rig.runtime.keyset.keyring.cls("default").versions) == 3
    assert engine.metrics.nonce_budget.labels("2")._value.get() >= 0.59


async def test_index_rotation_rebuilds_members_keeping_scores(rig: Rig) -> None:
    from proxy.crypto.keys import KeyKind

    v = rig.values
    v.redis = dataclasses.replace(
        v.redis, deterministic_lists=("dl:*",), deterministic_fields=("df:*",)
    )
    v.redis.__post_init__()  # recompile the glob lookups for the new lists
    members = [b"alice", b"bob", b"carol"]
    await rig.r.sadd("set", *[v.seal(b"set", Role.SET_MEMBER, m) for m in members])
    await rig.r.zadd(
        "z", {v.seal(b"z", Role.ZSET_MEMBER, m): i + 0.5 for i, m in enumerate(members)}
    )
    await rig.r.rpush("dl:1", *[v.seal(b"dl:1", Role.LIST_ELEMENT, m) for m in members])
    field = v.seal(b"df:1", Role.HASH_FIELD, b"email")
    value = v.seal(b"df:1", Role.HASH_VALUE, b"a@example.com", b"email")
    await rig.r.hset("df:1", field, value)
    change = await rig.ops.rotate("default", KeyKind.INDEX)
    await rig.runtime.refresh()
    await rig.ops.promote("default", int(change.events[0]["version"]), KeyKind.INDEX)
    await rig.runtime.refresh()
    engine = rig.engine()
    assert engine.plan(rig.runtime.keyset.keyring)[0].rebuild_index
    await engine.tick()

    def index_version(stored: bytes) -> int:
        return int(HEADER.unpack_from(stored)[4])

    assert {index_version(m) for m in await rig.r.smembers("set")} == {2}
    assert (
        sorted(v.open(b"set", Role.SET_MEMBER, m)[0] for m in await rig.r.smembers("set"))
        == members
    )
    scored = await rig.r.zrange("z", 0, -1, withscores=True)
    assert [(v.open(b"z", Role.ZSET_MEMBER, m)[0], s) for m, s in scored] == [
        (b"alice", 0.5),
        (b"bob", 1.5),
        (b"carol", 2.5),
    ]
    assert [
        v.open(b"dl:1", Role.LIST_ELEMENT, e)[0] for e in await rig.r.lrange("dl:1", 0, -1)
    ] == members
    ((new_field, new_value),) = (await rig.r.hgetall("df:1")).items()
    assert index_version(new_field) == 2 and new_value == value  # the value is untouched
    assert v.seal(b"set", Role.SET_MEMBER, b"alice") in await rig.r.smembers("set")
    kr = await rig.ops.load()
    assert kr.cls("default").index_versions[0].migration_complete is not None


async def test_an_operators_pending_version_is_left_to_the_operator(rig: Rig) -> None:
    await rig.ops.rotate("default")  # staged by hand, not on schedule
    await rig.runtime.refresh()
    await rig.runtime.heartbeat()
    await rig.engine(rotation_periods={"default": 1.0}).tick()
    assert [v.state.value for v in rig.runtime.keyset.keyring.cls("default").versions] == [
        "active",
        "pending",
    ]
