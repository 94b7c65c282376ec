"""Transforms for streams (see ``transform``): field values sealed, bound to their field name.

Field names and entry IDs stay plaintext (consumers filter and group on them); each value's
context carries its field name, so a value copied to another field fails to open. Replies
carry entries as ``[id, [field, value, ...]]`` in both protocols (``XREAD`` groups them per
stream: an array of ``[key, entries]`` in RESP2, a map in RESP3).
"""

from __future__ import annotations

from typing import Final

from protocols.resp import Map, Value
from proxy.crypto.context import Role
from proxy.redis.cipher import Cipher, KeyInfo
from proxy.redis.transform import Infos, Plan, has_option

_OPTIONS: Final = (b"NOMKSTREAM", b"KEEPREF", b"DELREF", b"ACKED")
_TRIM: Final = (b"MAXLEN", b"MINID")


def _id_index(cmd: list[bytes]) -> int:
    """Where XADD's entry ID is, after its options (as Redis parses them)."""
    i = 2
    while i < len(cmd):
        word = cmd[i].upper()
        if word in _OPTIONS:
            i += 1
        elif word in _TRIM:
            i += 2
            if i - 1 < len(cmd) and cmd[i - 1] in (b"=", b"~"):
                i += 1
        elif word == b"LIMIT":
            i += 2
        else:
            return i
    return i


def xadd(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = infos[0]
    assert info is not None
    first = _id_index(cmd) + 1
    new = cmd.copy()
    for i in range(first, len(cmd) - 1, 2):
        new[i + 1] = c.seal(info, Role.STREAM_VALUE, cmd[i + 1], cmd[i])
    return new, None, None


def open_entry(c: Cipher, info: KeyInfo, entry: Value, key: bytes) -> Value:
    """``[id, [field, value, ...]]`` with each value opened (deleted entries stay null)."""
    if type(entry) is not list or len(entry) != 2 or type(entry[1]) is not list:
        return entry
    fields = entry[1]
    out: list[Value] = []
    for i in range(0, len(fields) - 1, 2):
        name, stored = fields[i], fields[i + 1]
        if type(stored) is bytes and type(name) is bytes:
            stored = c.open(info, Role.STREAM_VALUE, stored, key, name)
        out += (name, stored)
    return [entry[0], out]


def open_entries(c: Cipher, info: KeyInfo, entries: Value, key: bytes) -> Value:
    if type(entries) is not list:
        return entries
    return [open_entry(c, info, e, key) for e in entries]


def r_entries(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes]) -> Value:
    return open_entries(c, arg[0], value, arg[1])


def xrange(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return None, r_entries, (infos[0], cmd[1])


def _per_stream(c: Cipher, key: Value, entries: Value) -> Value:
    if type(key) is not bytes:
        return entries
    info = c.key(key)
    return entries if info is None else open_entries(c, info, entries, key)


def r_xread(c: Cipher, value: Value, arg: None) -> Value:
    if type(value) is Map:
        items = value.items.copy()
        for i in range(0, len(items) - 1, 2):
            items[i + 1] = _per_stream(c, items[i], items[i + 1])
        return Map(items)
    if type(value) is list:
        return [
            [s[0], _per_stream(c, s[0], s[1]), *s[2:]] if type(s) is list and len(s) >= 2 else s
            for s in value
        ]
    return value


def xread(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """XREAD/XREADGROUP: each stream's entries opened with that stream's namespace."""
    return None, r_xread, None


def xclaim(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    if has_option(cmd, 5, b"JUSTID"):
        return None, None, None
    return None, r_entries, (infos[0], cmd[1])


def r_xautoclaim(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes]) -> Value:
    if type(value) is list and len(value) >= 2:
        return [value[0], open_entries(c, arg[0], value[1], arg[1]), *value[2:]]
    return value


def xautoclaim(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    if has_option(cmd, 6, b"JUSTID"):
        return None, None, None
    return None, r_xautoclaim, (infos[0], cmd[1])


_ENTRY_FIELDS: Final = (b"first-entry", b"last-entry")


def _info_pairs(c: Cipher, info: KeyInfo, items: list[Value], key: bytes) -> list[Value]:
    out = items.copy()
    for i in range(0, len(out) - 1, 2):
        name = out[i]
        if name in _ENTRY_FIELDS:
            out[i + 1] = open_entry(c, info, out[i + 1], key)
        elif name == b"entries":
            out[i + 1] = open_entries(c, info, out[i + 1], key)
    return out


def r_xinfo(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes]) -> Value:
    if type(value) is Map:
        return Map(_info_pairs(c, arg[0], value.items, arg[1]))
    if type(value) is list:
        return _info_pairs(c, arg[0], value, arg[1])
    return value


def xinfo_stream(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    """XINFO STREAM [FULL]: first/last entry and the FULL entries opened."""
    return None, r_xinfo, (infos[0], cmd[2])
