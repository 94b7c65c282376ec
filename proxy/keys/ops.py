"""Keyring operations as the CLI and the admin API run them: store + provider + lifecycle.

Every mutation is a compare-and-set loop: read the document, apply a pure ``lifecycle``
function, write it back only if nobody else wrote in between, else re-read and re-apply (two
operators rotating at once therefore produce one pending version and one clear refusal, and
lose nothing). Events of a successful change go to the audit sink with the actor's name.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from proxy.crypto import _kdf
from proxy.crypto.keys import KeyKind, VersionKey
from proxy.errors import RefusedError, StoreUnavailable
from proxy.keys import lifecycle
from proxy.keys.lifecycle import Change, NewMaterial, Policy
from proxy.keys.model import KeyClass, Keyring, State, rfc3339
from proxy.keys.providers import Provider, wrap_context
from proxy.keys.runtime import acknowledged, live_sidecars, utcnow
from proxy.keys.stores import KeyringStore

CAS_ATTEMPTS = 10
AuditSink = Callable[[dict[str, Any]], None]


@dataclass
class KeyOps:
    store: KeyringStore
    provider: Provider
    policy: Policy
    heartbeat_interval: float = 5.0
    propagation_delay: float = 300.0
    clock: Callable[[], datetime] = utcnow
    random: Callable[[int], bytes] = os.urandom
    audit: AuditSink | None = None

    async def load(self) -> Keyring:
        doc = await self.store.load()
        if doc is None:
            raise RefusedError(f"no keyring in {self.store.url}: run `veil keys init` first")
        kr = Keyring.from_json(doc)
        self.provider.check(kr.provider)
        return kr

    async def new_material(
        self, kr: Keyring, class_id: int, kind: KeyKind, version: int
    ) -> NewMaterial:
        material = self.random(32)
        key = VersionKey(kr.keyring_id, class_id, version, material, kind)
        wrapped = await self.provider.wrap(
            material, wrap_context(kr.keyring_id, class_id, kind.value, version)
        )
        return NewMaterial(version, wrapped, key.check_value())

    async def _mutate(self, fn: Callable[[Keyring], Awaitable[Change]]) -> Change:
        for _ in range(CAS_ATTEMPTS):
            kr = await self.load()
            change = await fn(kr)
            if await self.store.save(change.keyring.to_json(), kr.revision):
                self._emit(change, kr)
                return change
            await asyncio.sleep(0.01)
        raise StoreUnavailable("the keyring is being modified concurrently; retry")

    def _emit(self, change: Change, before: Keyring) -> None:
        if self.audit is None:
            return
        for event in change.events:
            self.audit(
                {**event, "revision": change.keyring.revision, "from_revision": before.revision}
            )

    # --- init ----------------------------------------------------------------------------

    async def init(self, classes: Sequence[str]) -> tuple[Keyring, bool]:
        """Creates the keyring (or adds configured classes it lacks). Returns (keyring, changed)."""
        names = ["default", *[c for c in classes if c != "default"]]
        doc = await self.store.load()
        if doc is None:
            kr = await self._create()
            if not await self.store.save(kr.to_json(), 0):
                raise StoreUnavailable("another operator initialized the keyring at the same time")
            if self.audit:
                self.audit(
                    {
                        "event": "keyring.created",
                        "keyring_id": kr.keyring_id.hex(),
                        "revision": kr.revision,
                    }
                )
        kr = await self.load()
        changed = doc is None
        for name in names:
            if name not in kr.classes:
                kr = (await self._mutate(self._class_adder(name))).keyring
                changed = True
        return kr, changed

    def _class_adder(self, name: str) -> Callable[[Keyring], Awaitable[Change]]:
        async def fn(kr: Keyring) -> Change:
            return await self._add_class(kr, name)

        return fn

    async def _create(self) -> Keyring:
        keyring_id = self.random(16)
        meta = self.random(32)
        stub = Keyring(keyring_id, 0, self.clock(), self.provider.describe(), "", "", {})
        wrapped_meta = await self.provider.wrap(meta, wrap_context(keyring_id, 0, "meta", 0))
        return Keyring(
            keyring_id=keyring_id,
            revision=0,
            updated=stub.updated,
            provider=self.provider.describe(),
            meta=wrapped_meta,
            meta_kcv=_kdf.check_value(meta, b"meta").hex(),
            classes={},
        )

    async def _add_class(self, kr: Keyring, name: str) -> Change:
        used = {c.id for c in kr.classes.values()}
        class_id = (
            0
            if name == "default" and 0 not in used
            else min(i for i in range(1, 256) if i not in used)
        )
        master = await self.new_material(kr, class_id, KeyKind.MASTER, 1)
        index = await self.new_material(kr, class_id, KeyKind.INDEX, 1)
        return lifecycle.add_class(kr, name, class_id, master, index, self.clock())

    # --- lifecycle -------------------------------------------------------------------------

    async def rotate(
        self, class_name: str, kind: KeyKind = KeyKind.MASTER, if_revision: int | None = None
    ) -> Change:
        async def fn(kr: Keyring) -> Change:
            if if_revision is not None and kr.revision != if_revision:
                raise RefusedError(f"keyring is at revision {kr.revision}, not {if_revision}")
            c = kr.cls(class_name)
            m = await self.new_material(
                kr, c.id, kind, lifecycle.next_version(kr, class_name, kind)
            )
            return lifecycle.rotate(kr, class_name, kind, m, self.clock(), self.policy)

        return await self._mutate(fn)

    async def rotate_plan(self, class_name: str, kind: KeyKind = KeyKind.MASTER) -> dict[str, Any]:
        """``rotate --dry-run``: what a rotation would do, changing nothing."""
        kr = await self.load()
        c = kr.cls(class_name)
        series = c.series(kind)
        refusal = None
        try:
            m = NewMaterial(lifecycle.next_version(kr, class_name, kind), "", "")
            lifecycle.rotate(kr, class_name, kind, m, self.clock(), self.policy)
        except RefusedError as e:
            refusal = e.message
        active = c.active(kind)
        items = active.items if active else {}
        return {
            "class": class_name,
            "kind": kind.value,
            "next_version": lifecycle.next_version(kr, class_name, kind),
            "active_version": active.version if active else None,
            "live_versions": sum(1 for v in series if v.live),
            "max_live_versions": self.policy.max_live_versions,
            "refused": refusal,
            "items_on_active": dict(items),
            "promote_after": "every live sidecar acknowledges (or keys.propagation_delay)",
        }

    async def promote(
        self, class_name: str, version: int, kind: KeyKind = KeyKind.MASTER, wait: float = 0.0
    ) -> Change:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        if "heartbeats" not in self.store.features:
            v = (await self.load()).cls(class_name).find(kind, version)
            pending = v is not None and v.state is State.PENDING
            ready = v.created + timedelta(seconds=self.propagation_delay) if v and pending else None
            if ready is not None and ready > self.clock() + timedelta(seconds=wait):
                raise RefusedError(
                    f"version {version} can be promoted from {rfc3339(ready)}: this store "
                    "carries no heartbeats, so promotion waits keys.propagation_delay"
                )
        while True:
            kr = await self.load()
            v = kr.cls(class_name).find(kind, version)
            if v is None or v.state is not State.PENDING:
                break  # nothing to wait for: the transition check below refuses
            ok = await acknowledged(
                self.store,
                v.created_revision,
                self.heartbeat_interval,
                self.propagation_delay,
                v.created,
                self.clock(),
            )
            if ok or loop.time() >= deadline:
                break
            await asyncio.sleep(min(1.0, max(0.2, self.heartbeat_interval / 2)))

        async def fn(kr: Keyring) -> Change:
            v = kr.cls(class_name).find(kind, version)
            ack = v is not None and await acknowledged(
                self.store,
                v.created_revision,
                self.heartbeat_interval,
                self.propagation_delay,
                v.created,
                self.clock(),
            )
            return lifecycle.promote(kr, class_name, kind, version, self.clock(), ack)

        return await self._mutate(fn)

    async def retire(self, class_name: str, version: int, kind: KeyKind = KeyKind.MASTER) -> Change:
        return await self._mutate(
            lambda kr: _now(lifecycle.retire(kr, class_name, kind, version, self.clock()))
        )

    async def revoke(
        self,
        class_name: str,
        version: int,
        kind: KeyKind = KeyKind.MASTER,
        *,
        emergency: bool = False,
        force: bool = False,
    ) -> Change:
        async def fn(kr: Keyring) -> Change:
            c = kr.cls(class_name)
            replacement = None
            v = c.find(kind, version)
            if (
                emergency
                and v is not None
                and v.state is State.ACTIVE
                and not _has_pending(c, kind)
            ):
                replacement = await self.new_material(
                    kr, c.id, kind, lifecycle.next_version(kr, class_name, kind)
                )
            return lifecycle.revoke(
                kr,
                class_name,
                kind,
                version,
                self.clock(),
                self.policy,
                emergency=emergency,
                force=force,
                replacement=replacement,
            )

        return await self._mutate(fn)

    async def destroy(
        self, class_name: str, version: int, kind: KeyKind = KeyKind.MASTER, *, force: bool = False
    ) -> Change:
        return await self._mutate(
            lambda kr: _now(
                lifecycle.destroy(
                    kr, class_name, kind, version, self.clock(), self.policy, force=force
                )
            )
        )

    async def freeze(self, until: datetime, reason: str) -> Change:
        return await self._mutate(
            lambda kr: _now(lifecycle.freeze(kr, until, reason, self.clock()))
        )

    async def unfreeze(self) -> Change:
        return await self._mutate(lambda kr: _now(lifecycle.unfreeze(kr, self.clock())))

    async def wait_acknowledged(self, revision: int, wait: float) -> list[str]:
        """Waits until every live sidecar holds ``revision``; returns the ones that don't."""
        if "heartbeats" not in self.store.features:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            live = live_sidecars(
                await self.store.heartbeats(), self.heartbeat_interval, self.clock()
            )
            lagging = sorted(k for k, b in live.items() if int(b.get("revision", 0)) < revision)
            if not lagging or loop.time() >= deadline:
                return lagging
            await asyncio.sleep(min(1.0, max(0.1, self.heartbeat_interval / 2)))

    async def sidecars(self) -> dict[str, Any]:
        beats = await self.store.heartbeats()
        return dict(live_sidecars(beats, self.heartbeat_interval, self.clock()))


def _has_pending(c: KeyClass, kind: KeyKind) -> bool:
    return any(v.state is State.PENDING for v in c.series(kind))


async def _now(change: Change) -> Change:
    return change
