"""``veil inspect redis KEY``: the envelopes a Redis key holds (SPEC 2, 12).

The key is read from the configured upstream (``redis.upstream``, database ``--db`` or the
URL's) with the sidecar's own credentials, never through a running veil. One entry per stored
envelope, at most ``--limit``:

==========  ===============================  ==============================================
type        entries                          where
==========  ===============================  ==============================================
string      one ``string``                   --
hash        ``hash_value`` per field;        ``field`` (the plaintext field name; ``null``
            ``hash_field`` per field under   for an encrypted one unless ``--decrypt``),
            ``redis.deterministic_fields``   ``member_digest`` (of the stored field name)
list        ``list_element`` per element     ``index``
set / zset  ``set_member`` / ``zset_member`` ``member_digest`` (sha256 of the stored
                                             member, 16 hex digits), zsets add ``score``
stream      ``stream_value`` per field       ``id`` and ``field``
==========  ===============================  ==============================================

Each entry gives the envelope's ``format`` (``small-v1``, ``deterministic-v1``, ``plaintext``
for a key under a plaintext pattern or legacy plaintext, ``hyperloglog`` for Redis's own
sketch), the master ``key_version`` (randomized envelopes) or ``index_version``
(deterministic ones), the ``class_id`` of its header and the stored and plaintext sizes; the
sizes follow from the format alone (docs/FORMAT.md), so nothing is decrypted. The report
adds the key's ``db``, ``namespace``, ``class`` and whether it is under an encrypt pattern.

``--decrypt`` loads the keyring and opens every entry through ``RedisValues`` (the one place
that decides Redis contexts): entries gain ``plaintext`` (UTF-8) or ``plaintext_base64``; an
entry that fails to open gets ``error`` and the command exits 3 after printing the report.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.config import Settings
from proxy.crypto.context import Role
from proxy.crypto.envelope import (
    DET_OVERHEAD,
    FORMAT_DETERMINISTIC,
    FORMAT_SMALL,
    FORMATS,
    HEADER,
    HEADER_LEN,
    MAGIC,
    SMALL_OVERHEAD,
)
from proxy.errors import (
    AuthenticationError,
    RefusedError,
    UnavailableError,
    UsageError,
    VeilError,
)
from proxy.keys.stores import RESERVED_PREFIX

HLL_MAGIC = b"HYLL"
ROLE_NAMES: dict[Role, str] = {
    Role.STRING: "string",
    Role.HASH_VALUE: "hash_value",
    Role.HASH_FIELD: "hash_field",
    Role.LIST_ELEMENT: "list_element",
    Role.SET_MEMBER: "set_member",
    Role.ZSET_MEMBER: "zset_member",
    Role.STREAM_VALUE: "stream_value",
}


def register_redis(stores: Any) -> None:
    p: argparse.ArgumentParser = stores.add_parser(
        "redis",
        help="a Redis key through the configured upstream",
        description="Show the envelopes a Redis key holds: format, key version, class, stored "
        "and plaintext sizes (one entry per value, field, element or member).",
    )
    p.add_argument("key", metavar="KEY", help="the key name")
    p.add_argument("--db", type=int, help="the database (default: redis.upstream's)")
    p.add_argument("--json", action="store_true", help="machine-readable output (SPEC 12)")
    p.add_argument("--limit", type=int, default=1000, help="at most N entries (default 1000)")
    p.add_argument("--decrypt", action="store_true", help="also show the plaintexts")
    p.set_defaults(handler=inspect_redis)


@dataclass
class Item:
    """One stored envelope of the key and what its context needs."""

    role: Role
    stored: bytes
    where: dict[str, Any] = field(default_factory=dict)
    field_name: bytes | None = None  # the plaintext field a hash or stream value is bound to
    field_stored: bytes | None = None  # a deterministic field name to open first


async def inspect_redis(args: argparse.Namespace, settings: Settings) -> int:
    key = os.fsencode(args.key)
    if key.startswith(RESERVED_PREFIX):
        raise RefusedError(f"key {args.key!r} is reserved for veil (see veil keys list)")
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    url = settings.redis.upstream
    db = url.db if args.db is None else args.db
    target = dataclasses.replace(url, db=db)  # redis-py lets the URL's database win over db=
    kind, items = await _read(target.reveal(), str(target), db, key, settings, args.limit)
    report = report_json(key, db, kind, items, settings)
    failures = 0
    if args.decrypt:
        failures = await _decrypt(key, items, report["entries"], settings)
    print(json.dumps(report, indent=2) if args.json else _text(report))
    if failures:
        raise RefusedError(f"{failures} entries failed to decrypt (tampered or transplanted?)")
    return 0


async def _read(
    url: str, shown: str, db: int, key: bytes, settings: Settings, limit: int
) -> tuple[str, list[Item]]:
    import redis.asyncio as aioredis
    from redis import exceptions

    client = aioredis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    try:
        found: bytes | str = await client.type(key)
        kind = found.decode() if isinstance(found, bytes) else found
        if kind == "none":
            raise RefusedError(f"no such key in database {db}")
        reader = READERS.get(kind)
        if reader is None:
            raise RefusedError(f"a {kind} holds nothing veil encrypts")
        return kind, await reader(client, key, settings, limit)
    except exceptions.AuthenticationError as e:
        raise AuthenticationError(f"redis upstream {shown}: {e}") from None
    except exceptions.ResponseError as e:
        raise RefusedError(f"redis upstream {shown}: {e}") from None
    except (exceptions.ConnectionError, exceptions.TimeoutError, OSError) as e:
        raise UnavailableError(f"redis upstream {shown} unreachable ({type(e).__name__})") from None
    finally:
        await client.aclose()


# --- readers, one per Redis type ---------------------------------------------------------------


def digest(stored: bytes) -> str:
    return hashlib.sha256(stored).hexdigest()[:16]


def shown(raw: bytes) -> str:
    """A name for the report: UTF-8, undecodable bytes as ``\\xNN``."""
    return raw.decode("utf-8", "backslashreplace")


async def _string(client: Any, key: bytes, settings: Settings, limit: int) -> list[Item]:
    value = await client.get(key)
    return [] if value is None else [Item(Role.STRING, value)]


async def _hash(client: Any, key: bytes, settings: Settings, limit: int) -> list[Item]:
    encrypted = settings.redis.is_encrypted_key(key)
    det = encrypted and settings.redis.is_deterministic_fields(key)
    items: list[Item] = []
    async for name, value in client.hscan_iter(key, count=min(limit, 1000)):
        if det:
            where = {"member_digest": digest(name)}
            items.append(Item(Role.HASH_FIELD, name, dict(where)))
            items.append(Item(Role.HASH_VALUE, value, {"field": None, **where}, None, name))
        else:
            items.append(Item(Role.HASH_VALUE, value, {"field": shown(name)}, name))
        if len(items) >= limit:
            break
    return items[:limit]


async def _list(client: Any, key: bytes, settings: Settings, limit: int) -> list[Item]:
    values = await client.lrange(key, 0, limit - 1)
    return [Item(Role.LIST_ELEMENT, v, {"index": i}) for i, v in enumerate(values)]


async def _set(client: Any, key: bytes, settings: Settings, limit: int) -> list[Item]:
    items: list[Item] = []
    async for member in client.sscan_iter(key, count=min(limit, 1000)):
        items.append(Item(Role.SET_MEMBER, member, {"member_digest": digest(member)}))
        if len(items) >= limit:
            break
    return items


async def _zset(client: Any, key: bytes, settings: Settings, limit: int) -> list[Item]:
    items: list[Item] = []
    async for member, score in client.zscan_iter(key, count=min(limit, 1000)):
        where = {"member_digest": digest(member), "score": score}
        items.append(Item(Role.ZSET_MEMBER, member, where))
        if len(items) >= limit:
            break
    return items


async def _stream(client: Any, key: bytes, settings: Settings, limit: int) -> list[Item]:
    items: list[Item] = []
    for entry_id, fields in await client.xrange(key, count=limit):
        for name, value in fields.items():
            where = {"id": shown(entry_id), "field": shown(name)}
            items.append(Item(Role.STREAM_VALUE, value, where, name))
    return items[:limit]


Reader = Callable[[Any, bytes, Settings, int], Awaitable[list[Item]]]
READERS: dict[str, Reader] = {
    "string": _string,
    "hash": _hash,
    "list": _list,
    "set": _set,
    "zset": _zset,
    "stream": _stream,
}


# --- the report ------------------------------------------------------------------------------


def describe(stored: bytes, encrypted: bool, role: Role) -> dict[str, Any]:
    """Format, versions, class id and sizes, from the stored bytes alone (no key needed)."""
    out: dict[str, Any] = {
        "format": "plaintext",
        "key_version": None,
        "index_version": None,
        "class_id": None,
        "stored_size": len(stored),
        "plaintext_size": len(stored),
    }
    if not encrypted or stored[:3] != MAGIC:
        if encrypted and role is Role.STRING and stored[:4] == HLL_MAGIC:
            out.update(format="hyperloglog", plaintext_size=None)  # Redis's sketch
        return out
    if len(stored) < HEADER_LEN or stored[3] not in FORMATS:
        out.update(format="unknown", plaintext_size=None)
        return out
    _, fmt, _, class_id, version = HEADER.unpack_from(stored)
    out.update(format=FORMATS[fmt][0], class_id=class_id, plaintext_size=None)
    if fmt == FORMAT_SMALL:
        out.update(key_version=version, plaintext_size=max(0, len(stored) - SMALL_OVERHEAD))
    elif fmt == FORMAT_DETERMINISTIC:
        out.update(index_version=version, plaintext_size=max(0, len(stored) - DET_OVERHEAD))
    return out


def report_json(
    key: bytes, db: int, kind: str, items: list[Item], settings: Settings
) -> dict[str, Any]:
    """SPEC 12's ``inspect`` body for a Redis key (plus ``db``, ``namespace``, ``class``)."""
    redis = settings.redis
    encrypted = redis.is_encrypted_key(key)
    namespace = redis.namespace_for_key(key).name
    entries = []
    for item in items:
        entry: dict[str, Any] = {"role": ROLE_NAMES[item.role], **item.where}
        entry.update(describe(item.stored, encrypted, item.role))
        entries.append(entry)
    return {
        "store": "redis",
        "key": shown(key),
        "type": kind,
        "db": db,
        "namespace": namespace,
        "class": settings.keys.class_for_namespace(namespace).name,
        "encrypted": encrypted,
        "entries": entries,
    }


def _text(report: dict[str, Any]) -> str:
    policy = "encrypted" if report["encrypted"] else "plaintext pattern"
    lines = [
        f"redis {report['key']} ({report['type']}, db {report['db']}, namespace "
        f"{report['namespace']}, class {report['class']}, {policy})"
    ]
    for e in report["entries"]:
        lines.append(f"  {_where(e)}: {_versions(e)}, stored {e['stored_size']} B, plaintext "
                     f"{'?' if e['plaintext_size'] is None else e['plaintext_size']} B"
                     + _shown_plaintext(e))  # fmt: skip
    return "\n".join(lines)


def _where(e: dict[str, Any]) -> str:
    if "id" in e:
        return f"{e['role']} {e['id']} {e['field']!r}"
    if "index" in e:
        return f"{e['role']} [{e['index']}]"
    if e.get("field") is not None:
        return f"{e['role']} {e['field']!r}"
    if "member_digest" in e:
        return f"{e['role']} #{e['member_digest']}"
    return str(e["role"])


def _versions(e: dict[str, Any]) -> str:
    if e["key_version"] is not None:
        return f"{e['format']}, key version v{e['key_version']}, class {e['class_id']}"
    if e["index_version"] is not None:
        return f"{e['format']}, index version v{e['index_version']}, class {e['class_id']}"
    return str(e["format"])


def _shown_plaintext(e: dict[str, Any]) -> str:
    if "error" in e:
        return f" -- {e['error']}"
    if "plaintext" in e:
        return f" = {e['plaintext']!r}"
    if "plaintext_base64" in e:
        return f" = base64:{e['plaintext_base64']}"
    return ""


# --- --decrypt -------------------------------------------------------------------------------


async def _decrypt(
    key: bytes, items: list[Item], entries: list[dict[str, Any]], settings: Settings
) -> int:
    """Adds each entry's plaintext (or error); returns how many failed."""
    from proxy import wiring
    from proxy.redis.values import RedisValues

    store = wiring.build_store(settings.keys)
    provider = wiring.build_provider(settings.keys)
    runtime = wiring.build_runtime(settings, store, provider)
    runtime.local_copy = None
    try:
        await runtime.start()
    finally:
        await provider.close()
        await store.close()
    values = RedisValues(settings.redis, settings.keys, runtime)
    encrypted = settings.redis.is_encrypted_key(key)
    failures = 0
    for item, entry in zip(items, entries, strict=True):
        try:
            plain, name = _open(values, key, item, encrypted and entry["format"] != "plaintext")
        except VeilError as e:
            entry["error"] = e.message
            failures += 1
            continue
        if name is not None:
            entry["field"] = shown(name)
        _set_plaintext(entry, plain)
    return failures


def _open(values: Any, key: bytes, item: Item, sealed: bool) -> tuple[bytes, bytes | None]:
    """``(plaintext, opened field name or None)``; legacy and plaintext-pattern bytes as is."""
    name = None
    if item.field_stored is not None:  # a deterministic field name: the value binds the plain one
        name = values.open(key, Role.HASH_FIELD, item.field_stored)[0]
    if not sealed:
        return item.stored, name
    plain = values.open(key, item.role, item.stored, name or item.field_name)[0]
    return plain, name


def _set_plaintext(entry: dict[str, Any], plain: bytes) -> None:
    if entry["format"] == "hyperloglog":
        return  # Redis's sketch, not a value anyone wrote
    try:
        entry["plaintext"] = plain.decode("utf-8")
    except UnicodeDecodeError:
        entry["plaintext_base64"] = base64.b64encode(plain).decode()
