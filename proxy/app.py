"""The composition root: builds every long-lived object once and passes it down (STYLE habit 6).

``App.start()`` hardens the process, loads the keyring (``KeyringRuntime``), opens the audit
chain, starts the keyring loop (heartbeats, reloads, re-validation) and then every configured
listener -- RESP, S3 (each a module with ``async def start(ctx) -> Listener``) and the admin API.
``App.stop()`` closes listeners first (no new requests), lets in-flight requests finish within a
deadline, then stops the background tasks. Nothing here runs per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import signal
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from proxy import harden, wiring
from proxy.audit import AuditLog
from proxy.config import Settings
from proxy.keys.keyset import KeySet
from proxy.keys.model import State
from proxy.keys.runtime import KeyringRuntime
from proxy.keys.stores import KeyringStore
from proxy.metrics import Metrics
from proxy.rotation.lazy import LazyQueue

log = logging.getLogger("veil")


class Listener(Protocol):
    """What a listener module's ``start(ctx)`` returns."""

    name: str
    address: tuple[str, int]  # the bound address (port 0 in config -> the real port here)

    async def ready(self) -> bool:
        """Readiness: the listener's upstream is reachable."""
        ...

    async def close(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish within ``grace`` seconds."""
        ...


StartFn = Callable[["Context"], Coroutine[Any, Any, Listener]]

# listener name -> "module:function"; imported only when the listener is configured
LISTENERS: Mapping[str, str] = {
    "resp": "proxy.redis.server:start",
    "s3": "proxy.s3.server:start",
    "admin": "proxy.admin.http:start",
}


@dataclass
class Context:
    """Everything a listener may use. Built once by ``App``; never a global."""

    settings: Settings
    runtime: KeyringRuntime
    metrics: Metrics
    store: KeyringStore
    audit: Callable[[dict[str, Any]], None]
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    listeners: dict[str, Listener] = field(default_factory=dict)
    engine: Any = None  # proxy.rotation.engine.Engine when a store is migrated
    # store -> LazyQueue: read paths call ``ctx.lazy["redis"].note((db, key))`` on old versions
    lazy: dict[str, Any] = field(default_factory=dict)


def lazy_rewriter(
    engine: Any, store: str, migrate: Callable[..., Coroutine[Any, Any, None]]
) -> Callable[[list[tuple[Any, Any]]], Coroutine[Any, Any, None]]:
    """Rewrites a batch of ``(where, key)`` items the read path met on old versions: Redis
    ``(db, key)`` with ``RedisMigrator.migrate_keys``, S3 ``(bucket, key)`` with
    ``S3Walker.migrate_objects`` -- the walk's own compare-and-set writes."""
    from proxy.rotation.redis_walk import Tally

    async def handle(items: list[tuple[Any, Any]]) -> None:
        plan = engine.plan(engine.runtime.keyset.keyring)[0]
        groups: dict[Any, list[Any]] = {}
        for where, key in items:
            groups.setdefault(where, []).append(key)
        for where, keys in groups.items():
            tally = Tally()
            await migrate(where, keys, plan, tally)
            engine._count(store, tally)

    return handle


def describe_features(features: frozenset[str]) -> str:
    """What a store supports, for the start-up log (SPEC 4: "veil says at start-up...")."""
    if "heartbeats" in features:
        return (
            "shared writes (compare-and-set), heartbeats (two-phase rotation across "
            "sidecars), leases and checkpoints (one migration walker at a time)"
        )
    return (
        "one sidecar: every feature for this sidecar; other sidecars may only share it "
        "read-only; no heartbeats, so promotion waits keys.propagation_delay"
    )


async def ready(ctx: Context) -> bool:
    """Readiness (SPEC 9): keyring loaded and fresh, every listener's upstream reachable."""
    if not ctx.runtime.loaded or ctx.runtime.is_stale():
        return False
    for name, listener in list(ctx.listeners.items()):
        if name != "admin" and not await listener.ready():
            return False
    return True


def _load(ref: str) -> StartFn:
    module, _, fn = ref.partition(":")
    start: StartFn = getattr(importlib.import_module(module), fn)
    return start


def _enabled(settings: Settings) -> list[str]:
    wanted = {
        "resp": settings.redis.listen is not None,
        "s3": settings.s3.listen is not None,
        "admin": settings.admin.listen is not None,
    }
    return [name for name in LISTENERS if wanted[name]]


class App:
    def __init__(
        self,
        settings: Settings,
        starters: Mapping[str, StartFn] | None = None,
        *,
        migrate: bool = True,
        load_settings: Callable[[], Settings] | None = None,
    ) -> None:
        """``migrate=False`` builds the rotation engine without running its loop (tests drive
        ``ctx.engine.tick()`` themselves). ``load_settings`` re-reads the configuration on
        SIGHUP (``proxy.reload``); without it SIGHUP reloads only the keyring."""
        self.settings = settings
        self._load_settings = load_settings
        self._migrate = migrate
        self.metrics = Metrics()
        self._starters = starters
        self._tasks: list[asyncio.Task[None]] = []
        self.ctx: Context | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> Context:
        s = self.settings
        for line in (harden.disable_core_dumps(), harden.lock_memory()[1]):
            log.info("%s", line)
        for warning in s.warnings:
            log.warning("%s", warning)
        store = wiring.build_store(s.keys)
        provider = wiring.build_provider(s.keys, self.metrics.kms_observer)
        audit_box: list[AuditLog] = []

        def audit(event: dict[str, Any]) -> None:
            if audit_box:
                audit_box[0].append(event, str(event.get("actor", "veil")))
                self.metrics.audit_head.set(audit_box[0].seq - 1)

        runtime = wiring.build_runtime(s, store, provider, on_event=audit)
        runtime.listeners.append(self._on_keyring)
        runtime.on_load.append(lambda ks: self.metrics.keyring_reload.set(ks.loaded_at.timestamp()))
        await runtime.start()
        log.info(
            "keyring %s revision %d loaded from %s (sidecar %s)",
            runtime.keyset.keyring_id.hex(),
            runtime.keyset.revision,
            store.url,
            runtime.sidecar_id,
        )
        log.info("keyring store features: %s", describe_features(store.features))
        assert runtime.meta_key is not None
        chain = AuditLog(s.audit.path, runtime.sidecar_id, runtime.meta_key)
        audit_box.append(chain)
        audit(
            {
                "event": "sidecar.started",
                "revision": runtime.keyset.revision,
                "store": store.url,
                "features": sorted(store.features),
            }
        )
        self._on_keyring(runtime.keyset)
        ctx = Context(s, runtime, self.metrics, store, audit)
        self.ctx = ctx
        await runtime.heartbeat()
        self._tasks.append(asyncio.create_task(runtime.run(), name="veil-keyring"))
        self._tasks.append(asyncio.create_task(self._anchor_loop(chain, store), name="veil-anchor"))
        ctx.engine = self._engine(ctx)
        if ctx.engine is not None and self._migrate:
            self._tasks.append(asyncio.create_task(ctx.engine.run(), name="veil-rotation"))
        for name in _enabled(s):
            start = (self._starters or {}).get(name) or _load(LISTENERS[name])
            listener = await start(ctx)
            ctx.listeners[name] = listener
            log.info("%s listening on %s:%d", name, *listener.address)
        s3 = ctx.listeners.get("s3")
        if ctx.engine is not None and s3 is not None and hasattr(s3, "deps"):
            from proxy.rotation.s3_walk import S3Walker

            walker = S3Walker(s3.deps, s.reencrypt.batch, s.reencrypt.concurrency)
            ctx.engine.add_walker(walker)
            # reads that meet an old version queue the object (s3.deps.note_read)
            lazy: LazyQueue[tuple[str, str]] = LazyQueue("s3", ctx.metrics)
            ctx.lazy["s3"] = lazy
            task = lazy.run(
                lazy_rewriter(ctx.engine, "s3", walker.migrate_objects),
                allowed=ctx.engine.lazy_allowed,
            )
            self._tasks.append(asyncio.create_task(task, name="veil-lazy-s3"))
        return ctx

    def _engine(self, ctx: Context) -> Any:
        """The rotation engine over the stores this sidecar fronts (None if it fronts none)."""
        from proxy.rotation.engine import Engine

        s = ctx.settings
        walkers: list[Any] = []
        if s.redis.listen is not None:
            import redis.asyncio as aioredis

            from proxy.redis.values import RedisValues
            from proxy.rotation.redis_walk import RedisMigrator, RedisWalker

            clients: dict[int, Any] = {}
            url = s.redis.upstream.reveal()

            def client(db: int) -> Any:
                if db not in clients:
                    clients[db] = aioredis.Redis.from_url(url, db=db, socket_timeout=10)
                return clients[db]

            values = RedisValues(s.redis, s.keys, ctx.runtime)
            ctx.runtime.listeners.append(lambda ks: values.reset())
            migrator = RedisMigrator(values, client, s.reencrypt.batch)
            walkers.append(RedisWalker(migrator))
            ctx.lazy["redis"] = LazyQueue("redis", ctx.metrics)
        if not walkers and s.s3.listen is None:
            return None  # this sidecar fronts no store: nothing to migrate
        ops = wiring.build_ops(s, ctx.store, ctx.runtime.provider)
        ops.audit = ctx.audit
        engine = Engine(
            runtime=ctx.runtime,
            store=ctx.store,
            ops=ops,
            metrics=ctx.metrics,
            audit=ctx.audit,
            walkers=walkers,
            rate=s.reencrypt.rate,
            lease_ttl=s.reencrypt.lease_ttl,
            breaker_threshold=s.reencrypt.breaker_threshold,
            breaker_window=s.reencrypt.breaker_window,
            rotation_periods={c.name: c.rotation_period for c in s.keys.classes},
            auto_revoke=s.keys.auto_revoke,
            clock=ctx.clock,
        )
        if "redis" in ctx.lazy:
            handle = lazy_rewriter(engine, "redis", migrator.migrate_keys)
            task = ctx.lazy["redis"].run(handle, allowed=engine.lazy_allowed)
            self._tasks.append(asyncio.create_task(task, name="veil-lazy-redis"))
        return engine

    def _on_keyring(self, ks: KeySet) -> None:
        m = self.metrics
        m.keyring_revision.set(ks.revision)
        counts = dict.fromkeys(State, 0)
        for _, _, v in ks.keyring.all_versions():
            counts[v.state] += 1
        for state, n in counts.items():
            m.keyring_versions.labels(state.value).set(n)

    async def _anchor_loop(self, chain: AuditLog, store: KeyringStore) -> None:
        """Publishes the audit chain head every minute (SPEC 11)."""
        while True:
            await asyncio.sleep(60)
            with contextlib.suppress(Exception):
                await store.put_state(f"audit-anchor:{chain.sidecar_id}", chain.anchor())

    async def ready(self) -> bool:
        return self.ctx is not None and await ready(self.ctx)

    async def stop(self, grace: float = 10.0) -> None:
        ctx = self.ctx
        if ctx is not None:
            ctx.audit({"event": "sidecar.stopping"})
            log.info("stopping: no new connections; in-flight requests get %.0f s", grace)
            loop = asyncio.get_running_loop()
            for name in ("resp", "s3", "admin"):
                listener = ctx.listeners.pop(name, None)
                if listener is not None:
                    began = loop.time()
                    await listener.close(grace)
                    log.info("%s listener closed in %.2f s", name, loop.time() - began)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            # a library may swallow a cancellation that races a completed call (asyncio.wait_for
            # in 3.11 does): cancel again until the task has really ended
            while not task.done():
                await asyncio.wait({task}, timeout=0.1)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
        self._tasks.clear()
        if ctx is not None:
            await ctx.runtime.provider.close()
            await ctx.store.close()
        self._stopped.set()

    async def serve_forever(self) -> None:
        """``veil serve``: run until SIGTERM/SIGINT (stop accepting, finish what is in flight
        within the grace period, release the migration lease); SIGHUP re-reads the config
        (the live settings of ``proxy.reload``) and reloads the keyring."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload()))
        await self.start()
        # everything built so far lives as long as the process: keep it out of the cyclic
        # collector's full passes, which would otherwise walk it again and again under load
        gc.collect()
        gc.freeze()
        await stop.wait()
        await self.stop()

    async def _reload(self) -> None:
        if self.ctx is not None and self._load_settings is not None:
            from proxy.reload import reload_config

            reload_config(self.ctx, self._load_settings, self.ctx.audit)
        if self.ctx is not None:
            try:
                await self.ctx.runtime.reload()
                log.warning(
                    "keyring reloaded on SIGHUP (revision %d)", self.ctx.runtime.keyset.revision
                )
            except Exception as e:
                log.error("keyring reload failed: %s", e)
