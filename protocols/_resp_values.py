"""RESP values, sentinels, limits, the one protocol error, and the type-byte tables.

See ``protocols.resp`` for the theory of operation and the value representation.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

CRLF: Final = b"\r\n"


class RespProtocolError(Exception):
    """The peer sent bytes that are not RESP, or that break a ``RespLimits`` limit.

    ``message`` uses Redis's wording where Redis has one; ``resp_error`` is the error line a
    client should get (without ``-`` and CRLF) before its connection is closed.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def resp_error(self) -> bytes:
        """``ERR <message>``: the error line for the client, without ``-`` and CRLF."""
        return b"ERR " + self.message.encode("latin-1", "replace")


class NeedData(enum.Enum):
    """Sentinel type of ``NEED_DATA``: ``next()`` needs more bytes before it can return a value."""

    NEED_DATA = "NEED_DATA"


class NullArray(enum.Enum):
    """Sentinel type of ``NULL_ARRAY``: RESP2 ``*-1`` (a RESP3 client sees ``_``)."""

    NULL_ARRAY = "NULL_ARRAY"


NEED_DATA: Final = NeedData.NEED_DATA
NULL_ARRAY: Final = NullArray.NULL_ARRAY


@dataclass(frozen=True, slots=True)
class SimpleString:
    """``+OK``: a status line, distinct from a bulk string ``$2 OK``."""

    value: bytes


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """``-ERR ...`` (or RESP3 ``!`` when ``bulk``); ``message`` includes the prefix word."""

    message: bytes
    bulk: bool = False

    @property
    def prefix(self) -> bytes:
        """The error code: ``ERR``, ``WRONGTYPE``, ``MOVED`` ..."""
        return self.message.split(b" ", 1)[0]


@dataclass(frozen=True, slots=True)
class Double:
    """RESP3 ``,``: the text as Redis wrote it, so a RESP2 client gets the same digits."""

    raw: bytes

    @property
    def value(self) -> float:
        """The number (``float("inf")`` and ``nan`` included)."""
        return float(self.raw)

    @classmethod
    def from_float(cls, number: float) -> Double:
        """A double for an emulated reply, in the shortest text that reads back as ``number``.

        Args:
            number: any float.

        Returns:
            ``Double(b"1.5")``, ``Double(b"3")`` (no ``.0``, as Redis >= 7.2 writes it),
            ``Double(b"inf")``, ``Double(b"-inf")``, ``Double(b"nan")``.
        """
        if math.isinf(number) or math.isnan(number):
            return cls(repr(number).encode())
        text = repr(number)
        return cls((text[:-2] if text.endswith(".0") else text).encode())


@dataclass(frozen=True, slots=True)
class BigNumber:
    """RESP3 ``(``: an integer outside the 64-bit range of ``:``."""

    value: int


@dataclass(frozen=True, slots=True)
class Verbatim:
    """RESP3 ``=``: ``text`` with a 3-byte ``format`` (``txt``, ``mkd``)."""

    format: bytes
    text: bytes


@dataclass(slots=True)
class Map:
    """RESP3 ``%``: ``items`` is flat, ``[k1, v1, k2, v2, ...]``; keys may repeat or nest."""

    items: list[Value]

    def pairs(self) -> list[tuple[Value, Value]]:
        """``[(k1, v1), (k2, v2), ...]`` in wire order."""
        return list(zip(self.items[0::2], self.items[1::2], strict=True))


@dataclass(slots=True)
class Set:
    """RESP3 ``~``: a set reply (order kept as sent)."""

    items: list[Value]


@dataclass(slots=True)
class Push:
    """RESP3 ``>``: an out-of-band push (pub/sub message, tracking invalidation)."""

    items: list[Value]


@dataclass(slots=True)
class Attributed:
    """RESP3 ``|``: ``attributes`` (flat key/value list) annotating the ``value`` that follows."""

    attributes: list[Value]
    value: Value


Value: TypeAlias = (
    "bytes | int | list[Value] | SimpleString | ErrorReply | Double | BigNumber"
    " | Verbatim | Map | Set | Push | Attributed | NullArray | None"
)
Protocol: TypeAlias = Literal[2, 3]


@dataclass(frozen=True, slots=True)
class RespLimits:
    """Hard limits, each checked as soon as the header that declares a size is read.

    Args:
        max_bulk_len: longest bulk string (Redis ``proto-max-bulk-len``, 512 MiB).
        max_array_len: most elements in one aggregate (a map of n pairs counts 2n).
        max_depth: deepest nesting of aggregates (replies only; requests are flat).
        max_inline_len: longest header or inline line (Redis ``PROTO_INLINE_MAX_SIZE``).
    """

    max_bulk_len: int = 512 * 1024 * 1024
    max_array_len: int = 1024 * 1024
    max_depth: int = 32
    max_inline_len: int = 64 * 1024


CLIENT_LIMITS: Final = RespLimits()
UPSTREAM_LIMITS: Final = RespLimits(max_array_len=2**32 - 1, max_inline_len=1024 * 1024)


OK: Final = SimpleString(b"OK")
# RESP3 double text: what Redis writes (``1.5``, ``-inf``, ``nan``, ``1e+20``)
DOUBLE_RE: Final = re.compile(
    rb"[+-]?(?:inf|nan|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
)

# -- how bytes become values (used by the decoders) -------------------------------------------

INT_RE: Final = re.compile(rb"0|-?[1-9][0-9]{0,18}")
INT_CACHE: Final[dict[bytes, int]] = {b"%d" % i: i for i in range(-1, 10000)}


def strict_int(raw: bytes) -> int | None:
    """Redis ``string2ll``: ``0`` or ``-?[1-9][0-9]*`` in the signed 64-bit range, else None."""
    value = INT_CACHE.get(raw)
    if value is not None or INT_RE.fullmatch(raw) is None:
        return value
    value = int(raw)
    return value if -(2**63) <= value < 2**63 else None


def _protocol_error(what: str) -> RespProtocolError:
    return RespProtocolError(f"Protocol error: invalid {what}")


def _integer(line: bytes) -> Value:
    value = strict_int(line)
    if value is None:
        raise _protocol_error("integer")
    return value


def _null(line: bytes) -> Value:
    if line:
        raise _protocol_error("null")
    return None


def _boolean(line: bytes) -> Value:
    if line == b"t" or line == b"f":
        return line == b"t"
    raise _protocol_error("boolean")


_BIG_RE: Final = re.compile(rb"-?[0-9]+")


def _double(line: bytes) -> Value:
    if DOUBLE_RE.fullmatch(line) is None:
        raise _protocol_error("double")
    return Double(line)


def _big_number(line: bytes) -> Value:
    try:
        if _BIG_RE.fullmatch(line) is not None:
            return BigNumber(int(line))
    except ValueError:  # more digits than int() accepts
        pass
    raise _protocol_error("big number")


def _verbatim(payload: bytes) -> Value:
    if len(payload) < 4 or payload[3] != 58:
        raise _protocol_error("verbatim string")
    return Verbatim(payload[:3], payload[4:])


SIMPLE_CACHE: Final = {
    b"OK": OK,
    b"QUEUED": SimpleString(b"QUEUED"),
    b"PONG": SimpleString(b"PONG"),
}

# type byte -> how its line (after the type byte) becomes a value
LINE_TYPES: Final[dict[int, Callable[[bytes], Value]]] = {
    ord("+"): lambda line: SIMPLE_CACHE.get(line) or SimpleString(line),
    ord("-"): ErrorReply,
    ord(":"): _integer,
    ord("_"): _null,
    ord("#"): _boolean,
    ord(","): _double,
    ord("("): _big_number,
}
# type byte -> how a length-prefixed payload becomes a value ('$' is inlined in next())
BLOB_TYPES: Final[dict[int, Callable[[bytes], Value]]] = {
    ord("!"): lambda payload: ErrorReply(payload, bulk=True),
    ord("="): _verbatim,
}


def _attributed(items: list[Value]) -> Value:
    return Attributed(items[:-1], items[-1])


# type byte -> (elements per declared count, extra elements, finisher)
AGGREGATE_TYPES: Final[dict[int, tuple[int, int, Callable[[list[Value]], Value]]]] = {
    ord("*"): (1, 0, lambda items: items),
    ord("%"): (2, 0, Map),
    ord("~"): (1, 0, Set),
    ord(">"): (1, 0, Push),
    ord("|"): (2, 1, _attributed),
}
