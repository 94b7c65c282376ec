"""Key derivation: every key veil uses is derived from a version's material with HKDF-SHA256.

The ``info`` strings are part of the frozen format (docs/FORMAT.md lists them); changing one
makes every stored envelope unreadable, so they live here, in one table, and nowhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# purpose -> (info label, output length). Frozen: see docs/FORMAT.md section "Key derivation".
PURPOSES: dict[str, tuple[bytes, int]] = {
    "small": (b"veil/v1/small", 32),  # AES-256-GCM subkey per (version, per-process salt)
    "det": (b"veil/v1/deterministic", 64),  # AES-SIV (2 x 256-bit) for deterministic values
    "wrap": (b"veil/v1/object-wrap", 64),  # AES-SIV key wrap of object data keys
    "kcv": (b"veil/v1/key-check", 32),  # key-check value (HMAC, truncated)
    "body": (b"veil/v1/object-body", 32),  # AES-256-GCM segment key from an object data key
    "commit": (b"veil/v1/object-commit", 32),  # key commitment of an object data key
    "root-wrap": (b"veil/v1/root-wrap", 64),  # AES-SIV: the local provider wraps version material
    "local-copy": (b"veil/v1/local-copy", 32),  # AES-GCM: a sidecar's sealed keyring copy
    "audit": (b"veil/v1/audit", 32),  # the first MAC key of an audit chain
    "escrow": (b"veil/v1/escrow", 32),  # AES-GCM key of an escrow bundle
}


def key_info(keyring_id: bytes, class_id: int, version: int) -> bytes:
    """The binding of a derived key to one version of one class of one keyring."""
    return keyring_id + struct.pack(">BH", class_id, version)


def derive(material: bytes, purpose: str, context: bytes = b"", salt: bytes | None = None) -> bytes:
    """HKDF-SHA256(material, salt, label || context) for one of the fixed ``PURPOSES``."""
    label, length = PURPOSES[purpose]
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=label + b"|" + context)
    return hkdf.derive(material)


def check_value(material: bytes, context: bytes) -> bytes:
    """An 8-byte key-check value: proves which material a sidecar holds without revealing it."""
    return hmac.new(derive(material, "kcv", context), b"veil key check", hashlib.sha256).digest()[
        :8
    ]
