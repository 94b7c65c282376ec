"""The rotation engine (SPEC 4, 8): background migration, completion, scheduled rotation.

Theory of operation
-------------------
Every sidecar runs an ``Engine``; only the holder of the ``reencrypt`` lease in the keyring
store works (another takes over within ``reencrypt.lease_ttl`` if it dies). The holder loops:

1. **Scheduled rotation** per class: when the active version is older than its class's
   ``rotation_period`` (from activation) it adds a pending version; once every live sidecar has
   acknowledged it, it promotes it. A freeze postpones this; nothing postpones emergencies.
2. **Migration passes** per store, while there is work (a retired or compromised version not
   yet complete, an operator's ``start``): each walker moves items off old versions at
   ``reencrypt.rate``, checkpointing its cursor so a successor resumes where it stopped.
   Compromised versions go first (a pass that rewrites only them, at full speed).
3. **Completion** (SPEC 8): a version's migration is complete when a full pass that *started
   after every live sidecar acknowledged the keyring revision* found no item on it, in every
   store. The engine then records it in the keyring (``migration_complete``), which is what
   ``revoke`` requires; an emergency revocation then completes by itself, and with
   ``keys.auto_revoke`` so do revocations of retired versions past their grace period.
4. **Breakers**: decrypt failures, KMS errors, upstream errors and compare-and-set livelock
   above ``reencrypt.breaker_threshold`` per ``reencrypt.breaker_window`` open the breaker: the
   migration pauses (metric, audit event) until ``veil reencrypt resume``.

Operators steer it through the store state ``reencrypt:control`` (``pause``/``resume``/
``start``), written by the CLI or the admin API; status lives in ``reencrypt:<store>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from proxy.crypto.keys import KeyKind
from proxy.errors import RefusedError, UnavailableError
from proxy.keys import lifecycle
from proxy.keys.lifecycle import Change, Policy
from proxy.keys.model import Keyring, State, rfc3339
from proxy.keys.ops import KeyOps
from proxy.keys.runtime import KeyringRuntime, acknowledged, live_sidecars
from proxy.keys.stores import KeyringStore
from proxy.metrics import Metrics
from proxy.rotation.control import (
    BREAKER_OPEN,
    IDLE,
    RUNNING,
    Breaker,
    RateLimiter,
    StoreStatus,
    overall,
)
from proxy.rotation.redis_walk import Plan, Tally

log = logging.getLogger("veil.rotation")
LEASE = "reencrypt"
CONTROL = "reencrypt:control"
NONCE_BUDGET = 2**48  # encryptions per version (docs/FORMAT.md section 3.1)
ROTATE_AT = 0.5  # scheduled rotation when a version has used half its budget


class Walker(Protocol):
    """One store's migration: ``run_pass`` walks everything once (resuming ``status.cursor``)."""

    name: str

    async def run_pass(self, plan: Plan, status: StoreStatus, step: Step) -> Tally: ...


class Step(Protocol):
    """Called by walkers between batches: rate limit, checkpoint, stop when asked."""

    async def __call__(self, tally: Tally, status: StoreStatus) -> bool: ...


class Stop(Exception):
    """The pass stops here (pause, breaker, lease lost); its checkpoint is kept."""


class Engine:
    def __init__(
        self,
        *,
        runtime: KeyringRuntime,
        store: KeyringStore,
        ops: KeyOps,
        metrics: Metrics,
        audit: Callable[[dict[str, Any]], None],
        walkers: list[Walker],
        rate: float,
        lease_ttl: float,
        breaker_threshold: int,
        breaker_window: float,
        rotation_periods: dict[str, float],
        auto_revoke: bool,
        clock: Callable[[], datetime],
        idle_interval: float = 5.0,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.ops = ops
        self.metrics = metrics
        self.audit = audit
        self.walkers = {w.name: w for w in walkers}
        self.rate = rate
        self.lease_ttl = lease_ttl
        self.breaker = Breaker(breaker_threshold, breaker_window)
        self.rotation_periods = rotation_periods
        self.auto_revoke = auto_revoke
        self.clock = clock
        self.idle_interval = idle_interval
        self.holder = f"{runtime.sidecar_id}-{os.urandom(3).hex()}"
        self.status: dict[str, StoreStatus] = {name: StoreStatus() for name in self.walkers}
        self._clean: dict[str, dict[str, str]] = {name: {} for name in self.walkers}
        self._census: dict[str, dict[tuple[int, int], int]] = {}  # store -> items per version
        self._lease_at = 0.0
        self._next_pass_at = 0.0
        self._limiter: RateLimiter | None = None  # the running pass's, for ``configure``

    def configure(self, settings: Any) -> None:
        """SIGHUP (``proxy.reload``): a new ``reencrypt`` section's rate, lease and breaker
        apply from the next batch -- the running pass's limiter included."""
        self.rate = settings.rate
        self.lease_ttl = settings.lease_ttl
        self.breaker.threshold = settings.breaker_threshold
        self.breaker.window = settings.breaker_window
        limiter = self._limiter
        if limiter is not None and limiter.rate > 0:  # 0: an emergency pass, never throttled
            limiter.set_rate(settings.rate)

    def add_walker(self, walker: Walker) -> None:
        """A store whose client exists only once its listener started (S3)."""
        self.walkers[walker.name] = walker
        self.status[walker.name] = StoreStatus()
        self._clean[walker.name] = {}

    # --- control -------------------------------------------------------------------------

    async def control(self) -> dict[str, Any]:
        return await self.store.get_state(CONTROL) or {}

    async def set_control(self, **changes: Any) -> None:
        await self.store.put_state(CONTROL, {**await self.control(), **changes})

    async def lazy_allowed(self) -> bool:
        """Lazy re-encryption follows pause and freeze (emergencies excepted)."""
        if (await self.control()).get("paused"):
            return False
        kr = self.runtime.keyset.keyring
        return not kr.is_frozen(self.clock()) or self.plan(kr)[1]

    async def status_json(self) -> dict[str, Any]:
        """``veil reencrypt status --json`` (SPEC 12), from the store: any sidecar can answer."""
        stores = {}
        for name in self.walkers:
            st = StoreStatus.from_json(await self.store.get_state(f"reencrypt:{name}"))
            stores[name] = st.public()
        ctl = await self.control()
        states = [s["state"] for s in stores.values()]
        return {"state": overall(states, bool(ctl.get("paused"))), "stores": stores}

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: hold the lease, then rotate on schedule and migrate. Never raises."""
        while True:
            try:
                if await self.store.acquire_lease(LEASE, self.holder, self.lease_ttl):
                    self._lease_at = asyncio.get_running_loop().time()
                    await self.tick()
            except (UnavailableError, RefusedError) as e:
                log.warning("rotation engine: %s", e.message)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await self.store.release_lease(LEASE, self.holder)
                raise
            except Exception:
                log.exception("rotation engine error")
            await asyncio.sleep(self.idle_interval)

    async def tick(self) -> None:
        """One round of the lease holder's work."""
        await self.runtime.refresh()
        kr = self.runtime.keyset.keyring
        beats = await self.store.heartbeats()
        self.metrics.sidecars_live.set(
            len(live_sidecars(beats, self.runtime.heartbeat_interval, self.clock())) or 1
        )
        used = await self.nonce_budget()
        if not kr.is_frozen(self.clock()):
            await self.scheduled_rotation(kr, used)
            await self.runtime.refresh()
        ctl = await self.control()
        if ctl.get("paused"):
            return
        kr = self.runtime.keyset.keyring
        plan, emergency = self.plan(kr)
        if kr.is_frozen(self.clock()) and not emergency:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() >= self._next_pass_at
        if (self._work(kr) and due) or ctl.get("start_requested") or emergency:
            began = loop.time()
            results = [await self.run_pass(name, plan) for name in self.walkers]
            if not all(r.complete for r in results):
                # something is left (a concurrent writer, a stream entry...): walk again later,
                # not in a tight loop; operators can `veil reencrypt start` any time
                self._next_pass_at = loop.time() + max(60.0, 2 * (loop.time() - began))
            if ctl.get("start_requested"):
                await self.set_control(start_requested=None)
            await self.complete()

    def plan(self, kr: Keyring) -> tuple[Plan, bool]:
        active, compromised, drop = {}, set(), set()
        index_active, rebuild = {}, False
        for c in kr.classes.values():
            v = c.active(KeyKind.MASTER)
            if v is not None:
                active[c.id] = v.version
            iv = c.active(KeyKind.INDEX)
            if iv is not None:
                index_active[c.id] = iv.version
            rebuild = rebuild or any(
                x.state is State.RETIRED and x.migration_complete is None for x in c.index_versions
            )
            for x in c.versions:
                if x.compromised and x.revoke_requested:
                    compromised.add((c.id, x.version))
                if x.state is State.REVOKED:
                    drop.add((c.id, x.version))
        plan = Plan(active, frozenset(compromised), frozenset(drop), index_active, rebuild)
        return plan, bool(compromised)

    def _work(self, kr: Keyring) -> bool:
        """A retired version (master or index) whose migration is not complete."""
        return any(
            v.state is State.RETIRED and v.migration_complete is None
            for _, _, v in kr.all_versions()
        )

    # --- passes --------------------------------------------------------------------------

    async def run_pass(self, name: str, plan: Plan) -> StoreStatus:
        walker = self.walkers[name]
        status = StoreStatus.from_json(await self.store.get_state(f"reencrypt:{name}"))
        if status.state == BREAKER_OPEN:
            return status
        kr = self.runtime.keyset.keyring
        if status.state != RUNNING or not status.pass_id:  # a new pass (else: resume)
            status = StoreStatus(
                state=RUNNING,
                pass_id=os.urandom(6).hex(),
                pass_started_at=rfc3339(self.clock()),
                revision_at_start=kr.revision,
                acked_at_start=await self._acked(kr),
            )
            self.audit(
                {
                    "event": "migration.started",
                    "store": name,
                    "pass_id": status.pass_id,
                    "emergency": bool(plan.compromised_only),
                }
            )
        status.state = RUNNING
        self.breaker.reset()  # a new or resumed pass starts with a closed breaker
        self.metrics.breaker_open.labels(name).set(0)
        self.status[name] = status
        limiter = self._limiter = RateLimiter(0 if plan.compromised_only else self.rate)
        started = self.clock()
        try:
            tally = await walker.run_pass(plan, status, self._stepper(name, limiter, started))
        except Stop:
            await self._checkpoint(name, status)
            return status
        self._finish(name, status, tally, plan)
        await self._checkpoint(name, status)
        self.audit(
            {
                "event": "migration.finished",
                "store": name,
                "pass_id": status.pass_id,
                "migrated": status.migrated,
                "remaining": status.remaining,
                "unmigratable": status.unmigratable,
                "complete": status.complete,
            }
        )
        return status

    def _stepper(self, name: str, limiter: RateLimiter, started: datetime) -> Step:
        batches = 0

        async def step(tally: Tally, status: StoreStatus) -> bool:
            nonlocal batches
            batches += 1
            status.scanned += tally.scanned
            status.migrated += tally.migrated + tally.dropped
            self._count(name, tally)
            for reason, n in tally.failures.items():
                if any(self.breaker.record(reason) for _ in range(n)):
                    await self._open_breaker(name, status, reason)
                    raise Stop()
            if tally.conflicts > max(10, tally.scanned // 2) and self.breaker.record("cas"):
                await self._open_breaker(name, status, "compare-and-set livelock")
                raise Stop()
            await limiter.take(max(1, tally.scanned))
            elapsed = (self.clock() - started).total_seconds()
            if status.total_estimate and elapsed > 0 and status.scanned:
                left = max(0, status.total_estimate - status.scanned)
                status.eta_seconds = int(left / (status.scanned / elapsed))
                self.metrics.reencrypt_progress.labels(name).set(
                    min(1.0, status.scanned / status.total_estimate)
                )
            if batches % 20 == 0:
                await self._checkpoint(name, status)
                if (await self.control()).get("paused"):
                    raise Stop()
                if not await self.store.acquire_lease(LEASE, self.holder, self.lease_ttl):
                    raise Stop()
            return True

        return step

    def _count(self, name: str, tally: Tally) -> None:
        """``veil_reencrypt_items_total{store, from_version, to_version, outcome}``."""
        plan = self.plan(self.runtime.keyset.keyring)[0]
        for (label, outcome), n in tally.moved.items():
            if label == "plaintext":
                frm, to = "plaintext", "active"
            elif label.startswith("i"):  # index rebuild: "index-<v>" keeps the two apart
                class_id, version = label[1:].split("/")
                frm = f"index-{version}"
                to = f"index-{plan.index_active.get(int(class_id), '?')}"
            else:
                class_id, version = label.split("/")
                frm, to = version, str(plan.active.get(int(class_id), "?"))
            self.metrics.reencrypt_items.labels(name, frm, to, outcome).inc(n)

    async def _open_breaker(self, name: str, status: StoreStatus, reason: str) -> None:
        status.state = BREAKER_OPEN
        status.breaker_reason = reason
        self.metrics.breaker_open.labels(name).set(1)
        self.audit(
            {
                "event": "migration.breaker_open",
                "store": name,
                "reason": reason,
                "pass_id": status.pass_id,
            }
        )
        log.error("migration of %s paused: circuit breaker open (%s)", name, reason)
        await self._checkpoint(name, status)

    async def _checkpoint(self, name: str, status: StoreStatus) -> None:
        await self.store.put_state(f"reencrypt:{name}", status.to_json())

    async def _acked(self, kr: Keyring) -> bool:
        return await acknowledged(
            self.store,
            kr.revision,
            self.runtime.heartbeat_interval,
            self.ops.propagation_delay,
            kr.updated,
            self.clock(),
        )

    def _finish(self, name: str, status: StoreStatus, tally: Tally, plan: Plan) -> None:
        kr = self.runtime.keyset.keyring
        counts = {label: n for label, n in tally.versions.items() if n > 0}
        status.versions = counts
        remaining: dict[str, int] = {}
        clean: dict[str, str] = {}
        for c, kind, v in kr.all_versions():
            label = _label(c.id, kind, v.version)
            n = counts.get(label, 0) - max(0, tally.droppable.get(label, 0))
            if kind is KeyKind.MASTER:
                if v.version != plan.active.get(c.id) and n:
                    remaining[str(v.version)] = remaining.get(str(v.version), 0) + n
            elif v.version != plan.index_active.get(c.id) and n:
                remaining[f"index-{v.version}"] = remaining.get(f"index-{v.version}", 0) + n
            # an emergency pass walks everything too: its counts prove as much
            if (
                status.acked_at_start
                and n == 0
                and not tally.blocked.get(label)
                and not (tally.failures)
            ):
                clean[label] = status.pass_id
        if counts.get("plaintext"):
            remaining["plaintext"] = counts["plaintext"]
        status.remaining = remaining
        status.unmigratable = dict(tally.unmigratable)
        status.complete = (
            not remaining
            and not tally.failures
            and status.acked_at_start
            and not any(n > 0 for n in tally.blocked.values())
        )
        status.state = IDLE
        status.cursor = {}
        status.finished_at = rfc3339(self.clock())
        status.eta_seconds = 0
        self._clean[name] = clean
        self._census[name] = {
            _ref(label): n
            for label, n in counts.items()
            if "/" in label and not label.startswith("i")
        }
        oldest = None
        for label, n in counts.items():
            if label.startswith("i"):
                continue  # index versions are not key versions of SPEC 10's item gauge
            version = label.split("/")[-1]
            self.metrics.key_version_items.labels(name, version).set(n)
            if "/" in label and n > 0:
                kc = kr.class_by_id(_ref(label)[0])
                kv = kc.find(KeyKind.MASTER, _ref(label)[1]) if kc else None
                if kv is not None and (oldest is None or kv.created < oldest):
                    oldest = kv.created
        if oldest is not None:
            self.metrics.oldest_version_age.labels(name).set(
                (self.clock() - oldest).total_seconds()
            )

    async def complete(self) -> None:
        """Records completed migrations (and what follows from them) in the keyring."""
        kr = self.runtime.keyset.keyring
        now = self.clock()
        changes: list[Callable[[Keyring], Change]] = []
        for c, kind, v in kr.all_versions():
            label = _label(c.id, kind, v.version)
            done = all(label in clean for clean in self._clean.values())
            if v.state in (State.RETIRED, State.REVOKED) and done:
                if v.migration_complete is None:
                    pass_id = next(iter(self._clean.values()))[label]
                    changes.append(
                        _bind(
                            lifecycle.mark_migration_complete, c.name, kind, v.version, now, pass_id
                        )
                    )
                if v.revoke_requested:
                    changes.append(
                        _bind(lifecycle.complete_requested_revocation, c.name, kind, v.version, now)
                    )
        for store_name, census in self._census.items():
            changes.append(_census(store_name, census, now))
        self._census = {}
        for change in changes:
            with contextlib.suppress(RefusedError):
                await self.ops._mutate(_async(change))
        if self.auto_revoke:
            await self._auto_revoke()
        await self.runtime.refresh()

    async def _auto_revoke(self) -> None:
        kr = await self.ops.load()
        for c in kr.classes.values():
            for v in c.versions:
                if v.state is State.RETIRED and v.migration_complete is not None:
                    with contextlib.suppress(RefusedError):
                        await self.ops.revoke(c.name, v.version)

    # --- scheduled rotation --------------------------------------------------------------

    async def nonce_budget(self) -> dict[str, float]:
        """Fraction of the nonce budget used per "class/version", summed over every sidecar
        that ever reported (a restarted process reports under a new id; old reports stay)."""
        beats = await self.store.heartbeats()
        seen = await self.store.get_state("nonce-budget") or {}
        for sidecar, beat in beats.items():
            counts = beat.get("encryptions") or {}
            if counts:
                seen[sidecar] = {
                    k: max(int(n), int(seen.get(sidecar, {}).get(k, 0))) for k, n in counts.items()
                }
        await self.store.put_state("nonce-budget", seen)
        totals: dict[str, int] = {}
        for counts in seen.values():
            for k, n in counts.items():
                totals[k] = totals.get(k, 0) + int(n)
        ratios = {k: n / NONCE_BUDGET for k, n in totals.items()}
        for k, r in ratios.items():
            self.metrics.nonce_budget.labels(k.split("/")[-1]).set(r)
        return ratios

    async def scheduled_rotation(self, kr: Keyring, used: dict[str, float] | None = None) -> None:
        now = self.clock()
        used = used or {}
        for c in kr.classes.values():
            period = self.rotation_periods.get(c.name)
            pending = [v for v in c.versions if v.state is State.PENDING]
            if pending:
                # only versions this engine added on schedule: an operator's pending version
                # is theirs to promote (they may be staging it)
                mine = await self.store.get_state(f"scheduled:{c.name}") or {}
                if mine.get("version") == pending[0].version:
                    with contextlib.suppress(RefusedError):
                        await self.ops.promote(c.name, pending[0].version)
                continue
            active = c.active(KeyKind.MASTER)
            if active is None or active.activated is None:
                continue
            worn = used.get(f"{c.id}/{active.version}", 0.0) >= ROTATE_AT
            due = period is not None and now - active.activated >= timedelta(seconds=period)
            if worn or due:
                with contextlib.suppress(RefusedError):
                    change = await self.ops.rotate(c.name)
                    version = change.events[0]["version"]
                    await self.store.put_state(f"scheduled:{c.name}", {"version": version})
                    log.warning(
                        "scheduled rotation of class %s: version %s pending",
                        c.name,
                        change.events[0]["version"],
                    )


def _ref(label: str) -> tuple[int, int]:
    class_id, version = label.split("/")
    return int(class_id), int(version)


def _census(
    store: str, counts: dict[tuple[int, int], int], now: datetime
) -> Callable[[Keyring], Change]:
    return lambda kr: lifecycle.set_items(kr, store, counts, now)


def _label(class_id: int, kind: KeyKind, version: int) -> str:
    """Tally labels: "1/3" is master version 3 of class 1, "i1/3" its index version 3."""
    return f"{'i' if kind is KeyKind.INDEX else ''}{class_id}/{version}"


def _bind(
    fn: Callable[..., Change], name: str, kind: KeyKind, version: int, *rest: Any
) -> Callable[[Keyring], Change]:
    return lambda kr: fn(kr, name, kind, version, *rest)


def _async(fn: Callable[[Keyring], Change]) -> Callable[[Keyring], Awaitable[Change]]:
    async def run(kr: Keyring) -> Change:
        return fn(kr)

    return run


__all__ = ["Engine", "Policy", "Stop", "Walker"]
