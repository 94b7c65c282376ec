"""How Redis values are sealed and opened: the one place that decides contexts (SPEC 5, 6).

The RESP proxy and the migration engine both go through ``RedisValues``, so a value written by
one is always readable by the other. For a key, ``redis.namespaces`` gives the namespace (first
matching pattern, else ``default``), ``keys.classes`` maps the namespace to a key class, and the
*role* says what the bytes are to Redis:

====================  ==============  ===================================  ====================
data                  role            envelope                             context adds
====================  ==============  ===================================  ====================
string value          STRING          randomized (master key)              --
hash value            HASH_VALUE      randomized                           plaintext field name
hash field name [1]   HASH_FIELD      deterministic (index key)            --
list element          LIST_ELEMENT    randomized; deterministic [2]        --
set member            SET_MEMBER      deterministic                        --
sorted-set member     ZSET_MEMBER     deterministic (scores stay plain)    --
HyperLogLog element   HLL_ELEMENT     deterministic                        --
stream field value    STREAM_VALUE    randomized (field names plain)       field name
pub/sub message       PUBSUB_MESSAGE  randomized                           -- (channel namespace)
====================  ==============  ===================================  ====================

Every context starts with the namespace and the role. [1] opt-in: ``redis.deterministic_fields``;
[2] opt-in: ``redis.deterministic_lists``.

A hash value binds its *plaintext* field name, so rotating the index keyring (which re-encrypts
deterministic field names) never touches hash values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.config import KeySettings, Namespace, RedisSettings
from proxy.crypto.context import Role, field_context, value_context
from proxy.crypto.envelope import MAGIC, SmallSealer, seal_deterministic
from proxy.crypto.keys import KeyKind
from proxy.errors import LegacyPlaintextRefused, NotAnEnvelope
from proxy.keys.runtime import KeyringRuntime

DETERMINISTIC_ROLES = frozenset(
    {Role.SET_MEMBER, Role.ZSET_MEMBER, Role.HLL_ELEMENT, Role.HASH_FIELD}
)
FIELD_BOUND_ROLES = frozenset({Role.HASH_VALUE, Role.STREAM_VALUE})

LEGACY = -1  # the "version" of a legacy plaintext value served under ``legacy_plaintext = allow``


@dataclass
class RedisValues:
    redis: RedisSettings
    keys: KeySettings
    runtime: KeyringRuntime
    _contexts: dict[tuple[str, Role], bytes] = field(default_factory=dict, repr=False)
    _classes: dict[str, int] = field(default_factory=dict, repr=False)

    def namespace(self, key: bytes) -> Namespace:
        return self.redis.namespace_for_key(key)

    def context(self, ns: Namespace, role: Role, field_name: bytes | None = None) -> bytes:
        base = self._contexts.get((ns.name, role))
        if base is None:
            base = self._contexts[(ns.name, role)] = value_context(ns.name, role)
        if role in FIELD_BOUND_ROLES:
            if field_name is None:
                raise ValueError(f"{role.name} values are bound to their field name")
            return field_context(base, field_name)
        return base

    def class_id(self, ns: Namespace) -> int:
        """The key class of a namespace (cached per keyring revision by the caller's reset)."""
        cid = self._classes.get(ns.name)
        if cid is None:
            name = self.keys.class_for_namespace(ns.name).name
            cid = self._classes[ns.name] = self.runtime.keyset.class_id(name)
        return cid

    def sealer(self, ns: Namespace) -> SmallSealer:
        return self.runtime.sealer(self.class_id(ns))

    def deterministic(self, role: Role, key: bytes) -> bool:
        if role in DETERMINISTIC_ROLES:
            return True
        return role is Role.LIST_ELEMENT and self.redis.is_deterministic_list(key)

    def seal(
        self,
        key: bytes,
        role: Role,
        plaintext: bytes,
        field_name: bytes | None = None,
        ns: Namespace | None = None,
    ) -> bytes:
        """The envelope of ``plaintext`` stored under ``key`` in ``role``."""
        ns = ns or self.namespace(key)
        ctx = self.context(ns, role, field_name)
        if self.deterministic(role, key):
            if self.runtime.is_stale():
                from proxy.errors import KeyringStale

                raise KeyringStale()
            index = self.runtime.keyset.active(self.class_id(ns), KeyKind.INDEX)
            return seal_deterministic(index, plaintext, ctx)
        return self.sealer(ns).seal(plaintext, ctx)

    def open(
        self,
        key: bytes,
        role: Role,
        stored: bytes,
        field_name: bytes | None = None,
        ns: Namespace | None = None,
    ) -> tuple[bytes, int]:
        """``(plaintext, key version)``; ``LEGACY`` as the version for allowed legacy plaintext.

        Raises:
            LegacyPlaintextRefused: a non-envelope value under ``legacy_plaintext = refuse``.
            DecryptionFailed, KeyUnavailable, WrongKeyring, UnsupportedFormat: see envelope.py.
        """
        if stored[:3] != MAGIC:
            if self.redis.legacy_plaintext == "allow":
                return stored, LEGACY
            raise LegacyPlaintextRefused()
        ns = ns or self.namespace(key)
        try:
            return self.runtime.keyset.opener.open(stored, self.context(ns, role, field_name))
        except NotAnEnvelope:  # pragma: no cover - the magic was checked above
            raise LegacyPlaintextRefused() from None

    def reset(self) -> None:
        """Forget cached class ids (call when the keyring changes: classes may be added)."""
        self._classes.clear()
