"""Request and reply rewriting, table-driven and pure (no I/O): one function per policy transform.

Theory of operation
===================
A transform gets the command, the argument indices of its keys (from the row's key specs) and
their ``KeyInfo`` (``None`` for a plaintext key) and returns a ``Plan``:
``(new_command | None, reply_function | None, argument)``. ``None`` as the new command means
"forward the client's bytes unchanged" (the cheap path); ``None`` as the reply function means
"forward the upstream's bytes unchanged". ``reply_function(cipher, value, argument)`` runs when
the reply arrives, never on an error reply (the connection forwards those as they are). A
refusal raises ``policy.Refusal``, whose error line the connection writes in the reply's slot.

The dispatcher (``plan``) only calls a transform when at least one key is encrypted -- a
command on plaintext keys passes byte for byte -- except for rows whose action is ``veil``,
which always run (guards and filters). Replies are handled in both shapes Redis sends: RESP2
(flat arrays) and RESP3 (maps, sets, ``[member, score]`` pairs), because the upstream speaks
the client's protocol.

Family modules: ``_collections`` (lists, sets, sorted sets, geo, HyperLogLog), ``_streams``,
``_emulated`` (read-only commands answered from the plaintext: STRLEN, GETRANGE, LCS, bits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias

from protocols.resp import Map, Set, Value
from proxy.config import RedisUrl
from proxy.crypto.context import Role
from proxy.crypto.envelope import MAGIC
from proxy.keys.stores import RESERVED_PREFIX
from proxy.redis.cipher import Cipher, KeyInfo
from proxy.redis.policy import Refusal, across, not_supported, printable

ReplyFn: TypeAlias = Callable[[Cipher, Value, Any], Value]
Plan: TypeAlias = tuple[list[bytes] | None, ReplyFn | None, Any]
Infos: TypeAlias = list[KeyInfo | None]
Handler: TypeAlias = Callable[[Cipher, list[bytes], list[int], Infos], Plan]

PASS: Final[Plan] = (None, None, None)
NOT_INTEGER: Final = "ERR value is not an integer or out of range"


def integer(raw: bytes, message: str = NOT_INTEGER) -> int:
    """A Redis integer argument (``string2ll``), or the refusal Redis itself would answer."""
    try:
        if raw.strip() == raw and raw:
            return int(raw)
    except ValueError:
        pass
    raise Refusal(message)


def same_policy(cmd: list[bytes], positions: list[int], infos: Infos) -> KeyInfo | None:
    """The common ``KeyInfo`` of keys that values move between (RENAME, *STORE, LMOVE ...).

    Raises:
        Refusal: an encrypted and a plaintext key, two namespaces, or two deterministic
            settings (a value sealed under one would not be found under the other).
    """
    first = infos[0]
    for pos, info in zip(positions[1:], infos[1:], strict=True):
        if info is first:
            continue
        if (
            info is None
            or first is None
            or info.ns is not first.ns
            or info.det_list != first.det_list
            or info.det_fields != first.det_fields
        ):
            raise across(cmd, cmd[positions[0]], cmd[pos])
    return first


def first_encrypted(cmd: list[bytes], positions: list[int], infos: Infos) -> bytes:
    for pos, info in zip(positions, infos, strict=True):
        if info is not None:
            return cmd[pos]
    return cmd[positions[0]]


def has_option(cmd: Sequence[bytes], start: int, *names: bytes) -> bool:
    return any(arg.upper() in names for arg in cmd[start:])


# --- reply helpers ---------------------------------------------------------------------------


def open_bulk(c: Cipher, info: KeyInfo, role: Role, value: Value, key: bytes) -> Value:
    """A bulk reply opened; nulls, integers and other non-bulk values pass unchanged."""
    if type(value) is bytes:
        return c.open(info, role, value, key)
    return value


def open_items(c: Cipher, info: KeyInfo, role: Role, value: Value, key: bytes) -> Value:
    """Every bulk of an array (or RESP3 set) opened, the container kept."""
    if type(value) is list:
        return [open_bulk(c, info, role, v, key) for v in value]
    if type(value) is Set:
        return Set([open_bulk(c, info, role, v, key) for v in value.items])
    return open_bulk(c, info, role, value, key)


def r_string(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes]) -> Value:
    return open_bulk(c, arg[0], Role.STRING, value, arg[1])


def r_items(c: Cipher, value: Value, arg: tuple[KeyInfo, Role, bytes]) -> Value:
    return open_items(c, arg[0], arg[1], value, arg[2])


# --- strings ---------------------------------------------------------------------------------

_CONDITIONS: Final = (b"IFEQ", b"IFNE", b"IFDEQ", b"IFDNE")


def get(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return None, r_string, (infos[0], cmd[1])


def set_(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = infos[0]
    assert info is not None
    if has_option(cmd, 3, *_CONDITIONS):
        raise not_supported(cmd, cmd[1], "conditions compare stored values")
    new = cmd.copy()
    new[2] = c.seal_string(info, cmd[2])
    if has_option(cmd, 3, b"GET"):
        return new, r_string, (info, cmd[1])
    return new, None, None


def value_at(index: int, reply: bool) -> Handler:
    """SETNX/GETSET (value at 2), SETEX/PSETEX (value at 3); GETSET's reply is opened."""

    def handler(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
        info = infos[0]
        assert info is not None
        new = cmd.copy()
        new[index] = c.seal_string(info, cmd[index])
        return new, (r_string if reply else None), (info, cmd[1])

    return handler


def mset(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    new = cmd.copy()
    for p, info in zip(pos, infos, strict=True):
        if info is not None:
            new[p + 1] = c.seal_string(info, cmd[p + 1])
    return new, None, None


def r_mget(c: Cipher, value: Value, arg: tuple[list[bytes], Infos]) -> Value:
    if type(value) is not list:
        return value
    keys, infos = arg
    return [
        v if info is None else open_bulk(c, info, Role.STRING, v, key)
        for v, key, info in zip(value, keys, infos, strict=True)
    ]


def mget(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return None, r_mget, (cmd[1:], infos)


# --- hashes ----------------------------------------------------------------------------------


def field_name(c: Cipher, info: KeyInfo, name: bytes) -> bytes:
    """The stored form of a hash field name: sealed under ``redis.deterministic_fields``."""
    return c.seal_det(info.ns, Role.HASH_FIELD, name) if info.det_fields else name


def open_field(c: Cipher, info: KeyInfo, stored: Value, key: bytes) -> Value:
    if info.det_fields and type(stored) is bytes:
        return c.open(info, Role.HASH_FIELD, stored, key)
    return stored


def open_value(c: Cipher, info: KeyInfo, stored: Value, key: bytes, name: Value) -> Value:
    if type(stored) is bytes and type(name) is bytes:
        return c.open(info, Role.HASH_VALUE, stored, key, name)
    return stored


def seal_pairs(c: Cipher, info: KeyInfo, args: list[bytes]) -> list[bytes]:
    """``field value ...`` -> stored fields and values (values bound to the plaintext field)."""
    out: list[bytes] = []
    for i in range(0, len(args) - 1, 2):
        name = args[i]
        out += (field_name(c, info, name), c.seal(info, Role.HASH_VALUE, args[i + 1], name))
    return out


def hset(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = infos[0]
    assert info is not None
    if len(cmd) % 2:
        return PASS  # Redis answers "wrong number of arguments" itself
    return cmd[:2] + seal_pairs(c, info, cmd[2:]), None, None


def r_hget(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes, bytes]) -> Value:
    return open_value(c, arg[0], value, arg[1], arg[2])


def hget(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = infos[0]
    assert info is not None
    new = [cmd[0], cmd[1], field_name(c, info, cmd[2])] if info.det_fields else None
    return new, r_hget, (info, cmd[1], cmd[2])


def r_hmget(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes, list[bytes]]) -> Value:
    if type(value) is not list:
        return value
    info, key, names = arg
    return [open_value(c, info, v, key, n) for v, n in zip(value, names, strict=True)]


def hmget(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = infos[0]
    assert info is not None
    new = cmd[:2] + [field_name(c, info, f) for f in cmd[2:]] if info.det_fields else None
    return new, r_hmget, (info, cmd[1], cmd[2:])


def open_pairs(c: Cipher, info: KeyInfo, items: list[Value], key: bytes) -> list[Value]:
    """``[field, value, ...]`` as stored -> plaintext (fields first: values are bound to them)."""
    out: list[Value] = []
    for i in range(0, len(items) - 1, 2):
        name = open_field(c, info, items[i], key)
        out += (name, open_value(c, info, items[i + 1], key, name))
    return out


def r_hgetall(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes]) -> Value:
    if type(value) is Map:
        return Map(open_pairs(c, arg[0], value.items, arg[1]))
    if type(value) is list:
        return open_pairs(c, arg[0], value, arg[1])
    return value


def hgetall(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return None, r_hgetall, (infos[0], cmd[1])


def r_hvals(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes]) -> Value:
    items = value.items if type(value) is Map else value
    if type(items) is not list:
        return value
    return open_pairs(c, arg[0], items, arg[1])[1::2]


def hvals(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return [b"HGETALL", cmd[1]], r_hvals, (infos[0], cmd[1])


def r_fields(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes]) -> Value:
    if type(value) is list:
        return [open_field(c, arg[0], v, arg[1]) for v in value]
    return open_field(c, arg[0], value, arg[1])


def hkeys(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = infos[0]
    assert info is not None
    return (None, r_fields, (info, cmd[1])) if info.det_fields else PASS


def hfields(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """HEXISTS/HDEL: field names sealed under ``redis.deterministic_fields``."""
    info = infos[0]
    assert info is not None
    if not info.det_fields:
        return PASS
    return cmd[:2] + [field_name(c, info, f) for f in cmd[2:]], None, None


def fields_block(cmd: list[bytes], start: int = 2) -> tuple[int, int]:
    """Where ``FIELDS numfields f1 ...`` puts its fields: (first index, count)."""
    for i in range(start, len(cmd) - 1):
        if cmd[i].upper() == b"FIELDS":
            count = integer(cmd[i + 1], "ERR numfields should be greater than 0")
            if count <= 0 or i + 2 + count > len(cmd):
                raise Refusal("ERR wrong number of arguments")
            return i + 2, count
    raise Refusal("ERR syntax error")


def hfieldsn(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """HEXPIRE & co.: ``FIELDS n f1 ...`` sealed under ``redis.deterministic_fields``."""
    info = infos[0]
    assert info is not None
    if not info.det_fields:
        return PASS
    first, count = fields_block(cmd)
    new = cmd.copy()
    new[first : first + count] = [field_name(c, info, f) for f in cmd[first : first + count]]
    return new, None, None


def hgetdel(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """HGETDEL/HGETEX: values come back in field order, each bound to its field."""
    info = infos[0]
    assert info is not None
    first, count = fields_block(cmd)
    names = cmd[first : first + count]
    new = None
    if info.det_fields:
        new = cmd.copy()
        new[first : first + count] = [field_name(c, info, f) for f in names]
    return new, r_hmget, (info, cmd[1], names)


def hsetex(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = infos[0]
    assert info is not None
    first, count = fields_block(cmd)
    stop = first + 2 * count
    if stop > len(cmd):
        raise Refusal("ERR wrong number of arguments")
    return cmd[:first] + seal_pairs(c, info, cmd[first:stop]) + cmd[stop:], None, None


def hsetnx(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = infos[0]
    assert info is not None
    return cmd[:2] + seal_pairs(c, info, cmd[2:4]), None, None


def r_hrandfield(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes, bool]) -> Value:
    info, key, with_values = arg
    if type(value) is not list:
        return open_field(c, info, value, key)
    if not with_values:
        return [open_field(c, info, v, key) for v in value]
    if value and type(value[0]) is list:  # RESP3: [field, value] pairs
        return [open_pairs(c, info, pair, key) for pair in value if type(pair) is list]
    return open_pairs(c, info, value, key)


def hrandfield(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    with_values = len(cmd) > 3 and cmd[3].upper() == b"WITHVALUES"
    info = infos[0]
    assert info is not None
    if not with_values and not info.det_fields:
        return PASS
    return None, r_hrandfield, (info, cmd[1], with_values)


def scan_match(cmd: list[bytes], start: int) -> bytes | None:
    for i in range(start, len(cmd) - 1):
        if cmd[i].upper() == b"MATCH":
            return cmd[i + 1]
    return None


def r_hscan(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes, bool]) -> Value:
    if type(value) is not list or len(value) != 2 or type(value[1]) is not list:
        return value
    info, key, no_values = arg
    items = value[1]
    if no_values:
        return [value[0], [open_field(c, info, v, key) for v in items]]
    return [value[0], open_pairs(c, info, items, key)]


def hscan(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = infos[0]
    assert info is not None
    match = scan_match(cmd, 3)
    if info.det_fields and match is not None and match != b"*":
        raise not_supported(cmd, cmd[1], "MATCH on encrypted field names")
    return None, r_hscan, (info, cmd[1], has_option(cmd, 3, b"NOVALUES"))


# --- keyspace, guards, scripts, pub/sub ------------------------------------------------------


def move(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """RENAME/RENAMENX/COPY: values keep their context, so both keys need the same policy."""
    same_policy(cmd, pos, infos)
    return PASS


_SORT_OK: Final = (b"#", b"NOSORT")


def sort(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """SORT/SORT_RO on plaintext keys only; BY/GET patterns would read other keys' values."""
    if infos[0] is not None:
        raise not_supported(cmd, cmd[1])
    store: bytes | None = None
    i = 2
    while i < len(cmd):
        word = cmd[i].upper()
        if word in (b"BY", b"GET") and i + 1 < len(cmd):
            if cmd[i + 1].upper() not in _SORT_OK:
                raise Refusal(
                    f"ERR veil: SORT {word.decode()} patterns read other keys' values and are "
                    "refused"
                )
            i += 2
        elif word == b"LIMIT":
            i += 3
        elif word == b"STORE" and i + 1 < len(cmd) and cmd[0].upper() == b"SORT":
            store = cmd[i + 1]
            i += 2
        else:
            i += 1
    if store is not None and c.key(store) is not None:
        raise across(cmd, cmd[1], store)
    return PASS


def _visible(key: Value) -> bool:
    return not (type(key) is bytes and key.startswith(RESERVED_PREFIX))


def r_keys(c: Cipher, value: Value, arg: None) -> Value:
    if type(value) is list:
        return [k for k in value if _visible(k)]
    return value


def r_scan(c: Cipher, value: Value, arg: None) -> Value:
    if type(value) is list and len(value) == 2 and type(value[1]) is list:
        return [value[0], [k for k in value[1] if _visible(k)]]
    return value


def scan(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """KEYS and SCAN never show veil's reserved keys."""
    return None, (r_keys if cmd[0].upper() == b"KEYS" else r_scan), None


def r_randomkey(c: Cipher, value: Value, arg: None) -> Value:
    return value if _visible(value) else None


def randomkey(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return None, r_randomkey, None


def swapdb(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """Refused when one of the databases holds the keyring (a ``redis://`` store upstream)."""
    store = c.values.keys.store
    upstream = c.values.redis.upstream
    if isinstance(store, RedisUrl) and (store.host, store.port) == (upstream.host, upstream.port):
        dbs = {integer(cmd[1], "ERR invalid first DB index"),
               integer(cmd[2], "ERR invalid second DB index")}  # fmt: skip
        if store.db in dbs:
            raise Refusal(f"ERR veil: SWAPDB would move the keyring's database {store.db}")
    return PASS


def flush(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    if not c.values.redis.allow_flush:
        raise Refusal(
            f"ERR veil: {printable(cmd[0]).upper()} is refused (set redis.allow_flush = true)"
        )
    return PASS


def _script_allowed(c: Cipher, cmd: list[bytes], sha: str, infos: Infos) -> Plan:
    if not c.values.redis.is_allowed_script(sha):
        raise Refusal(f"ERR veil: script {sha} is not in redis.allowed_scripts")
    for key, info in zip(cmd[3:], infos, strict=False):
        if info is not None:
            raise not_supported(cmd, key, "scripts run only on plaintext keys")
    return PASS


def eval_(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return _script_allowed(c, cmd, hashlib.sha1(cmd[1], usedforsecurity=False).hexdigest(), infos)


def evalsha(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return _script_allowed(c, cmd, cmd[1].decode("latin-1").lower(), infos)


def publish(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """PUBLISH/SPUBLISH: messages on ``redis.encrypt_channels`` are sealed."""
    state = c.channel(cmd[1])
    if state is None:
        return PASS
    info = KeyInfo(state, False, False)
    return [cmd[0], cmd[1], c.seal(info, Role.PUBSUB_MESSAGE, cmd[2])], None, None


_MASK: Final = b"(veil envelope)"


def r_slowlog(c: Cipher, value: Value, arg: None) -> Value:
    if type(value) is not list:
        return value
    out: list[Value] = []
    for entry in value:
        if type(entry) is list and len(entry) > 3 and type(entry[3]) is list:
            args = [_MASK if type(a) is bytes and a.startswith(MAGIC) else a for a in entry[3]]
            entry = [*entry[:3], args, *entry[4:]]
        out.append(entry)
    return out


def slowlog(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return None, r_slowlog, None
