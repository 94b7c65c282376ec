"""Unwrapped key material, held so that it never leaks through repr, str or pickling.

A ``VersionKey`` is one version of one class of one keyring, either a *master* version (it
protects Redis values and S3 data keys) or an *index* version (deterministic envelopes).
Everything veil encrypts with is derived from ``material`` with HKDF (see ``_kdf``); the
derived primitives are built once per version and cached on the object.
"""

from __future__ import annotations

import enum
from typing import NoReturn

from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from proxy.crypto import _kdf

KEYRING_ID_LEN = 16
MATERIAL_LEN = 32
MAX_VERSION = 0xFFFF
MAX_CLASS_ID = 0xFF


class KeyKind(enum.Enum):
    MASTER = "master"
    INDEX = "index"


class VersionKey:
    """One version's material plus its identity. Never printable, never picklable."""

    __slots__ = ("_det", "_material", "_wrap", "class_id", "info", "keyring_id", "kind", "version")

    def __init__(
        self,
        keyring_id: bytes,
        class_id: int,
        version: int,
        material: bytes,
        kind: KeyKind = KeyKind.MASTER,
    ) -> None:
        if len(keyring_id) != KEYRING_ID_LEN:
            raise ValueError("keyring_id must be 16 bytes")
        if not 0 <= class_id <= MAX_CLASS_ID:
            raise ValueError("class id out of range")
        if not 1 <= version <= MAX_VERSION:
            raise ValueError("key version out of range")
        if len(material) != MATERIAL_LEN:
            raise ValueError("key material must be 32 bytes")
        self.keyring_id = keyring_id
        self.class_id = class_id
        self.version = version
        self.kind = kind
        self.info = _kdf.key_info(keyring_id, class_id, version)
        self._material = material
        self._det: AESSIV | None = None
        self._wrap: AESSIV | None = None

    @property
    def material(self) -> bytes:
        """The raw material: only escrow export and provider wrapping may read this."""
        return self._material

    def check_value(self) -> str:
        """Key-check value (hex): proves which material this is without revealing it."""
        return _kdf.check_value(self._material, self.info).hex()

    def small_subkey(self, salt: bytes) -> bytes:
        return _kdf.derive(self._material, "small", self.info, salt=salt)

    def deterministic(self) -> AESSIV:
        if self._det is None:
            self._det = AESSIV(_kdf.derive(self._material, "det", self.info))
        return self._det

    def wrapper(self) -> AESSIV:
        if self._wrap is None:
            self._wrap = AESSIV(_kdf.derive(self._material, "wrap", self.info))
        return self._wrap

    def __repr__(self) -> str:
        return (
            f"VersionKey(kind={self.kind.value}, class_id={self.class_id}, version={self.version})"
        )

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("key material cannot be pickled")
