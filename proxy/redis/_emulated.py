"""Read-only commands answered from the plaintext (see ``transform``): rewritten, then computed.

STRLEN, GETRANGE/SUBSTR, GETBIT, BITCOUNT, BITPOS and BITFIELD_RO become ``GET key``; HSTRLEN
becomes ``HGET key field``; LCS becomes ``MGET a b``. The reply function opens the value and
computes what Redis would have answered, with Redis's argument errors and edge cases (negative
indexes, missing keys as empty strings, BITPOS's zero padding). One command still gets one
reply, so pipelines and transactions keep their order.

Known difference: LCS over a key that holds another type answers as if it were empty (MGET
returns a null for it), where Redis answers an error.
"""

from __future__ import annotations

from typing import Any, Final

from protocols.resp import Map, Value
from proxy.crypto.context import Role
from proxy.redis.cipher import Cipher, KeyInfo
from proxy.redis.policy import Refusal
from proxy.redis.transform import Infos, Plan, field_name, integer, open_value

_BIT_OFFSET: Final = "ERR bit offset is not an integer or out of range"
_SYNTAX: Final = "ERR syntax error"
_MAX_BITS: Final = 512 * 1024 * 1024 * 8
LCS_MAX_CELLS: Final = 250_000  # the DP runs on the event loop: keep it well under 100 ms


def _plain(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes]) -> bytes | None:
    if type(value) is bytes:
        return c.open(arg[0], Role.STRING, value, arg[1])
    return None


def _get(cmd: list[bytes]) -> list[bytes]:
    return [b"GET", cmd[1]]


# --- STRLEN, GETRANGE, HSTRLEN -----------------------------------------------------------------


def r_strlen(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes]) -> Value:
    plain = _plain(c, value, arg)
    return 0 if plain is None else len(plain)


def strlen(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return _get(cmd), r_strlen, (infos[0], cmd[1])


def getrange_of(data: bytes, start: int, end: int) -> bytes:
    """Redis ``getrangeCommand``'s index arithmetic."""
    size = len(data)
    if start < 0 and end < 0 and start > end:
        return b""
    start = max(start + size if start < 0 else start, 0)
    end = max(end + size if end < 0 else end, 0)
    end = min(end, size - 1)
    if start > end or size == 0:
        return b""
    return data[start : end + 1]


def r_getrange(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes, int, int]) -> Value:
    plain = _plain(c, value, (arg[0], arg[1]))
    return b"" if plain is None else getrange_of(plain, arg[2], arg[3])


def getrange(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    start, end = integer(cmd[2]), integer(cmd[3])
    return _get(cmd), r_getrange, (infos[0], cmd[1], start, end)


def r_hstrlen(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes, bytes]) -> Value:
    plain = open_value(c, arg[0], value, arg[1], arg[2])
    return len(plain) if type(plain) is bytes else 0


def hstrlen(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    info = infos[0]
    assert info is not None
    return [b"HGET", cmd[1], field_name(c, info, cmd[2])], r_hstrlen, (info, cmd[1], cmd[2])


# --- bits --------------------------------------------------------------------------------------


def _bit_offset(raw: bytes) -> int:
    offset = integer(raw, _BIT_OFFSET)
    if not 0 <= offset < _MAX_BITS:
        raise Refusal(_BIT_OFFSET)
    return offset


def r_getbit(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes, int]) -> Value:
    plain = _plain(c, value, (arg[0], arg[1])) or b""
    offset = arg[2]
    byte = offset >> 3
    return (plain[byte] >> (7 - (offset & 7))) & 1 if byte < len(plain) else 0


def getbit(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    return _get(cmd), r_getbit, (infos[0], cmd[1], _bit_offset(cmd[2]))


def _unit(cmd: list[bytes], index: int) -> bool:
    """True for BIT, False for BYTE (or absent)."""
    if len(cmd) <= index:
        return False
    unit = cmd[index].upper()
    if unit not in (b"BIT", b"BYTE"):
        raise Refusal(_SYNTAX)
    return unit == b"BIT"


def _bit_range(total: int, start: int, end: int) -> tuple[int, int]:
    start = max(start + total if start < 0 else start, 0)
    end = max(end + total if end < 0 else end, 0)
    return start, min(end, total - 1)


def _bits(data: bytes, first: int, last: int) -> int:
    """Bits ``first..last`` (MSB first, inclusive) of ``data`` as an integer."""
    whole = int.from_bytes(data, "big")
    width = last - first + 1
    return (whole >> (len(data) * 8 - 1 - last)) & ((1 << width) - 1)


def r_bitcount(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes, Any]) -> Value:
    plain = _plain(c, value, (arg[0], arg[1]))
    if plain is None:
        return 0
    if arg[2] is None:
        return int.from_bytes(plain, "big").bit_count()
    start, end, isbit = arg[2]
    if start < 0 and end < 0 and start > end:
        return 0
    total = len(plain) * (8 if isbit else 1)
    start, end = _bit_range(total, start, end)
    if start > end:
        return 0
    if not isbit:
        return int.from_bytes(plain[start : end + 1], "big").bit_count()
    return _bits(plain, start, end).bit_count()


def bitcount(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    if len(cmd) == 2:
        return _get(cmd), r_bitcount, (infos[0], cmd[1], None)
    if len(cmd) not in (4, 5):
        raise Refusal(_SYNTAX)
    span = (integer(cmd[2]), integer(cmd[3]), _unit(cmd, 4))
    return _get(cmd), r_bitcount, (infos[0], cmd[1], span)


def bitpos_of(data: bytes, bit: int, start: int | None, end: int | None, isbit: bool) -> int:
    """Redis ``bitposCommand`` on an existing string (zero padding when no end is given)."""
    end_given = end is not None
    if start is None:
        first, last = 0, len(data) - 1
        isbit = False
    else:
        total = len(data) * (8 if isbit else 1)
        if end is None:
            end = total - 1
        first, last = _bit_range(total, start, end)
    if first > last:
        return -1
    lo, hi = (first, last) if isbit else (first * 8, last * 8 + 7)
    window = _bits(data, lo, hi)
    width = hi - lo + 1
    target = window if bit else ~window & ((1 << width) - 1)
    if target:
        return lo + width - target.bit_length()
    if bit == 0 and not end_given:
        return ((hi >> 3) + 1) * 8
    return -1


def r_bitpos(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes, Any]) -> Value:
    plain = _plain(c, value, (arg[0], arg[1]))
    bit, start, end, isbit = arg[2]
    if plain is None:
        return -1 if bit else 0
    return bitpos_of(plain, bit, start, end, isbit)


def bitpos(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    bit = integer(cmd[2])
    if bit not in (0, 1):
        raise Refusal("ERR The bit argument must be 1 or 0.")
    if len(cmd) > 6:
        raise Refusal(_SYNTAX)
    start = integer(cmd[3]) if len(cmd) > 3 else None
    end = integer(cmd[4]) if len(cmd) > 4 else None
    return _get(cmd), r_bitpos, (infos[0], cmd[1], (bit, start, end, _unit(cmd, 5)))


_BAD_TYPE: Final = (
    "ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but "
    "i64 is."
)


def _field_type(raw: bytes) -> tuple[bool, int]:
    sign, digits = raw[:1].lower(), raw[1:]
    if sign not in (b"i", b"u") or not digits.isdigit():
        raise Refusal(_BAD_TYPE)
    bits = int(digits)
    if not 1 <= bits <= (64 if sign == b"i" else 63):
        raise Refusal(_BAD_TYPE)
    return sign == b"i", bits


def r_bitfield(c: Cipher, value: Value, arg: tuple[KeyInfo, bytes, Any]) -> Value:
    plain = _plain(c, value, (arg[0], arg[1])) or b""
    out: list[Value] = []
    for signed, bits, offset in arg[2]:
        need = (offset + bits + 7) // 8
        data = plain[:need].ljust(need, b"\0")
        number = _bits(data, offset, offset + bits - 1)
        if signed and number >> (bits - 1):
            number -= 1 << bits
        out.append(number)
    return out


def bitfield_ro(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    gets = []
    i = 2
    while i < len(cmd):
        if cmd[i].upper() != b"GET":
            raise Refusal("ERR BITFIELD_RO only supports the GET subcommand")
        if i + 2 >= len(cmd):
            raise Refusal(_SYNTAX)
        signed, bits = _field_type(cmd[i + 1])
        raw = cmd[i + 2]
        offset = _bit_offset(raw[1:]) * bits if raw.startswith(b"#") else _bit_offset(raw)
        gets.append((signed, bits, offset))
        i += 3
    return _get(cmd), r_bitfield, (infos[0], cmd[1], gets)


# --- LCS -------------------------------------------------------------------------------------


def lcs_of(a: bytes, b: bytes) -> tuple[list[list[int]], bytes, list[tuple[int, int, int, int]]]:
    """Redis ``lcsCommand``'s table, string and match ranges (newest first), same tie-breaks."""
    width = len(b) + 1
    table = [[0] * width for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        row, prev, ai = table[i], table[i - 1], a[i - 1]
        for j in range(1, width):
            row[j] = prev[j - 1] + 1 if ai == b[j - 1] else max(prev[j], row[j - 1])
    out = bytearray()
    ranges: list[tuple[int, int, int, int]] = []
    i, j, unset = len(a), len(b), len(a)
    a_start, a_end, b_start, b_end = unset, 0, 0, 0
    while i > 0 and j > 0:
        emit = False
        if a[i - 1] == b[j - 1]:
            out.append(a[i - 1])
            if a_start == unset:
                a_start = a_end = i - 1
                b_start = b_end = j - 1
            elif a_start == i and b_start == j:
                a_start, b_start = a_start - 1, b_start - 1
            else:
                emit = True
            if a_start == 0 or b_start == 0:
                emit = True
            i, j = i - 1, j - 1
        else:
            if table[i - 1][j] > table[i][j - 1]:
                i -= 1
            else:
                j -= 1
            emit = a_start != unset
        if emit:
            ranges.append((a_start, a_end, b_start, b_end))
            a_start = unset
    return table, bytes(reversed(out)), ranges


def r_lcs(c: Cipher, value: Value, arg: tuple[list[bytes], Infos, Any]) -> Value:
    if type(value) is not list or len(value) != 2:
        return value
    keys, infos, (want_len, idx, minlen, withlen) = arg
    plains = []
    for stored, key, info in zip(value, keys, infos, strict=True):
        if type(stored) is bytes and info is not None:
            stored = c.open(info, Role.STRING, stored, key)
        plains.append(stored if type(stored) is bytes else b"")
    a, b = plains
    if (len(a) + 1) * (len(b) + 1) > LCS_MAX_CELLS:
        raise Refusal("ERR veil: LCS over encrypted values this long is refused")
    table, common, ranges = lcs_of(a, b)
    if not idx:
        return len(common) if want_len else common
    matches: list[Value] = []
    for a0, a1, b0, b1 in ranges:
        if minlen and a1 - a0 + 1 < minlen:
            continue
        item: list[Value] = [[a0, a1], [b0, b1]]
        if withlen:
            item.append(a1 - a0 + 1)
        matches.append(item)
    return Map([b"matches", matches, b"len", table[len(a)][len(b)]])


def lcs(c: Cipher, cmd: list[bytes], pos: list[int], infos: Infos) -> Plan:
    want_len = idx = withlen = False
    minlen = 0
    i = 3
    while i < len(cmd):
        word = cmd[i].upper()
        if word == b"LEN":
            want_len = True
        elif word == b"IDX":
            idx = True
        elif word == b"WITHMATCHLEN":
            withlen = True
        elif word == b"MINMATCHLEN" and i + 1 < len(cmd):
            minlen = max(integer(cmd[i + 1]), 0)
            i += 1
        else:
            raise Refusal(_SYNTAX)
        i += 1
    if want_len and idx:
        raise Refusal("ERR If you want both the length and indexes, please just use IDX.")
    return [b"MGET", cmd[1], cmd[2]], r_lcs, (cmd[1:3], infos, (want_len, idx, minlen, withlen))
