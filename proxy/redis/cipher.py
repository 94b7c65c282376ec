"""The RESP proxy's hot-path view of ``RedisValues``: classify keys, seal and open values.

Theory of operation
===================
``RedisValues`` decides every context (namespace, role, field); this module only caches what a
request needs so that the per-value cost is one dict lookup plus the AEAD call:

* ``key(name)`` classifies a key once (bounded cache): ``None`` for a plaintext key, else its
  ``KeyInfo`` (namespace state, deterministic-list and -field flags); a reserved key
  (``__veil__:*``) raises ``Refusal``.
* ``NsState`` holds, per namespace, the base context of each role, the randomized sealer of
  the class's active master version and the active index key, and whether an index rotation
  is in progress (``rotating``, with the older index keys a member may still be under: the
  one flag the set, sorted-set, deterministic list and field handlers check, see
  ``_rotation``). They are rebuilt when the keyring
  changes (``reset``, a ``KeyringRuntime`` listener) and re-checked for staleness once a second
  by ``check()`` (the listener's timer), not per value: ``KeyringRuntime.sealer`` reads the
  clock, which costs more than the AES-GCM call it guards.
* ``open`` counts per key version (flushed into ``veil_decrypt_total`` by ``flush_metrics``;
  ``veil_encrypt_total`` comes from the sealers' own nonce counters, so sealing counts nothing),
  serves legacy plaintext under ``legacy_plaintext = allow`` as version ``LEGACY``, and calls
  ``on_stale(db, key, role)`` -- the lazy re-encryption hook, ``None`` unless the rotation
  engine sets it -- for an item that is not on its active version. Failures are counted
  per (version, reason) and audited once a minute in aggregate (``flush_metrics``).

``db`` is set by the connection that is processing replies (one at a time on the event loop),
so the hook knows the item's database without a per-call argument.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.config import Namespace
from proxy.crypto.context import Role, field_context
from proxy.crypto.envelope import MAGIC, Opener, SmallSealer, seal_deterministic
from proxy.crypto.keys import KeyKind, VersionKey
from proxy.errors import CryptoError, KeyringStale, LegacyPlaintextRefused, VeilError
from proxy.keys.keyset import UnknownKeyVersion
from proxy.keys.model import State
from proxy.keys.stores import RESERVED_PREFIX
from proxy.metrics import Metrics
from proxy.redis.policy import reserved
from proxy.redis.values import DETERMINISTIC_ROLES, FIELD_BOUND_ROLES, LEGACY, RedisValues

_CACHE_MAX: Final = 100_000
_SMALL: Final = 1  # format byte of the randomized small envelope
StaleHook = Callable[[int, bytes, Role], None]


class NeedsReload(Exception):
    """An envelope names a key version this keyring has never seen: reload, then retry once."""


@dataclass(eq=False)
class NsState:
    """Per-namespace crypto state; rebuilt on every keyring change."""

    ns: Namespace
    class_id: int
    contexts: dict[Role, bytes]
    sealer: SmallSealer | None = None  # None while the keyring is stale
    index: VersionKey | None = None
    active_master: int = 0
    active_index: int = 0
    error: VeilError | None = None  # why sealing is impossible (stale, no active version)
    # index rotation in progress (SPEC 6): retired index versions whose migration is not
    # complete may still hold members. ``rotating`` is the one flag the hot path checks;
    # ``index_old`` holds those versions' keys (newest first), ``index_blind`` says one of
    # them is unavailable (KMS), so a member cannot be looked up under every version.
    rotating: bool = False
    index_old: tuple[VersionKey, ...] = ()
    index_blind: bool = False


@dataclass(frozen=True, eq=False, slots=True)
class KeyInfo:
    """An encrypted key: its namespace state and the opt-in deterministic flags."""

    ns: NsState
    det_list: bool
    det_fields: bool


@dataclass(eq=False)
class Cipher:
    values: RedisValues
    metrics: Metrics | None = None
    audit: Callable[[dict[str, Any]], None] | None = None
    on_stale: StaleHook | None = None
    db: int = 0
    _keys: dict[bytes, KeyInfo | None] = field(default_factory=dict, repr=False)
    _ns: dict[str, NsState] = field(default_factory=dict, repr=False)
    _opener: Opener | None = None
    decrypts: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    _sealed: dict[tuple[int, int], int] = field(default_factory=dict)  # last flush's counts
    failures: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    _minute: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    # --- keys ----------------------------------------------------------------------------

    def key(self, name: bytes) -> KeyInfo | None:
        """``None`` for a key under a plaintext pattern, else its ``KeyInfo``.

        Raises:
            Refusal: the key is under veil's reserved prefix.
        """
        try:
            return self._keys[name]
        except KeyError:
            pass
        if name.startswith(RESERVED_PREFIX):
            raise reserved(name)
        redis = self.values.redis
        info = None
        if redis.is_encrypted_key(name):
            ns = self.namespace(redis.namespace_for_key(name))
            det_list, det_fields = redis.is_deterministic_list, redis.is_deterministic_fields
            info = KeyInfo(ns, det_list(name), det_fields(name))
        if len(self._keys) >= _CACHE_MAX:
            self._keys.clear()
        self._keys[name] = info
        return info

    def channel(self, name: bytes) -> NsState | None:
        """The namespace state of an encrypted pub/sub channel, None for a plaintext one."""
        redis = self.values.redis
        if not redis.is_encrypted_channel(name):
            return None
        return self.namespace(redis.namespace_for_key(name))

    def namespace(self, ns: Namespace) -> NsState:
        state = self._ns.get(ns.name)
        if state is None:
            state = self._ns[ns.name] = self._build(ns)
        return state

    def _build(self, ns: Namespace) -> NsState:
        values = self.values
        contexts: dict[Role, bytes] = {}
        for role in Role:
            if role is not Role.CANARY:
                full = values.context(ns, role, b"")
                # field-bound roles: keep the base; field_context() appends length and field
                contexts[role] = full[:-4] if role in FIELD_BOUND_ROLES else full
        state = NsState(ns, values.class_id(ns), contexts)
        self._arm(state)
        return state

    def _arm(self, state: NsState) -> None:
        runtime = self.values.runtime
        try:
            state.sealer = runtime.sealer(state.class_id)
            state.active_master = state.sealer.version
            state.index = runtime.keyset.active(state.class_id, KeyKind.INDEX)
            state.active_index = state.index.version
            state.error = None
        except VeilError as e:  # stale keyring, no usable active version: sealing fails
            state.sealer, state.index, state.error = None, None, e
        self._arm_rotation(state)

    def _arm_rotation(self, state: NsState) -> None:
        """Sets ``rotating``/``index_old``/``index_blind`` from the loaded keyring.

        An index rotation is in progress for a class while one of its index versions is
        ``retired`` and its migration is not marked complete (the rebuild the engine runs,
        ``rotation.engine.Engine.plan``). Pending versions never sealed anything; revoked and
        destroyed ones cannot be opened, so no lookup could use them.
        """
        runtime = self.values.runtime
        if not runtime.loaded:
            return
        keyset = runtime.keyset
        cls = keyset.keyring.class_by_id(state.class_id)
        olds = [] if cls is None else [
            v.version
            for v in cls.index_versions
            if v.state is State.RETIRED and v.migration_complete is None
        ]  # fmt: skip
        keys = [keyset.keys.get((KeyKind.INDEX, state.class_id, v)) for v in olds]
        found = tuple(k for k in keys if k is not None)
        state.index_old = tuple(sorted(found, key=lambda k: -k.version))
        state.index_blind = len(found) < len(olds)
        state.rotating = bool(olds)

    def reset(self, *_: object) -> None:
        """Forget everything derived from the keyring (a ``KeyringRuntime`` listener)."""
        self.values.reset()
        self._ns.clear()
        self._keys.clear()
        self._opener = None

    def check(self) -> None:
        """Re-arm every namespace: picks up staleness (called once a second)."""
        for state in self._ns.values():
            self._arm(state)

    # --- sealing ---------------------------------------------------------------------------

    def seal(self, info: KeyInfo, role: Role, plaintext: bytes, field_name: bytes = b"") -> bytes:
        """The envelope of ``plaintext`` in ``role`` (randomized or deterministic by role)."""
        state = info.ns
        if role in DETERMINISTIC_ROLES or (role is Role.LIST_ELEMENT and info.det_list):
            return self.seal_det(state, role, plaintext)
        sealer = state.sealer
        if sealer is None:
            raise state.error or KeyringStale()
        ctx = state.contexts[role]
        if role is Role.HASH_VALUE or role is Role.STREAM_VALUE:
            ctx = field_context(ctx, field_name)
        return sealer.seal(plaintext, ctx)

    def seal_det(self, state: NsState, role: Role, plaintext: bytes) -> bytes:
        index = state.index
        if index is None:
            raise state.error or KeyringStale()
        return seal_deterministic(index, plaintext, state.contexts[role])

    def seal_versions(self, state: NsState, role: Role, plaintext: bytes) -> list[bytes]:
        """The deterministic envelopes of ``plaintext`` under the active index version and every
        version an index rotation may still have members on (active first)."""
        index = state.index
        if index is None:
            raise state.error or KeyringStale()
        ctx = state.contexts[role]
        return [seal_deterministic(k, plaintext, ctx) for k in (index, *state.index_old)]

    def seal_string(self, info: KeyInfo, plaintext: bytes) -> bytes:
        """``seal(info, Role.STRING, ...)`` without the role dispatch (the SET hot path)."""
        state = info.ns
        sealer = state.sealer
        if sealer is None:
            raise state.error or KeyringStale()
        return sealer.seal(plaintext, state.contexts[Role.STRING])

    # --- opening ---------------------------------------------------------------------------

    def open(
        self, info: KeyInfo, role: Role, stored: bytes, key: bytes = b"", field_name: bytes = b""
    ) -> bytes:
        """The plaintext of a stored value.

        Raises:
            NeedsReload: the envelope names a version unknown to this keyring.
            CryptoError: tampered or transplanted ciphertext, revoked key, refused legacy value.
        """
        state = info.ns
        ctx = state.contexts[role]
        if role is Role.HASH_VALUE or role is Role.STREAM_VALUE:
            ctx = field_context(ctx, field_name)
        if stored[:3] != MAGIC:
            return self._legacy(stored, key, role)
        opener = self._opener
        if opener is None:
            opener = self._opener = self.values.runtime.keyset.opener
        try:
            plaintext, version = opener.open(stored, ctx)
        except UnknownKeyVersion:
            raise NeedsReload() from None
        except CryptoError as e:
            self._failed(stored, e)
            raise
        self.decrypts[version] += 1
        if self.on_stale is not None:
            active = state.active_master if stored[3] == _SMALL else state.active_index
            if version != active:
                self.on_stale(self.db, key, role)
        return plaintext

    def opener(self) -> Opener:
        opener = self._opener
        if opener is None:
            opener = self._opener = self.values.runtime.keyset.opener
        return opener

    def count_decrypts(self, versions: list[int]) -> None:
        """Counts a batch of opened envelopes (the fast path opens without ``open``)."""
        decrypts = self.decrypts
        first = versions[0]
        if versions.count(first) == len(versions):
            decrypts[first] += len(versions)
        else:
            for version in versions:
                decrypts[version] += 1

    def open_string(self, info: KeyInfo, stored: bytes, key: bytes) -> bytes:
        """``open(info, Role.STRING, ...)`` without the role dispatch (the GET hot path)."""
        if stored[:3] != MAGIC:
            return self._legacy(stored, key, Role.STRING)
        opener = self._opener
        if opener is None:
            opener = self._opener = self.values.runtime.keyset.opener
        state = info.ns
        try:
            plaintext, version = opener.open(stored, state.contexts[Role.STRING])
        except UnknownKeyVersion:
            raise NeedsReload() from None
        except CryptoError as e:
            self._failed(stored, e)
            raise
        self.decrypts[version] += 1
        if self.on_stale is not None and version != state.active_master:
            self.on_stale(self.db, key, Role.STRING)
        return plaintext

    def open_channel(self, state: NsState, stored: bytes, channel: bytes) -> bytes:
        return self.open(KeyInfo(state, False, False), Role.PUBSUB_MESSAGE, stored, channel)

    def _legacy(self, stored: bytes, key: bytes, role: Role) -> bytes:
        if self.values.redis.legacy_plaintext != "allow":
            self.failures[("plaintext", "legacy_refused")] += 1
            raise LegacyPlaintextRefused()
        self.decrypts[LEGACY] += 1
        if self.on_stale is not None:
            self.on_stale(self.db, key, role)
        return stored

    def _failed(self, stored: bytes, error: CryptoError) -> None:
        version = int.from_bytes(stored[9:11], "big") if len(stored) >= 11 else 0
        self.failures[(str(version), type(error).__name__)] += 1

    # --- metrics ---------------------------------------------------------------------------

    def flush_metrics(self) -> None:
        """Moves the local counters into ``veil_*_total`` (called once a second)."""
        m = self.metrics
        if m is not None:
            hot = m.hot
            for version, n in self.decrypts.items():
                hot.decrypts[("redis", _label(version))] += n
            sealed = self.values.runtime.encryptions()
            for (class_id, version), total in sealed.items():
                delta = total - self._sealed.get((class_id, version), 0)
                if delta > 0:
                    hot.encrypts[("redis", str(version))] += delta
            self._sealed = sealed
            for (label, reason), n in self.failures.items():
                m.decrypt_failures.labels("redis", label, reason).inc(n)
        for pair, n in self.failures.items():
            self._minute[pair] += n
        self.decrypts.clear()
        self.failures.clear()

    def audit_failures(self) -> None:
        """One audit event for the last minute's decrypt failures, per version and reason."""
        if self._minute and self.audit is not None:
            counts = {f"{v}:{r}": n for (v, r), n in sorted(self._minute.items())}
            self.audit({"event": "decrypt.failures", "store": "redis", "counts": counts})
        self._minute.clear()


def _label(version: int) -> str:
    return "plaintext" if version == LEGACY else str(version)
