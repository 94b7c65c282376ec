"""Generates tests/vectors/envelope_v1.json ONCE. Published vectors are frozen.

Run only to create a *new* vector file for a *new* format version; never to regenerate a
published file (tests/vectors/MANIFEST.json pins each published file's SHA-256, and
tests/unit/test_vectors.py fails if one changes). Keys, salts and data keys are derived from
fixed labels so the output is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from proxy.crypto import meta
from proxy.crypto.context import Role, field_context, value_context
from proxy.crypto.envelope import seal_deterministic, seal_small_at
from proxy.crypto.keys import KeyKind, VersionKey
from proxy.crypto.objects import (
    SEGMENT,
    STORED_SEGMENT,
    DataKey,
    encrypt_part,
    wrap_data_key,
)


def det(label: str, n: int) -> bytes:
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"veil-vector|{label}|{i}".encode()).digest()
        i += 1
    return out[:n]


KEYRING_ID = det("keyring", 16)
OTHER_KEYRING_ID = det("other-keyring", 16)
KEYS = [
    {"kind": "master", "class_id": 0, "version": 1, "material": det("m1", 32).hex()},
    {"kind": "master", "class_id": 0, "version": 2, "material": det("m2", 32).hex()},
    {"kind": "master", "class_id": 3, "version": 1, "material": det("pii-m1", 32).hex()},
    {"kind": "index", "class_id": 0, "version": 1, "material": det("i1", 32).hex()},
]


def key(kind: str, class_id: int, version: int) -> VersionKey:
    for k in KEYS:
        if (k["kind"], k["class_id"], k["version"]) == (kind, class_id, version):
            return VersionKey(
                KEYRING_ID, class_id, version, bytes.fromhex(str(k["material"])), KeyKind(kind)
            )
    raise KeyError((kind, class_id, version))


def small(name: str, k: VersionKey, counter: int, plaintext: bytes, ctx: bytes) -> dict[str, Any]:
    salt = det(f"salt|{name}", 16)
    env = seal_small_at(k, salt, counter, plaintext, ctx)
    return {
        "name": name,
        "type": "small",
        "key": [k.kind.value, k.class_id, k.version],
        "context": ctx.hex(),
        "plaintext": plaintext.hex(),
        "envelope": env.hex(),
    }


def deterministic(name: str, k: VersionKey, plaintext: bytes, ctx: bytes) -> dict[str, Any]:
    return {
        "name": name,
        "type": "deterministic",
        "key": [k.kind.value, k.class_id, k.version],
        "context": ctx.hex(),
        "plaintext": plaintext.hex(),
        "envelope": seal_deterministic(k, plaintext, ctx).hex(),
    }


def obj(
    name: str,
    k: VersionKey,
    bucket: str,
    object_key: str,
    parts: list[tuple[int, bytes]],
    flags: int = 0,
) -> dict[str, Any]:
    dk = DataKey(det(f"dek|{name}", 32))
    header = wrap_data_key(k, dk, bucket, object_key, flags)
    body = b"".join(encrypt_part(dk, n, p) for n, p in parts)
    assert STORED_SEGMENT == SEGMENT + 16
    return {
        "name": name,
        "type": "object",
        "key": [k.kind.value, k.class_id, k.version],
        "bucket": bucket,
        "object_key": object_key,
        "header": header.hex(),
        "metadata": meta.encode(
            header, {"md5": hashlib.md5(b"".join(p for _, p in parts)).digest()}
        ),
        "parts": [[n, len(p)] for n, p in parts],
        "plaintext_sha256": hashlib.sha256(b"".join(p for _, p in parts)).hexdigest(),
        "stored": body.hex(),
    }


def valid() -> list[dict[str, Any]]:
    m1, m2, pii, i1 = (
        key("master", 0, 1),
        key("master", 0, 2),
        key("master", 3, 1),
        key("index", 0, 1),
    )
    string = value_context("default", Role.STRING)
    hval = field_context(value_context("t1", Role.HASH_VALUE), b"email")
    member = value_context("default", Role.SET_MEMBER)
    return [
        small("small-empty", m1, 0, b"", string),
        small("small-hello", m1, 1, b"hello", string),
        small("small-v2-counter-max", m2, 2**32 - 1, b"rotated value", string),
        small("small-hash-value", m2, 7, b"alice@example.com", hval),
        small("small-class-pii", pii, 0, b"123-45-6789", value_context("pii", Role.STRING)),
        small("small-4k", m1, 3, det("4k", 4096), value_context("default", Role.LIST_ELEMENT)),
        deterministic("det-member", i1, b"member-1", member),
        deterministic("det-empty", i1, b"", value_context("default", Role.HASH_FIELD)),
        obj("object-empty", m1, "bucket", "empty", [(0, b"")]),
        obj("object-small", m2, "bucket", "dir/small.txt", [(0, b"hello, world\n")]),
        obj("object-two-segments", m1, "b", "two", [(0, det("two", SEGMENT + 10))]),
        obj(
            "object-multipart",
            m1,
            "b",
            "mp",
            [(1, det("p1", SEGMENT)), (2, det("p2", 10))],
            flags=1,
        ),
    ]


def invalid(vs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each vector names a valid ``base`` vector, the fields it replaces (``set``) and, for
    object bodies, ``segments``: the base's stored segments (65,552-byte slices, by index) to
    reassemble in that order. ``error`` is the exception it must raise."""
    by = {v["name"]: v for v in vs}

    def mut(
        base: str, name: str, error: str, segments: list[int] | None = None, **change: Any
    ) -> dict[str, Any]:
        assert base in by
        out: dict[str, Any] = {"name": name, "base": base, "error": error, "set": change}
        if segments is not None:
            out["segments"] = segments
        return out

    def flip(hexs: str, pos: int) -> str:
        b = bytearray(bytes.fromhex(hexs))
        b[pos] ^= 0x01
        return b.hex()

    env = by["small-hello"]["envelope"]
    env_b = bytes.fromhex(env)
    det_env = by["det-member"]["envelope"]
    v2 = bytes.fromhex(by["small-v2-counter-max"]["envelope"])
    return [
        mut("small-hello", "small-tampered-tag", "DecryptionFailed", envelope=flip(env, -1)),
        mut("small-hello", "small-tampered-ciphertext", "DecryptionFailed", envelope=flip(env, 31)),
        mut("small-hello", "small-tampered-salt", "DecryptionFailed", envelope=flip(env, 12)),
        mut("small-hello", "small-truncated", "DecryptionFailed", envelope=env[:-2]),
        mut("small-hello", "small-truncated-header", "DecryptionFailed", envelope=env[:40]),
        mut(
            "small-hello",
            "small-transplanted-role",
            "DecryptionFailed",
            context=value_context("default", Role.HASH_VALUE).hex(),
        ),
        mut(
            "small-hello",
            "small-transplanted-namespace",
            "DecryptionFailed",
            context=value_context("t2", Role.STRING).hex(),
        ),
        mut(
            "small-hash-value",
            "small-transplanted-field",
            "DecryptionFailed",
            context=field_context(value_context("t1", Role.HASH_VALUE), b"name").hex(),
        ),
        mut(
            "small-hello",
            "small-unknown-version",
            "KeyUnavailable",
            envelope=(env_b[:9] + (9).to_bytes(2, "big") + env_b[11:]).hex(),
        ),
        mut(
            "small-v2-counter-max",
            "small-downgraded-version",
            "DecryptionFailed",
            envelope=(v2[:9] + (1).to_bytes(2, "big") + v2[11:]).hex(),
        ),
        mut(
            "small-hello",
            "small-unknown-format",
            "UnsupportedFormat",
            envelope=(env_b[:3] + b"\x7f" + env_b[4:]).hex(),
        ),
        mut(
            "small-hello",
            "small-format-swapped-to-deterministic",
            "DecryptionFailed",
            envelope=(env_b[:3] + b"\x02" + env_b[4:]).hex(),
        ),
        mut(
            "small-hello",
            "small-wrong-keyring",
            "WrongKeyring",
            envelope=(env_b[:4] + OTHER_KEYRING_ID[:4] + env_b[8:]).hex(),
        ),
        mut(
            "small-hello",
            "small-other-class",
            "KeyUnavailable",
            envelope=(env_b[:8] + b"\x05" + env_b[9:]).hex(),
        ),
        mut("small-hello", "legacy-plaintext", "NotAnEnvelope", envelope=b"hello".hex()),
        mut("det-member", "det-tampered-siv", "DecryptionFailed", envelope=flip(det_env, 11)),
        mut(
            "det-member",
            "det-transplanted",
            "DecryptionFailed",
            context=value_context("default", Role.ZSET_MEMBER).hex(),
        ),
        mut("object-small", "object-other-bucket", "DecryptionFailed", bucket="other"),
        mut("object-small", "object-other-key", "DecryptionFailed", object_key="dir/other.txt"),
        mut(
            "object-small",
            "object-tampered-wrap",
            "DecryptionFailed",
            header=flip(by["object-small"]["header"], 20),
        ),
        mut(
            "object-small",
            "object-tampered-commitment",
            "DecryptionFailed",
            header=flip(by["object-small"]["header"], 91),
        ),
        mut(
            "object-small",
            "object-tampered-body",
            "DecryptionFailed",
            stored=flip(by["object-small"]["stored"], 3),
        ),
        mut(
            "object-two-segments", "object-reordered-segments", "DecryptionFailed", segments=[1, 0]
        ),
        mut(
            "object-two-segments",
            "object-truncated-to-first-segment",
            "DecryptionFailed",
            segments=[0],
            parts=[[0, SEGMENT]],
        ),
        mut(
            "object-multipart",
            "object-parts-swapped",
            "DecryptionFailed",
            segments=[1, 0],
            parts=[[1, 10], [2, SEGMENT]],
        ),
        mut(
            "object-multipart",
            "object-part-renumbered",
            "DecryptionFailed",
            parts=[[1, SEGMENT], [3, 10]],
        ),
        mut(
            "object-small",
            "object-wrong-keyring",
            "WrongKeyring",
            header=(lambda h: (h[:4] + OTHER_KEYRING_ID[:4] + h[8:]).hex())(
                bytes.fromhex(by["object-small"]["header"])
            ),
        ),
    ]


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("envelope_v1.json"))
    vs = valid()
    doc = {
        "description": "veil envelope format v1 frozen vectors (docs/FORMAT.md). Never edit.",
        "keyring_id": KEYRING_ID.hex(),
        "keys": KEYS,
        "valid": vs,
        "invalid": invalid(vs),
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
