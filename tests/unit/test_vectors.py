"""Frozen vectors: every vector ever published keeps decrypting, and keeps failing, forever.

The MANIFEST pins each published file's SHA-256, so a vector cannot be "fixed" to match a
changed implementation: a format change needs a new format byte and a new vector file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from proxy import errors
from proxy.crypto import meta
from proxy.crypto.envelope import Opener, open_deterministic, seal_small_at
from proxy.crypto.keys import KeyKind, VersionKey
from proxy.crypto.objects import STORED_SEGMENT, Layout, RangeDecryptor, unwrap_data_key
from tests.unit.test_envelope import Keys

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
MANIFEST = json.loads((VECTORS / "MANIFEST.json").read_text())


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return doc


def keys_of(doc: dict[str, Any]) -> Keys:
    kid = bytes.fromhex(doc["keyring_id"])
    return Keys(
        kid,
        *(
            VersionKey(
                kid, k["class_id"], k["version"], bytes.fromhex(k["material"]), KeyKind(k["kind"])
            )
            for k in doc["keys"]
        ),
    )


def all_vectors(kind: str) -> list[Any]:
    out = []
    for name in MANIFEST["files"]:
        doc = load(name)
        by = {v["name"]: v for v in doc["valid"]}
        for v in doc[kind]:
            if kind == "invalid":
                v = {
                    **by[v["base"]],
                    **v["set"],
                    "name": v["name"],
                    "error": v["error"],
                    "segments": v.get("segments"),
                }
            out.append(pytest.param(doc, v, id=f"{name}:{v['name']}"))
    return out


@pytest.mark.parametrize("name", sorted(MANIFEST["files"]))
def test_published_files_are_unchanged(name: str) -> None:
    data = (VECTORS / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == MANIFEST["files"][name], (
        f"{name} was modified: published vectors are frozen (add a new file instead)"
    )


def test_every_vector_file_is_published() -> None:
    on_disk = {p.name for p in VECTORS.glob("envelope_*.json")}
    assert on_disk == set(MANIFEST["files"])


def open_vector(doc: dict[str, Any], v: dict[str, Any]) -> bytes:
    keys = keys_of(doc)
    if v["type"] in ("small", "deterministic"):
        env, ctx = bytes.fromhex(v["envelope"]), bytes.fromhex(v["context"])
        if v["type"] == "deterministic":
            return open_deterministic(keys, env, ctx)[0]
        return Opener(keys).open(env, ctx)[0]
    dk, _ = unwrap_data_key(keys, bytes.fromhex(v["header"]), v["bucket"], v["object_key"])
    stored = bytes.fromhex(v["stored"])
    if v.get("segments") is not None:
        segs = [stored[i : i + STORED_SEGMENT] for i in range(0, len(stored), STORED_SEGMENT)]
        stored = b"".join(segs[i] for i in v["segments"])
    layout = Layout(tuple((n, size) for n, size in v["parts"]))
    last = max(0, layout.plaintext_size - 1)
    dec = RangeDecryptor(dk, layout.segments(0, last), 0, last)
    out = b"".join(dec.feed(stored))
    dec.finish()
    return out


@pytest.mark.parametrize(("doc", "v"), all_vectors("valid"))
def test_valid_vectors_decrypt(doc: dict[str, Any], v: dict[str, Any]) -> None:
    plain = open_vector(doc, v)
    if "plaintext" in v:
        assert plain.hex() == v["plaintext"]
    else:
        assert hashlib.sha256(plain).hexdigest() == v["plaintext_sha256"]
    if v["type"] == "object":
        assert meta.decode(v["metadata"])[0].hex() == v["header"]


@pytest.mark.parametrize(
    ("doc", "v"), [p for p in all_vectors("valid") if p.values[1]["type"] == "small"]
)
def test_current_code_still_produces_small_vectors(doc: dict[str, Any], v: dict[str, Any]) -> None:
    env = bytes.fromhex(v["envelope"])
    kind, class_id, version = v["key"]
    key = keys_of(doc).decrypt_key(KeyKind(kind), class_id, version)
    again = seal_small_at(
        key,
        env[11:27],
        int.from_bytes(env[27:31], "big"),
        bytes.fromhex(v["plaintext"]),
        bytes.fromhex(v["context"]),
    )
    assert again == env


@pytest.mark.parametrize(("doc", "v"), all_vectors("invalid"))
def test_invalid_vectors_fail_with_their_error(doc: dict[str, Any], v: dict[str, Any]) -> None:
    expected = getattr(errors, v["error"])
    with pytest.raises(expected) as info:
        open_vector(doc, v)
    if expected is errors.DecryptionFailed:
        assert type(info.value) is errors.DecryptionFailed
