"""The audit log (SPEC 11): every CLI action is chained; edits, deletions, reordering and
(with anchors) truncation are each detected by `veil audit verify`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_cli_keys import Veil


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Veil, Path]:
    veil = Veil(tmp_path)
    veil("keys", "init")
    veil("keys", "rotate")
    veil("keys", "promote", "2")
    veil("keys", "freeze", "--until", "1h", "--reason", "drill")
    veil("keys", "unfreeze")
    return veil, tmp_path / "veil-audit.jsonl"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_clean_log_verifies_with_anchors(logged: tuple[Veil, Path]) -> None:
    veil, _ = logged
    out = veil("audit", "verify", "--anchors").stdout
    assert "anchors checked" in out
    body = json.loads(veil("audit", "verify", "--json").stdout)
    assert all(not c["problems"] for c in body.values()) and len(body) >= 4


def test_edited_entry_is_detected(logged: tuple[Veil, Path]) -> None:
    veil, path = logged
    ls = lines(path)
    entry = json.loads(ls[1])
    entry["actor"] = "mallory"
    ls[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(ls) + "\n")
    assert "MAC mismatch" in veil("audit", "verify", code=3).stdout


def test_removed_entry_is_detected(logged: tuple[Veil, Path]) -> None:
    veil, path = logged
    ls = lines(path)
    # the promote chain has two entries (promoted, retired): drop its first
    idx = next(i for i, ln in enumerate(ls) if json.loads(ln)["event"] == "key.promoted")
    del ls[idx]
    path.write_text("\n".join(ls) + "\n")
    assert "seq 1, expected 0" in veil("audit", "verify", code=3).stdout


def test_reordered_entries_are_detected(logged: tuple[Veil, Path]) -> None:
    veil, path = logged
    ls = lines(path)
    idx = next(i for i, ln in enumerate(ls) if json.loads(ln)["event"] == "key.promoted")
    ls[idx], ls[idx + 1] = ls[idx + 1], ls[idx]
    path.write_text("\n".join(ls) + "\n")
    veil("audit", "verify", code=3)


def test_truncation_needs_anchors(logged: tuple[Veil, Path]) -> None:
    veil, path = logged
    ls = lines(path)
    idx = next(i for i, ln in enumerate(ls) if json.loads(ln)["event"] == "key.retired")
    del ls[idx]  # the last entry of the promote chain: the file alone still looks consistent
    path.write_text("\n".join(ls) + "\n")
    veil("audit", "verify")
    assert "truncated" in veil("audit", "verify", "--anchors", code=3).stdout


def test_report_shows_each_step(logged: tuple[Veil, Path]) -> None:
    veil, _ = logged
    report = json.loads(veil("audit", "report", "--json").stdout)
    v1 = next(v for v in report["versions"] if v["kind"] == "master" and v["version"] == 1)
    v2 = next(v for v in report["versions"] if v["kind"] == "master" and v["version"] == 2)
    assert v1["state"] == "retired" and v1["retired"] and v1["activated"]
    assert [e["event"] for e in v2["events"]] == ["key.rotated", "key.promoted"]
    assert all(e["actor"] for e in v2["events"])
    assert "v2: active" in veil("audit", "report").stdout
