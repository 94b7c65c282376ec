"""Associated data for value envelopes (SPEC 5): what a ciphertext is bound to.

A Redis value is bound to its keyring (through key derivation), its namespace, its *role* and,
for hash values, the hash field name -- never the Redis key name or the database, because Redis
moves values between keys and databases atomically (RENAME, COPY, MOVE, SWAPDB, LMOVE, SMOVE,
*STORE) and those must keep working. The residual risk (values can be swapped between keys of
one namespace and role) is stated in docs/FORMAT.md.

Encoding (frozen)::

    role(1) | len(namespace)(2, big-endian) | namespace [| len(field)(4, big-endian) | field]

Contexts are built once per (namespace, role) and cached by the caller; only hash values append
their field per call.
"""

from __future__ import annotations

import enum
import struct


class Role(enum.IntEnum):
    """What a value is to Redis. Frozen: the byte is part of every envelope's associated data."""

    STRING = 1
    HASH_VALUE = 2
    LIST_ELEMENT = 3
    SET_MEMBER = 4
    ZSET_MEMBER = 5
    STREAM_VALUE = 6
    PUBSUB_MESSAGE = 7
    HASH_FIELD = 8
    HLL_ELEMENT = 9
    STREAM_FIELD = 10
    CANARY = 0xF0  # escrow canaries and self-tests; never a Redis role


def value_context(namespace: str | bytes, role: Role) -> bytes:
    ns = namespace.encode() if isinstance(namespace, str) else namespace
    if len(ns) > 0xFFFF:
        raise ValueError("namespace name too long")
    return struct.pack(">BH", int(role), len(ns)) + ns


def field_context(base: bytes, field: bytes) -> bytes:
    """The context of one hash value: its namespace/role context plus the field name."""
    return base + len(field).to_bytes(4, "big") + field
