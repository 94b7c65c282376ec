"""SPEC 4's transition table, row by row, and every operation's guards."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from proxy.crypto.keys import KeyKind
from proxy.errors import IllegalTransition, RefusedError
from proxy.keys import lifecycle
from proxy.keys.lifecycle import TRANSITIONS, Policy, require
from proxy.keys.model import Keyring, State
from proxy.keys.ops import KeyOps
from tests.keyfixtures import Clock

# SPEC 4, transcribed independently of the code.
SPEC_TABLE = {
    (None, State.PENDING),
    (State.PENDING, State.ACTIVE),
    (None, State.ACTIVE),
    (State.ACTIVE, State.RETIRED),
    (State.PENDING, State.DESTROYED),
    (State.RETIRED, State.REVOKED),
    (State.REVOKED, State.RETIRED),
    (State.REVOKED, State.DESTROYED),
}

ALL_PAIRS = list(itertools.product([None, *State], list(State)))


def test_table_is_exactly_the_spec() -> None:
    assert set(TRANSITIONS) == SPEC_TABLE


@pytest.mark.parametrize(("frm", "to"), ALL_PAIRS, ids=lambda s: getattr(s, "value", "new"))
def test_every_pair_is_allowed_or_refused(frm: State | None, to: State) -> None:
    if (frm, to) in SPEC_TABLE:
        require(1, frm, to)
    else:
        with pytest.raises(IllegalTransition) as info:
            require(1, frm, to)
        assert info.value.exit_code == 3 and info.value.http_status == 409


# --- operations on a real (file) store ------------------------------------------------------


def states(kr: Keyring, kind: KeyKind = KeyKind.MASTER) -> dict[int, str]:
    return {v.version: v.state.value for v in kr.cls("default").series(kind)}


async def test_init_creates_default_class(file_ops: KeyOps) -> None:
    kr, changed = await file_ops.init(["default", "pii"])
    assert changed and sorted(kr.classes) == ["default", "pii"]
    assert states(kr) == {1: "active"} and states(kr, KeyKind.INDEX) == {1: "active"}
    assert kr.cls("default").id == 0 and kr.cls("pii").id == 1
    again, changed = await file_ops.init(["default", "pii"])
    assert not changed and again.revision == kr.revision
    body = kr.public_json("pii")
    assert set(body) == {
        "keyring_id",
        "revision",
        "class",
        "classes",
        "frozen_until",
        "versions",
        "index_versions",
    }
    assert set(body["versions"][0]) == {
        "version",
        "state",
        "created",
        "state_since",
        "compromised",
        "items",
        "items_as_of",
    }
    assert body["versions"][0]["items"] == {"redis": None, "s3": None}


async def test_full_lifecycle(file_ops: KeyOps, clock: Clock) -> None:
    await file_ops.init([])
    kr = (await file_ops.rotate("default")).keyring
    assert states(kr) == {1: "active", 2: "pending"}
    with pytest.raises(RefusedError, match="already pending"):
        await file_ops.rotate("default")
    kr = (await file_ops.promote("default", 2)).keyring
    assert states(kr) == {1: "retired", 2: "active"}
    with pytest.raises(IllegalTransition, match="retires when another version is promoted"):
        await file_ops.retire("default", 2)
    with pytest.raises(RefusedError, match="grace period"):
        await file_ops.revoke("default", 1)
    clock.advance(days=8)
    with pytest.raises(RefusedError, match="migration off version 1 is not complete"):
        await file_ops.revoke("default", 1)
    await file_ops._mutate(
        lambda k: _ready(
            lifecycle.mark_migration_complete(k, "default", KeyKind.MASTER, 1, clock(), "pass-1")
        )
    )
    kr = (await file_ops.revoke("default", 1)).keyring
    assert states(kr) == {1: "revoked", 2: "active"}
    kr = (await file_ops.retire("default", 1)).keyring  # undo
    assert states(kr)[1] == "retired"
    await file_ops.revoke("default", 1)
    with pytest.raises(RefusedError, match="destroy_min_age"):
        await file_ops.destroy("default", 1)
    clock.advance(days=31)
    kr = (await file_ops.destroy("default", 1)).keyring
    v1 = kr.cls("default").find(KeyKind.MASTER, 1)
    assert v1 is not None and v1.state is State.DESTROYED and v1.wrapped is None
    with pytest.raises(IllegalTransition):
        await file_ops.retire("default", 1)
    with pytest.raises(RefusedError):
        await file_ops.promote("default", 1)


async def _ready(change: lifecycle.Change) -> lifecycle.Change:
    return change


@pytest.mark.parametrize(
    ("op", "error"),
    [
        ("promote", IllegalTransition),
        ("retire", IllegalTransition),
        ("revoke", IllegalTransition),
        ("destroy", IllegalTransition),
    ],
)
async def test_operations_on_the_active_version(
    file_ops: KeyOps, op: str, error: type[Exception]
) -> None:
    await file_ops.init([])
    with pytest.raises(error):
        await getattr(file_ops, op)("default", 1)


async def test_pending_can_be_aborted_and_versions_are_never_reused(file_ops: KeyOps) -> None:
    await file_ops.init([])
    await file_ops.rotate("default")
    with pytest.raises(IllegalTransition):
        await file_ops.revoke("default", 2)
    kr = (await file_ops.destroy("default", 2)).keyring
    assert states(kr) == {1: "active", 2: "destroyed"}
    kr = (await file_ops.rotate("default")).keyring
    assert states(kr) == {1: "active", 2: "destroyed", 3: "pending"}


async def test_max_live_versions(file_ops: KeyOps, clock: Clock) -> None:
    file_ops.policy = Policy(max_live_versions=3)
    await file_ops.init([])
    for v in (2, 3):
        await file_ops.rotate("default")
        await file_ops.promote("default", v)
    with pytest.raises(RefusedError, match="max_live_versions"):
        await file_ops.rotate("default")
    plan = await file_ops.rotate_plan("default")
    assert plan["refused"] and plan["next_version"] == 4


async def test_promote_waits_for_acknowledgement(file_ops: KeyOps, clock: Clock) -> None:
    file_ops.propagation_delay = 300
    await file_ops.init([])
    await file_ops.rotate("default")
    with pytest.raises(RefusedError, match="can be promoted from 2026-01-01T00:05:00Z"):
        await file_ops.promote("default", 2)
    clock.advance(seconds=301)
    assert states((await file_ops.promote("default", 2)).keyring)[2] == "active"


async def test_emergency_revocation_of_the_active_version(file_ops: KeyOps) -> None:
    await file_ops.init([])
    change = await file_ops.revoke("default", 1, emergency=True)
    kr = change.keyring
    v1 = kr.cls("default").find(KeyKind.MASTER, 1)
    assert states(kr) == {1: "retired", 2: "active"}
    assert v1 is not None and v1.compromised and v1.revoke_requested
    assert [e["event"] for e in change.events] == ["key.compromised", "key.promoted", "key.retired"]
    # once migrated, the engine completes the revocation
    kr = (
        await file_ops._mutate(
            lambda k: _ready(
                lifecycle.mark_migration_complete(k, "default", KeyKind.MASTER, 1, k.updated, "p")
            )
        )
    ).keyring
    kr = (
        await file_ops._mutate(
            lambda k: _ready(
                lifecycle.complete_requested_revocation(k, "default", KeyKind.MASTER, 1, k.updated)
            )
        )
    ).keyring
    assert states(kr)[1] == "revoked"


async def test_emergency_promotes_a_pending_version_instead(file_ops: KeyOps) -> None:
    await file_ops.init([])
    await file_ops.rotate("default")
    kr = (await file_ops.revoke("default", 1, emergency=True)).keyring
    assert states(kr) == {1: "retired", 2: "active"}


async def test_emergency_ignores_grace_freeze_and_limits(file_ops: KeyOps, clock: Clock) -> None:
    file_ops.policy = Policy(max_live_versions=1)
    await file_ops.init([])
    await file_ops.freeze(clock() + timedelta(days=1), "incident 42")
    kr = (await file_ops.revoke("default", 1, emergency=True, force=True)).keyring
    assert states(kr) == {1: "revoked", 2: "active"}


async def test_forced_revocation_is_audited_with_items(file_ops: KeyOps, clock: Clock) -> None:
    events: list[dict[str, object]] = []
    file_ops.audit = events.append
    await file_ops.init([])
    await file_ops.rotate("default")
    await file_ops.promote("default", 2)
    await file_ops.revoke("default", 1, force=True)
    revoked = [e for e in events if e["event"] == "key.revoked"]
    assert revoked and revoked[0]["forced"] is True and "items_abandoned" in revoked[0]


async def test_freeze_and_unfreeze(file_ops: KeyOps, clock: Clock) -> None:
    await file_ops.init([])
    with pytest.raises(RefusedError):
        await file_ops.freeze(clock() - timedelta(seconds=1), "x")
    with pytest.raises(RefusedError):
        await file_ops.freeze(clock() + timedelta(days=1), " ")
    kr = (await file_ops.freeze(clock() + timedelta(days=1), "incident")).keyring
    assert kr.is_frozen(clock()) and kr.public_json()["frozen_until"] is not None
    kr = (await file_ops.unfreeze()).keyring
    assert not kr.is_frozen(clock())
    with pytest.raises(RefusedError):
        await file_ops.unfreeze()


async def test_index_series_rotates_independently(file_ops: KeyOps) -> None:
    await file_ops.init([])
    kr = (await file_ops.rotate("default", KeyKind.INDEX)).keyring
    assert states(kr) == {1: "active"}
    assert states(kr, KeyKind.INDEX) == {1: "active", 2: "pending"}


async def test_if_revision_makes_rotate_idempotent(file_ops: KeyOps) -> None:
    kr, _ = await file_ops.init([])
    await file_ops.rotate("default", if_revision=kr.revision)
    with pytest.raises(RefusedError, match="revision"):
        await file_ops.rotate("default", if_revision=kr.revision)


async def test_document_round_trips_through_json(file_ops: KeyOps) -> None:
    kr, _ = await file_ops.init(["pii"])
    kr = (await file_ops.rotate("pii")).keyring
    assert Keyring.from_json(kr.to_json()) == kr
