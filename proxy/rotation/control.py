"""Migration bookkeeping: the status of SPEC 12, the circuit breaker, the rate limiter.

``StoreStatus`` is what ``veil reencrypt status --json`` prints per store and what the lease
holder checkpoints in the keyring store (``reencrypt:<store>``), so another sidecar can take
over and resume. ``Breaker`` opens when too many failures of one kind fall in a sliding window;
an open breaker pauses the migration until an operator resumes it. ``RateLimiter`` is a token
bucket over an injected clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

IDLE, RUNNING, PAUSED, BREAKER_OPEN = "idle", "running", "paused", "breaker_open"


@dataclass
class StoreStatus:
    """One store's migration pass (SPEC 12 ``reencrypt status`` per store)."""

    state: str = IDLE
    pass_id: str = ""
    pass_started_at: str | None = None
    scanned: int = 0
    migrated: int = 0
    remaining: dict[str, int] = field(default_factory=dict)  # version -> items not active
    unmigratable: dict[str, int] = field(default_factory=dict)  # reason -> items
    complete: bool = False
    eta_seconds: int | None = None
    # checkpoint and proof (not in the public body)
    cursor: dict[str, Any] = field(default_factory=dict)
    acked_at_start: bool = False
    revision_at_start: int = 0
    versions: dict[str, int] = field(default_factory=dict)  # "class/version" -> items seen
    errors: int = 0
    total_estimate: int = 0  # items the walker expects (for the ETA), 0 if unknown
    breaker_reason: str | None = None
    finished_at: str | None = None

    PUBLIC = (
        "state",
        "pass_id",
        "pass_started_at",
        "scanned",
        "migrated",
        "remaining",
        "unmigratable",
        "complete",
        "eta_seconds",
    )

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in self.PUBLIC}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> StoreStatus:
        if not d:
            return cls()
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def overall(states: list[str], paused: bool) -> str:
    """The top-level ``state`` of ``reencrypt status`` from the stores' states."""
    if BREAKER_OPEN in states:
        return BREAKER_OPEN
    if paused:
        return PAUSED
    return RUNNING if RUNNING in states else IDLE


class Breaker:
    """Opens when ``threshold`` events of one kind fall within ``window`` seconds."""

    def __init__(
        self, threshold: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.window = window
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self.open_reason: str | None = None

    def record(self, kind: str) -> bool:
        """Counts one failure; True when this one opened the breaker."""
        now = self._clock()
        q = self._events.setdefault(kind, deque())
        q.append(now)
        while q and q[0] < now - self.window:
            q.popleft()
        if self.open_reason is None and len(q) >= self.threshold:
            self.open_reason = kind
            return True
        return False

    @property
    def is_open(self) -> bool:
        return self.open_reason is not None

    def reset(self) -> None:
        self._events.clear()
        self.open_reason = None


class RateLimiter:
    """A token bucket: ``take(n)`` waits until ``n`` items may proceed at ``rate`` per second."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def set_rate(self, rate: float) -> None:
        """A new rate from now on (tokens already earned are kept, within the new burst)."""
        self.rate = rate
        self.burst = max(1.0, rate / 10)
        self._tokens = min(self._tokens, self.burst)

    async def take(self, n: int = 1) -> None:
        if self.rate <= 0:
            return
        while True:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= n or (n > self.burst and self._tokens >= self.burst):
                self._tokens -= n
                return
            await asyncio.sleep(min(1.0, (min(n, self.burst) - self._tokens) / self.rate))
