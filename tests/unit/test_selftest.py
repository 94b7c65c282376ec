"""The embedded known-answer self-test is the frozen vectors, and passes."""

from __future__ import annotations

import json
from pathlib import Path

from proxy.crypto import selftest

VECTORS = json.loads(
    (Path(__file__).resolve().parent.parent / "vectors" / "envelope_v1.json").read_text()
)


def test_self_test_passes() -> None:
    assert selftest.run() == []


def test_self_test_entries_are_the_published_vectors() -> None:
    by = {v["name"]: v for v in VECTORS["valid"]}
    assert selftest.KEYRING_ID.hex() == VECTORS["keyring_id"]
    published = {(k["kind"], k["class_id"], k["version"]): k["material"] for k in VECTORS["keys"]}
    for (kind, class_id, version), material in selftest.KEYS.items():
        assert published[(kind.value, class_id, version)] == material
    assert (by["small-hello"]["context"], by["small-hello"]["envelope"]) == selftest.SMALL[:2]
    assert (by["det-member"]["context"], by["det-member"]["envelope"]) == (
        selftest.DETERMINISTIC[:2]
    )
    obj = by["object-small"]
    assert (obj["bucket"], obj["object_key"], obj["header"], obj["stored"]) == selftest.OBJECT[:4]


def test_self_test_detects_a_broken_build(monkeypatch: object) -> None:
    import pytest

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(selftest, "SMALL", (selftest.SMALL[0], selftest.SMALL[1][:-2] + "00", b"hello"))
        assert selftest.run() != []
    finally:
        mp.undo()
