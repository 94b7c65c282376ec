"""Transforms for lists, sets, sorted sets, geo and HyperLogLog (see ``transform``).

Set and sorted-set members, geo members and HyperLogLog elements are sealed deterministically
(equal plaintexts, equal envelopes within a namespace and role), so membership, scores, set
algebra and HyperLogLog counting keep working on the server. List elements are randomized
unless the key is under ``redis.deterministic_lists``, which is what LREM, LPOS and LINSERT
need: with randomized elements they are refused.

While an index rotation is in progress (``NsState.rotating``), every handler that seals such a
member hands over to ``_rotation``, which looks it up under every live index version (or
refuses); otherwise the handlers pay that one attribute check.
"""

from __future__ import annotations

from typing import Final

from protocols.resp import Set, Value
from proxy.crypto.context import Role
from proxy.redis import _rotation as rot
from proxy.redis.cipher import Cipher, KeyInfo
from proxy.redis.policy import Refusal, not_supported
from proxy.redis.transform import (
    PASS,
    Handler,
    Infos,
    Plan,
    has_option,
    open_bulk,
    open_items,
    r_items,
    same_policy,
    scan_match,
)

LIST: Final = Role.LIST_ELEMENT
SET: Final = Role.SET_MEMBER
ZSET: Final = Role.ZSET_MEMBER


def member_role(cmd: list[bytes]) -> Role:
    """Members of SADD & co. are set members; Z*/GEO* sorted-set members; PF* HLL elements."""
    first = cmd[0][:1].lower()
    if first == b"s":
        return SET
    if first == b"p":
        return Role.HLL_ELEMENT
    return ZSET


def _info(infos: Infos) -> KeyInfo:
    info = infos[0]
    assert info is not None
    return info


def _seal_from(c: Cipher, info: KeyInfo, role: Role, cmd: list[bytes], start: int) -> list[bytes]:
    return cmd[:start] + [c.seal(info, role, m) for m in cmd[start:]]


# --- lists -----------------------------------------------------------------------------------


def push(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return _seal_from(c, _info(infos), LIST, cmd, 2), None, None


def elements(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """LPOP/RPOP/LRANGE/LINDEX: the reply's elements are opened."""
    return None, r_items, (_info(infos), LIST, cmd[1])


def lset(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return [*cmd[:3], c.seal(_info(infos), LIST, cmd[3])], None, None


def _deterministic_list(cmd: list[bytes], info: KeyInfo) -> None:
    if not info.det_list:
        raise not_supported(cmd, cmd[1], "needs redis.deterministic_lists")


def linsert(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _info(infos)
    _deterministic_list(cmd, info)
    if info.ns.rotating:  # every old copy of the pivot moves first (the element is new)
        new = [*cmd[:4], c.seal(info, LIST, cmd[4])]
        return rot.scripted(c, info, LIST, rot.WRITE, new, [cmd[1]], [3]), None, None
    return [*cmd[:3], c.seal(info, LIST, cmd[3]), c.seal(info, LIST, cmd[4])], None, None


def lrem(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _info(infos)
    _deterministic_list(cmd, info)
    if info.ns.rotating:
        return rot.scripted(c, info, LIST, rot.WRITE, cmd, [cmd[1]], [3]), None, None
    return [*cmd[:3], c.seal(info, LIST, cmd[3])], None, None


def lpos(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _info(infos)
    _deterministic_list(cmd, info)
    if info.ns.rotating:  # refused if the list still holds the element under an old version
        return rot.scripted(c, info, LIST, rot.CHECK, cmd, [cmd[1]], [2]), None, None
    return [*cmd[:2], c.seal(info, LIST, cmd[2]), *cmd[3:]], None, None


def lmove(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """LMOVE & co.: both lists under one policy; the moved element comes back opened."""
    info = same_policy(cmd, pos, infos)
    if info is None:
        return PASS
    return None, r_items, (info, LIST, cmd[1])


def _key_reply(c: Cipher, value: Value, role: Role, nested: bool) -> Value:
    """``[key, element]`` (BLPOP) or ``[key, [elements]]`` (LMPOP), opened per that key."""
    if type(value) is not list or len(value) < 2 or type(value[0]) is not bytes:
        return value
    key = value[0]
    info = c.key(key)
    if info is None:
        return value
    if nested:
        return [key, open_items(c, info, role, value[1], key), *value[2:]]
    return [key, open_bulk(c, info, role, value[1], key), *value[2:]]


def r_blpop(c: Cipher, value: Value, arg: None) -> Value:
    return _key_reply(c, value, LIST, False)


def r_lmpop(c: Cipher, value: Value, arg: None) -> Value:
    return _key_reply(c, value, LIST, True)


def blpop(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return None, r_blpop, None


def lmpop(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return None, r_lmpop, None


# --- sets ------------------------------------------------------------------------------------


def members2(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """SADD/SREM/SMISMEMBER/ZREM/ZMSCORE/GEOPOS/GEOHASH/PFADD: members from argument 2."""
    info = _info(infos)
    role = member_role(cmd)
    if info.ns.rotating and role is not Role.HLL_ELEMENT:
        return _members_rotating(c, cmd, info, role)
    return _seal_from(c, info, role, cmd, 2), None, None


_FOLDED: Final = {b"SMISMEMBER": "any", b"ZMSCORE": "first", b"GEOPOS": "first",
                  b"GEOHASH": "first"}  # fmt: skip


def _members_rotating(c: Cipher, cmd: list[bytes], info: KeyInfo, role: Role) -> Plan:
    how = _FOLDED.get(cmd[0].upper())
    if how is not None:  # reads: every version of each member in one native command
        return rot.fold(c, info, role, cmd[:2], cmd[2:], how, False)
    groups = range(2, len(cmd))  # SADD/SREM/ZREM: old copies move onto the active version
    return rot.scripted(c, info, role, rot.WRITE, cmd, [cmd[1]], groups), None, None


def member_at(index: int) -> Handler:
    def handler(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
        info = _info(infos)
        if info.ns.rotating:
            return _member_rotating(c, cmd, info, index)
        new = cmd.copy()
        new[index] = c.seal(info, member_role(cmd), cmd[index])
        return new, None, None

    return handler


def _member_rotating(c: Cipher, cmd: list[bytes], info: KeyInfo, index: int) -> Plan:
    """SISMEMBER, ZSCORE: folded reads; ZRANK/ZREVRANK: the version present; ZINCRBY: moved."""
    name = cmd[0].upper()
    role = member_role(cmd)
    if name == b"SISMEMBER":
        return rot.fold(c, info, role, [b"SMISMEMBER", cmd[1]], [cmd[2]], "any", True)
    if name == b"ZSCORE":
        return rot.fold(c, info, role, [b"ZMSCORE", cmd[1]], [cmd[2]], "first", True)
    if name == b"ZINCRBY":
        new = rot.scripted(c, info, role, rot.WRITE, cmd, [cmd[1]], [index])
        return new, rot.r_double, None
    new = rot.scripted(c, info, role, rot.READ, cmd, [cmd[1]], [index])
    return new, rot.r_rank, has_option(cmd, 3, b"WITHSCORE")


def members(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """SMEMBERS/SPOP/SRANDMEMBER: the reply's members are opened."""
    return None, r_items, (_info(infos), SET, cmd[1])


def _algebra(cmd: list[bytes], pos: list[int], info: KeyInfo | None) -> None:
    """Refuses set algebra over two or more source keys during an index rotation: their
    members may be on different versions, and equal plaintexts would not compare equal."""
    if info is not None and info.ns.rotating and member_role(cmd) is not Role.HLL_ELEMENT:
        sources = pos[1:] if cmd[0].upper().endswith(b"STORE") else pos
        if len({cmd[p] for p in sources}) > 1:
            raise rot.refuse()


def setalgebra(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = same_policy(cmd, pos, infos)
    if info is None:
        return PASS
    _algebra(cmd, pos, info)
    return None, r_items, (info, member_role(cmd), cmd[1])


def samens(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """*STORE, *CARD, PFCOUNT, PFMERGE: members compare equal only within one namespace."""
    _algebra(cmd, pos, same_policy(cmd, pos, infos))
    return PASS


def smove(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = same_policy(cmd, pos, infos)
    if info is None:
        return PASS
    if info.ns.rotating:  # the member moves onto the active version in both sets first
        return rot.scripted(c, info, SET, rot.WRITE, cmd, cmd[1:3], [3], nkeys=2), None, None
    return [*cmd[:3], c.seal(info, SET, cmd[3])], None, None


def _no_match(cmd: list[bytes], start: int) -> None:
    match = scan_match(cmd, start)
    if match is not None and match != b"*":
        raise not_supported(cmd, cmd[1], "MATCH cannot see encrypted members")


def r_sscan(c: Cipher, value: Value, arg: tuple[KeyInfo, Role, bytes]) -> Value:
    if type(value) is list and len(value) == 2:
        info, role, key = arg
        items = value[1]
        if role is ZSET and type(items) is list:
            return [value[0], _scored(c, info, items, key)]
        return [value[0], open_items(c, info, role, items, key)]
    return value


def sscan(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    _no_match(cmd, 3)
    return None, r_sscan, (_info(infos), member_role(cmd), cmd[1])


# --- sorted sets -----------------------------------------------------------------------------


def _scored(c: Cipher, info: KeyInfo, items: list[Value], key: bytes) -> list[Value]:
    """``[m, s, m, s]`` (RESP2, and RESP3 single pops) or ``[[m, s], ...]`` (RESP3) opened."""
    if items and type(items[0]) is list:
        return [
            [open_bulk(c, info, ZSET, p[0], key), *p[1:]] if type(p) is list and p else p
            for p in items
        ]
    out = items.copy()
    for i in range(0, len(out), 2):
        out[i] = open_bulk(c, info, ZSET, out[i], key)
    return out


def r_scored(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes, bool]) -> Value:
    """A member list, or with scores (``arg[2]``) a scored list; a single bulk opened."""
    info, key, scores = arg
    if type(value) is list:
        return _scored(c, info, value, key) if scores else open_items(c, info, ZSET, value, key)
    if type(value) is Set:
        return Set([open_bulk(c, info, ZSET, v, key) for v in value.items])
    return open_bulk(c, info, ZSET, value, key)


def zadd(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _info(infos)
    i = 2
    while i < len(cmd) and cmd[i].upper() in (b"NX", b"XX", b"GT", b"LT", b"CH", b"INCR"):
        i += 1
    if info.ns.rotating:  # old copies move onto the active version, keeping their score
        groups = range(i + 1, len(cmd), 2)
        new = rot.scripted(c, info, ZSET, rot.WRITE, cmd, [cmd[1]], groups)
        return new, (rot.r_double if has_option(cmd[:i], 2, b"INCR") else None), None
    new = cmd.copy()
    for j in range(i + 1, len(cmd), 2):
        new[j] = c.seal(info, ZSET, cmd[j])
    return new, None, None


def _bylex(cmd: list[bytes], start: int) -> None:
    if has_option(cmd, start, b"BYLEX"):
        raise not_supported(cmd, cmd[1], "BYLEX orders ciphertext")


def zrange(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """ZRANGE/ZRANGEBYSCORE/ZREVRANGE/ZREVRANGEBYSCORE (BYLEX refused)."""
    _bylex(cmd, 4)
    return None, r_scored, (_info(infos), cmd[1], has_option(cmd, 4, b"WITHSCORES"))


def zrangestore(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    if any(i is not None for i in infos):
        _bylex(cmd, 5)
    same_policy(cmd, pos, infos)
    return PASS


def zpop(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """ZPOPMIN/ZPOPMAX: always member/score pairs."""
    return None, r_scored, (_info(infos), cmd[1], True)


def r_bzpop(c: Cipher, value: Value, arg: None) -> Value:
    """``[key, member, score]`` opened with that key's namespace."""
    return _key_reply(c, value, ZSET, False)


def bzpop(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return None, r_bzpop, None


def r_zmpop(c: Cipher, value: Value, arg: None) -> Value:
    if type(value) is not list or len(value) != 2 or type(value[0]) is not bytes:
        return value
    info = c.key(value[0])
    if info is None or type(value[1]) is not list:
        return value
    return [value[0], _scored(c, info, value[1], value[0])]


def zmpop(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return None, r_zmpop, None


def zrandmember(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return None, r_scored, (_info(infos), cmd[1], has_option(cmd, 3, b"WITHSCORES"))


def zalgebra(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """ZUNION/ZINTER/ZDIFF: one namespace; members (and scores) come back opened."""
    info = same_policy(cmd, pos, infos)
    if info is None:
        return PASS
    _algebra(cmd, pos, info)
    return None, r_scored, (info, cmd[pos[0]], has_option(cmd, 2, b"WITHSCORES"))


def zscan(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    _no_match(cmd, 3)
    return None, r_sscan, (_info(infos), ZSET, cmd[1])


# --- geo -------------------------------------------------------------------------------------


def geoadd(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _info(infos)
    i = 2
    while i < len(cmd) and cmd[i].upper() in (b"NX", b"XX", b"CH"):
        i += 1
    if info.ns.rotating:
        groups = range(i + 2, len(cmd), 3)
        return rot.scripted(c, info, ZSET, rot.WRITE, cmd, [cmd[1]], groups), None, None
    new = cmd.copy()
    for j in range(i + 2, len(cmd), 3):
        new[j] = c.seal(info, ZSET, cmd[j])
    return new, None, None


def geodist(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = _info(infos)
    if info.ns.rotating:
        return rot.scripted(c, info, ZSET, rot.READ, cmd, [cmd[1]], [2, 3]), None, None
    new = [cmd[0], cmd[1], c.seal(info, ZSET, cmd[2]), c.seal(info, ZSET, cmd[3]), *cmd[4:]]
    return new, None, None


def r_geo(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes]) -> Value:
    """Members, or ``[member, dist?, hash?, [lon, lat]?]`` items: the member is opened."""
    if type(value) is not list:
        return value
    info, key = arg
    return [
        [open_bulk(c, info, ZSET, v[0], key), *v[1:]] if type(v) is list and v
        else open_bulk(c, info, ZSET, v, key)
        for v in value
    ]  # fmt: skip


def r_geo_scripted(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes]) -> Value:
    """``r_geo`` of a reply the script gave in RESP2: coordinates back to doubles."""
    if type(value) is list:
        value = [
            [[rot.double(x) for x in v] if type(v) is list else v for v in item]
            if type(item) is list else item
            for item in value
        ]  # fmt: skip
    return r_geo(c, value, arg)


_STORES: Final = (b"STORE", b"STOREDIST")


def _geo_search(
    c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos, member: int | None
) -> Plan:
    store = cmd[0].upper() == b"GEOSEARCHSTORE" or has_option(cmd, 2, *_STORES)
    info = same_policy(cmd, pos, infos) if store else infos[0]
    if info is None:
        return PASS
    new = None
    if member is not None:
        if info.ns.rotating:  # the member is looked up under the version the key holds
            source = 2 if cmd[0].upper() == b"GEOSEARCHSTORE" else 1
            keys = [cmd[source], *[cmd[p] for p in pos if p != source]]
            new = rot.scripted(c, info, ZSET, rot.READ, cmd, keys, [member])
            return new, (None if store else r_geo_scripted), (info, cmd[pos[0]])
        new = cmd.copy()
        new[member] = c.seal(info, ZSET, cmd[member])
    return new, (None if store else r_geo), (info, cmd[pos[0]])


def georadius(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return _geo_search(c, cmd, pos, infos, None)


def georadiusbymember(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return _geo_search(c, cmd, pos, infos, 2)


def geosearch(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """GEOSEARCH/GEOSEARCHSTORE: a ``FROMMEMBER`` member is sealed."""
    start = 3 if cmd[0].upper() == b"GEOSEARCHSTORE" else 2
    member = None
    for i in range(start, len(cmd) - 1):
        if cmd[i].upper() == b"FROMMEMBER":
            member = i + 1
            break
    return _geo_search(c, cmd, pos, infos, member)


def refuse_det(why: str) -> Handler:
    """A handler that always refuses (documented limits)."""

    def handler(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
        raise Refusal(f"ERR veil: {why}")

    return handler
