"""Value envelopes: the randomized small-value envelope and the deterministic envelope.

Theory of operation
-------------------
Every envelope starts with the same 11-byte header::

    magic(3) = C1 F5 56 | format(1) | keyring ref(4) | class id(1) | key version(2, big-endian)

``C1`` can start neither UTF-8 text, JSON, msgpack (``C1`` is msgpack's "never used" byte),
pickle (``80`` or an ASCII opcode), zlib (``x8``), gzip (``1F 8B``) nor zstd/lz4/snappy frames,
so a value with this prefix is ours; the format byte selects the layout from ``FORMATS`` and an
unknown format is an error, never a guess. The keyring ref is the first 4 bytes of the keyring id;
the whole id is bound into every derived key, so a ref collision still fails authentication.

Small values (format 0x01, 47 bytes of overhead)::

    header(11) | salt(16) | counter(4) | AES-256-GCM ciphertext | tag(16)

The AES-GCM key is ``HKDF(version material, salt, "veil/v1/small" | keyring id | class | version)``
for a salt drawn once per process (and again after 2^32 messages); the nonce is 8 zero bytes
followed by the counter. A (key, nonce) pair repeats only if two salts collide; the bound is
proved in docs/FORMAT.md. The associated data is ``context`` (see ``context.py``: namespace,
role and, for hash values, the field). Every header field is authenticated without being
repeated in the associated data: keyring, class, version and salt are inputs of the subkey
derivation and the counter is the nonce, so changing any of them changes the key or nonce.

Deterministic values (format 0x02, 27 bytes of overhead)::

    header(11) | AES-SIV synthetic IV(16) | ciphertext

under ``HKDF(index material, "veil/v1/deterministic" | ...)`` with the associated data vector
``[header, context]``. Equal plaintexts in one context give equal envelopes, which is the point.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.crypto.keys import KeyKind, VersionKey
from proxy.errors import DecryptionFailed, NotAnEnvelope, UnsupportedFormat, WrongKeyring

MAGIC = b"\xc1\xf5\x56"
FORMAT_SMALL = 0x01
FORMAT_DETERMINISTIC = 0x02
FORMAT_OBJECT = 0x03
FORMAT_UPLOAD = 0x04

# format byte -> (name, kind of key it needs). The envelope version table of STYLE habit 9.
FORMATS: dict[int, tuple[str, KeyKind]] = {
    FORMAT_SMALL: ("small-v1", KeyKind.MASTER),
    FORMAT_DETERMINISTIC: ("deterministic-v1", KeyKind.INDEX),
    FORMAT_OBJECT: ("object-v1", KeyKind.MASTER),
    FORMAT_UPLOAD: ("upload-v1", KeyKind.MASTER),
}

HEADER = struct.Struct(">3sB4sBH")
HEADER_LEN = HEADER.size  # 11
SALT_LEN = 16
COUNTER_LEN = 4
TAG_LEN = 16
SMALL_HEADER_LEN = HEADER_LEN + SALT_LEN + COUNTER_LEN  # 31
SMALL_OVERHEAD = SMALL_HEADER_LEN + TAG_LEN  # 47
DET_OVERHEAD = HEADER_LEN + 16  # 27
COUNTER_LIMIT = 1 << 32  # messages per salt before a fresh salt is drawn
_NONCE_PAD = bytes(8)
_SMALL_TAG = MAGIC + bytes([FORMAT_SMALL])
_DET_TAG = MAGIC + bytes([FORMAT_DETERMINISTIC])
_SUBKEY_CACHE_MAX = 4096


class KeyLookup(Protocol):
    """What an opener needs from a keyring: the decrypt-capable key for a version, or an error.

    Implementations raise ``KeyUnavailable`` for revoked, destroyed or unknown versions (after
    any reload they choose to attempt), and never return a key that must not decrypt.
    """

    @property
    def keyring_id(self) -> bytes: ...

    def decrypt_key(self, kind: KeyKind, class_id: int, version: int) -> VersionKey: ...


def is_envelope(value: bytes) -> bool:
    """True when ``value`` starts with veil's magic (whatever its format)."""
    return value[:3] == MAGIC


def keyring_ref(keyring_id: bytes) -> bytes:
    return keyring_id[:4]


def header(fmt: int, key: VersionKey) -> bytes:
    return HEADER.pack(MAGIC, fmt, keyring_ref(key.keyring_id), key.class_id, key.version)


def parse_header(value: bytes) -> tuple[int, bytes, int, int]:
    """``(format, keyring ref, class id, version)``.

    Raises ``NotAnEnvelope`` (no magic) or ``UnsupportedFormat`` (unknown format byte).
    """
    if value[:3] != MAGIC:
        raise NotAnEnvelope()
    if len(value) < HEADER_LEN:
        raise DecryptionFailed()
    _, fmt, ref, class_id, version = HEADER.unpack_from(value)
    if fmt not in FORMATS:
        raise UnsupportedFormat(f"unknown envelope format 0x{fmt:02x}")
    return fmt, ref, class_id, version


def seal_small_at(
    key: VersionKey, salt: bytes, counter: int, plaintext: bytes, context: bytes
) -> bytes:
    """The small envelope with an explicit salt and counter (frozen vectors, tests).

    ``SmallSealer.seal`` produces exactly these bytes for its salt and counter; it only
    caches the subkey and the header.
    """
    if len(salt) != SALT_LEN or not 0 <= counter < COUNTER_LIMIT:
        raise ValueError("bad salt or counter")
    ctr = counter.to_bytes(4, "big")
    head = header(FORMAT_SMALL, key) + salt + ctr
    return head + AESGCM(key.small_subkey(salt)).encrypt(_NONCE_PAD + ctr, plaintext, context)


class SmallSealer:
    """Seals small values with one master version. One per (process, version); not shared.

    ``random`` is injected (``os.urandom`` in production, a seeded source for frozen vectors).
    """

    __slots__ = ("_aead", "_counter", "_key", "_prefix", "_random", "sealed_before")

    def __init__(self, key: VersionKey, random: Callable[[int], bytes] = os.urandom) -> None:
        if key.kind is not KeyKind.MASTER:
            raise ValueError("small values are sealed with a master version")
        self._key = key
        self._random = random
        self.sealed_before = 0  # messages sealed under earlier salts (nonce-budget accounting)
        self._new_salt()

    def _new_salt(self) -> None:
        salt = self._random(SALT_LEN)
        self._aead = AESGCM(self._key.small_subkey(salt))
        self._prefix = header(FORMAT_SMALL, self._key) + salt
        self._counter = itertools.count()

    @property
    def version(self) -> int:
        return self._key.version

    @property
    def sealed(self) -> int:
        """Messages sealed by this sealer so far.

        Read from the counter's repr (``count(n)``) so that reading never consumes a value:
        ``next()`` on ``itertools.count`` is the one atomic step that hands out nonces.
        """
        return self.sealed_before + int(repr(self._counter)[6:-1])

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        n = next(self._counter)
        if n >= COUNTER_LIMIT:
            self.sealed_before += COUNTER_LIMIT
            self._new_salt()
            n = next(self._counter)
        ctr = n.to_bytes(4, "big")
        head = self._prefix + ctr
        return head + self._aead.encrypt(_NONCE_PAD + ctr, plaintext, context)


class Opener:
    """Opens small and deterministic envelopes with whatever version they name.

    Small-value subkeys are cached per (version, salt); the cache is bounded because anyone
    with write access to the store could mint salts. Build a new ``Opener`` when the keyring
    changes so revoked versions drop out of the cache at once.
    """

    __slots__ = ("_cache", "_keys", "_ref")

    def __init__(self, keys: KeyLookup) -> None:
        self._keys = keys
        self._ref = keyring_ref(keys.keyring_id)
        self._cache: dict[bytes, tuple[AESGCM, int]] = {}

    def open(self, envelope: bytes, context: bytes) -> tuple[bytes, int]:
        """Returns ``(plaintext, key version)`` of a small or deterministic envelope.

        Raises:
            NotAnEnvelope: no magic (legacy plaintext: the caller applies its policy).
            DecryptionFailed: tampered, truncated, transplanted or downgraded.
            WrongKeyring, KeyUnavailable, UnsupportedFormat: clear, specific refusals.
        """
        tag = envelope[:4]
        if tag == _SMALL_TAG and len(envelope) >= SMALL_OVERHEAD:
            entry = self._cache.get(envelope[4:27]) or self._subkey(envelope)
            try:
                plaintext = entry[0].decrypt(_NONCE_PAD + envelope[27:31], envelope[31:], context)
            except InvalidTag:
                raise DecryptionFailed() from None
            return plaintext, entry[1]
        if tag == _SMALL_TAG:
            raise DecryptionFailed()
        if tag == _DET_TAG:
            return open_deterministic(self._keys, envelope, context)
        fmt, _, _, _ = parse_header(envelope)
        raise UnsupportedFormat(f"envelope format 0x{fmt:02x} is not a value envelope")

    def open_small(self, envelope: bytes, context: bytes) -> tuple[bytes, int]:
        if len(envelope) < SMALL_OVERHEAD:
            raise DecryptionFailed()
        entry = self._cache.get(envelope[4:27])
        if entry is None:
            entry = self._subkey(envelope)
        aead, version = entry
        try:
            plaintext = aead.decrypt(_NONCE_PAD + envelope[27:31], envelope[31:], context)
        except InvalidTag:
            raise DecryptionFailed() from None
        return plaintext, version

    def subkey(self, head: bytes) -> tuple[AESGCM, int]:
        """The AEAD and key version of a small envelope whose first 27 bytes (header and salt)
        are ``head``: the compiled fast path opens with them itself (``proxy.redis._fastc``).

        Raises:
            WrongKeyring, KeyUnavailable: as ``open`` does.
        """
        return self._cache.get(head[4:27]) or self._subkey(head)

    def _subkey(self, envelope: bytes) -> tuple[AESGCM, int]:
        _, _, ref, class_id, version = HEADER.unpack_from(envelope)
        if ref != self._ref:
            raise WrongKeyring("value was encrypted under another keyring")
        key = self._keys.decrypt_key(KeyKind.MASTER, class_id, version)
        entry = (AESGCM(key.small_subkey(envelope[11:27])), version)
        if len(self._cache) >= _SUBKEY_CACHE_MAX:
            self._cache.pop(next(iter(self._cache)))
        self._cache[envelope[4:27]] = entry
        return entry


def seal_deterministic(key: VersionKey, plaintext: bytes, context: bytes) -> bytes:
    """Deterministic envelope: equal (plaintext, context, index version) -> equal bytes."""
    if key.kind is not KeyKind.INDEX:
        raise ValueError("deterministic values are sealed with an index version")
    head = header(FORMAT_DETERMINISTIC, key)
    return head + key.deterministic().encrypt(plaintext, [head, context])


def open_deterministic(keys: KeyLookup, envelope: bytes, context: bytes) -> tuple[bytes, int]:
    fmt, ref, class_id, version = parse_header(envelope)
    if fmt != FORMAT_DETERMINISTIC:
        raise UnsupportedFormat(f"envelope format 0x{fmt:02x} is not deterministic")
    if len(envelope) < DET_OVERHEAD:
        raise DecryptionFailed()
    if ref != keyring_ref(keys.keyring_id):
        raise WrongKeyring("value was encrypted under another keyring")
    key = keys.decrypt_key(KeyKind.INDEX, class_id, version)
    try:
        plaintext = key.deterministic().decrypt(
            envelope[HEADER_LEN:], [envelope[:HEADER_LEN], context]
        )
    except InvalidTag:
        raise DecryptionFailed() from None
    return plaintext, version
