"""The keyring document: what the store holds, as immutable data. No I/O, no key material.

The document carries only *wrapped* material (sealed by the root key or by KMS), so it can sit in
a Redis key, a mounted Secret or a sidecar's local copy. Its JSON form is versioned
(``"format": 1``) and parsed strictly: an unknown field is an error, not silently dropped.

Shape (JSON)::

    {"format": 1, "keyring_id": hex16, "revision": int, "updated": RFC3339,
     "provider": {"type": "local", "root_kcv": hex} | {"type": "aws-kms", "key_id": str},
     "meta": wrapped-b64, "meta_kcv": hex,
     "frozen_until": RFC3339|null, "freeze_reason": str|null,
     "classes": {name: {"id": int, "versions": [Version...], "index_versions": [Version...]}}}

A Version is ``{"version", "state", "created", "created_revision", "state_since", "activated",
"retired", "compromised", "revoke_requested", "wrapped", "kcv", "items", "items_as_of",
"migration_complete"}``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy.crypto.keys import KeyKind
from proxy.errors import ConfigError

FORMAT = 1


class State(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    RETIRED = "retired"
    REVOKED = "revoked"
    DESTROYED = "destroyed"


# States whose material may decrypt (SPEC 4). Revoked and destroyed never decrypt.
DECRYPTABLE = frozenset({State.PENDING, State.ACTIVE, State.RETIRED})


def rfc3339(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(s: str | None) -> datetime | None:
    if s is None:
        return None
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)


def _time(s: Any) -> datetime:
    t = parse_time(s)
    if t is None:
        raise ValueError("missing time")
    return t


@dataclass(frozen=True)
class Version:
    version: int
    state: State
    created: datetime
    created_revision: int
    state_since: datetime
    kcv: str
    wrapped: str | None  # provider ciphertext (base64); None once destroyed
    activated: datetime | None = None
    retired: datetime | None = None
    compromised: bool = False
    revoke_requested: bool = False
    items: Mapping[str, int | None] = field(default_factory=lambda: {"redis": None, "s3": None})
    items_as_of: datetime | None = None
    migration_complete: datetime | None = None  # set by the migration engine (SPEC 8)

    @property
    def live(self) -> bool:
        """Counts against ``max_live_versions``: everything not destroyed."""
        return self.state is not State.DESTROYED

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": self.state.value,
            "created": rfc3339(self.created),
            "created_revision": self.created_revision,
            "state_since": rfc3339(self.state_since),
            "activated": rfc3339(self.activated),
            "retired": rfc3339(self.retired),
            "compromised": self.compromised,
            "revoke_requested": self.revoke_requested,
            "kcv": self.kcv,
            "wrapped": self.wrapped,
            "items": dict(self.items),
            "items_as_of": rfc3339(self.items_as_of),
            "migration_complete": rfc3339(self.migration_complete),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Version:
        return cls(
            version=int(d["version"]),
            state=State(d["state"]),
            created=_time(d["created"]),
            created_revision=int(d["created_revision"]),
            state_since=_time(d["state_since"]),
            kcv=str(d["kcv"]),
            wrapped=d["wrapped"],
            activated=parse_time(d.get("activated")),
            retired=parse_time(d.get("retired")),
            compromised=bool(d.get("compromised", False)),
            revoke_requested=bool(d.get("revoke_requested", False)),
            items={"redis": d.get("items", {}).get("redis"), "s3": d.get("items", {}).get("s3")},
            items_as_of=parse_time(d.get("items_as_of")),
            migration_complete=parse_time(d.get("migration_complete")),
        )

    def public_json(self) -> dict[str, Any]:
        """The SPEC 12 shape (no wrapped material, no internal fields)."""
        return {
            "version": self.version,
            "state": self.state.value,
            "created": rfc3339(self.created),
            "state_since": rfc3339(self.state_since),
            "compromised": self.compromised,
            "items": {"redis": self.items.get("redis"), "s3": self.items.get("s3")},
            "items_as_of": rfc3339(self.items_as_of),
        }


@dataclass(frozen=True)
class KeyClass:
    name: str
    id: int
    versions: tuple[Version, ...] = ()
    index_versions: tuple[Version, ...] = ()

    def series(self, kind: KeyKind) -> tuple[Version, ...]:
        return self.versions if kind is KeyKind.MASTER else self.index_versions

    def with_series(self, kind: KeyKind, series: tuple[Version, ...]) -> KeyClass:
        if kind is KeyKind.MASTER:
            return dataclasses.replace(self, versions=series)
        return dataclasses.replace(self, index_versions=series)

    def find(self, kind: KeyKind, version: int) -> Version | None:
        for v in self.series(kind):
            if v.version == version:
                return v
        return None

    def active(self, kind: KeyKind) -> Version | None:
        for v in self.series(kind):
            if v.state is State.ACTIVE:
                return v
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "versions": [v.to_json() for v in self.versions],
            "index_versions": [v.to_json() for v in self.index_versions],
        }


@dataclass(frozen=True)
class Keyring:
    keyring_id: bytes
    revision: int
    updated: datetime
    provider: Mapping[str, str]
    meta: str  # wrapped meta key (seals local copies, keys the audit chain)
    meta_kcv: str
    classes: Mapping[str, KeyClass]
    frozen_until: datetime | None = None
    freeze_reason: str | None = None

    def cls(self, name: str) -> KeyClass:
        try:
            return self.classes[name]
        except KeyError:
            raise ConfigError(f"key class '{name}' is not in the keyring") from None

    def class_by_id(self, class_id: int) -> KeyClass | None:
        for c in self.classes.values():
            if c.id == class_id:
                return c
        return None

    def all_versions(self) -> Iterator[tuple[KeyClass, KeyKind, Version]]:
        for c in self.classes.values():
            for kind in KeyKind:
                for v in c.series(kind):
                    yield c, kind, v

    def is_frozen(self, now: datetime) -> bool:
        return self.frozen_until is not None and now < self.frozen_until

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "keyring_id": self.keyring_id.hex(),
            "revision": self.revision,
            "updated": rfc3339(self.updated),
            "provider": dict(self.provider),
            "meta": self.meta,
            "meta_kcv": self.meta_kcv,
            "frozen_until": rfc3339(self.frozen_until),
            "freeze_reason": self.freeze_reason,
            "classes": {name: c.to_json() for name, c in sorted(self.classes.items())},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Keyring:
        if d.get("format") != FORMAT:
            raise ValueError(f"unsupported keyring format {d.get('format')!r}")
        classes = {
            name: KeyClass(
                name=name,
                id=int(c["id"]),
                versions=tuple(Version.from_json(v) for v in c["versions"]),
                index_versions=tuple(Version.from_json(v) for v in c["index_versions"]),
            )
            for name, c in d["classes"].items()
        }
        return cls(
            keyring_id=bytes.fromhex(d["keyring_id"]),
            revision=int(d["revision"]),
            updated=_time(d["updated"]),
            provider=dict(d["provider"]),
            meta=str(d["meta"]),
            meta_kcv=str(d["meta_kcv"]),
            classes=classes,
            frozen_until=parse_time(d.get("frozen_until")),
            freeze_reason=d.get("freeze_reason"),
        )

    def public_json(self, class_name: str = "default") -> dict[str, Any]:
        """``veil keys list --json`` (SPEC 12) for one class."""
        c = self.cls(class_name)
        return {
            "keyring_id": self.keyring_id.hex(),
            "revision": self.revision,
            "class": c.name,
            "classes": sorted(self.classes),
            "frozen_until": rfc3339(self.frozen_until),
            "versions": [v.public_json() for v in sorted(c.versions, key=lambda v: v.version)],
            "index_versions": [
                v.public_json() for v in sorted(c.index_versions, key=lambda v: v.version)
            ],
        }
