"""Escrow (SPEC 4): export every non-destroyed version to an operator, and restore from it.

A bundle is JSON::

    {"veil_escrow": 1, "keyring_id": hex, "revision": int, "created": RFC3339,
     "recipient": {"type": "x25519", "public_key": b64, "ephemeral": b64}
                | {"type": "scrypt", "salt": b64, "n": int, "r": int, "p": int},
     "nonce": b64, "ciphertext": b64}

The ciphertext is AES-256-GCM, with every other field as associated data, under a one-time key:
``HKDF(X25519(ephemeral, recipient), "veil/v1/escrow", ephemeral | recipient)`` or
``HKDF(scrypt(passphrase, salt), "veil/v1/escrow", "scrypt")``. Never the root key: the bundle
is what restores veil when the root key itself is lost. Inside: the keyring document, the
meta key, every version's raw material, and a *canary* envelope sealed by each version at
export time -- ``import --verify`` opens every canary with the restored keys, which proves the
bundle restores data, not just that it decrypts.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from proxy.crypto import _kdf
from proxy.crypto.context import Role, value_context
from proxy.crypto.envelope import Opener, SmallSealer, open_deterministic, seal_deterministic
from proxy.crypto.keys import KeyKind, VersionKey
from proxy.errors import (
    AuthenticationError,
    ConfigError,
    KeyUnavailable,
    RefusedError,
    StoreUnavailable,
    UsageError,
)
from proxy.keys.model import Keyring, State, rfc3339
from proxy.keys.providers import Provider, wrap_context
from proxy.keys.runtime import merge
from proxy.keys.stores import KeyringStore

FORMAT = 1
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
CANARY = b"veil escrow canary"
_CANARY_CTX = value_context("veil-escrow", Role.CANARY)

Ref = tuple[str, KeyKind, int]  # (class name, kind, version)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


def ref_str(ref: Ref) -> str:
    return f"{ref[0]}/{ref[1].value}/{ref[2]}"


def parse_ref(s: str) -> Ref:
    name, kind, version = s.rsplit("/", 2)
    return name, KeyKind(kind), int(version)


# --- X25519 identities --------------------------------------------------------------------


def generate_identity() -> tuple[str, str]:
    """(private key, public key) as base64 text files for ``veil keys escrow-keygen``."""
    priv = X25519PrivateKey.generate()
    raw_priv = priv.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_pub = priv.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return _b64(raw_priv) + "\n", _b64(raw_pub) + "\n"


def load_public_key(text: str) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(_unb64(text.strip()))
    except ValueError:
        raise ConfigError("escrow recipient must be a base64 X25519 public key") from None


def load_private_key(text: str) -> X25519PrivateKey:
    try:
        return X25519PrivateKey.from_private_bytes(_unb64(text.strip()))
    except ValueError:
        raise ConfigError("escrow identity must be a base64 X25519 private key") from None


@dataclass(frozen=True)
class Recipient:
    public_key: X25519PublicKey | None = None
    passphrase: bytes | None = None


@dataclass(frozen=True)
class Contents:
    keyring: Keyring
    meta: bytes
    materials: Mapping[Ref, bytes]
    canaries: Mapping[Ref, bytes]


def _scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return _kdf.derive(
        Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase), "escrow", b"scrypt"
    )


def _seal_key(recipient: Recipient, random: Callable[[int], bytes]) -> tuple[bytes, dict[str, Any]]:
    if recipient.public_key is not None:
        eph = X25519PrivateKey.generate()
        eph_pub = eph.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        pub = recipient.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        key = _kdf.derive(eph.exchange(recipient.public_key), "escrow", eph_pub + pub)
        return key, {"type": "x25519", "public_key": _b64(pub), "ephemeral": _b64(eph_pub)}
    if recipient.passphrase:
        salt = random(16)
        key = _scrypt(recipient.passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return key, {
            "type": "scrypt",
            "salt": _b64(salt),
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
        }
    raise UsageError("export needs a recipient public key or a passphrase")


def _open_key(
    info: Mapping[str, Any], identity: X25519PrivateKey | None, passphrase: bytes | None
) -> bytes:
    if info.get("type") == "x25519":
        if identity is None:
            raise UsageError("this bundle is sealed to an X25519 key: pass --identity")
        eph = X25519PublicKey.from_public_bytes(_unb64(info["ephemeral"]))
        pub = identity.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return _kdf.derive(identity.exchange(eph), "escrow", _unb64(info["ephemeral"]) + pub)
    if info.get("type") == "scrypt":
        if not passphrase:
            raise UsageError("this bundle is sealed to a passphrase: pass --passphrase-file")
        return _scrypt(
            passphrase, _unb64(info["salt"]), int(info["n"]), int(info["r"]), int(info["p"])
        )
    raise UsageError(f"unknown escrow recipient type {info.get('type')!r}")


def _canary(key: VersionKey) -> bytes:
    if key.kind is KeyKind.INDEX:
        return seal_deterministic(key, CANARY, _CANARY_CTX)
    return SmallSealer(key).seal(CANARY, _CANARY_CTX)


def export_bundle(
    kr: Keyring,
    meta: bytes,
    materials: Mapping[Ref, bytes],
    recipient: Recipient,
    now: datetime,
    random: Callable[[int], bytes] = os.urandom,
) -> dict[str, Any]:
    canaries = {}
    for (name, kind, version), material in materials.items():
        vkey = VersionKey(kr.keyring_id, kr.cls(name).id, version, material, kind)
        canaries[ref_str((name, kind, version))] = _b64(_canary(vkey))
    inner = json.dumps(
        {
            "keyring": kr.to_json(),
            "meta": _b64(meta),
            "materials": {ref_str(r): _b64(m) for r, m in materials.items()},
            "canaries": canaries,
        },
        sort_keys=True,
    ).encode()
    key, info = _seal_key(recipient, random)
    header = {
        "veil_escrow": FORMAT,
        "keyring_id": kr.keyring_id.hex(),
        "revision": kr.revision,
        "created": rfc3339(now),
        "recipient": info,
    }
    nonce = random(12)
    ad = json.dumps(header, sort_keys=True).encode()
    return {
        **header,
        "nonce": _b64(nonce),
        "ciphertext": _b64(AESGCM(key).encrypt(nonce, inner, ad)),
    }


def open_bundle(
    bundle: Mapping[str, Any],
    identity: X25519PrivateKey | None = None,
    passphrase: bytes | None = None,
) -> Contents:
    if bundle.get("veil_escrow") != FORMAT:
        raise UsageError("not a veil escrow bundle (or an unsupported version)")
    header = {k: v for k, v in bundle.items() if k not in ("nonce", "ciphertext")}
    key = _open_key(bundle["recipient"], identity, passphrase)
    try:
        inner = AESGCM(key).decrypt(
            _unb64(bundle["nonce"]),
            _unb64(bundle["ciphertext"]),
            json.dumps(header, sort_keys=True).encode(),
        )
    except InvalidTag:
        raise AuthenticationError("escrow bundle does not open with this identity") from None
    d = json.loads(inner)
    return Contents(
        keyring=Keyring.from_json(d["keyring"]),
        meta=_unb64(d["meta"]),
        materials={parse_ref(r): _unb64(m) for r, m in d["materials"].items()},
        canaries={parse_ref(r): _unb64(c) for r, c in d["canaries"].items()},
    )


class _Lookup:
    def __init__(self, keyring_id: bytes, keys: Mapping[tuple[KeyKind, int, int], VersionKey]):
        self._id = keyring_id
        self._keys = keys

    @property
    def keyring_id(self) -> bytes:
        return self._id

    def decrypt_key(self, kind: KeyKind, class_id: int, version: int) -> VersionKey:
        try:
            return self._keys[(kind, class_id, version)]
        except KeyError:
            raise KeyUnavailable(f"version {version} missing from the bundle") from None


def verify_contents(c: Contents) -> list[str]:
    """Everything a restore relies on; returns a list of problems (empty = restorable)."""
    problems = []
    kr = c.keyring
    if _kdf.check_value(c.meta, b"meta").hex() != kr.meta_kcv:
        problems.append("meta key fails its key-check value")
    keys: dict[tuple[KeyKind, int, int], VersionKey] = {}
    for cls, kind, v in kr.all_versions():
        if v.state is State.DESTROYED:
            continue
        material = c.materials.get((cls.name, kind, v.version))
        if material is None:
            problems.append(f"{cls.name}/{kind.value}/{v.version}: material missing")
            continue
        key = VersionKey(kr.keyring_id, cls.id, v.version, material, kind)
        if key.check_value() != v.kcv:
            problems.append(f"{cls.name}/{kind.value}/{v.version}: key-check value mismatch")
        keys[(kind, cls.id, v.version)] = key
    lookup = _Lookup(kr.keyring_id, keys)
    opener = Opener(lookup)
    for (name, kind, version), env in c.canaries.items():
        try:
            if kind is KeyKind.INDEX:
                plain, _ = open_deterministic(lookup, env, _CANARY_CTX)
            else:
                plain, _ = opener.open_small(env, _CANARY_CTX)
            if plain != CANARY:
                raise ValueError
        except Exception:
            problems.append(f"{name}/{kind.value}/{version}: canary does not decrypt")
    return problems


async def rewrap(
    kr: Keyring, meta: bytes, materials: Mapping[Ref, bytes], provider: Provider
) -> Keyring:
    """The same keyring with every material (and the meta key) wrapped by ``provider``."""
    classes = {}
    for name, c in kr.classes.items():
        for kind in KeyKind:
            series = []
            for v in c.series(kind):
                material = materials.get((name, kind, v.version))
                if v.wrapped is not None and material is None:
                    raise UsageError(f"{name}/{kind.value}/{v.version}: material missing")
                wrapped = (
                    None
                    if material is None
                    else await provider.wrap(
                        material, wrap_context(kr.keyring_id, c.id, kind.value, v.version)
                    )
                )
                series.append(dataclasses.replace(v, wrapped=wrapped))
            c = c.with_series(kind, tuple(series))
        classes[name] = c
    wrapped_meta = await provider.wrap(meta, wrap_context(kr.keyring_id, 0, "meta", 0))
    return dataclasses.replace(kr, classes=classes, provider=provider.describe(), meta=wrapped_meta)


async def restore(c: Contents, provider: Provider, store: KeyringStore, now: datetime) -> Keyring:
    """Writes the bundle's keyring into ``store``, wrapped by ``provider`` (a new root key or
    KMS key is fine). An existing copy of the same keyring is merged, never overwritten; a
    different keyring in the store is refused."""
    problems = verify_contents(c)
    if problems:
        raise RefusedError("bundle does not verify: " + "; ".join(problems))
    kr = await rewrap(c.keyring, c.meta, c.materials, provider)
    doc = await store.load()
    if doc is None:
        kr = dataclasses.replace(kr, revision=kr.revision + 1, updated=now)
        expected = 0
    else:
        current = Keyring.from_json(doc)
        if current.keyring_id != kr.keyring_id:
            raise RefusedError(
                f"the store holds another keyring ({current.keyring_id.hex()}); refusing to "
                "overwrite it"
            )
        provider.check(current.provider)
        merged = merge(current, kr, now)
        if merged is None:
            return current
        kr, expected = merged, current.revision
    if not await store.save(kr.to_json(), expected):
        raise StoreUnavailable("the keyring changed during the restore; retry")
    return kr
