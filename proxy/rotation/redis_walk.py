"""The Redis migration walker: moves items off old key versions, one safe rewrite at a time.

Theory of operation
-------------------
A pass walks every database with ``SCAN`` (resuming from a checkpointed cursor per database),
types each key of a batch in one pipeline, and reads the batch's items (``GET``, ``HSCAN``,
``LRANGE``, ``XRANGE``) in another. For each item it reads only the envelope *header* (class,
version): items already on their namespace's active version are counted and left alone, so a
pass over migrated data costs no cryptography. Each stale item is decrypted and re-sealed under
the active version and written back by a compare-and-set Lua script against the exact bytes read
(``GET == old -> SET new KEEPTTL``; ``HGET``/``HSET``; ``LINDEX``/``LSET``): a concurrent client
write always wins, TTLs, fields and list positions are kept. All rewrites of a batch go in one
pipeline.

What a master-key pass does not rewrite: deterministic values (set and sorted-set members,
HyperLogLog elements, opt-in deterministic lists and hash field names) belong to the index
keyring and its own rebuild; stream entries cannot be rewritten in place and are counted as
``unmigratable{reason="stream"}``; HyperLogLog blobs are Redis's own sketches (their elements
went in deterministically). Keys under plaintext patterns and veil's reserved keys are skipped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.crypto.context import Role
from proxy.crypto.envelope import FORMAT_DETERMINISTIC, FORMAT_SMALL, HEADER, MAGIC
from proxy.errors import CryptoError, KeyUnavailable
from proxy.keys.stores import RESERVED_PREFIX
from proxy.redis.values import LEGACY, RedisValues

_CAS_STRING = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""
# the same for a whole batch of strings in one call (one command instead of one per key)
_CAS_STRINGS = """
local out = {}
for i, key in ipairs(KEYS) do
  local ok, cur = pcall(redis.call, 'GET', key)  -- a key that changed type meanwhile: skip
  if ok and cur == ARGV[2 * i - 1] then
    redis.call('SET', key, ARGV[2 * i], 'KEEPTTL')
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
_CAS_HASH = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""
_CAS_LIST = """
local ok, cur = pcall(redis.call, 'LINDEX', KEYS[1], ARGV[1])
if ok and cur == ARGV[2] then
  redis.call('LSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""
# index rebuild: remove the old-version member and add the new one atomically, keeping the
# score; if a client already added the new-version member meanwhile, its write wins
_MOVE_MEMBER = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_MOVE_ZMEMBER = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s then
  redis.call('ZREM', KEYS[1], ARGV[1])
  if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then redis.call('ZADD', KEYS[1], s, ARGV[2]) end
  return 1
end
return 0
"""
_MOVE_FIELD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  local v = redis.call('HGET', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then redis.call('HSET', KEYS[1], ARGV[2], v) end
  return 1
end
return 0
"""
_CAD_STRING = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
_CAD_HASH = (
    "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then "
    "return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0"
)
_CAD_LIST = "return redis.call('LREM', KEYS[1], 1, ARGV[1])"
HLL_MAGIC = b"HYLL"


@dataclass(frozen=True)
class Plan:
    """What this pass rewrites. ``targets(class_id)`` is the active version per class."""

    active: dict[int, int]  # class id -> active master version
    compromised_only: frozenset[tuple[int, int]] = frozenset()  # (class, version) to move first
    drop: frozenset[tuple[int, int]] = frozenset()  # revoked versions: delete in cache namespaces
    index_active: dict[int, int] = field(default_factory=dict)  # class id -> active index version
    rebuild_index: bool = False  # an index rotation is in progress: rebuild member by member


@dataclass
class Tally:
    scanned: int = 0
    migrated: int = 0
    dropped: int = 0
    conflicts: int = 0
    versions: Counter[str] = field(default_factory=Counter)  # "class/version" or "plaintext"
    unmigratable: Counter[str] = field(default_factory=Counter)  # reason -> items
    blocked: Counter[str] = field(default_factory=Counter)  # "class/version" -> unmigratable
    moved: Counter[tuple[str, str]] = field(default_factory=Counter)  # (from label, outcome)
    droppable: Counter[str] = field(default_factory=Counter)  # cache-namespace items per label
    failures: Counter[str] = field(default_factory=Counter)  # reason -> count

    def merge(self, other: Tally) -> None:
        self.scanned += other.scanned
        self.migrated += other.migrated
        self.dropped += other.dropped
        self.conflicts += other.conflicts
        self.versions.update(other.versions)
        self.unmigratable.update(other.unmigratable)
        self.blocked.update(other.blocked)
        self.moved.update(other.moved)
        self.droppable.update(other.droppable)
        self.failures.update(other.failures)


@dataclass
class _Write:
    script: str
    key: bytes
    args: tuple[bytes | int, ...]
    label: str  # "class/version" moved off (for the tally)
    drop: bool = False
    to_label: str = ""  # "class/version" moved onto


class RedisMigrator:
    """One Redis upstream. ``client_factory(db)`` gives a redis-py asyncio client per database."""

    def __init__(
        self, values: RedisValues, client_factory: Callable[[int], Any], batch: int = 100
    ) -> None:
        self.values = values
        self._client = client_factory
        self.batch = batch
        self._scripts: dict[str, str] = {}  # script source -> SHA on this server

    async def databases(self) -> list[int]:
        info = await self._client(0).info("keyspace")
        return sorted(int(k[2:]) for k in info if k.startswith("db"))

    async def _sha(self, r: Any, src: str) -> str:
        sha = self._scripts.get(src)
        if sha is None:
            sha = self._scripts[src] = str(await r.script_load(src))
        return sha

    async def scan_batch(self, db: int, cursor: int, plan: Plan) -> tuple[int, Tally]:
        """One SCAN step of ``db``: returns the next cursor (0 = done) and what it did."""
        r = self._client(db)
        cursor, keys = await r.scan(cursor=cursor, count=self.batch)
        keys = [
            k
            for k in keys
            if not k.startswith(RESERVED_PREFIX) and self.values.redis.is_encrypted_key(k)
        ]
        tally = Tally()
        if keys:
            await self.migrate_keys(db, keys, plan, tally)
        return int(cursor), tally

    async def migrate_keys(self, db: int, keys: Sequence[bytes], plan: Plan, tally: Tally) -> None:
        """Reads, tallies and rewrites ``keys`` (the lazy path calls this for single keys)."""
        r = self._client(db)
        # MGET answers nil for every non-string key, so strings (most keys, usually) need no
        # TYPE round trip: only the keys it did not answer for are typed
        strings = await r.mget(keys)
        writes: list[_Write] = []
        _strings_read(
            self,
            [(k, v) for k, v in zip(keys, strings, strict=True) if v is not None],
            plan,
            tally,
            writes,
        )
        others = [k for k, v in zip(keys, strings, strict=True) if v is None]
        types: list[Any] = []
        if others:
            async with r.pipeline(transaction=False) as p:
                for k in others:
                    p.type(k)
                types = await p.execute()
        by_type: dict[bytes, list[bytes]] = {}
        for k, t in zip(others, types, strict=True):
            by_type.setdefault(t if isinstance(t, bytes) else str(t).encode(), []).append(k)
        for t, group in by_type.items():
            handler = _TYPES.get(t)
            if handler is not None:
                await handler(self, r, group, plan, tally, writes)
        if writes:
            await self._apply(r, writes, tally)

    async def _apply(self, r: Any, writes: list[_Write], tally: Tally) -> None:
        from redis.exceptions import NoScriptError

        batched = [w for w in writes if w.script is _CAS_STRING]
        single = [w for w in writes if w.script is not _CAS_STRING]
        results: list[Any] = []
        for attempt in range(2):
            shas = {src: await self._sha(r, src) for src in {w.script for w in single}}
            if batched:
                shas[_CAS_STRINGS] = await self._sha(r, _CAS_STRINGS)
            async with r.pipeline(transaction=False) as p:
                if batched:
                    args = [a for w in batched for a in w.args]
                    p.evalsha(shas[_CAS_STRINGS], len(batched), *[w.key for w in batched], *args)
                for w in single:
                    p.evalsha(shas[w.script], 1, w.key, *w.args)
                results = await p.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(x, NoScriptError) for x in results):
                self._scripts.clear()  # the server restarted or flushed its script cache
                continue
            break
        if batched:
            first = results[0]
            results = (list(first) if isinstance(first, list) else [first] * len(batched)) + list(
                results[1:]
            )
            writes = batched + single
        for w, ok in zip(writes, results, strict=True):
            if isinstance(ok, Exception):
                tally.failures["upstream"] += 1
                tally.moved[(w.label, "error")] += 1
            elif ok:
                if w.drop:
                    tally.dropped += 1
                else:
                    tally.migrated += 1
                tally.versions[w.label] -= 1
                if w.drop:
                    tally.droppable[w.label] -= 1
                else:
                    tally.versions[w.to_label] += 1
                tally.moved[(w.label, "dropped" if w.drop else "ok")] += 1
            else:
                tally.conflicts += 1  # a client wrote meanwhile: its write wins
                tally.moved[(w.label, "conflict")] += 1

    # --- one item ----------------------------------------------------------------------

    def target_label(self, key: bytes, plan: Plan) -> str:
        target = self.values.class_id(self.values.namespace(key))
        return f"{target}/{plan.active.get(target)}"

    def _consider_index(
        self, key: bytes, role: Role, stored: bytes, plan: Plan, tally: Tally
    ) -> tuple[bytes | None, str, str]:
        """``(new envelope or None, old label, new label)`` for one deterministic item."""
        if stored[:3] != MAGIC or len(stored) < HEADER.size or stored[3] != FORMAT_DETERMINISTIC:
            return None, "", ""
        tally.scanned += 1
        _, _, _, class_id, version = HEADER.unpack_from(stored)
        label = f"i{class_id}/{version}"
        tally.versions[label] += 1
        ns = self.values.namespace(key)
        target = self.values.class_id(ns)
        if not plan.rebuild_index or (
            class_id == target and version == plan.index_active.get(target)
        ):
            return None, label, ""
        try:
            plain, _ = self.values.open(key, role, stored, ns=ns)
        except KeyUnavailable:
            tally.failures["key_unavailable"] += 1
            return None, label, ""
        except CryptoError:
            tally.failures["decrypt"] += 1
            return None, label, ""
        new = self.values.seal(key, role, plain, ns=ns)
        return new, label, f"i{target}/{plan.index_active.get(target)}"

    def _consider(
        self,
        key: bytes,
        role: Role,
        stored: bytes,
        plan: Plan,
        tally: Tally,
        field_name: bytes | None = None,
    ) -> tuple[bytes | None, str, bool]:
        """``(new bytes or None, label, drop)`` for one stored item; tallies it."""
        tally.scanned += 1
        ns = self.values.namespace(key)
        if stored[:3] != MAGIC:
            tally.versions["plaintext"] += 1
            if self.values.redis.legacy_plaintext != "allow":
                return None, "plaintext", False
            return self.values.seal(key, role, stored, field_name, ns), "plaintext", False
        if stored[3] != FORMAT_SMALL or len(stored) < HEADER.size:
            return None, "", False  # deterministic: the index keyring's business
        _, _, _, class_id, version = HEADER.unpack_from(stored)
        label = f"{class_id}/{version}"
        tally.versions[label] += 1
        target = self.values.class_id(ns)
        if class_id == target and version == plan.active.get(target):
            return None, label, False
        if plan.compromised_only and (class_id, version) not in plan.compromised_only:
            return None, label, False
        if ns.drop_on_revoke:  # a cache: never migrated, deleted once its version is revoked
            if (class_id, version) in plan.drop:
                return b"", label, True
            tally.droppable[label] += 1
            return None, label, False
        try:
            plain, v = self.values.open(key, role, stored, field_name, ns)
        except KeyUnavailable:
            tally.failures["key_unavailable"] += 1
            return None, label, False
        except CryptoError:
            tally.failures["decrypt"] += 1
            return None, label, False
        if v == LEGACY:  # pragma: no cover - handled above
            return None, label, False
        return self.values.seal(key, role, plain, field_name, ns), label, False


def _strings_read(
    m: RedisMigrator,
    items: list[tuple[bytes, bytes]],
    plan: Plan,
    tally: Tally,
    writes: list[_Write],
) -> None:
    for k, old in items:
        if old[:4] == HLL_MAGIC:
            continue
        new, label, drop = m._consider(k, Role.STRING, old, plan, tally)
        if drop:
            writes.append(_Write(_CAD_STRING, k, (old,), label, drop=True))
        elif new is not None:
            writes.append(_Write(_CAS_STRING, k, (old, new), label, False, m.target_label(k, plan)))


async def _hashes(
    m: RedisMigrator, r: Any, keys: list[bytes], plan: Plan, tally: Tally, writes: list[_Write]
) -> None:
    for k in keys:
        det_fields = m.values.redis.is_deterministic_fields(k)
        async for stored_field, old in r.hscan_iter(k, count=m.batch):
            name = stored_field
            if det_fields:
                try:
                    name, _ = m.values.open(k, Role.HASH_FIELD, stored_field)
                except CryptoError:
                    tally.failures["decrypt"] += 1
                    continue
                renamed, label, to = m._consider_index(
                    k, Role.HASH_FIELD, stored_field, plan, tally
                )
                if renamed is not None:  # the value binds the plaintext name: it stays as is
                    writes.append(_Write(_MOVE_FIELD, k, (stored_field, renamed), label, False, to))
            new, label, drop = m._consider(k, Role.HASH_VALUE, old, plan, tally, name)
            if drop:
                writes.append(_Write(_CAD_HASH, k, (stored_field, old), label, drop=True))
            elif new is not None:
                writes.append(
                    _Write(
                        _CAS_HASH,
                        k,
                        (stored_field, old, new),
                        label,
                        False,
                        m.target_label(k, plan),
                    )
                )


async def _lists(
    m: RedisMigrator, r: Any, keys: list[bytes], plan: Plan, tally: Tally, writes: list[_Write]
) -> None:
    for k in keys:
        det = m.values.redis.is_deterministic_list(k)
        start = 0
        while True:
            chunk = await r.lrange(k, start, start + m.batch - 1)
            for i, old in enumerate(chunk):
                if det:
                    moved, label, to = m._consider_index(k, Role.LIST_ELEMENT, old, plan, tally)
                    if moved is not None:
                        writes.append(
                            _Write(_CAS_LIST, k, (start + i, old, moved), label, False, to)
                        )
                    continue
                new, label, drop = m._consider(k, Role.LIST_ELEMENT, old, plan, tally)
                if drop:
                    writes.append(_Write(_CAD_LIST, k, (old,), label, drop=True))
                elif new is not None:
                    writes.append(
                        _Write(
                            _CAS_LIST,
                            k,
                            (start + i, old, new),
                            label,
                            False,
                            m.target_label(k, plan),
                        )
                    )
            if len(chunk) < m.batch:
                break
            start += m.batch


async def _streams(
    m: RedisMigrator, r: Any, keys: list[bytes], plan: Plan, tally: Tally, writes: list[_Write]
) -> None:
    """Stream entries are immutable: stale ones are counted as unmigratable, never rewritten."""
    for k in keys:
        active = plan.active.get(m.values.class_id(m.values.namespace(k)))
        low = b"-"
        while True:
            entries = await r.xrange(k, min=low, count=m.batch)
            for _, fields in entries:
                for old in fields.values():
                    tally.scanned += 1
                    if old[:3] != MAGIC or len(old) < HEADER.size or old[3] != FORMAT_SMALL:
                        continue
                    _, _, _, class_id, version = HEADER.unpack_from(old)
                    label = f"{class_id}/{version}"
                    tally.versions[label] += 1
                    if version != active:
                        tally.unmigratable["stream"] += 1
                        tally.blocked[label] += 1
            if len(entries) < m.batch:
                break
            low = b"(" + entries[-1][0]


async def _sets(
    m: RedisMigrator, r: Any, keys: list[bytes], plan: Plan, tally: Tally, writes: list[_Write]
) -> None:
    if not plan.rebuild_index:
        return  # members are only read while an index rotation is in progress
    for k in keys:
        async for member in r.sscan_iter(k, count=m.batch):
            new, label, to = m._consider_index(k, Role.SET_MEMBER, member, plan, tally)
            if new is not None:
                writes.append(_Write(_MOVE_MEMBER, k, (member, new), label, False, to))


async def _zsets(
    m: RedisMigrator, r: Any, keys: list[bytes], plan: Plan, tally: Tally, writes: list[_Write]
) -> None:
    if not plan.rebuild_index:
        return
    for k in keys:
        async for member, _ in r.zscan_iter(k, count=m.batch):
            new, label, to = m._consider_index(k, Role.ZSET_MEMBER, member, plan, tally)
            if new is not None:
                writes.append(_Write(_MOVE_ZMEMBER, k, (member, new), label, False, to))


Handler = Callable[[RedisMigrator, Any, list[bytes], Plan, Tally, list[_Write]], Awaitable[None]]
_TYPES: dict[bytes, Handler] = {
    # strings are read by the MGET that starts every batch (see migrate_keys)
    b"hash": _hashes,
    b"list": _lists,
    b"stream": _streams,
    b"set": _sets,
    b"zset": _zsets,
    # HyperLogLogs are strings holding Redis's sketch: skipped (their elements keep the index
    # version they were first written with, SPEC 5)
}


class RedisWalker:
    """A full pass over every database, resumable from ``status.cursor``."""

    name = "redis"

    def __init__(self, migrator: RedisMigrator) -> None:
        self.migrator = migrator

    async def run_pass(self, plan: Plan, status: Any, step: Any) -> Tally:
        m = self.migrator
        total = Tally()
        total.versions.update(status.versions)  # counts from before a takeover
        total.unmigratable.update(status.unmigratable)
        total.blocked.update(status.cursor.get("blocked", {}))
        total.droppable.update(status.cursor.get("droppable", {}))
        dbs = await m.databases()
        sizes = [int(await m._client(db).dbsize()) for db in dbs]
        status.total_estimate = sum(sizes)
        done = set(status.cursor.get("done", []))
        for db in dbs:
            if db in done:
                continue
            cursor = int(status.cursor.get(str(db), 0))
            while True:
                cursor, tally = await m.scan_batch(db, cursor, plan)
                total.merge(tally)
                status.cursor[str(db)] = cursor
                status.versions = {k: v for k, v in total.versions.items() if v}
                status.unmigratable = dict(total.unmigratable)
                status.cursor["blocked"] = dict(total.blocked)
                status.cursor["droppable"] = dict(total.droppable)
                await step(tally, status)
                if cursor == 0:
                    break
            done.add(db)
            status.cursor["done"] = sorted(done)
        return total
