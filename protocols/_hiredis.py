"""hiredis accelerators for both decoders: same interface, same values, fewer microseconds.

Theory of operation
===================
hiredis 3.x parses several times faster than Python, but it loses distinctions veil needs: it
returns ``+OK`` and ``$2 OK`` alike, ``$-1``/``*-1``/``_`` all as ``None``, sets as lists, ``(``
and ``=`` as bytes, doubles as floats (Redis's text lost), verbatim strings without their
format, attributes as a separate reply, error text decoded lossily; it refuses ``!`` and a map
with an aggregate key, skips the 2 bytes after a bulk unchecked (as Redis does), enforces no
size limit and reports no offsets. So hiredis only parses; what it returns is *verified* before
it is used, and the pure decoder takes over at the first byte that is not verified:

* **Batches.** A fed chunk goes to hiredis only if it starts at a value boundary and is smaller
  than every limit (no complete value in it can break one: each aggregate element takes at
  least ``_min_element`` bytes, a canonical header line at most 21). Every complete value is
  pulled at once; the pure decoder re-reads from the first value that fails verification (a cut
  value, an inline command, ``*0``, anything hiredis refused).
* **Verification by re-encoding** (requests; ``$`` replies). A buffer that *equals* the
  canonical encoding of the values hiredis returned can only be parsed one way, whatever hiredis
  conflates or skips. ``hiredis.pack_command`` re-encodes a command (or a flat array of bulk
  strings, or a run of bulk strings behind one header) in C; the comparison is a ``memcmp``,
  and it also yields each value's exact offset, used by ``replace()``/``forward()``.
* **Verification by guard and probe** (replies made only of ``+`` and ``:`` lines, such as a
  pipeline of ``+OK``). Such a chunk has no bulk, so no unchecked trailer: every type byte
  follows a CRLF that hiredis checked, and a byte guard (no ``\\n`` followed by a type other
  than ``+``/``:``, no ``*`` at all) proves every ``bytes`` is a simple string. Whether hiredis
  stopped between values is learnt by feeding it ``:123456789\\r\\n``: only a reader between
  values returns that as a top-level integer (inside one, its first byte is line content, and
  any suffix starts with a digit, CR or LF, which hiredis refuses). Sizes follow from the values
  and are computed only when a ``replace()`` run boundary or a hand-over needs them.

Measured with ``python3 bench/resp_codec.py`` (numbers in ``protocols/resp.py``'s docstring).
``encode_command`` itself stays pure: ``hiredis.pack_command`` is only ~15% faster on a
3-argument command and needs a tuple, which a wrapper would spend.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import accumulate
from typing import Final, cast

import hiredis

from protocols._resp_decode import ReplyDecoder, RequestDecoder, T, _Stream
from protocols._resp_values import (
    CLIENT_LIMITS,
    NEED_DATA,
    SIMPLE_CACHE,
    UPSTREAM_LIMITS,
    NeedData,
    RespLimits,
    SimpleString,
    Value,
)

_PROBE: Final = 123456789
_INCOMPLETE: Final = object()  # what gets() returns for "need more"; equal to no reply (0 == False)
_DIGITS: Final = bytes(len(str(i)) for i in range(65536))
# the stub declares a 1-tuple and returns Any; pack_command takes any tuple of bytes/str/numbers
_pack: Final = cast(Callable[[tuple[object, ...]], bytes], hiredis.pack_command)


def _digits(size: int) -> int:
    return _DIGITS[size] if size < 65536 else len(str(size))


def _reply_size(value: Value) -> int:
    """Bytes of the canonical encoding of a verified reply (bulk, list of bulks, int, simple)."""
    if type(value) is bytes:
        return len(value) + 5 + _digits(len(value))
    if type(value) is list:
        return 3 + _digits(len(value)) + sum(map(_reply_size, value))
    if type(value) is SimpleString:
        return len(value.value) + 3
    return len(b"%d" % cast(int, value)) + 3  # an int from a ':' line


def _verified_prefix(buf: bytes, wires: list[bytes | None]) -> list[int]:
    """Offsets of the leading values whose wire bytes are where the buffer has them."""
    offsets = [0]
    for wire in wires:
        if wire is None or not buf.startswith(wire, offsets[-1]):
            break
        offsets.append(offsets[-1] + len(wire))
    return offsets


class _HiredisBatch(_Stream[T]):
    """The batch machinery (see the module docstring); subclasses set the class attributes.

    ``_batch`` holds the verified values hiredis returned from ``_buf``, ``_index`` how many
    ``next()`` handed out, ``_offsets[i]`` (known or filled lazily) where value ``i`` starts.
    """

    _first: bytes  # bytes a batch may start with
    _min_element: int  # fewest bytes an element of an accepted aggregate takes

    def _setup(self, limits: RespLimits) -> None:
        self._reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        self._fresh = True
        self._batch: list[T] | None = None
        self._index = 0
        self._offsets: list[int] = []
        self._clean = False
        self._run_index = 0
        self._safe_size = min(
            limits.max_bulk_len,
            self._min_element * limits.max_array_len,
            limits.max_inline_len if limits.max_inline_len < 21 else limits.max_bulk_len,
        )

    def _verify(self, values: list[object]) -> tuple[list[T], bool]:
        """The leading values that are exactly what the pure decoder would return, and whether
        they end exactly where the buffer ends; sets ``_offsets`` (at least ``[0]``)."""
        raise NotImplementedError

    def _size(self, value: T) -> int:
        raise NotImplementedError

    def _next_pure(self) -> T | NeedData:
        """The pure decoder's ``next`` (a plain alias in each subclass: cheaper than super())."""
        raise NotImplementedError

    def _eligible(self, buf: bytes) -> bool:
        return buf[:1] in self._first and len(buf) <= self._safe_size

    def at_boundary(self) -> bool:
        """See ``_Stream.at_boundary``."""
        if self._batch is not None:
            return self._clean and self._index == len(self._batch)
        return super().at_boundary()

    def feed(self, data: bytes) -> None:
        """Append bytes; a chunk that starts at a value boundary may be parsed by hiredis.

        Args:
            data: the next bytes of the stream.
        """
        self._end_batch()
        at_boundary = self.at_boundary()
        super().feed(data)
        if not at_boundary or self._pos or not self._eligible(self._buf):
            return
        if self._keep_raw and self._last_end > self._run:
            self._out.append(self._take(self._last_end))  # the spill keeps what follows it
        if not self._fresh:
            self._reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        self._reader.feed(self._buf)
        self._fresh = False
        self._batch, self._clean = self._verify(self._pull())
        self._index = self._run_index = 0

    def _pull(self) -> list[object]:
        """Every complete value hiredis returns, up to the first it refuses."""
        try:
            return list(iter(self._reader.gets, _INCOMPLETE))
        except Exception:  # whatever hiredis refuses, the pure decoder judges (and words)
            pass
        self._reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        self._reader.feed(self._buf)
        values: list[object] = []
        try:
            while (value := self._reader.gets()) is not _INCOMPLETE:
                values.append(value)
        except Exception:
            pass
        return values

    def _between_values(self) -> bool:
        """Whether hiredis stopped between two values (see the module docstring)."""
        self._reader.feed(b":%d\r\n" % _PROBE)
        try:
            probe = self._reader.gets()
        except Exception:
            return False
        return type(probe) is int and probe == _PROBE

    def next(self) -> T | NeedData:
        """See the pure decoder's ``next``."""
        batch = self._batch
        if batch is not None:
            index = self._index
            if index < len(batch):
                self._index = index + 1
                return batch[index]
            if self._clean:
                return NEED_DATA
            self._end_batch()
        return self._next_pure()

    def replace(self, data: bytes) -> None:
        """See the pure decoder's ``replace``."""
        if self._batch is None or not self._keep_raw:
            super().replace(data)
            return
        last = self._index - 1
        if self._run_index > last:
            raise RuntimeError("replace() needs a value returned by next()")
        if self._run_index < last or self._spill:
            self._out.append(self._raw(self._run_index, last))
        self._out.append(data)
        self._run_index = last + 1

    def forward(self) -> bytes:
        """See the pure decoder's ``forward``."""
        if self._batch is not None and self._keep_raw and self._run_index < self._index:
            self._out.append(self._raw(self._run_index, self._index))
            self._run_index = self._index
        return super().forward()

    def _raw(self, first: int, stop: int) -> bytes:
        raw = self._buf[self._offset(first) : self._offset(stop)]
        if self._spill:  # bytes of requests Redis ignores (*0, blank lines) just before the batch
            raw, self._spill = b"".join([*self._spill, raw]), []
        return raw

    def _offset(self, index: int) -> int:
        """Where batch value ``index`` starts (``len(batch)``: where the batch ends)."""
        batch, offsets = self._batch or [], self._offsets
        if self._clean and len(batch) - index <= index - len(offsets) + 1:
            return len(self._buf) - sum(map(self._size, batch[index:]))
        while len(offsets) <= index:
            offsets.append(offsets[-1] + self._size(batch[len(offsets) - 1]))
        return offsets[index]

    def _end_batch(self) -> None:
        """Hand over to the pure decoder: its position and forward state from the batch."""
        batch = self._batch
        if batch is None:
            return
        self._clean = self._clean and self._index == len(batch)
        del batch[self._index :]  # pulled but never handed out: the pure decoder re-reads them
        end = self._offset(self._index)
        if self._keep_raw:
            if self._run_index:  # else the run still starts in the spill, before the batch
                self._run = self._base + self._offset(self._run_index)
            if batch:
                self._last_start = self._base + self._offset(self._index - 1)
        if batch:
            self._last_end = self._base + end
        self._pos = end
        self._fresh = self._clean
        self._batch = None


class HiredisRequestDecoder(_HiredisBatch[list[bytes]], RequestDecoder):
    """``RequestDecoder`` with hiredis parsing multibulk chunks (see the module docstring)."""

    _first = b"*"
    _min_element = 6  # $0\r\n\r\n
    _next_pure = RequestDecoder.next

    def __init__(self, limits: RespLimits = CLIENT_LIMITS, *, keep_raw: bool = False) -> None:
        """See ``RequestDecoder``."""
        super().__init__(limits, keep_raw=keep_raw)
        self._setup(limits)

    def _verify(self, values: list[object]) -> tuple[list[list[bytes]], bool]:
        buf, commands = self._buf, cast(list[list[bytes]], values)  # checked by the comparison
        try:
            if [] not in commands:  # *0 is no command: the pure decoder skips it
                wires = list(map(_pack, map(tuple, commands)))
                if buf.startswith(b"".join(wires)):
                    self._offsets = [0, *accumulate(map(len, wires))]
                    return commands, self._offsets[-1] == len(buf)
        except Exception:  # not a list of bytes/str/numbers: verified one by one below
            pass
        self._offsets = _verified_prefix(buf, list(map(self._wire, values)))
        return commands[: len(self._offsets) - 1], False

    @staticmethod
    def _wire(value: object) -> bytes | None:
        if type(value) is not list or not value or not all(type(v) is bytes for v in value):
            return None
        return _pack(tuple(value))

    def _size(self, value: list[bytes]) -> int:
        return len(_pack(tuple(value)))


_SIMPLE_LINES: Final = re.compile(rb"\n[^+:]")  # with no bulk anywhere, LF precedes every type


class HiredisReplyDecoder(_HiredisBatch[Value], ReplyDecoder):
    """``ReplyDecoder`` with hiredis parsing chunks of bulk strings (and flat arrays of them),
    verified by re-encoding, and chunks of ``+``/``:`` lines, guarded and probed."""

    _first = b"$*+:"
    _min_element = 4  # :1\r\n
    _next_pure = ReplyDecoder.next

    def __init__(self, limits: RespLimits = UPSTREAM_LIMITS, *, keep_raw: bool = False) -> None:
        """See ``ReplyDecoder``."""
        super().__init__(limits, keep_raw=keep_raw)
        self._setup(limits)

    def _eligible(self, buf: bytes) -> bool:
        if not super()._eligible(buf):
            return False
        if buf[:1] in b"+:":  # a chunk no longer than a line cannot hold a too long line
            return len(buf) <= self._max_line and b"$" not in buf and b"*" not in buf
        return self._limits.max_depth > 0

    def _verify(self, values: list[object]) -> tuple[list[Value], bool]:
        self._offsets = [0]
        buf, replies = self._buf, cast(list[Value], values)  # checked below
        if buf[:1] in b"+:":
            if _SIMPLE_LINES.search(buf) is not None:
                return [], False
            simple = SIMPLE_CACHE.get
            batch = [(simple(v) or SimpleString(v)) if type(v) is bytes else v for v in replies]
            return batch, self._between_values()
        try:  # the commonest shapes in one C call each: all bulk strings, all arrays of them
            if type(replies[0]) is bytes:
                wire = _pack(tuple(replies))[len(b"*%d\r\n" % len(replies)) :]
            else:
                wire = b"".join(map(_pack, map(tuple, cast(list[list[bytes]], replies))))
            if buf.startswith(wire):
                return replies, len(wire) == len(buf)
        except Exception:
            pass
        self._offsets = _verified_prefix(buf, list(map(self._wire, values)))
        return replies[: len(self._offsets) - 1], False

    @staticmethod
    def _wire(value: object) -> bytes | None:
        if type(value) is bytes:
            return _pack((value,))[4:]
        if type(value) is list and all(type(v) is bytes for v in value):
            return _pack(tuple(value))
        return None

    def _size(self, value: Value) -> int:
        return _reply_size(value)
