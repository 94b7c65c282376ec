"""Deterministic lookups while an index rotation is in progress (SPEC 6).

Theory of operation
===================
Set and sorted-set members, deterministic list elements and deterministic hash field names
are found by their envelope, and an envelope depends on the index version that sealed it.
While an index rotation rebuilds collections (``NsState.rotating``: a retired index version
whose migration is not complete), a member may still be stored under an older version, so a
command that seals a member under the active version alone would miss it. Every handler that
seals such a member checks that one flag and, while it is set, comes here instead:

* **Reads of whole members by value** become one native command over every version of each
  member, folded back into the original reply shape by the reply function (``fold``):
  ``SISMEMBER``/``SMISMEMBER`` -> ``SMISMEMBER``, ``ZSCORE``/``ZMSCORE`` -> ``ZMSCORE``,
  ``GEOPOS``, ``GEOHASH``, and on ``redis.deterministic_fields`` keys ``HGET``/``HMGET``/
  ``HEXISTS``/``HSTRLEN`` -> ``HMGET``. Nothing runs on the server that would not run anyway.
* **Everything else** becomes one ``EVAL`` of ``SCRIPT`` on the client's own upstream
  connection (so it keeps its place in a pipeline or a ``MULTI``): for each key and member it
  looks at every version in one atomic step, then runs the original command with
  ``redis.pcall`` and returns its reply (errors verbatim). *Write* mode first moves old-version
  copies onto the active version (remove the old member, add the new one, keep the score, the
  hash value and its field TTL; every occurrence in a list), so ``SADD`` of an existing member
  answers 0 and ``ZADD`` keeps one member with the new score: ``SADD SREM SMOVE ZADD ZREM
  ZINCRBY GEOADD LREM LINSERT HSET HMSET HSETNX HDEL HSETEX HGETDEL HGETEX HEXPIRE ...``. *Read*
  mode substitutes the version the key holds, changing nothing: ``ZRANK ZREVRANK GEODIST HTTL
  GEOSEARCH FROMMEMBER GEORADIUSBYMEMBER ...``. *Check* mode refuses when an old-version copy
  exists: ``LPOS`` (its RANK/COUNT/MAXLEN arithmetic over a list with mixed versions could not
  be answered from one of them). The script runs in RESP2 mode, so the reply functions turn
  doubles back into ``Double`` (``ZINCRBY``, ``ZADD INCR``, ``ZRANK WITHSCORE``, coordinates):
  the client gets the digits Redis wrote, in its own protocol.
* **Multi-key set algebra** (``SINTER SUNION SDIFF``, their ``STORE``/``CARD`` forms, the
  ``Z`` ones) over more than one source key compares envelopes across keys that may be on
  different versions: refused with ``ROTATING``, and so are commands too long for the script
  (``MAX_WORDS``).

The script needs ``EVAL`` in the client's ACL while a rotation is in progress (its commands
are checked against the user's ACL as usual). With no rotation in progress none of this runs:
the handlers pay one attribute check. Members stored under two versions by an older veil are
merged by the rebuild (``rotation.redis_walk``: the new-version member wins) and by any write
through this module; until then ``SCARD``/``SMEMBERS`` may count such a member twice.
HyperLogLog elements keep the version they were first written with (SPEC 5): ``PFADD`` of an
element first added before the rotation counts it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from protocols.resp import NULL_ARRAY, Double, Value
from proxy.crypto.context import Role
from proxy.redis import _emulated as emul
from proxy.redis import transform as t
from proxy.redis.cipher import Cipher, KeyInfo
from proxy.redis.policy import Refusal
from proxy.redis.transform import Handler, Infos, Plan, ReplyFn

ROTATING: Final = "ERR veil: index rotation in progress"
MAX_WORDS: Final = 4000  # the script unpacks the command: Lua's C stack holds 8000 values

SCRIPT: Final = b"""-- veil: a member under every live index version, in one atomic step (SPEC 6)
local mode, kind = ARGV[1], ARGV[2]
local nkeys, nv, ng = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local env = 5
local pos = env + ng * nv
local cmd = {}
for i = pos + ng + 1, #ARGV do cmd[#cmd + 1] = ARGV[i] end
local function has(key, m)
  if kind == 'set' then return redis.call('SISMEMBER', key, m) == 1 end
  if kind == 'zset' then return redis.call('ZSCORE', key, m) ~= false end
  if kind == 'hash' then return redis.call('HEXISTS', key, m) == 1 end
  return redis.call('LPOS', key, m) ~= false
end
local function move(key, old, new)
  if kind == 'set' then
    if redis.call('SREM', key, old) == 1 then redis.call('SADD', key, new) end
  elseif kind == 'zset' then
    local s = redis.call('ZSCORE', key, old)
    if s then
      redis.call('ZREM', key, old)
      if not redis.call('ZSCORE', key, new) then redis.call('ZADD', key, s, new) end
    end
  elseif kind == 'hash' then
    local v = redis.call('HGET', key, old)
    if v then
      local ok, ttl = pcall(redis.call, 'HPEXPIRETIME', key, 'FIELDS', 1, old)
      redis.call('HDEL', key, old)
      if redis.call('HSETNX', key, new, v) == 1 and ok and ttl[1] > 0 then
        redis.call('HPEXPIREAT', key, ttl[1], 'FIELDS', 1, new)
      end
    end
  else
    for _, i in ipairs(redis.call('LPOS', key, old, 'COUNT', 0)) do
      redis.call('LSET', key, i, new)
    end
  end
end
for k = 1, nkeys do
  local key = KEYS[k]
  if redis.call('TYPE', key)['ok'] == kind then
    for g = 0, ng - 1 do
      local base = env + g * nv
      if mode == 'write' then
        for j = 2, nv do move(key, ARGV[base + j], ARGV[base + 1]) end
      elseif mode == 'read' then
        for j = 1, nv do
          if has(key, ARGV[base + j]) then
            cmd[tonumber(ARGV[pos + g + 1])] = ARGV[base + j]
            break
          end
        end
      else
        for j = 2, nv do
          if has(key, ARGV[base + j]) then
            return redis.error_reply('ERR veil: index rotation in progress')
          end
        end
      end
    end
  end
end
return redis.pcall(unpack(cmd))
"""

WRITE: Final = b"write"
READ: Final = b"read"
CHECK: Final = b"check"
_KIND: Final = {
    Role.SET_MEMBER: b"set",
    Role.ZSET_MEMBER: b"zset",
    Role.HASH_FIELD: b"hash",
    Role.LIST_ELEMENT: b"list",
}


def refuse() -> Refusal:
    return Refusal(ROTATING)


def scripted(
    c: Cipher,
    info: KeyInfo,
    role: Role,
    mode: bytes,
    cmd: list[bytes],
    keys: Sequence[bytes],
    groups: Sequence[int],
    nkeys: int = 1,
) -> list[bytes]:
    """``EVAL SCRIPT`` running ``cmd`` with the plaintexts at ``groups`` looked up under every
    version in the first ``nkeys`` of ``keys`` (every other argument already as stored)."""
    state = info.ns
    if state.index_blind or len(cmd) > MAX_WORDS:
        raise refuse()
    new = cmd.copy()
    envelopes: list[bytes] = []
    for p in groups:
        sealed = c.seal_versions(state, role, cmd[p])
        new[p] = sealed[0]
        envelopes += sealed
    versions = 1 + len(state.index_old)
    head = [b"EVAL", SCRIPT, b"%d" % len(keys), *keys, mode, _KIND[role]]
    counts = [b"%d" % nkeys, b"%d" % versions, b"%d" % len(groups)]
    return [*head, *counts, *envelopes, *[b"%d" % (p + 1) for p in groups], *new]


def folded(
    c: Cipher, info: KeyInfo, role: Role, head: list[bytes], members: Sequence[bytes]
) -> list[bytes]:
    """``head`` followed by every version of each member (active first)."""
    state = info.ns
    if state.index_blind:
        raise refuse()
    out = head.copy()
    for m in members:
        out += c.seal_versions(state, role, m)
    return out


def _present(value: Value) -> bool:
    return value is not None and value is not NULL_ARRAY and value is not False


def r_fold(c: Cipher, value: Value, arg: tuple[int, str, bool, ReplyFn | None, Any]) -> Value:
    """Per member, the first version found (``first``) or whether any is (``any``/``exists``:
    1 or 0); one value for a single-member command; then the original reply function."""
    if type(value) is not list:
        return value
    width, how, single, then, then_arg = arg
    out: list[Value] = []
    for i in range(0, len(value), width):
        chunk = value[i : i + width]
        if how == "first":
            out.append(next((x for x in chunk if _present(x)), chunk[0] if chunk else None))
        elif how == "any":
            out.append(1 if any(x == 1 for x in chunk) else 0)
        else:
            out.append(1 if any(_present(x) for x in chunk) else 0)
    result: Value = out[0] if single and out else out
    return then(c, result, then_arg) if then is not None else result


def fold(
    c: Cipher,
    info: KeyInfo,
    role: Role,
    head: list[bytes],
    members: Sequence[bytes],
    how: str,
    single: bool,
    then: ReplyFn | None = None,
    then_arg: Any = None,
) -> Plan:
    width = 1 + len(info.ns.index_old)
    return folded(c, info, role, head, members), r_fold, (width, how, single, then, then_arg)


def double(value: Value) -> Value:
    return Double(value) if type(value) is bytes else value


def r_double(c: Cipher, value: Value, arg: None) -> Value:
    """ZINCRBY, ZADD INCR: the script's bulk score as the double Redis answers."""
    return double(value)


def r_rank(c: Cipher, value: Value, arg: bool) -> Value:
    """ZRANK/ZREVRANK: ``[rank, score]`` with WITHSCORE (a null array when missing)."""
    if not arg:
        return value
    if type(value) is list and len(value) == 2:
        return [value[0], double(value[1])]
    return NULL_ARRAY if value is None else value


# --- hashes under redis.deterministic_fields -------------------------------------------------

_FIELD: Final = Role.HASH_FIELD


def _rotating(infos: Infos) -> KeyInfo | None:
    info = infos[0]
    if info is not None and info.det_fields and info.ns.rotating:
        return info
    return None


def _sealed_pairs(c: Cipher, info: KeyInfo, args: list[bytes]) -> list[bytes]:
    """``field value ...`` with values sealed (bound to the plaintext name), names still plain."""
    out: list[bytes] = []
    for i in range(0, len(args) - 1, 2):
        out += (args[i], c.seal(info, Role.HASH_VALUE, args[i + 1], args[i]))
    return out


def _write_fields(c: Cipher, info: KeyInfo, cmd: list[bytes], groups: Sequence[int]) -> list[bytes]:
    return scripted(c, info, _FIELD, WRITE, cmd, [cmd[1]], groups)


def hset(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _rotating(infos)
    if info is None or len(cmd) % 2:
        return t.hset(c, cmd, pos, infos)
    new = cmd[:2] + _sealed_pairs(c, info, cmd[2:])
    return _write_fields(c, info, new, range(2, len(cmd), 2)), None, None


def hsetnx(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _rotating(infos)
    if info is None:
        return t.hsetnx(c, cmd, pos, infos)
    return _write_fields(c, info, cmd[:2] + _sealed_pairs(c, info, cmd[2:4]), [2]), None, None


def hget(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _rotating(infos)
    if info is None:
        return t.hget(c, cmd, pos, infos)
    head = [b"HMGET", cmd[1]]
    return fold(c, info, _FIELD, head, [cmd[2]], "first", True, t.r_hget, (info, cmd[1], cmd[2]))


def hmget(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _rotating(infos)
    if info is None:
        return t.hmget(c, cmd, pos, infos)
    arg = (info, cmd[1], cmd[2:])
    return fold(c, info, _FIELD, [b"HMGET", cmd[1]], cmd[2:], "first", False, t.r_hmget, arg)


def hstrlen(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _rotating(infos)
    if info is None:
        return emul.hstrlen(c, cmd, pos, infos)
    arg = (info, cmd[1], cmd[2])
    return fold(c, info, _FIELD, [b"HMGET", cmd[1]], [cmd[2]], "first", True, emul.r_hstrlen, arg)


def hfields(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """HEXISTS (any version present) and HDEL (old copies moved, then deleted)."""
    info = _rotating(infos)
    if info is None:
        return t.hfields(c, cmd, pos, infos)
    if cmd[0].upper() == b"HEXISTS":
        return fold(c, info, _FIELD, [b"HMGET", cmd[1]], [cmd[2]], "exists", True)
    return _write_fields(c, info, cmd, range(2, len(cmd))), None, None


_FIELD_READS: Final = frozenset({b"HTTL", b"HPTTL", b"HEXPIRETIME", b"HPEXPIRETIME"})


def hfieldsn(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """HEXPIRE & co. write (old copies moved first); HTTL & co. read the version present."""
    info = _rotating(infos)
    if info is None:
        return t.hfieldsn(c, cmd, pos, infos)
    first, count = t.fields_block(cmd)
    mode = READ if cmd[0].upper() in _FIELD_READS else WRITE
    groups = range(first, first + count)
    return scripted(c, info, _FIELD, mode, cmd, [cmd[1]], groups), None, None


def hgetdel(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _rotating(infos)
    if info is None:
        return t.hgetdel(c, cmd, pos, infos)
    first, count = t.fields_block(cmd)
    names = cmd[first : first + count]
    new = _write_fields(c, info, cmd, range(first, first + count))
    return new, t.r_hmget, (info, cmd[1], names)


def hsetex(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _rotating(infos)
    if info is None:
        return t.hsetex(c, cmd, pos, infos)
    first, count = t.fields_block(cmd)
    stop = first + 2 * count
    if stop > len(cmd):
        raise Refusal("ERR wrong number of arguments")
    new = cmd[:first] + _sealed_pairs(c, info, cmd[first:stop]) + cmd[stop:]
    return _write_fields(c, info, new, range(first, stop, 2)), None, None


HASH_HANDLERS: Final[dict[str, Handler]] = {
    "hset": hset,
    "hsetnx": hsetnx,
    "hget": hget,
    "hmget": hmget,
    "hfields": hfields,
    "hfieldsn": hfieldsn,
    "hstrlen": hstrlen,
    "hgetdel": hgetdel,
    "hsetex": hsetex,
}
