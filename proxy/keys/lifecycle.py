"""Key lifecycle (SPEC 4): the transition table and every operation on it, as pure functions.

Rule 1 (after h11's ``_state.py``): every state change of a key version happens in this file,
through ``TRANSITIONS``; anything not in the table is refused with ``IllegalTransition`` (exit
code 3, HTTP 409). Operations take the current ``Keyring`` and ``now`` and return a ``Change``:
the next document (revision + 1) and the audit events describing it. Wrapping new material is
async (it may call a KMS), so the caller prepares ``NewMaterial`` first and passes it in.

Guards beyond the table (each refusal names what is missing):

* ``rotate``: one pending version at a time per series; fewer than ``max_live_versions`` live.
* ``promote``: every live sidecar acknowledged the revision that added the version.
* ``retire``: only ``revoked -> retired`` (undo); an active version retires by promotion only.
* ``revoke``: a retired version, after ``grace_period`` and once its migration is complete --
  unless ``emergency`` (mark compromised, replace it if active, revoke once migrated) or
  ``force`` (revoke now, audited with the item count abandoned).
* ``destroy``: a pending version (abort), or a revoked one once complete and retired longer
  than ``destroy_min_age`` -- unless ``force``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from proxy.crypto.keys import MAX_VERSION, KeyKind
from proxy.errors import IllegalTransition, RefusedError
from proxy.keys.model import KeyClass, Keyring, State, Version, rfc3339

# (from, to) -> the only way it happens. ``None`` is "a version that does not exist yet".
TRANSITIONS: Mapping[tuple[State | None, State], str] = {
    (None, State.PENDING): "rotate",
    (State.PENDING, State.ACTIVE): "promote, once every live sidecar acknowledged it",
    (None, State.ACTIVE): "revoke --emergency of the active version (or keyring init)",
    (State.ACTIVE, State.RETIRED): "promotion of another version",
    (State.PENDING, State.DESTROYED): "destroy (abort of an unused version)",
    (State.RETIRED, State.REVOKED): "revoke, after grace and complete migration (or forced)",
    (State.REVOKED, State.RETIRED): "retire (undo a revocation)",
    (State.REVOKED, State.DESTROYED): "destroy, once complete and old enough (or forced)",
}


def require(version: int, frm: State | None, to: State) -> None:
    if (frm, to) not in TRANSITIONS:
        src = frm.value if frm else "(new)"
        raise IllegalTransition(f"version {version}: {src} -> {to.value} is not allowed")


@dataclass(frozen=True)
class NewMaterial:
    """A freshly generated version, already wrapped by the provider."""

    version: int
    wrapped: str
    kcv: str


@dataclass(frozen=True)
class Policy:
    """The lifecycle knobs of SPEC 3 that guard transitions (seconds)."""

    grace_period: float = 7 * 86400
    destroy_min_age: float = 30 * 86400
    max_live_versions: int = 8


@dataclass(frozen=True)
class Change:
    keyring: Keyring
    events: tuple[dict[str, Any], ...]


def _event(name: str, c: KeyClass, kind: KeyKind, version: int, **details: Any) -> dict[str, Any]:
    return {"event": name, "class": c.name, "kind": kind.value, "version": version, **details}


def _commit(kr: Keyring, now: datetime, **changes: Any) -> Keyring:
    return dataclasses.replace(kr, revision=kr.revision + 1, updated=now, **changes)


def _set(kr: Keyring, c: KeyClass, kind: KeyKind, versions: list[Version]) -> dict[str, KeyClass]:
    ordered = tuple(sorted(versions, key=lambda v: v.version))
    return {**kr.classes, c.name: c.with_series(kind, ordered)}


def _move(v: Version, to: State, now: datetime, **changes: Any) -> Version:
    require(v.version, v.state, to)
    return dataclasses.replace(v, state=to, state_since=now, **changes)


def _get(c: KeyClass, kind: KeyKind, version: int) -> Version:
    v = c.find(kind, version)
    if v is None:
        raise RefusedError(f"{kind.value} version {version} does not exist in class '{c.name}'")
    return v


def next_version(kr: Keyring, class_name: str, kind: KeyKind) -> int:
    """The number the next version of a series gets: never reused, even after destruction."""
    series = kr.cls(class_name).series(kind)
    n = max((v.version for v in series), default=0) + 1
    if n > MAX_VERSION:
        raise RefusedError(f"class '{class_name}' has used all {MAX_VERSION} version numbers")
    return n


def _new_version(kr: Keyring, m: NewMaterial, state: State, now: datetime) -> Version:
    require(m.version, None, state)
    return Version(
        version=m.version,
        state=state,
        created=now,
        created_revision=kr.revision + 1,
        state_since=now,
        kcv=m.kcv,
        wrapped=m.wrapped,
        activated=now if state is State.ACTIVE else None,
    )


def add_class(
    kr: Keyring, name: str, class_id: int, master: NewMaterial, index: NewMaterial, now: datetime
) -> Change:
    """A new key class with version 1 of each series active (nothing can hold it yet)."""
    if name in kr.classes or kr.class_by_id(class_id) is not None:
        raise RefusedError(f"key class '{name}' already exists")
    c = KeyClass(
        name=name,
        id=class_id,
        versions=(_new_version(kr, master, State.ACTIVE, now),),
        index_versions=(_new_version(kr, index, State.ACTIVE, now),),
    )
    events = (
        _event("key.class_created", c, KeyKind.MASTER, master.version),
        _event("key.activated", c, KeyKind.MASTER, master.version),
        _event("key.activated", c, KeyKind.INDEX, index.version),
    )
    return Change(_commit(kr, now, classes={**kr.classes, name: c}), events)


def rotate(
    kr: Keyring, class_name: str, kind: KeyKind, m: NewMaterial, now: datetime, policy: Policy
) -> Change:
    c = kr.cls(class_name)
    series = list(c.series(kind))
    pending = [v.version for v in series if v.state is State.PENDING]
    if pending:
        raise RefusedError(
            f"version {pending[0]} is already pending: promote or destroy it before rotating"
        )
    live = sum(1 for v in series if v.live)
    if live >= policy.max_live_versions:
        raise RefusedError(
            f"{live} live versions reach keys.max_live_versions ({policy.max_live_versions}): "
            "revoke and destroy old versions first"
        )
    if m.version != next_version(kr, class_name, kind):
        raise RefusedError("stale rotation: the keyring changed, retry")
    series.append(_new_version(kr, m, State.PENDING, now))
    return Change(
        _commit(kr, now, classes=_set(kr, c, kind, series)),
        (_event("key.rotated", c, kind, m.version, state="pending"),),
    )


def _activate(
    series: list[Version], target: int, now: datetime
) -> tuple[list[Version], int | None]:
    """Makes ``target`` active and retires the previous active version; returns the old one."""
    old: int | None = None
    out = []
    for v in series:
        if v.version == target:
            v = _move(v, State.ACTIVE, now, activated=now)
        elif v.state is State.ACTIVE:
            old = v.version
            v = _move(v, State.RETIRED, now, retired=now)
        out.append(v)
    return out, old


def promote(
    kr: Keyring, class_name: str, kind: KeyKind, version: int, now: datetime, acknowledged: bool
) -> Change:
    c = kr.cls(class_name)
    v = _get(c, kind, version)
    require(version, v.state, State.ACTIVE)
    if not acknowledged:
        raise RefusedError(
            f"version {version} is not yet acknowledged by every live sidecar; retry shortly"
        )
    series, old = _activate(list(c.series(kind)), version, now)
    events = [_event("key.promoted", c, kind, version)]
    if old is not None:
        events.append(_event("key.retired", c, kind, old, by=f"promotion of {version}"))
    return Change(_commit(kr, now, classes=_set(kr, c, kind, series)), tuple(events))


def retire(kr: Keyring, class_name: str, kind: KeyKind, version: int, now: datetime) -> Change:
    """``revoked -> retired`` (undo). An active version retires only by promoting another."""
    c = kr.cls(class_name)
    v = _get(c, kind, version)
    if v.state is State.ACTIVE:
        raise IllegalTransition(
            f"version {version} is active: it retires when another version is promoted"
        )
    require(version, v.state, State.RETIRED)
    series = [_move(x, State.RETIRED, now) if x.version == version else x for x in c.series(kind)]
    return Change(
        _commit(kr, now, classes=_set(kr, c, kind, series)),
        (_event("key.unrevoked", c, kind, version),),
    )


def revoke(
    kr: Keyring,
    class_name: str,
    kind: KeyKind,
    version: int,
    now: datetime,
    policy: Policy,
    *,
    emergency: bool = False,
    force: bool = False,
    replacement: NewMaterial | None = None,
) -> Change:
    """Revoke ``version``; see the module docstring for the three paths."""
    c = kr.cls(class_name)
    v = _get(c, kind, version)
    if v.state in (State.REVOKED, State.DESTROYED):
        raise IllegalTransition(f"version {version} is already {v.state.value}")
    if emergency:
        return _emergency(kr, c, kind, v, now, force, replacement)
    if v.state is State.ACTIVE:
        raise IllegalTransition(
            f"version {version} is active: promote another version first (or use --emergency)"
        )
    require(version, v.state, State.REVOKED)
    if not force:
        assert v.retired is not None
        grace_end = v.retired + timedelta(seconds=policy.grace_period)
        if now < grace_end:
            raise RefusedError(
                f"version {version} is in its grace period until {rfc3339(grace_end)}"
            )
        if v.migration_complete is None:
            raise RefusedError(
                f"migration off version {version} is not complete (see veil reencrypt status)"
            )
    return _revoke_now(kr, c, kind, v, now, forced=force)


def _revoke_now(
    kr: Keyring, c: KeyClass, kind: KeyKind, v: Version, now: datetime, forced: bool
) -> Change:
    series = [
        _move(x, State.REVOKED, now, revoke_requested=False) if x.version == v.version else x
        for x in c.series(kind)
    ]
    details: dict[str, Any] = {"forced": forced}
    if forced and v.migration_complete is None:
        details["items_abandoned"] = dict(v.items)
    return Change(
        _commit(kr, now, classes=_set(kr, c, kind, series)),
        (_event("key.revoked", c, kind, v.version, **details),),
    )


def _emergency(
    kr: Keyring,
    c: KeyClass,
    kind: KeyKind,
    v: Version,
    now: datetime,
    force: bool,
    replacement: NewMaterial | None,
) -> Change:
    """SPEC 4 emergency: one revision marks ``v`` compromised and, if active, replaces it."""
    events: list[dict[str, Any]] = [_event("key.compromised", c, kind, v.version)]
    series = list(c.series(kind))
    if v.state is State.PENDING:
        series = [
            _move(x, State.DESTROYED, now, wrapped=None, compromised=True)
            if x.version == v.version
            else x
            for x in series
        ]
        events.append(_event("key.destroyed", c, kind, v.version, reason="compromised pending"))
        return Change(_commit(kr, now, classes=_set(kr, c, kind, series)), tuple(events))
    if v.state is State.ACTIVE:
        pending = [x for x in series if x.state is State.PENDING]
        if pending:
            target = pending[0].version
            series, _ = _activate(series, target, now)
        elif replacement is not None:
            target = replacement.version
            series = [
                _move(x, State.RETIRED, now, retired=now) if x.version == v.version else x
                for x in series
            ]
            series.append(_new_version(kr, replacement, State.ACTIVE, now))
        else:
            raise RefusedError("emergency revocation of the active version needs new material")
        events.append(_event("key.promoted", c, kind, target, emergency=True))
        events.append(_event("key.retired", c, kind, v.version, by="emergency"))
    # a retired version with nothing left on it is revoked in this same revision
    now_revoke = force or (v.state is State.RETIRED and v.migration_complete is not None)
    series = [
        dataclasses.replace(x, compromised=True, revoke_requested=not now_revoke)
        if x.version == v.version
        else x
        for x in series
    ]
    kr2 = dataclasses.replace(kr, classes=_set(kr, c, kind, series))
    if now_revoke:
        c2 = kr2.cls(c.name)
        change = _revoke_now(kr2, c2, kind, _get(c2, kind, v.version), now, forced=force)
        return Change(change.keyring, (*events, *change.events))
    return Change(_commit(kr2, now), tuple(events))


def complete_requested_revocation(
    kr: Keyring, class_name: str, kind: KeyKind, version: int, now: datetime
) -> Change:
    """Called by the migration engine once a compromised version's items are all migrated."""
    c = kr.cls(class_name)
    v = _get(c, kind, version)
    if not v.revoke_requested or v.migration_complete is None:
        raise RefusedError(f"version {version} has no completed emergency migration")
    return _revoke_now(kr, c, kind, v, now, forced=False)


def destroy(
    kr: Keyring,
    class_name: str,
    kind: KeyKind,
    version: int,
    now: datetime,
    policy: Policy,
    *,
    force: bool = False,
) -> Change:
    c = kr.cls(class_name)
    v = _get(c, kind, version)
    require(version, v.state, State.DESTROYED)
    details: dict[str, Any] = {"forced": force}
    if v.state is State.REVOKED and not force:
        if v.migration_complete is None:
            raise RefusedError(f"migration off version {version} is not complete")
        since = v.retired or v.state_since
        oldest = since + timedelta(seconds=policy.destroy_min_age)
        if now < oldest:
            raise RefusedError(
                f"version {version} may not be destroyed before {rfc3339(oldest)} "
                "(keys.destroy_min_age: backups may still hold its data)"
            )
    if force and v.state is State.REVOKED and v.migration_complete is None:
        details["items_abandoned"] = dict(v.items)
    series = [
        _move(x, State.DESTROYED, now, wrapped=None) if x.version == version else x
        for x in c.series(kind)
    ]
    return Change(
        _commit(kr, now, classes=_set(kr, c, kind, series)),
        (_event("key.destroyed", c, kind, version, **details),),
    )


def freeze(kr: Keyring, until: datetime, reason: str, now: datetime) -> Change:
    if until <= now:
        raise RefusedError("freeze --until must be in the future")
    if not reason.strip():
        raise RefusedError("freeze needs a --reason")
    return Change(
        _commit(kr, now, frozen_until=until, freeze_reason=reason),
        ({"event": "keyring.frozen", "until": rfc3339(until), "reason": reason},),
    )


def unfreeze(kr: Keyring, now: datetime) -> Change:
    if kr.frozen_until is None:
        raise RefusedError("the keyring is not frozen")
    return Change(
        _commit(kr, now, frozen_until=None, freeze_reason=None),
        ({"event": "keyring.unfrozen"},),
    )


def mark_migration_complete(
    kr: Keyring, class_name: str, kind: KeyKind, version: int, now: datetime, pass_id: str
) -> Change:
    c = kr.cls(class_name)
    v = _get(c, kind, version)
    if v.state not in (State.RETIRED, State.REVOKED):
        raise RefusedError(f"version {version} is {v.state.value}: nothing to complete")
    series = [
        dataclasses.replace(x, migration_complete=now) if x.version == version else x
        for x in c.series(kind)
    ]
    return Change(
        _commit(kr, now, classes=_set(kr, c, kind, series)),
        (_event("migration.complete", c, kind, version, pass_id=pass_id),),
    )


def set_items(
    kr: Keyring, store: str, counts: Mapping[tuple[int, int], int], now: datetime
) -> Change:
    """Records how many items of ``store`` a full pass found per (class id, master version).

    Versions a pass did not see get 0: a full pass saw everything there is.
    """
    classes = dict(kr.classes)
    for name, c in kr.classes.items():
        series = []
        for v in c.versions:
            if v.state is State.DESTROYED:
                series.append(v)
                continue
            items = {**v.items, store: counts.get((c.id, v.version), 0)}
            series.append(dataclasses.replace(v, items=items, items_as_of=now))
        classes[name] = c.with_series(KeyKind.MASTER, tuple(series))
    return Change(
        _commit(kr, now, classes=classes),
        (
            {
                "event": "migration.census",
                "store": store,
                "items": {f"{c}/{v}": n for (c, v), n in sorted(counts.items())},
            },
        ),
    )
