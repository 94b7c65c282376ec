"""Lazy re-encryption (SPEC 8): a read that meets an old version queues the item, never waits.

``note(item)`` is what the read path calls: one set lookup and one ``put_nowait``; a full
queue drops the item (counted in ``veil_lazy_queue_dropped_total``) -- the background walk
will get it. Items are deduplicated while queued. A worker drains the queue in batches and
hands each batch to the store's rewrite function (compare-and-set, so a concurrent client
write still wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from proxy.metrics import Metrics

log = logging.getLogger("veil.rotation")
T = TypeVar("T", bound=Hashable)


class LazyQueue(Generic[T]):
    def __init__(self, store: str, metrics: Metrics, maxsize: int = 10_000) -> None:
        self.store = store
        self._metrics = metrics
        self._q: asyncio.Queue[T] = asyncio.Queue(maxsize)
        self._queued: set[T] = set()
        self._dropped = metrics.lazy_dropped.labels(store)
        self._depth = metrics.lazy_depth.labels(store)

    def note(self, item: T) -> None:
        """Queue ``item`` for re-encryption unless it is already queued. Never blocks."""
        if item in self._queued:
            return
        try:
            self._q.put_nowait(item)
        except asyncio.QueueFull:
            self._dropped.inc()
            return
        self._queued.add(item)

    def __len__(self) -> int:
        return self._q.qsize()

    async def run(
        self,
        handle: Callable[[list[T]], Awaitable[None]],
        batch: int = 100,
        allowed: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Drains forever. ``allowed()`` (pause/freeze) is asked before each batch."""
        while True:
            first = await self._q.get()
            items = [first]
            while len(items) < batch and not self._q.empty():
                items.append(self._q.get_nowait())
            for item in items:
                self._queued.discard(item)
            self._depth.set(self._q.qsize())
            if allowed is not None and not await allowed():
                continue  # paused or frozen: the background walk will catch up later
            try:
                await handle(items)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never let one bad item stop lazy migration
                log.warning(
                    "lazy re-encryption of %d %s items failed: %s",
                    len(items),
                    self.store,
                    type(e).__name__,
                )
                with contextlib.suppress(Exception):
                    self._metrics.reencrypt_items.labels(self.store, "old", "active", "error").inc(
                        len(items)
                    )
