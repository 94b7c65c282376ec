"""The tamper-evident audit log (SPEC 11).

Theory of operation
-------------------
Each writer (a sidecar, or one CLI invocation) keeps its own *chain* in the shared JSON-lines
file. Entry ``n`` of a chain carries ``seq``, ``sidecar_id``, ``time``, ``actor``, ``event``,
the event's details, ``prev`` (SHA-256 of entry ``n-1``'s line; 64 zeros for the first) and
``mac`` = HMAC-SHA256(K_n, canonical JSON of the entry without ``mac``). The MAC key starts as
``K_0 = HKDF(meta key, "veil/v1/audit", sidecar_id)`` -- the meta key is wrapped by the root key
or KMS -- and evolves after every entry, ``K_{n+1} = HMAC(K_n, "veil audit evolve")``, and the
old key is forgotten: someone who can edit the file cannot recompute a MAC, and someone who
later reads the sidecar's memory cannot forge its past entries.

The chain head ``(sidecar_id, seq, hash)`` is published (``anchor``) to the keyring store every
minute and on every key event, so truncating the tail of a chain is detected by
``verify(..., anchors)`` even though the file itself then looks consistent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from proxy.crypto import _kdf

GENESIS = "0" * 64
_EVOLVE = b"veil audit evolve"


def _canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def first_key(meta_key: bytes, sidecar_id: str) -> bytes:
    return _kdf.derive(meta_key, "audit", sidecar_id.encode())


def evolve(key: bytes) -> bytes:
    return hmac.new(key, _EVOLVE, hashlib.sha256).digest()


def entry_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


class AuditLog:
    """Appends MAC-chained entries. One instance per chain; not shared between processes."""

    def __init__(
        self,
        path: str,
        sidecar_id: str,
        meta_key: bytes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.path = path
        self.sidecar_id = sidecar_id
        self._key = first_key(meta_key, sidecar_id)
        self._clock = clock
        self.seq = 0
        self.head = GENESIS
        self.anchor_sink: Callable[[dict[str, Any]], None] | None = None

    def _open(self) -> IO[bytes]:
        if self.path == "stdout":
            return sys.stdout.buffer
        return open(self.path, "ab")

    def append(self, event: Mapping[str, Any], actor: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            **{k: v for k, v in event.items() if k not in ("mac", "prev", "seq")},
            "seq": self.seq,
            "sidecar_id": self.sidecar_id,
            "time": self._clock().astimezone(UTC).isoformat(timespec="milliseconds"),
            "actor": actor,
            "prev": self.head,
        }
        entry["mac"] = hmac.new(self._key, _canonical(entry), hashlib.sha256).hexdigest()
        line = _canonical(entry) + b"\n"
        f = self._open()
        try:
            f.write(line)
            f.flush()
            if self.path != "stdout":
                os.fsync(f.fileno())
        finally:
            if self.path != "stdout":
                f.close()
        self._key = evolve(self._key)
        self.head = entry_hash(line)
        self.seq += 1
        if self.anchor_sink is not None and str(event.get("event", "")).startswith("key"):
            self.anchor_sink(self.anchor())
        return entry

    def anchor(self) -> dict[str, Any]:
        return {"sidecar_id": self.sidecar_id, "seq": self.seq - 1, "hash": self.head}


@dataclass
class ChainReport:
    sidecar_id: str
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    head_seq: int = -1
    head_hash: str = GENESIS


def verify(
    lines: Iterable[bytes], meta_key: bytes, anchors: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, ChainReport]:
    """Checks every chain in a log. Edited, removed, reordered or (with anchors) truncated
    entries appear as problems of their chain."""
    chains: dict[str, ChainReport] = {}
    keys: dict[str, bytes] = {}
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
            sid = str(entry["sidecar_id"])
            mac = str(entry.pop("mac"))
            seq = int(entry["seq"])
        except (ValueError, KeyError, TypeError):
            chains.setdefault("?", ChainReport("?")).problems.append(f"line {lineno}: not an entry")
            continue
        rep = chains.setdefault(sid, ChainReport(sid))
        key = keys.setdefault(sid, first_key(meta_key, sid))
        expected_seq = rep.head_seq + 1
        if seq != expected_seq:
            rep.problems.append(f"line {lineno}: seq {seq}, expected {expected_seq}")
            # resynchronize the key so later entries are still checked
            while expected_seq < seq:
                key = evolve(key)
                expected_seq += 1
        if entry.get("prev") != rep.head_hash and seq == rep.head_seq + 1:
            rep.problems.append(f"line {lineno}: prev does not match the previous entry")
        good = hmac.new(key, _canonical(entry), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(good, mac):
            rep.problems.append(f"line {lineno}: MAC mismatch (entry edited or forged)")
        anchor = (anchors or {}).get(sid)
        if anchor is not None and int(anchor["seq"]) == seq and entry_hash(raw) != anchor["hash"]:
            rep.problems.append(f"line {lineno}: differs from the anchored chain head")
        keys[sid] = evolve(key) if seq >= rep.head_seq + 1 else key
        rep.entries += 1
        rep.head_seq = max(rep.head_seq, seq)
        rep.head_hash = entry_hash(raw)
    for sid, anchor in (anchors or {}).items():
        found = chains.get(sid)
        a_seq = int(anchor["seq"])
        if found is None:
            chains[sid] = ChainReport(sid, problems=[f"chain missing; anchored at seq {a_seq}"])
        elif found.head_seq < a_seq:
            found.problems.append(f"truncated: ends at seq {found.head_seq}, anchored at {a_seq}")
    return chains
