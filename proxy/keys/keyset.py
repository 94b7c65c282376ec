"""``KeySet``: an immutable snapshot of a loaded keyring with its unwrapped keys.

It is what the hot path consults (``KeyLookup`` for openers; the active version per class for
sealers). A new keyring revision builds a new ``KeySet``; nothing mutates one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from proxy.crypto.envelope import Opener
from proxy.crypto.keys import KeyKind, VersionKey
from proxy.errors import ConfigError, KeyUnavailable
from proxy.keys.model import Keyring, State

KeyRef = tuple[KeyKind, int, int]  # (kind, class id, version)


class UnknownKeyVersion(KeyUnavailable):
    """The envelope names a version this snapshot has never seen: reload, then retry once."""


@dataclass(frozen=True)
class KeySet:
    keyring: Keyring
    keys: Mapping[KeyRef, VersionKey]  # decrypt-capable versions only (pending/active/retired)
    loaded_at: datetime
    opener: Opener = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "opener", Opener(self))

    @property
    def keyring_id(self) -> bytes:
        return self.keyring.keyring_id

    @property
    def revision(self) -> int:
        return self.keyring.revision

    def decrypt_key(self, kind: KeyKind, class_id: int, version: int) -> VersionKey:
        key = self.keys.get((kind, class_id, version))
        if key is not None:
            return key
        c = self.keyring.class_by_id(class_id)
        v = c.find(kind, version) if c is not None else None
        if v is None:
            raise UnknownKeyVersion(f"unknown key version {version} (class id {class_id})")
        if v.state in (State.REVOKED, State.DESTROYED):
            raise KeyUnavailable(f"key version {version} is {v.state.value}")
        raise KeyUnavailable(f"key version {version} is unavailable (KMS)")

    def class_id(self, name: str) -> int:
        return self.keyring.cls(name).id

    def active(self, class_id: int, kind: KeyKind = KeyKind.MASTER) -> VersionKey:
        """The version that encrypts for ``class_id``. A compromised version never does."""
        c = self.keyring.class_by_id(class_id)
        if c is None:
            raise ConfigError(f"class id {class_id} is not in the keyring")
        v = c.active(kind)
        if v is None or v.compromised:
            raise KeyUnavailable(f"class '{c.name}' has no usable active {kind.value} version")
        key = self.keys.get((kind, class_id, v.version))
        if key is None:
            raise KeyUnavailable(f"active version {v.version} is unavailable (KMS)")
        return key
