"""A sidecar's live keyring: load, unwrap, watch for changes, heartbeat, protect.

Theory of operation
-------------------
``KeyringRuntime.start()`` reads the document from the store, reconciles it with this sidecar's
sealed local copy (re-asserting versions the store lost), unwraps every decrypt-capable
version through the provider (checking each key-check value), and publishes a ``KeySet``.

``run()`` then loops every ``heartbeat_interval``: it heartbeats the revision it holds (the
acknowledgement two-phase rotation waits for), polls the store for a new revision (a changed
keyring is picked up without a restart), and every ``cache_ttl`` re-validates unwrapped keys
with the provider. While the provider is unreachable it keeps serving for up to ``max_stale``;
after that, or at once if the provider *refuses*, it drops the keys (fail closed). If the store
itself cannot be read for longer than ``max_keyring_age``, the runtime is *stale*: it stops
encrypting (``KeyringStale``) but keeps decrypting.

Unwrapped keys are reused across revisions, so the provider (KMS) is called only for versions
that are new to this sidecar and on re-validation -- never per request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.crypto import _kdf
from proxy.crypto.envelope import SmallSealer
from proxy.crypto.keys import KeyKind, VersionKey
from proxy.errors import (
    AuthenticationError,
    KeyringStale,
    KmsUnavailable,
    RefusedError,
    StoreUnavailable,
    UnavailableError,
)
from proxy.keys.keyset import KeyRef, KeySet
from proxy.keys.model import DECRYPTABLE, Keyring, State, Version
from proxy.keys.providers import Provider, wrap_context
from proxy.keys.stores import KeyringStore

log = logging.getLogger("veil.keys")

Clock = Callable[[], datetime]
EventSink = Callable[[dict[str, Any]], None]

_STATE_ORDER = {
    State.PENDING: 0,
    State.ACTIVE: 1,
    State.RETIRED: 2,
    State.REVOKED: 3,
    State.DESTROYED: 4,
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def default_sidecar_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def unwrap_meta(provider: Provider, kr: Keyring) -> bytes:
    meta = await provider.unwrap(kr.meta, wrap_context(kr.keyring_id, 0, "meta", 0))
    if _kdf.check_value(meta, b"meta").hex() != kr.meta_kcv:
        raise AuthenticationError("keyring meta key does not match its key-check value")
    return meta


async def unwrap_version(
    provider: Provider, kr: Keyring, class_id: int, kind: KeyKind, v: Version
) -> VersionKey:
    if v.wrapped is None:
        raise RefusedError(f"version {v.version} has no material (destroyed)")
    material = await provider.unwrap(
        v.wrapped, wrap_context(kr.keyring_id, class_id, kind.value, v.version)
    )
    key = VersionKey(kr.keyring_id, class_id, v.version, material, kind)
    if key.check_value() != v.kcv:
        raise AuthenticationError(
            f"version {v.version} fails its key-check value: wrong root key or corrupted keyring"
        )
    return key


# --- sealed local copy ----------------------------------------------------------------------


def seal_local_copy(meta: bytes, kr: Keyring, random: Callable[[int], bytes] = os.urandom) -> bytes:
    nonce = random(12)
    aead = AESGCM(_kdf.derive(meta, "local-copy", kr.keyring_id))
    body = json.dumps(kr.to_json(), sort_keys=True).encode()
    sealed = nonce + aead.encrypt(nonce, body, kr.keyring_id)
    return json.dumps(
        {
            "veil_local_copy": 1,
            "keyring_id": kr.keyring_id.hex(),
            "provider": dict(kr.provider),
            "meta": kr.meta,
            "meta_kcv": kr.meta_kcv,
            "revision": kr.revision,
            "sealed": base64.b64encode(sealed).decode(),
        },
        sort_keys=True,
    ).encode()


async def open_local_copy(provider: Provider, data: bytes) -> Keyring:
    outer = json.loads(data)
    keyring_id = bytes.fromhex(outer["keyring_id"])
    stub = Keyring(keyring_id, 0, utcnow(), outer["provider"], outer["meta"], outer["meta_kcv"], {})
    meta = await unwrap_meta(provider, stub)
    raw = base64.b64decode(outer["sealed"])
    aead = AESGCM(_kdf.derive(meta, "local-copy", keyring_id))
    try:
        body = aead.decrypt(raw[:12], raw[12:], keyring_id)
    except InvalidTag:
        raise AuthenticationError("sealed local keyring copy fails authentication") from None
    return Keyring.from_json(json.loads(body))


def merge(store: Keyring, local: Keyring, now: datetime) -> Keyring | None:
    """What to re-assert when the store lost something this sidecar saw.

    Returns None unless the store went back in time (a lower revision) or lacks a version or
    class the local copy holds; otherwise the union of both, each version at its most advanced
    state (a compromised mark is never lost), at a revision above both.
    """
    missing = any(
        store.classes.get(c.name) is None or store.classes[c.name].find(kind, v.version) is None
        for c, kind, v in local.all_versions()
    )
    if not missing and local.revision <= store.revision:
        return None
    classes = dict(store.classes)
    for name, lc in local.classes.items():
        sc = classes.get(name)
        if sc is None:
            classes[name] = lc
            continue
        for kind in KeyKind:
            mine = {v.version: v for v in sc.series(kind)}
            for v in lc.series(kind):
                cur = mine.get(v.version)
                if cur is None:
                    mine[v.version] = v
                elif _STATE_ORDER[v.state] > _STATE_ORDER[cur.state]:
                    mine[v.version] = dataclasses.replace(
                        v, compromised=v.compromised or cur.compromised
                    )
                elif v.compromised and not cur.compromised:
                    mine[v.version] = dataclasses.replace(cur, compromised=True)
            sc = sc.with_series(kind, tuple(sorted(mine.values(), key=lambda x: x.version)))
        classes[name] = sc
    frozen = local if local.revision > store.revision else store
    return dataclasses.replace(
        store,
        classes=classes,
        revision=max(store.revision, local.revision) + 1,
        updated=now,
        frozen_until=frozen.frozen_until,
        freeze_reason=frozen.freeze_reason,
    )


class KeyringRuntime:
    def __init__(
        self,
        store: KeyringStore,
        provider: Provider,
        *,
        sidecar_id: str | None = None,
        local_copy: Path | None = None,
        heartbeat_interval: float = 5.0,
        max_keyring_age: float = 600.0,
        cache_ttl: float = 300.0,
        max_stale: float = 86400.0,
        clock: Clock = utcnow,
        random: Callable[[int], bytes] = os.urandom,
        on_event: EventSink | None = None,
    ) -> None:
        self.store = store
        self.provider = provider
        self.sidecar_id = sidecar_id or default_sidecar_id()
        self.local_copy = local_copy
        self.heartbeat_interval = heartbeat_interval
        self.max_keyring_age = max_keyring_age
        self.cache_ttl = cache_ttl
        self.max_stale = max_stale
        self._clock = clock
        self._random = random
        self._on_event = on_event or (lambda e: None)
        # (ref, key-check value) -> key: a re-wrap (rewrap-root) needs no new unwrap
        self._keys: dict[tuple[KeyRef, str], VersionKey] = {}
        self._validated_at: datetime | None = None
        self._keyset: KeySet | None = None
        self._sealers: dict[tuple[int, int], SmallSealer] = {}
        self._reloading: asyncio.Future[None] | None = None
        self.meta_key: bytes | None = None
        self.listeners: list[Callable[[KeySet], None]] = []  # called with each new revision
        self.on_load: list[Callable[[KeySet], None]] = []  # called after every store read

    # --- state ---------------------------------------------------------------------------

    @property
    def keyset(self) -> KeySet:
        if self._keyset is None:
            raise StoreUnavailable("keyring not loaded")
        return self._keyset

    @property
    def loaded(self) -> bool:
        return self._keyset is not None

    def is_stale(self) -> bool:
        ks = self._keyset
        return ks is None or self._clock() - ks.loaded_at > timedelta(seconds=self.max_keyring_age)

    def sealer(self, class_id: int) -> SmallSealer:
        """The small-value sealer of ``class_id``'s active version (kept across revisions)."""
        if self.is_stale():
            raise KeyringStale()
        key = self.keyset.active(class_id)
        s = self._sealers.get((class_id, key.version))
        if s is None:
            s = self._sealers[(class_id, key.version)] = SmallSealer(key, self._random)
        return s

    def encryptions(self) -> dict[tuple[int, int], int]:
        """Messages sealed per (class id, version) by this process: the nonce budget input."""
        return {k: s.sealed for k, s in self._sealers.items()}

    # --- loading -------------------------------------------------------------------------

    async def start(self) -> KeySet:
        doc = await self.store.load()
        store_kr = Keyring.from_json(doc) if doc is not None else None
        local_kr = await self._read_local_copy()
        kr = await self._reconcile(store_kr, local_kr)
        ks = await self._publish(kr)
        for w in await self.store.warnings():
            log.warning(w)
        return ks

    async def _read_local_copy(self) -> Keyring | None:
        if self.local_copy is None:
            return None
        try:
            data = self.local_copy.read_bytes()
        except FileNotFoundError:
            return None
        return await open_local_copy(self.provider, data)

    async def _reconcile(self, store_kr: Keyring | None, local_kr: Keyring | None) -> Keyring:
        if store_kr is None and local_kr is None:
            raise RefusedError(f"no keyring in {self.store.url}: run `veil keys init` first")
        if store_kr is None:
            assert local_kr is not None
            return await self._reassert(local_kr, None, "the store holds no keyring")
        self.provider.check(store_kr.provider)
        if local_kr is None:
            return store_kr
        if local_kr.keyring_id != store_kr.keyring_id:
            raise RefusedError(
                f"the store holds keyring {store_kr.keyring_id.hex()} but this sidecar's sealed "
                f"copy is keyring {local_kr.keyring_id.hex()}: data under the old keyring would "
                "become unreadable. Restore it (`veil keys import`) or remove "
                f"{self.local_copy} to accept the new keyring"
            )
        merged = merge(store_kr, local_kr, self._clock())
        if merged is None:
            return store_kr
        return await self._reassert(merged, store_kr, "the store lost versions this sidecar saw")

    async def _reassert(self, kr: Keyring, store_kr: Keyring | None, why: str) -> Keyring:
        expected = 0 if store_kr is None else store_kr.revision
        if store_kr is None:
            kr = dataclasses.replace(kr, revision=kr.revision + 1, updated=self._clock())
        self.provider.check(kr.provider)
        if not await self.store.save(kr.to_json(), expected):
            raise StoreUnavailable("keyring changed while re-asserting it; restart to retry")
        log.warning("re-asserted the keyring from the sealed local copy: %s", why)
        self._on_event({"event": "keyring.reasserted", "reason": why, "revision": kr.revision})
        return kr

    async def _unwrap_all(self, kr: Keyring) -> dict[KeyRef, VersionKey]:
        keys: dict[KeyRef, VersionKey] = {}
        fresh: dict[tuple[KeyRef, str], VersionKey] = {}
        for c, kind, v in kr.all_versions():
            if v.state not in DECRYPTABLE or v.wrapped is None:
                continue
            ref = (kind, c.id, v.version)
            key = self._keys.get((ref, v.kcv))
            if key is None:
                key = await unwrap_version(self.provider, kr, c.id, kind, v)
            keys[ref] = fresh[(ref, v.kcv)] = key
        self._keys = fresh  # revoked/destroyed versions drop out of memory here
        return keys

    async def _publish(self, kr: Keyring) -> KeySet:
        if (
            self.meta_key is None
            or self._keyset is None
            or (self._keyset.keyring_id != kr.keyring_id)
        ):
            self.meta_key = await unwrap_meta(self.provider, kr)
        keys = await self._unwrap_all(kr)
        now = self._clock()
        if self._validated_at is None:
            self._validated_at = now
        ks = KeySet(kr, keys, now)
        self._keyset = ks
        live = {(k[1], k[2]) for k in keys if k[0] is KeyKind.MASTER}
        self._sealers = {k: s for k, s in self._sealers.items() if k in live}
        self._write_local_copy(kr)
        for listener in self.listeners:
            listener(ks)
        for callback in self.on_load:
            callback(ks)
        return ks

    def _write_local_copy(self, kr: Keyring) -> None:
        if self.local_copy is None or self.meta_key is None:
            return
        data = seal_local_copy(self.meta_key, kr, self._random)
        tmp = self.local_copy.with_name(f".{self.local_copy.name}.{os.getpid()}.tmp")
        self.local_copy.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.local_copy)

    async def refresh(self) -> bool:
        """Polls the store; publishes a new ``KeySet`` if the revision changed. True if so."""
        doc = await self.store.load()
        current = self._keyset
        if doc is None or (current is not None and int(doc["revision"]) < current.revision):
            # the store lost the document or went back in time: re-assert what we hold
            store_kr = Keyring.from_json(doc) if doc is not None else None
            assert current is not None
            kr = await self._reconcile(store_kr, current.keyring)
            await self._publish(kr)
            return True
        if current is not None and int(doc["revision"]) == current.revision:
            self._keyset = dataclasses.replace(current, loaded_at=self._clock())
            for callback in self.on_load:
                callback(self._keyset)
            return False
        kr = Keyring.from_json(doc)
        if current is not None and kr.keyring_id != current.keyring_id:
            raise RefusedError("the keyring store now holds a different keyring; not switching")
        if current is not None:
            missing = merge(kr, current.keyring, self._clock())
            if missing is not None:
                kr = await self._reassert(missing, kr, "the store lost versions this sidecar saw")
        await self._publish(kr)
        return True

    async def reload(self) -> None:
        """Single-flight reload: concurrent callers share one store read."""
        if self._reloading is not None:
            await asyncio.shield(self._reloading)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reloading = fut
        try:
            await self.refresh()
            fut.set_result(None)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: the caller below re-raises it
            raise
        finally:
            self._reloading = None

    async def revalidate(self) -> None:
        """Re-unwraps every key with the provider (``cache_ttl``), within ``max_stale``."""
        ks = self.keyset
        now = self._clock()
        try:
            for c, kind, v in ks.keyring.all_versions():
                if v.state in DECRYPTABLE and v.wrapped is not None:
                    await unwrap_version(self.provider, ks.keyring, c.id, kind, v)
            self._validated_at = now
        except KmsUnavailable:
            assert self._validated_at is not None
            if now - self._validated_at > timedelta(seconds=self.max_stale):
                self._drop_keys("the KMS has been unreachable for longer than keys.max_stale")
        except AuthenticationError:
            self._drop_keys("the KMS refused to unwrap the keyring")

    def _drop_keys(self, why: str) -> None:
        log.error("dropping unwrapped keys: %s", why)
        self._on_event({"event": "keys.dropped", "reason": why})
        self._keys = {}
        self._sealers = {}
        if self._keyset is not None:
            self._keyset = KeySet(self._keyset.keyring, {}, self._keyset.loaded_at)

    async def heartbeat(self) -> None:
        ks = self._keyset
        await self.store.heartbeat(
            self.sidecar_id,
            {
                "revision": ks.revision if ks else 0,
                "keyring_id": ks.keyring_id.hex() if ks else None,
                # messages sealed per class/version by this process: the nonce budget's input
                "encryptions": {f"{c}/{v}": n for (c, v), n in self.encryptions().items()},
            },
        )

    async def run(self) -> None:
        """The sidecar's keyring loop: heartbeat, refresh, re-validate. Never raises."""
        last_validation = self._clock()
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            with contextlib.suppress(UnavailableError, RefusedError, AuthenticationError):
                await self.refresh()
            with contextlib.suppress(UnavailableError):
                await self.heartbeat()
            if self._clock() - last_validation >= timedelta(seconds=self.cache_ttl):
                last_validation = self._clock()
                await self.revalidate()

    async def acknowledged(
        self, kr: Keyring, revision: int, propagation_delay: float, since: datetime
    ) -> bool:
        """Every live sidecar holds ``revision`` (or, without heartbeats, the delay passed)."""
        return await acknowledged(
            self.store, revision, self.heartbeat_interval, propagation_delay, since, self._clock()
        )


async def acknowledged(
    store: KeyringStore,
    revision: int,
    heartbeat_interval: float,
    propagation_delay: float,
    since: datetime,
    now: datetime,
) -> bool:
    """SPEC 4's promotion gate. Live = heartbeated within 3 intervals (at least 15 s)."""
    if "heartbeats" not in store.features:
        return now - since >= timedelta(seconds=propagation_delay)
    horizon = now.timestamp() - max(3 * heartbeat_interval, 15.0)
    beats = await store.heartbeats()
    live = [b for b in beats.values() if float(b.get("at", 0)) >= horizon]
    return all(int(b.get("revision", 0)) >= revision for b in live)


def live_sidecars(
    beats: Mapping[str, Mapping[str, Any]], heartbeat_interval: float, now: datetime
) -> dict[str, Mapping[str, Any]]:
    horizon = now.timestamp() - max(3 * heartbeat_interval, 15.0)
    return {k: b for k, b in beats.items() if float(b.get("at", 0)) >= horizon}
