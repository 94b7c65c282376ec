"""The keyring against real servers: redis-server as the store, moto's KMS over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import boto3
import pytest

from proxy.crypto import Role, value_context
from proxy.crypto.keys import KeyKind
from proxy.errors import (
    AuthenticationError,
    KeyringStale,
    KeyUnavailable,
    RefusedError,
)
from proxy.keys import escrow
from proxy.keys.lifecycle import Policy
from proxy.keys.ops import KeyOps
from proxy.keys.providers import AwsKmsProvider, LocalProvider
from proxy.keys.runtime import KeyringRuntime, unwrap_meta, unwrap_version
from proxy.keys.stores import KEYRING_KEY, FileStore, RedisStore
from tests.keyfixtures import Clock, make_ops
from tests.servers import MotoServer, RedisServer

CTX = value_context("default", Role.STRING)


def runtime(
    store: object, root_key: bytes, tmp_path: Path, clock: Clock, name: str = "a", **kw: float
) -> KeyringRuntime:
    return KeyringRuntime(
        store,
        LocalProvider(root_key),
        sidecar_id=name,  # type: ignore[arg-type]
        local_copy=tmp_path / f"{name}.sealed",
        heartbeat_interval=0.1,
        clock=clock,
        **kw,
    )


async def test_two_concurrent_rotations_lose_nothing(
    redis_url: str, root_key: bytes, clock: Clock
) -> None:
    a = make_ops(RedisStore(redis_url), root_key, clock)
    b = make_ops(RedisStore(redis_url), root_key, clock)
    await a.init([])
    results = await asyncio.gather(a.rotate("default"), b.rotate("default"), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, RefusedError)]
    assert len(ok) == 1 and len(refused) == 1, results
    kr = await a.load()
    assert [v.state.value for v in kr.cls("default").versions] == ["active", "pending"]
    # and freezes racing each other: every write lands, one after the other
    start = kr.revision
    await asyncio.gather(
        *(ops.freeze(clock.now.replace(year=2030), f"r{i}") for i, ops in enumerate([a, b, a, b]))
    )
    assert (await a.load()).revision == start + 4


def test_file_store_is_safe_against_a_concurrent_writer(
    tmp_path: Path, root_key: bytes, clock: Clock
) -> None:
    path = str(tmp_path / "kr.json")
    start = asyncio.run(make_ops(FileStore(path), root_key, clock).init([]))[0].revision
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        ops = make_ops(FileStore(path), root_key, clock)
        try:
            for j in range(15):
                asyncio.run(ops.freeze(clock.now.replace(year=2030), f"w{i}-{j}"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    doc = json.loads(Path(path).read_text())  # never half-written
    assert doc["revision"] == start + 45  # 45 writes, none lost


async def test_sidecar_notices_changes_and_heartbeats(
    redis_url: str, root_key: bytes, tmp_path: Path, clock: Clock
) -> None:
    ops = make_ops(RedisStore(redis_url), root_key, clock)
    await ops.init([])
    rt = runtime(RedisStore(redis_url), root_key, tmp_path, clock)
    ks = await rt.start()
    env = rt.sealer(0).seal(b"v1 value", CTX)
    await ops.rotate("default")
    assert await rt.refresh()
    await rt.heartbeat()
    # the heartbeat acknowledges the pending version, so promote goes through at once
    await ops.promote("default", 2, wait=2)
    await rt.refresh()
    assert rt.sealer(0).version == 2 and rt.keyset.revision > ks.revision
    assert rt.keyset.opener.open(env, CTX) == (b"v1 value", 1)
    loads: list[int] = []
    rt.on_load.append(lambda ks: loads.append(ks.revision))
    assert not await rt.refresh()  # nothing changed: no new snapshot...
    assert loads == [rt.keyset.revision]  # ...but a fresh read (the reload timestamp moves)


async def test_promote_waits_for_a_lagging_sidecar(
    redis_url: str, root_key: bytes, tmp_path: Path, clock: Clock
) -> None:
    import datetime as dt

    ops = make_ops(RedisStore(redis_url), root_key, clock)
    await ops.init([])
    rt = runtime(RedisStore(redis_url), root_key, tmp_path, clock)
    await rt.start()
    await rt.heartbeat()  # live, holding the old revision
    clock.now = dt.datetime.now(dt.UTC)
    await ops.rotate("default")
    with pytest.raises(RefusedError, match="acknowledged"):
        await ops.promote("default", 2, wait=0.3)
    await rt.refresh()
    await rt.heartbeat()
    assert (await ops.promote("default", 2)).keyring.cls("default").active(
        KeyKind.MASTER
    ).version == 2  # type: ignore[union-attr]


async def test_deleted_keyring_key_is_reasserted(
    redis_url: str, redis_server: RedisServer, root_key: bytes, tmp_path: Path, clock: Clock
) -> None:
    ops = make_ops(RedisStore(redis_url), root_key, clock)
    await ops.init(["pii"])
    await ops.rotate("default")
    rt = runtime(RedisStore(redis_url), root_key, tmp_path, clock)
    await rt.start()
    env = rt.sealer(0).seal(b"precious", CTX)
    redis_server.cli("DEL", KEYRING_KEY)
    assert await rt.refresh()  # the sidecar puts back what it holds
    kr = await ops.load()
    assert sorted(kr.classes) == ["default", "pii"]
    assert [v.state.value for v in kr.cls("default").versions] == ["active", "pending"]
    # a brand-new sidecar (empty memory) restores from its sealed local copy as well
    redis_server.cli("FLUSHALL")
    rt2 = runtime(RedisStore(redis_url), root_key, tmp_path, clock)
    ks = await rt2.start()
    assert ks.opener.open(env, CTX) == (b"precious", 1)


async def test_restart_without_persistence_loses_nothing(
    root_key: bytes, tmp_path: Path, clock: Clock
) -> None:
    server = RedisServer().start()  # no RDB, no AOF: a restart empties it
    try:
        store = RedisStore(server.url)
        assert any("persistence is off" in w for w in await store.warnings())
        ops = make_ops(store, root_key, clock)
        await ops.init([])
        rt = runtime(RedisStore(server.url), root_key, tmp_path, clock)
        await rt.start()
        env = rt.sealer(0).seal(b"kept", CTX)
        server.restart()
        await asyncio.sleep(0.1)
        assert await rt.refresh()
        assert (await ops.load()).keyring_id == rt.keyset.keyring_id
        assert rt.keyset.opener.open(env, CTX)[0] == b"kept"
    finally:
        server.cleanup()


async def test_store_warnings_for_eviction(redis_url: str, redis_server: RedisServer) -> None:
    redis_server.cli("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    try:
        warnings = await RedisStore(redis_url).warnings()
        assert any("may evict the keyring" in w for w in warnings)
    finally:
        redis_server.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")


async def test_wrong_root_key_refuses_to_start(
    redis_url: str, root_key: bytes, tmp_path: Path, clock: Clock
) -> None:
    await make_ops(RedisStore(redis_url), root_key, clock).init([])
    with pytest.raises(AuthenticationError, match="root key does not match"):
        await runtime(RedisStore(redis_url), os.urandom(32), tmp_path, clock).start()


async def test_a_different_keyring_in_the_store_is_refused(
    redis_url: str, root_key: bytes, tmp_path: Path, clock: Clock
) -> None:
    await make_ops(RedisStore(redis_url), root_key, clock).init([])
    await runtime(RedisStore(redis_url), root_key, tmp_path, clock).start()
    await RedisStore(redis_url)._r.delete(KEYRING_KEY)
    await make_ops(RedisStore(redis_url), root_key, clock).init([])  # someone re-initialized
    with pytest.raises(RefusedError, match=r"different|sealed copy"):
        await runtime(RedisStore(redis_url), root_key, tmp_path, clock).start()


async def test_stale_keyring_stops_encrypting_but_decrypts(
    redis_url: str, root_key: bytes, tmp_path: Path, clock: Clock
) -> None:
    await make_ops(RedisStore(redis_url), root_key, clock).init([])
    rt = runtime(RedisStore(redis_url), root_key, tmp_path, clock, max_keyring_age=600)
    await rt.start()
    env = rt.sealer(0).seal(b"x", CTX)
    clock.advance(seconds=601)
    with pytest.raises(KeyringStale):
        rt.sealer(0)
    assert rt.keyset.opener.open(env, CTX)[0] == b"x"
    await rt.refresh()  # a successful read of the store makes it fresh again
    assert rt.sealer(0).version == 1


async def test_revoked_version_stops_decrypting_everywhere(
    redis_url: str, root_key: bytes, tmp_path: Path, clock: Clock
) -> None:
    ops = make_ops(RedisStore(redis_url), root_key, clock)
    await ops.init([])
    rt = runtime(RedisStore(redis_url), root_key, tmp_path, clock)
    await rt.start()
    env = rt.sealer(0).seal(b"x", CTX)
    await ops.rotate("default")
    await ops.promote("default", 2)
    await ops.revoke("default", 1, force=True)
    await rt.refresh()
    with pytest.raises(KeyUnavailable, match="revoked"):
        rt.keyset.opener.open(env, CTX)


# --- KMS ------------------------------------------------------------------------------------


@pytest.fixture
def kms_key(moto_server: MotoServer) -> str:
    kms = boto3.client(
        "kms",
        region_name="us-east-1",
        endpoint_url=moto_server.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    key_id: str = kms.create_key(Description="veil test")["KeyMetadata"]["KeyId"]
    return key_id


def kms_provider(
    moto_server: MotoServer,
    key_id: str,
    calls: list[str] | None = None,
    endpoint: str | None = None,
) -> AwsKmsProvider:
    def observe(provider: str, op: str, seconds: float, error: bool) -> None:
        if calls is not None:
            calls.append(op + ("!" if error else ""))

    return AwsKmsProvider(
        key_id,
        "us-east-1",
        endpoint or moto_server.url,
        observe,
        {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"},
    )


async def test_kms_provider_calls_only_on_rotate_and_load(
    moto_server: MotoServer, kms_key: str, redis_url: str, tmp_path: Path, clock: Clock
) -> None:
    calls: list[str] = []
    provider = kms_provider(moto_server, kms_key, calls)
    ops = KeyOps(RedisStore(redis_url), provider, Policy(), propagation_delay=0, clock=clock)
    await ops.init([])
    assert calls == ["encrypt"] * 3  # meta, master v1, index v1
    calls.clear()
    rt = KeyringRuntime(
        RedisStore(redis_url),
        provider,
        local_copy=tmp_path / "c",
        clock=clock,
        cache_ttl=300,
        max_stale=3600,
    )
    await rt.start()
    assert calls.count("decrypt") == 3
    env = rt.sealer(0).seal(b"kms-protected", CTX)
    calls.clear()
    for _ in range(100):
        rt.keyset.opener.open(rt.sealer(0).seal(b"hot path", CTX), CTX)
    await rt.refresh()
    assert calls == []  # never per request, never for an unchanged keyring
    await ops.rotate("default")
    assert calls == ["encrypt"]
    await rt.refresh()
    assert calls == ["encrypt", "decrypt"]  # only the new version is unwrapped
    assert rt.keyset.opener.open(env, CTX)[0] == b"kms-protected"
    await provider.close()


async def test_kms_unreachable_serves_until_max_stale(
    moto_server: MotoServer, kms_key: str, redis_url: str, tmp_path: Path, clock: Clock
) -> None:
    provider = kms_provider(moto_server, kms_key)
    await KeyOps(RedisStore(redis_url), provider, Policy(), clock=clock).init([])
    rt = KeyringRuntime(
        RedisStore(redis_url),
        provider,
        local_copy=tmp_path / "c",
        clock=clock,
        cache_ttl=300,
        max_stale=3600,
    )
    await rt.start()
    env = rt.sealer(0).seal(b"x", CTX)
    calls: list[str] = []
    dead = free_port_url()
    rt.provider = kms_provider(moto_server, kms_key, calls, endpoint=dead)
    clock.advance(seconds=600)
    await rt.revalidate()
    assert calls and calls[0].endswith("!")
    assert rt.keyset.opener.open(env, CTX)[0] == b"x"  # within max_stale: still serving
    clock.advance(seconds=3600)
    await rt.revalidate()
    with pytest.raises(KeyUnavailable):
        rt.keyset.opener.open(env, CTX)  # fail closed
    await provider.close()


async def test_kms_wrapped_material_is_bound_to_its_context(
    moto_server: MotoServer, kms_key: str, redis_url: str, clock: Clock
) -> None:
    provider = kms_provider(moto_server, kms_key)
    ops = KeyOps(RedisStore(redis_url), provider, Policy(), clock=clock)
    kr, _ = await ops.init([])
    v1 = kr.cls("default").versions[0]
    moved = type(v1)(**{**v1.__dict__, "version": 2})
    with pytest.raises(Exception, match=r"KMS refused|key-check"):
        await unwrap_version(provider, kr, 0, KeyKind.MASTER, moved)
    await provider.close()


def free_port_url() -> str:
    from tests.servers import free_port

    return f"http://127.0.0.1:{free_port()}"


# --- escrow ---------------------------------------------------------------------------------


async def _materials(ops: KeyOps, root_key: bytes) -> tuple[object, bytes, dict[object, bytes]]:
    kr = await ops.load()
    provider = LocalProvider(root_key)
    materials = {}
    for c, kind, v in kr.all_versions():
        if v.wrapped is not None:
            key = await unwrap_version(provider, kr, c.id, kind, v)
            materials[(c.name, kind, v.version)] = key.material
    return kr, await unwrap_meta(provider, kr), materials


@pytest.mark.parametrize("recipient", ["x25519", "passphrase"])
async def test_escrow_restores_after_total_loss(
    recipient: str,
    redis_url: str,
    redis_server: RedisServer,
    root_key: bytes,
    tmp_path: Path,
    clock: Clock,
) -> None:
    ops = make_ops(RedisStore(redis_url), root_key, clock)
    await ops.init(["pii"])
    await ops.rotate("default")
    await ops.promote("default", 2)
    rt = runtime(RedisStore(redis_url), root_key, tmp_path, clock)
    await rt.start()
    env = rt.sealer(0).seal(b"must survive", CTX)
    kr, meta, materials = await _materials(ops, root_key)
    priv, pub = escrow.generate_identity()
    rcpt = (
        escrow.Recipient(public_key=escrow.load_public_key(pub))
        if recipient == "x25519"
        else escrow.Recipient(passphrase=b"correct horse battery staple")
    )
    bundle = escrow.export_bundle(kr, meta, materials, rcpt, clock())  # type: ignore[arg-type]
    assert root_key.hex() not in json.dumps(bundle)
    # disaster: the store AND the root key AND every local copy are gone
    redis_server.cli("FLUSHALL")
    identity = escrow.load_private_key(priv) if recipient == "x25519" else None
    phrase = b"correct horse battery staple" if recipient == "passphrase" else None
    contents = escrow.open_bundle(json.loads(json.dumps(bundle)), identity, phrase)
    assert escrow.verify_contents(contents) == []
    new_root = os.urandom(32)
    restored = await escrow.restore(
        contents, LocalProvider(new_root), RedisStore(redis_url), clock()
    )
    assert restored.keyring_id == kr.keyring_id  # type: ignore[attr-defined]
    rt2 = KeyringRuntime(
        RedisStore(redis_url), LocalProvider(new_root), local_copy=None, clock=clock
    )
    ks = await rt2.start()
    assert ks.opener.open(env, CTX) == (b"must survive", 2)
    with pytest.raises(AuthenticationError):
        escrow.open_bundle(
            bundle, escrow.load_private_key(escrow.generate_identity()[0]), b"wrong passphrase"
        )


async def test_keyring_writes_wait_for_replicas(root_key: bytes, clock: Clock) -> None:
    primary = RedisServer().start()
    replica = RedisServer(
        extra=["--replicaof", "127.0.0.1", str(primary.port), "--enable-debug-command", "yes"]
    ).start()
    try:
        for _ in range(100):  # the replica has synced once it reports its link up
            if "master_link_status:up" in replica.cli("INFO", "replication"):
                break
            await asyncio.sleep(0.05)
        ops = make_ops(RedisStore(primary.url), root_key, clock)
        await ops.init([])
        # a replica that is busy for 0.8 s: a write that WAITs for it takes that long
        sleeper = subprocess.Popen(
            ["redis-cli", "-p", str(replica.port), "DEBUG", "SLEEP", "0.8"],
            stdout=subprocess.DEVNULL,
        )
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await ops.rotate("default")
        assert time.monotonic() - started > 0.5
        sleeper.wait(10)
        doc = json.loads(replica.cli("GET", KEYRING_KEY))
        assert doc["revision"] == (await ops.load()).revision
    finally:
        replica.cleanup()
        primary.cleanup()
