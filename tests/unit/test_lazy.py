"""The lazy queue: never blocks a read, deduplicates, counts drops, drains in batches."""

from __future__ import annotations

import asyncio

from proxy.metrics import Metrics
from proxy.rotation.lazy import LazyQueue


async def test_note_dedups_drops_and_drains() -> None:
    m = Metrics()
    q: LazyQueue[tuple[int, bytes]] = LazyQueue("redis", m, maxsize=3)
    for key in (b"a", b"a", b"b", b"c", b"d"):
        q.note((0, key))
    assert len(q) == 3
    assert m.lazy_dropped.labels("redis")._value.get() == 1
    seen: list[list[tuple[int, bytes]]] = []
    done = asyncio.Event()

    async def handle(items: list[tuple[int, bytes]]) -> None:
        seen.append(items)
        done.set()

    task = asyncio.create_task(q.run(handle, batch=10))
    await asyncio.wait_for(done.wait(), 2)
    assert seen == [[(0, b"a"), (0, b"b"), (0, b"c")]]
    q.note((0, b"a"))  # drained items may be queued again
    assert len(q) == 1
    task.cancel()


async def test_a_failing_batch_does_not_stop_the_worker() -> None:
    q: LazyQueue[int] = LazyQueue("redis", Metrics())
    calls: list[list[int]] = []
    done = asyncio.Event()

    async def handle(items: list[int]) -> None:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("upstream hiccup")
        done.set()

    task = asyncio.create_task(q.run(handle))
    q.note(1)
    await asyncio.sleep(0.05)
    q.note(2)
    await asyncio.wait_for(done.wait(), 2)
    assert calls == [[1], [2]]
    task.cancel()


async def test_paused_batches_are_skipped() -> None:
    q: LazyQueue[int] = LazyQueue("redis", Metrics())
    handled: list[int] = []

    async def handle(items: list[int]) -> None:
        handled.extend(items)

    async def paused() -> bool:
        return False

    task = asyncio.create_task(q.run(handle, allowed=paused))
    q.note(1)
    await asyncio.sleep(0.05)
    assert handled == [] and len(q) == 0
    task.cancel()
