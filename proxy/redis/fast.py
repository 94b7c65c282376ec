"""The hot path: GET, SET and single-key commands on whole chunks, parsed by ``hiredis.Reader``.

Why
---
At pipeline depth 16 every microsecond per command shows in ops/s, and at depth 1 every
microsecond per *read* does (PERF-NOTES). The general path (``protocols.resp`` decoders, the
``Dispatcher``, ``transform``) is exact for every command and every byte split, but costs
several microseconds per chunk and per command. Most traffic is simple: a chunk of whole
commands of a few shapes. For those, this module does what the general path would do, with
the same results (``tests/integration/test_redis_fast.py`` compares them), in a fraction of
the time.

Planners
--------
``build`` makes one *planner* per command name (as clients spell it: upper or lower case). A
planner returns ``None`` when the command is not one it handles -- a key not classified yet
(it must be checked, and a reserved key refused), options, a wrong arity -- and otherwise a
plan: an ``int`` (the row index: forward unchanged), a ``(key info, key, row index)`` tuple (a
GET whose reply must be opened) or ``bytes`` (a SET rewritten with its value sealed). Planners
never refuse and never touch connection state: refusals are the general path's job.

Whole chunks (``requests``/``replies``)
---------------------------------------
When the connection's decoder holds nothing, a chunk starting with ``*`` is parsed by a plain
``hiredis.Reader``. It is taken here only if it holds whole commands only, each a non-empty
array of bulk strings that a planner accepts; otherwise the chunk goes, untouched, to the
general path (the reader is reset). Forwarding such a chunk's bytes unchanged is safe: Redis
executes those same bytes and accepts only canonical multibulk framing (``*``/``$`` lengths
without sign or leading zero, two trailer bytes skipped unchecked -- exactly what hiredis
does), so any command Redis runs is one hiredis parsed identically; what hiredis reads more
liberally (RESP3 types inside an array) Redis refuses, closing the connection without running
it. A chunk with a rewritten SET is re-encoded whole (``hiredis.pack_command`` for the others).

Replies are taken here when every reply in the chunk is complete and answers a plan: all
unchanged (the chunk is forwarded as received, unless it holds an error, which the general
path counts and screens for cluster redirections) or all GETs of encrypted keys (each opened
and re-encoded; a failure sends the chunk to the general path, which words the error).

"Complete" needs care with hiredis: it consumes a value's type byte (and an array's header)
before the rest arrives while ``has_data()`` reports nothing left (``_whole`` probes), and
``iter(reader.gets, False)`` would stop at an integer reply ``0`` (``_all``).

Compiled
--------
``proxy/redis/_fastc.pyx`` does the same on whole chunks without the interpreter's
per-command cost, parsing the bytes in place (and taking mixed chunks of unchanged and opened
replies, which this module leaves to the general path). ``chunk_functions`` picks it when the
package was built with it; this module is then the reference it is tested against and the
fallback for an install without a C compiler.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any, Final

import hiredis

from proxy.crypto.context import Role
from proxy.crypto.envelope import MAGIC
from proxy.redis.policy import Action, Table

if TYPE_CHECKING:
    from proxy.redis.cipher import Cipher
    from proxy.redis.connection import ClientConnection

Plan = int | tuple[Any, bytes, int] | bytes
Planner = Callable[[list[bytes]], Plan | None]
MISSING: Final = object()
_SET_FORMAT: Final = b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
MAX_CHUNK: Final = 256 * 1024
_ReplyError: Final = hiredis.ReplyError


def _single_key(table: Table) -> list[str]:
    """Rows whose only key is argument 1 and that pass unchanged on plaintext keys."""
    names = []
    for row in table:
        if row.subcommands or "|" in row.name or row.action in (Action.DENY, Action.VEIL):
            continue
        if len(row.specs) == 1 and row.specs[0].short() == "i1":
            if row.transform not in ("append", "setrange"):
                names.append(row.name)
    return names


def build(table: Table, cipher: Cipher) -> dict[bytes, Planner]:
    """Planners by command name as clients spell it (upper and lower case)."""
    keys = cipher._keys
    planners: dict[bytes, Planner] = {}
    for name in _single_key(table):
        row = table.rows[name]
        planners[name.encode()] = planners[name.upper().encode()] = _plain(keys, row)
    planners[b"GET"] = planners[b"get"] = _get(keys, table.rows["get"].index)
    planners[b"SET"] = planners[b"set"] = _set(keys, table.rows["set"].index, cipher)
    return planners


ChunkFunction = Callable[["ClientConnection", bytes], bool]


def chunk_functions(
    table: Table, cipher: Cipher, native: bool = True
) -> tuple[ChunkFunction, ChunkFunction]:
    """The whole-chunk functions ``(requests, replies)``: the compiled ones
    (``proxy.redis._fastc``) when the package was built with them and ``native``, else this
    module's. Both take the same chunks and give the same results."""
    if native:
        try:
            from proxy.redis import _fastc
        except ImportError:
            pass
        else:
            specs = {}
            for name in _single_key(table):
                if name not in ("get", "set"):
                    row = table.rows[name]
                    specs[name.encode()] = specs[name.upper().encode()] = (row.index, row.arity)
            chunks = _fastc.Chunks(
                cipher._keys, specs, table.rows["get"].index, table.rows["set"].index,
                cipher, Role.STRING,
            )  # fmt: skip
            return chunks.requests, chunks.replies
    return requests, replies


def _plain(keys: dict[bytes, Any], row: Any) -> Planner:
    idx: int = row.index
    arity: int = row.arity

    def plan(cmd: list[bytes]) -> Plan | None:
        argc = len(cmd)
        if argc < 2 or (argc != arity if arity >= 0 else argc < -arity):
            return None
        if keys.get(cmd[1], MISSING) is not None:
            return None
        return idx

    return plan


def _get(keys: dict[bytes, Any], idx: int) -> Planner:
    def plan(cmd: list[bytes]) -> Plan | None:
        if len(cmd) != 2:
            return None
        key = cmd[1]
        info = keys.get(key, MISSING)
        if info is MISSING:
            return None
        return idx if info is None else (info, key, idx)

    return plan


def _set(keys: dict[bytes, Any], idx: int, cipher: Cipher) -> Planner:
    string = Role.STRING

    def plan(cmd: list[bytes]) -> Plan | None:
        if len(cmd) != 3:
            return None
        key = cmd[1]
        info = keys.get(key, MISSING)
        if info is None:
            return idx
        if info is MISSING:
            return None
        state = info.ns
        sealer = state.sealer
        if sealer is None:
            return None  # stale keyring: the general path answers the error
        sealed = sealer.seal(cmd[2], state.contexts[string])
        return _SET_FORMAT % (len(key), key, len(sealed), sealed)

    return plan


# --- whole chunks ------------------------------------------------------------------------------


_PROBE: Final = b"+\r\n"


def _all(reader: Any) -> list[Any]:
    """Every complete value in ``reader``. Not ``iter(reader.gets, False)``: that sentinel
    compares with ``==``, and an integer reply ``0`` equals ``False``."""
    values = []
    while (value := reader.gets()) is not False:
        values.append(value)
    return values


def _whole(reader: Any) -> bool:
    """Whether ``reader`` (every complete value taken) holds no partial value.

    ``has_data()`` is not enough: hiredis consumes a value's type byte, and an array's header,
    before the rest of the value has arrived. A probe reply comes back alone, and leaves the
    reader empty, only if nothing was in progress; otherwise it completes or corrupts the
    partial value (and the caller resets the reader).
    """
    if reader.has_data():
        return False
    reader.feed(_PROBE)
    try:
        return reader.gets() == b"" and not reader.has_data()
    except Exception:
        return False


def requests(conn: ClientConnection, data: bytes) -> bool:
    """Plans and forwards a chunk of whole, simple commands; False: the general path's chunk."""
    reader = conn.raw_requests
    reader.feed(data)
    planners = conn.fast
    assert planners is not None
    try:
        commands = _all(reader)
    except Exception:  # hiredis refused it: the general path words Redis's error
        commands = []
    if not commands or not _whole(reader):
        conn.raw_requests = hiredis.Reader()
        return False
    plans: list[Plan] = []
    try:
        for cmd in commands:
            planner = planners.get(cmd[0]) if cmd.__class__ is list and cmd else None
            plan = planner(cmd) if planner is not None else None
            if plan is None:
                return False
            plans.append(plan)
    except (TypeError, AttributeError):  # not an array of bulk strings
        return False
    if len(plans) == 1:  # pipeline depth 1: most traffic
        conn.apply_one(plans[0], data)
    else:
        conn.apply(plans, commands, data)
    return True


def replies(conn: ClientConnection, data: bytes) -> bool:
    """Answers a chunk of whole replies to plans; False: the general path's chunk."""
    reader = conn.raw_replies
    reader.feed(data)
    pending = conn.pending
    try:
        values = _all(reader)
    except Exception:
        values = []
    count = len(values)
    if not count or count > len(pending) or not _whole(reader):
        conn.raw_replies = hiredis.Reader()
        return False
    if count == 1:  # one whole reply (depth 1)
        kind = pending[0].__class__
        if kind is int and values[0].__class__ is not _ReplyError:
            pending.popleft()
            conn.write_replies(data, 1)
            return True
        return kind is tuple and _open_one(conn, values[0])
    first = pending[0].__class__
    if first is int:
        for i in range(count):
            if pending[i].__class__ is not int or values[i].__class__ is _ReplyError:
                return False
        if count == len(pending):
            pending.clear()
        else:
            for _ in range(count):
                pending.popleft()
        conn.write_replies(data, count)
        return True
    if first is not tuple:
        return False
    return _open_strings(conn, values, count)


def _open_one(conn: ClientConnection, value: Any) -> bool:
    """``_open_strings`` for the one reply of a chunk (pipeline depth 1: most traffic)."""
    pending = conn.pending
    item: Any = pending[0]  # a GET plan: (key info, key, row index)
    if value.__class__ is bytes:
        cipher = conn.cipher
        try:
            if value[:3] == MAGIC:
                state = item[0].ns
                plain, version = cipher.opener().open(value, state.contexts[Role.STRING])
                cipher.decrypts[version] += 1
                if version != state.active_master and cipher.on_stale is not None:
                    cipher.on_stale(cipher.db, item[1], Role.STRING)
            else:
                plain = cipher.open_string(item[0], value, item[1])
        except Exception:  # a failure to open: the general path answers it in the reply's slot
            return False
        reply = b"$%d\r\n%s\r\n" % (len(plain), plain)
    elif value is None:
        reply = b"$-1\r\n"
    else:
        return False
    pending.popleft()
    conn.write_replies(reply, 1)
    return True


def _open_strings(conn: ClientConnection, values: list[Any], count: int) -> bool:
    """GET replies of encrypted keys: ``Cipher.open_string`` inlined for envelopes on the
    active version (the common case); anything else goes through it."""
    pending = conn.pending
    cipher = conn.cipher
    opener = cipher.opener()
    on_stale = cipher.on_stale
    string = Role.STRING
    out = []
    versions: list[int] = []
    try:
        for item, value in zip(islice(pending, count), values, strict=True):
            if item.__class__ is not tuple:
                return False
            if value.__class__ is bytes:
                state = item[0].ns
                if value[:3] == MAGIC:
                    plain, version = opener.open(value, state.contexts[string])
                    versions.append(version)
                    if version != state.active_master and on_stale is not None:
                        on_stale(cipher.db, item[1], string)  # lazy re-encryption
                else:
                    plain = cipher.open_string(item[0], value, item[1])
                out.append(b"$%d\r\n%s\r\n" % (len(plain), plain))
            elif value is None:
                out.append(b"$-1\r\n")
            else:
                return False
    except Exception:  # a failure to open: the general path answers it in the reply's slot
        return False
    if versions:
        cipher.count_decrypts(versions)
    if count == len(pending):
        pending.clear()
    else:
        for _ in range(count):
            pending.popleft()
    conn.write_replies(b"".join(out), count)
    return True
