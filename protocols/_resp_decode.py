"""RESP decoders: ``RequestDecoder`` (client side) and ``ReplyDecoder`` (upstream side).

See ``protocols.resp`` for the theory of operation; this module holds the parsers.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Final, Generic, TypeVar, cast

from protocols._resp_values import (
    AGGREGATE_TYPES,
    BLOB_TYPES,
    CLIENT_LIMITS,
    INT_CACHE,
    LINE_TYPES,
    NEED_DATA,
    NULL_ARRAY,
    SIMPLE_CACHE,
    UPSTREAM_LIMITS,
    NeedData,
    RespLimits,
    RespProtocolError,
    Value,
    strict_int,
)

CACHED: Final = 4096
_BULK_HDR: Final[dict[bytes, int]] = {b"$%d" % i: i for i in range(CACHED)}
_ARRAY_HDR: Final[dict[bytes, int]] = {b"*%d" % i: i for i in range(1, CACHED)}


def _char(byte: int) -> str:
    """A byte as Redis prints it with ``%c`` in an error (CR and LF become spaces)."""
    return " " if byte in (10, 13) else chr(byte)


def _capped(table: dict[bytes, int], limit: int, max_line: int) -> dict[bytes, int]:
    """The cached headers a decoder may trust without checking them against its limits."""
    if limit >= CACHED and max_line >= 5:
        return table
    return {k: v for k, v in table.items() if v <= limit and len(k) <= max_line}


T = TypeVar("T")


class _Stream(Generic[T]):
    """Buffer, compaction and forward window shared by both decoders.

    ``_buf[_pos:]`` is unparsed; ``_base`` is the stream offset of ``_buf[0]``. With
    ``keep_raw``, ``_run`` is the stream offset where unforwarded raw bytes begin; bytes before
    ``_base`` that are still unforwarded live in ``_spill`` (covering ``[_run, _base)``).
    """

    def __init__(self, limits: RespLimits, keep_raw: bool) -> None:
        self._limits = limits
        self._keep_raw = keep_raw
        self._buf = b""
        self._pos = 0
        self._base = 0
        self._parts: list[bytes] = []
        self._partlen = 0
        self._need = 0
        self._run = 0
        self._spill: list[bytes] = []
        self._out: list[bytes] = []
        self._last_start = -1
        self._last_end = 0
        self._bulk_hdr = _capped(_BULK_HDR, limits.max_bulk_len, limits.max_inline_len)
        self._array_hdr = _capped(_ARRAY_HDR, limits.max_array_len, limits.max_inline_len)
        self._max_line = limits.max_inline_len

    def next(self) -> T | NeedData:
        """The next complete value, or ``NEED_DATA`` (see the subclasses)."""
        raise NotImplementedError

    def at_boundary(self) -> bool:
        """Whether every fed byte has been parsed into returned values (nothing is cut)."""
        raise NotImplementedError

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer. Never parses, never raises.

        Args:
            data: the next bytes of the stream, in order (``bytearray``/``memoryview`` are copied).
        """
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            return
        buf, pos = self._buf, self._pos
        if pos == len(buf) and not self._parts:
            self._compact(data)
            return
        self._parts.append(data)
        self._partlen += len(data)
        if len(buf) - pos + self._partlen >= self._need:
            parts, self._parts, self._partlen = self._parts, [], 0
            self._compact(b"".join([buf[pos:], *parts]))

    def _compact(self, data: bytes) -> None:
        """Drop the parsed part of the buffer (spilling unforwarded raw bytes) and adopt data."""
        if self._keep_raw:
            keep = self._run - self._base
            if keep < self._pos:
                self._spill.append(self._buf[max(keep, 0) : self._pos])
        self._base += self._pos
        self._buf, self._pos, self._need = data, 0, 0  # a wait ends here, so does its need

    def _line_too_long(self, buf: bytes, pos: int, nl: int) -> bool:
        """Whether the line at ``pos`` (ending at ``nl``; unfinished if ``nl < 0``) is too long."""
        if nl >= 0:
            return nl - pos > self._limits.max_inline_len
        avail = len(buf) - pos - (1 if buf.endswith(b"\r") else 0)
        return avail > self._limits.max_inline_len

    def replace(self, data: bytes) -> None:
        """Send ``data`` instead of the raw bytes of the value ``next()`` returned last.

        Args:
            data: the wire bytes to forward in its place (``b""`` forwards nothing).

        Raises:
            RuntimeError: without ``keep_raw``, or when nothing was returned since the last
                ``replace()``/``forward()``.
        """
        if not self._keep_raw or self._last_start < self._run:
            raise RuntimeError("replace() needs keep_raw and a value returned by next()")
        if self._last_start > self._run:
            self._out.append(self._take(self._last_start))
        self._take(self._last_end)
        self._out.append(data)

    def forward(self) -> bytes:
        """The bytes to send on for every value returned since the last ``forward()``.

        Unchanged values are forwarded as the exact bytes received (one slice per run), replaced
        ones as their replacement. Call it after the ``next()`` loop, before the next ``feed()``
        for the cheapest path (earlier calls are correct, only slower with hiredis).

        Returns:
            The bytes, possibly empty.

        Raises:
            RuntimeError: without ``keep_raw``.
        """
        if not self._keep_raw:
            raise RuntimeError("forward() needs keep_raw=True")
        if self._last_end > self._run:
            self._out.append(self._take(self._last_end))
        out, self._out = self._out, []
        return out[0] if len(out) == 1 else b"".join(out)

    def _take(self, upto: int) -> bytes:
        """Raw bytes from ``_run`` to stream offset ``upto``; moves ``_run`` there."""
        base, run = self._base, self._run
        self._run = upto
        if not self._spill:
            return self._buf[run - base : upto - base]
        joined = b"".join(self._spill)
        if upto <= base:
            rest = joined[upto - run :]
            self._spill = [rest] if rest else []
            return joined[: upto - run]
        self._spill = []
        return joined + self._buf[: upto - base]


class RequestDecoder(_Stream[list[bytes]]):
    """Client requests -> ``list[bytes]`` per command, framed exactly as Redis frames them.

    Usage: ``feed(data)``, then call ``next()`` until it returns ``NEED_DATA``. Empty commands
    (blank inline lines, ``*0``, ``*-1``) are consumed silently, as Redis does.
    """

    def __init__(self, limits: RespLimits = CLIENT_LIMITS, *, keep_raw: bool = False) -> None:
        """A decoder for one connection.

        Args:
            limits: size limits (``CLIENT_LIMITS`` by default).
            keep_raw: keep the wire bytes of returned values for ``replace()``/``forward()``.
        """
        super().__init__(limits, keep_raw)
        self._args: list[bytes] | None = None
        self._left = 0
        self._start = 0

    def at_boundary(self) -> bool:
        """See ``_Stream.at_boundary``."""
        return self._args is None and self._pos == len(self._buf) and not self._parts

    def next(self) -> list[bytes] | NeedData:
        """The next complete command.

        Returns:
            The command's arguments (never empty), or ``NEED_DATA``.

        Raises:
            RespProtocolError: malformed framing or a broken limit; the decoder is then unusable.
        """
        while not self._parts:
            buf, pos = self._buf, self._pos
            if self._args is None:
                if pos >= len(buf):
                    self._need = 1
                    return NEED_DATA
                self._start = self._base + pos
                cmd = self._multibulk(buf, pos) if buf[pos] == 42 else self._inline(buf, pos)
            else:
                cmd = self._multibulk(buf, pos)
            if cmd is None:
                return NEED_DATA
            if cmd:
                self._last_start, self._last_end = self._start, self._base + self._pos
                return cmd
        return NEED_DATA

    def _multibulk(self, buf: bytes, pos: int) -> list[bytes] | None:
        """Parse (or resume) ``*<n>`` and its ``$`` elements; None when more bytes are needed."""
        end, find = len(buf), buf.find
        args = self._args
        if args is None:
            nl = find(b"\r", pos)
            if nl < 0 or nl + 2 > end:
                self._wait_line(buf, pos, nl, "mbulk")
                return None
            count = self._array_hdr.get(buf[pos:nl])
            if count is None:
                count = self._count(buf, pos, nl)
            pos = nl + 2
            if count <= 0:
                self._pos = pos
                return []
            args, left = [], count
        else:
            left = self._left
        bulk_hdr = self._bulk_hdr
        while left:
            nl = find(b"\r", pos)
            if nl < 0 or nl + 2 > end:
                self._args, self._left, self._pos = args, left, pos
                self._wait_line(buf, pos, nl, "bulk")
                return None
            size = bulk_hdr.get(buf[pos:nl])
            if size is None:
                size = self._bulk_len(buf, pos, nl)
            stop = nl + 2 + size
            if stop + 2 > end:
                self._args, self._left, self._pos = args, left, pos
                self._need = stop + 2 - pos
                return None
            args.append(buf[nl + 2 : stop])
            pos = stop + 2
            left -= 1
        self._args = None
        self._pos = pos
        return args

    def _wait_line(self, buf: bytes, pos: int, nl: int, what: str) -> None:
        if self._line_too_long(buf, pos, nl):
            raise RespProtocolError(f"Protocol error: too big {what} count string")
        self._need = len(buf) - pos + 1

    def _count(self, buf: bytes, pos: int, nl: int) -> int:
        if nl - pos > self._limits.max_inline_len:
            raise RespProtocolError("Protocol error: too big mbulk count string")
        count = strict_int(buf[pos + 1 : nl])
        if count is None or count > self._limits.max_array_len:
            raise RespProtocolError("Protocol error: invalid multibulk length")
        return count

    def _bulk_len(self, buf: bytes, pos: int, nl: int) -> int:
        if nl - pos > self._limits.max_inline_len:
            raise RespProtocolError("Protocol error: too big bulk count string")
        if buf[pos] != 36:
            raise RespProtocolError(f"Protocol error: expected '$', got '{_char(buf[pos])}'")
        size = strict_int(buf[pos + 1 : nl])
        if size is None or size < 0 or size > self._limits.max_bulk_len:
            raise RespProtocolError("Protocol error: invalid bulk length")
        return size

    def _inline(self, buf: bytes, pos: int) -> list[bytes] | None:
        """One inline line (up to LF, a CR before it dropped), split as ``sdssplitargs``."""
        nl = buf.find(b"\n", pos)
        if buf.find(b"\0", pos, nl if nl >= 0 else len(buf)) >= 0:
            nl = -1  # Redis looks for the LF with strchr(), which stops at a NUL
        stop = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
        if self._line_too_long(buf, pos, stop):
            raise RespProtocolError("Protocol error: too big inline request")
        if nl < 0:
            self._need = len(buf) - pos + 1
            return None
        args = split_args(buf[pos:stop])
        self._pos = nl + 1
        return args


_SPACE: Final = re.compile(rb"[ \t\n\v\f\r]*")
_TOKEN: Final = re.compile(
    rb"""([^ \n\r\t"']*+)(?:"((?:\\x[0-9a-fA-F]{2}|\\.|[^"\\])*+)"|'((?:\\'|[^'])*+)')?""", re.S
)
_DQ_ESCAPE: Final = re.compile(rb"\\x([0-9a-fA-F]{2})|\\(.)", re.S)
_ESCAPES: Final = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"a": b"\a"}


def _unescape(match: re.Match[bytes]) -> bytes:
    hexa, char = match.group(1), match.group(2)
    return bytes([int(hexa, 16)]) if hexa is not None else _ESCAPES.get(char, char)


def split_args(line: bytes) -> list[bytes]:
    """Split an inline command line exactly as Redis's ``sdssplitargs`` does.

    Blanks separate arguments; ``"..."`` supports ``\\n \\r \\t \\b \\a \\xHH`` and ``\\<c>``;
    ``'...'`` supports ``\\'``; a closing quote must be followed by a blank or the end. As in C,
    a NUL byte ends the line.

    Args:
        line: the line without its CRLF.

    Returns:
        The arguments (empty for a blank line).

    Raises:
        RespProtocolError: ``Protocol error: unbalanced quotes in request``.
    """
    line = line.split(b"\0", 1)[0]
    args: list[bytes] = []
    pos, end = cast(re.Match[bytes], _SPACE.match(line)).end(), len(line)
    while pos < end:
        match = cast(re.Match[bytes], _TOKEN.match(line, pos))
        plain, dquoted, squoted = match.groups()
        stop = match.end()
        if dquoted is not None:
            plain += _DQ_ESCAPE.sub(_unescape, dquoted)
        elif squoted is not None:
            plain += squoted.replace(b"\\'", b"'")
        quoted = dquoted is not None or squoted is not None
        if stop < end and line[stop] in (b" \t\n\v\f\r" if quoted else b" \t\n\r"):
            stop += 1
        elif stop < end:
            raise RespProtocolError("Protocol error: unbalanced quotes in request")
        args.append(plain)
        pos = cast(re.Match[bytes], _SPACE.match(line, stop)).end()
    return args


class _Pushed(enum.Enum):
    """``_aggregate`` pushed a frame: there is no value yet."""

    PUSHED = "PUSHED"


_PUSHED: Final = _Pushed.PUSHED


class _Frame:
    """An aggregate being filled: ``size`` elements go into ``items``, then ``finish``."""

    __slots__ = ("finish", "items", "size")

    def __init__(self, finish: Callable[[list[Value]], Value], size: int) -> None:
        self.finish = finish
        self.items: list[Value] = []
        self.size = size


class ReplyDecoder(_Stream[Value]):
    """Upstream replies (RESP2 and RESP3 alike) -> ``Value``.

    Usage: ``feed(data)``, then call ``next()`` until it returns ``NEED_DATA``.
    """

    def __init__(self, limits: RespLimits = UPSTREAM_LIMITS, *, keep_raw: bool = False) -> None:
        """A decoder for one connection.

        Args:
            limits: size limits (``UPSTREAM_LIMITS`` by default).
            keep_raw: keep the wire bytes of returned values for ``replace()``/``forward()``.
        """
        super().__init__(limits, keep_raw)
        self._stack: list[_Frame] = []
        self._start = 0

    def at_boundary(self) -> bool:
        """See ``_Stream.at_boundary``."""
        return not self._stack and self._pos == len(self._buf) and not self._parts

    def next(self) -> Value | NeedData:
        """The next complete reply (a push or an attributed value counts as one).

        The hot loop is deliberately one function: ``$``, ``+`` and ``:`` are parsed inline, every
        other type goes through the type tables (``_other``), aggregates through a frame stack.

        Returns:
            The value, or ``NEED_DATA`` (``None`` is a value: a null).

        Raises:
            RespProtocolError: malformed input or a broken limit; the decoder is then unusable.
        """
        if self._parts:
            return NEED_DATA
        buf, pos, stack, max_line = self._buf, self._pos, self._stack, self._max_line
        if not stack:
            self._start = self._base + pos
        find = buf.find
        while True:
            nl = find(b"\r\n", pos)
            if nl < 0 or nl - pos > max_line:
                return self._wait_line(buf, pos, nl)
            kind = buf[pos]
            if kind == 36:  # '$', then '+' and ':': the common replies, inlined
                size = self._bulk_hdr.get(buf[pos:nl])
                if size is None:
                    size = self._length(buf, pos, nl, True)
                if size < 0:
                    value: Value = None
                    pos = nl + 2
                else:
                    stop = nl + 2 + size
                    if stop + 2 > len(buf):
                        return self._wait_blob(pos, stop)
                    value = buf[nl + 2 : stop]
                    pos = stop + 2
            elif kind == 43 and (simple := SIMPLE_CACHE.get(buf[pos + 1 : nl])) is not None:
                value, pos = simple, nl + 2
            elif kind == 58 and (number := INT_CACHE.get(buf[pos + 1 : nl])) is not None:
                value, pos = number, nl + 2
            else:
                parsed = self._other(buf, pos, nl)
                if parsed is NEED_DATA:
                    return NEED_DATA
                item, pos = parsed
                if item is _PUSHED:
                    continue
                value = item
            while stack:
                frame = stack[-1]
                items = frame.items
                items.append(value)
                if len(items) < frame.size:
                    break
                stack.pop()
                value = frame.finish(items)
            else:
                self._pos = pos
                self._last_start, self._last_end = self._start, self._base + pos
                return value

    def _wait_line(self, buf: bytes, pos: int, nl: int) -> NeedData:
        if self._line_too_long(buf, pos, nl):
            raise RespProtocolError("Protocol error: too big reply line")
        self._pos, self._need = pos, len(buf) - pos + 1
        return NEED_DATA

    def _wait_blob(self, pos: int, stop: int) -> NeedData:
        self._pos, self._need = pos, stop + 2 - pos
        return NEED_DATA

    def _length(self, buf: bytes, pos: int, nl: int, nullable: bool) -> int:
        size = strict_int(buf[pos + 1 : nl])
        if size is None or size < (-1 if nullable else 0) or size > self._limits.max_bulk_len:
            raise RespProtocolError("Protocol error: invalid bulk length")
        return size

    def _other(self, buf: bytes, pos: int, nl: int) -> tuple[Value | _Pushed, int] | NeedData:
        """Every type but ``$``, dispatched on the type byte: (value, next position)."""
        kind = buf[pos]
        line_type = LINE_TYPES.get(kind)
        if line_type is not None:
            return line_type(buf[pos + 1 : nl]), nl + 2
        blob_type = BLOB_TYPES.get(kind)
        if blob_type is not None:
            stop = nl + 2 + self._length(buf, pos, nl, False)
            if stop + 2 > len(buf):
                return self._wait_blob(pos, stop)
            return blob_type(buf[nl + 2 : stop]), stop + 2
        aggregate = AGGREGATE_TYPES.get(kind)
        if aggregate is None:
            raise RespProtocolError(f"Protocol error: invalid reply type '{_char(kind)}'")
        return self._aggregate(aggregate, buf, pos, nl), nl + 2

    def _aggregate(
        self,
        aggregate: tuple[int, int, Callable[[list[Value]], Value]],
        buf: bytes,
        pos: int,
        nl: int,
    ) -> Value | _Pushed:
        """An aggregate header: an empty/null value at once, else push a frame (``_PUSHED``)."""
        per, extra, finish = aggregate
        count = strict_int(buf[pos + 1 : nl])
        if count == -1 and buf[pos] == 42:
            return NULL_ARRAY
        if count is None or count < 0 or count * per > self._limits.max_array_len:
            raise RespProtocolError("Protocol error: invalid multibulk length")
        size = count * per + extra
        if size == 0:
            return finish([])
        if len(self._stack) >= self._limits.max_depth:
            raise RespProtocolError("Protocol error: nesting too deep")
        self._stack.append(_Frame(finish, size))
        return _PUSHED
