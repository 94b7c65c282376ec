"""Keyring stores (SPEC 4): where the keyring document and the sidecars' shared state live.

* ``FileStore`` (``file:PATH``) -- the embedded default. Writes are atomic replaces (temp file,
  fsync, rename, fsync of the directory), serialized by an exclusive ``flock`` on a lock file
  and checked against the revision read, so a concurrent writer can neither interleave nor be
  silently overwritten. Several sidecars may *read* a shared file (a mounted Secret); shared
  state (heartbeats, leases, checkpoints) is kept beside it for a single sidecar only.
* ``RedisStore`` (``redis://`` or ``rediss://``) -- for many sidecars: the document is replaced by
  compare-and-set (WATCH/MULTI/EXEC on the revision), then waits for replicas (``WAIT``) where
  there are any; heartbeats, leases, checkpoints and audit anchors live in the same Redis under
  the reserved prefix ``__veil__:``, which the RESP port refuses to clients.

``features`` says what a store supports; ``veil serve`` prints it at start-up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from proxy.errors import ConfigError, StoreUnavailable

RESERVED_PREFIX = b"__veil__:"
KEYRING_KEY = "__veil__:keyring"
HEARTBEATS_KEY = "__veil__:heartbeats"
ANCHORS_KEY = "__veil__:audit-anchors"


class KeyringStore(Protocol):
    url: str
    features: frozenset[str]  # subset of {"shared-writes", "heartbeats", "leases"}

    async def load(self) -> dict[str, Any] | None:
        """The keyring document, or None when the store holds none."""
        ...

    async def save(self, doc: Mapping[str, Any], expected_revision: int) -> bool:
        """Compare-and-set: writes ``doc`` iff the stored revision is ``expected_revision``
        (0 = no document). Returns False when another writer got there first."""
        ...

    async def heartbeat(self, sidecar_id: str, info: Mapping[str, Any]) -> None: ...

    async def heartbeats(self) -> dict[str, dict[str, Any]]: ...

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool: ...

    async def release_lease(self, name: str, holder: str) -> None: ...

    async def get_state(self, name: str) -> dict[str, Any] | None: ...

    async def put_state(self, name: str, value: Mapping[str, Any]) -> None: ...

    async def list_state(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every state entry whose name starts with ``prefix`` (audit anchors, checkpoints)."""
        ...

    async def warnings(self) -> list[str]: ...

    async def close(self) -> None: ...


def revision_of(doc: Mapping[str, Any] | None) -> int:
    return 0 if doc is None else int(doc["revision"])


def open_store(url: str) -> KeyringStore:
    if url.startswith("file:"):
        return FileStore(url[len("file:") :])
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    raise ConfigError(f"keys.store: unsupported store {url!r} (use file:PATH or redis://...)")


# --- file ---------------------------------------------------------------------------------


class FileStore:
    features = frozenset({"leases"})  # one sidecar: it always holds the lease

    def __init__(self, path: str) -> None:
        if not path:
            raise ConfigError("keys.store: file: needs a path")
        self.path = Path(path)
        self.url = f"file:{path}"
        self._state_path = self.path.with_name(self.path.name + ".state.json")

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        lock = path.with_name(path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreUnavailable(f"cannot read {path}: {e.strerror}") from None
        try:
            doc: dict[str, Any] = json.loads(data)
        except ValueError:
            raise StoreUnavailable(f"{path} is not valid JSON (was it edited by hand?)") from None
        return doc

    def _write(self, path: Path, doc: Mapping[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    async def load(self) -> dict[str, Any] | None:
        return self._read(self.path)

    async def save(self, doc: Mapping[str, Any], expected_revision: int) -> bool:
        try:
            with self._locked(self.path):
                if revision_of(self._read(self.path)) != expected_revision:
                    return False
                self._write(self.path, doc)
                return True
        except OSError as e:
            raise StoreUnavailable(f"cannot write {self.path}: {e.strerror}") from None

    def _update_state(self, name: str, value: Any) -> None:
        with self._locked(self._state_path):
            state = self._read(self._state_path) or {}
            state[name] = value
            self._write(self._state_path, state)

    async def heartbeat(self, sidecar_id: str, info: Mapping[str, Any]) -> None:
        return None  # a file store cannot carry heartbeats: promote waits propagation_delay

    async def heartbeats(self) -> dict[str, dict[str, Any]]:
        return {}

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        return None

    async def get_state(self, name: str) -> dict[str, Any] | None:
        state = self._read(self._state_path) or {}
        value = state.get(name)
        return value if isinstance(value, dict) else None

    async def put_state(self, name: str, value: Mapping[str, Any]) -> None:
        self._update_state(name, dict(value))

    async def list_state(self, prefix: str) -> dict[str, dict[str, Any]]:
        state = self._read(self._state_path) or {}
        return {k: v for k, v in state.items() if k.startswith(prefix) and isinstance(v, dict)}

    async def warnings(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None


# --- redis --------------------------------------------------------------------------------

_LEASE_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore:
    features = frozenset({"shared-writes", "heartbeats", "leases"})
    heartbeat_prune_after = 86400.0  # readers drop heartbeats older than a day

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RConnErr
        from redis.exceptions import TimeoutError as RTimeout

        self.url = url
        parts = urlsplit(url)
        self._display = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"
        # a restarted or failed-over Redis leaves dead pooled connections: retry on fresh ones
        self._r = aioredis.Redis.from_url(
            url,
            socket_timeout=5,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[RConnErr, RTimeout],
        )

    def __repr__(self) -> str:
        return f"RedisStore({self._display})"  # never the password in the URL

    async def _do(self, coro: Any) -> Any:
        from redis.exceptions import ConnectionError as RConnErr
        from redis.exceptions import TimeoutError as RTimeout

        try:
            return await coro
        except (RConnErr, RTimeout, OSError) as e:
            raise StoreUnavailable(f"keyring store {self._display} unreachable: {e}") from None

    async def load(self) -> dict[str, Any] | None:
        raw = await self._do(self._r.get(KEYRING_KEY))
        if raw is None:
            return None
        doc: dict[str, Any] = json.loads(raw)
        return doc

    async def save(self, doc: Mapping[str, Any], expected_revision: int) -> bool:
        from redis.exceptions import WatchError

        data = json.dumps(doc, sort_keys=True)

        async def attempt() -> bool:
            async with self._r.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(KEYRING_KEY)
                    raw = await pipe.get(KEYRING_KEY)
                    current = 0 if raw is None else int(json.loads(raw)["revision"])
                    if current != expected_revision:
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(KEYRING_KEY, data)
                    await pipe.execute()
                    return True
                except WatchError:
                    return False

        ok: bool = await self._do(attempt())
        if ok:
            await self._wait_replicas()
        return ok

    async def _wait_replicas(self) -> None:
        info = await self._do(self._r.info("replication"))
        replicas = int(info.get("connected_slaves", 0))
        if replicas:
            await self._do(self._r.execute_command("WAIT", replicas, 5000))  # type: ignore[no-untyped-call]

    async def heartbeat(self, sidecar_id: str, info: Mapping[str, Any]) -> None:
        payload = json.dumps({**info, "at": time.time()})
        await self._do(self._r.hset(HEARTBEATS_KEY, sidecar_id, payload))

    async def heartbeats(self) -> dict[str, dict[str, Any]]:
        raw = await self._do(self._r.hgetall(HEARTBEATS_KEY))
        now = time.time()
        out: dict[str, dict[str, Any]] = {}
        stale = []
        for k, v in raw.items():
            entry = json.loads(v)
            if now - float(entry.get("at", 0)) > self.heartbeat_prune_after:
                stale.append(k)
            out[k.decode()] = entry
        if stale:
            await self._do(self._r.hdel(HEARTBEATS_KEY, *stale))
        return out

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        key = f"__veil__:lease:{name}"
        got = await self._do(self._r.eval(_LEASE_LUA, 1, key, holder, int(ttl * 1000)))
        return bool(got)

    async def release_lease(self, name: str, holder: str) -> None:
        await self._do(self._r.eval(_RELEASE_LUA, 1, f"__veil__:lease:{name}", holder))

    async def get_state(self, name: str) -> dict[str, Any] | None:
        raw = await self._do(self._r.get(f"__veil__:state:{name}"))
        if raw is None:
            return None
        value: dict[str, Any] = json.loads(raw)
        return value

    async def put_state(self, name: str, value: Mapping[str, Any]) -> None:
        await self._do(self._r.set(f"__veil__:state:{name}", json.dumps(value, sort_keys=True)))

    async def list_state(self, prefix: str) -> dict[str, dict[str, Any]]:
        base = "__veil__:state:"
        out: dict[str, dict[str, Any]] = {}
        async for key in self._r.scan_iter(match=f"{base}{prefix}*", count=500):
            raw = await self._do(self._r.get(key))
            if raw is not None:
                out[key.decode()[len(base) :]] = json.loads(raw)
        return out

    async def warnings(self) -> list[str]:
        """What about this Redis could lose the keyring (SPEC 4). Best effort: managed Redis
        often disables CONFIG, which is itself reported."""
        from redis.exceptions import ResponseError

        out: list[str] = []
        try:
            policy = (await self._do(self._r.config_get("maxmemory-policy"))).get(
                "maxmemory-policy", ""
            )
            save = (await self._do(self._r.config_get("save"))).get("save", "")
            aof = (await self._do(self._r.config_get("appendonly"))).get("appendonly", "no")
        except ResponseError:
            return [
                f"keyring store {self._display}: CONFIG is disabled; cannot check that "
                "eviction and persistence settings keep the keyring"
            ]
        if str(policy).startswith("allkeys"):
            out.append(
                f"keyring store {self._display}: maxmemory-policy={policy} may evict the "
                "keyring; use noeviction or a volatile-* policy"
            )
        if not save and aof == "no":
            out.append(
                f"keyring store {self._display}: persistence is off (no RDB save, no AOF);"
                " a restart loses the keyring unless a sidecar re-asserts its sealed copy"
            )
        return out

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._r.aclose()
