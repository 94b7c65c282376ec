"""``veil reencrypt ...`` and ``/v1/reencrypt``: operator control of the migration, via the store.

Any sidecar (or the CLI, directly on the keyring store) can read the status and set the
control flags; the lease holder's engine acts on them between batches.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from proxy.config import Settings
from proxy.errors import BreakerOpen
from proxy.keys.model import Keyring, State, rfc3339
from proxy.keys.stores import KeyringStore
from proxy.rotation.control import BREAKER_OPEN, RUNNING, StoreStatus, overall

CONTROL = "reencrypt:control"


def stores_of(settings: Settings) -> list[str]:
    """The stores this deployment migrates: those with a listener."""
    out = []
    if settings.redis.listen is not None:
        out.append("redis")
    if settings.s3.listen is not None:
        out.append("s3")
    return out


async def status(store: KeyringStore, names: list[str]) -> dict[str, Any]:
    ctl = await store.get_state(CONTROL) or {}
    stores = {
        n: StoreStatus.from_json(await store.get_state(f"reencrypt:{n}")).public() for n in names
    }
    return {
        "state": overall([s["state"] for s in stores.values()], bool(ctl.get("paused"))),
        "stores": stores,
    }


async def _control(store: KeyringStore, **changes: Any) -> None:
    ctl = await store.get_state(CONTROL) or {}
    await store.put_state(CONTROL, {**ctl, **changes})


async def start(store: KeyringStore, names: list[str], now: datetime) -> dict[str, Any]:
    current = await status(store, names)
    if current["state"] == BREAKER_OPEN:
        raise BreakerOpen(
            "the migration circuit breaker is open: inspect, then `veil reencrypt resume`"
        )
    await _control(store, start_requested=rfc3339(now), paused=False)
    return await status(store, names)


async def pause(store: KeyringStore, names: list[str], now: datetime) -> dict[str, Any]:
    await _control(store, paused=True, paused_at=rfc3339(now))
    return await status(store, names)


async def resume(store: KeyringStore, names: list[str], now: datetime) -> dict[str, Any]:
    """Clears a pause and closes open breakers; an interrupted pass resumes at its checkpoint."""
    for n in names:
        st = StoreStatus.from_json(await store.get_state(f"reencrypt:{n}"))
        if st.state == BREAKER_OPEN:
            st.state = RUNNING if st.cursor else "idle"
            st.breaker_reason = None
            await store.put_state(f"reencrypt:{n}", st.to_json())
    await _control(store, paused=False, resumed_at=rfc3339(now))
    return await status(store, names)


def dry_run(kr: Keyring, names: list[str], rate: float) -> dict[str, Any]:
    """What a migration would do now: versions with items off the active one, and how long."""
    versions = []
    total = 0
    for c in kr.classes.values():
        for v in c.versions:
            if v.state in (State.RETIRED, State.REVOKED) or (
                v.state is State.ACTIVE and v.compromised
            ):
                items = {n: v.items.get(n) for n in names}
                known = sum(x for x in items.values() if x)
                total += known
                versions.append(
                    {
                        "class": c.name,
                        "version": v.version,
                        "state": v.state.value,
                        "compromised": v.compromised,
                        "items": items,
                        "items_as_of": rfc3339(v.items_as_of),
                        "complete": v.migration_complete is not None,
                    }
                )
    return {
        "versions": versions,
        "items": total,
        "rate": rate,
        "estimated_seconds": int(total / rate) if rate > 0 else None,
    }
