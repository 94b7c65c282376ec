"""SIGHUP: re-read the configuration and apply what can change without a restart.

A running sidecar holds listeners, upstream connections and compiled key patterns built from its
settings; changing those under live clients is how a reload causes an outage. So a reload applies
only the settings in :data:`LIVE` -- the migration's pace and breaker, the admin tokens (token
rotation without a restart) -- and names every other changed setting as "takes effect on
restart". A file that no longer parses changes nothing: the running configuration stays, the
error is logged and audited. Names of settings are logged and audited, never their values.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from proxy.config import Settings
from proxy.errors import VeilError

log = logging.getLogger("veil")

# setting -> how it reaches the running sidecar (section-level replacement of ``ctx.settings``
# covers readers that look settings up per request; the engine is told explicitly)
LIVE: dict[str, str] = {
    "reencrypt.rate": "the migration's rate limit, from its next batch",
    "reencrypt.lease_ttl": "the migration lease's time to live, from its next renewal",
    "reencrypt.breaker_threshold": "the circuit breaker's threshold",
    "reencrypt.breaker_window": "the circuit breaker's window",
    "admin.tokens": "the admin API's bearer tokens, from the next request",
}

SECTIONS = ("redis", "s3", "keys", "reencrypt", "admin", "audit")


def changed(old: Settings, new: Settings) -> list[str]:
    """``section.field`` of every compared setting that differs between ``old`` and ``new``."""
    out = []
    for section in SECTIONS:
        a, b = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(a):
            if f.compare and getattr(a, f.name) != getattr(b, f.name):
                out.append(f"{section}.{f.name}")
    return out


def reload_config(
    ctx: Any, load: Callable[[], Settings], audit: Callable[[dict[str, Any]], None]
) -> tuple[list[str], list[str]] | None:
    """Re-reads the settings with ``load`` and applies the live ones to ``ctx``.

    Returns (applied, restart_required) setting names, or None when the file did not load.
    """
    try:
        new = load()
    except VeilError as e:
        log.error("config reload failed, the running configuration stays: %s", e.message)
        audit({"event": "config.reload_failed", "error": type(e).__name__})
        return None
    old: Settings = ctx.settings
    diff = changed(old, new)
    applied = [name for name in diff if name in LIVE]
    restart = [name for name in diff if name not in LIVE]
    if applied:
        ctx.settings = _with_live(old, new, applied)
        engine = ctx.engine
        if engine is not None and any(n.startswith("reencrypt.") for n in applied):
            engine.configure(new.reencrypt)
    for name in applied:
        log.warning("config reload: %s changed (%s)", name, LIVE[name])
    if restart:
        log.warning("config reload: takes effect on restart: %s", ", ".join(restart))
    if diff:
        audit({"event": "config.reloaded", "applied": applied, "restart_required": restart})
    else:
        log.info("config reload: no setting changed")
    return applied, restart


def _with_live(old: Settings, new: Settings, applied: list[str]) -> Settings:
    """``old`` with the applied settings taken from ``new`` (everything else untouched)."""
    sections: dict[str, Any] = {}
    for name in applied:
        section, field = name.split(".", 1)
        current = sections.get(section, getattr(old, section))
        value = getattr(getattr(new, section), field)
        sections[section] = dataclasses.replace(current, **{field: value})
    return dataclasses.replace(old, **sections)
