"""hiredis accelerators for both decoders: same interface, same values, fewer microseconds.

Theory of operation
===================
hiredis 3.x parses several times faster than Python, but it loses distinctions veil needs: it
returns ``+OK`` and ``$2 OK`` alike, ``$-1``/``*-1``/``_`` all as ``None``, sets as lists, ``(``
and ``=`` as bytes, doubles as floats (Redis's text lost), verbatim strings without their
format, attributes as a separate reply, error text decoded lossily; it refuses ``!`` and a map
with an aggregate key, enforces no size limits, and reports no offsets. So it only gets the
part of the traffic where none of that can happen, and the pure decoder handles the rest:

* **Batches.** A fed chunk goes to hiredis only if it starts at a value boundary, is smaller
  than every limit (so nothing in it can break one) and passes a byte guard: no ``\\n``
  followed by a type byte hiredis would misread (requests: ``+ ( = | ~ % >``; replies: every
  type but ``$ : *``, and no ``*-1``) and, for replies, fewer ``*`` bytes than ``max_depth``. A
  value that merely *starts* with such a byte (``+inf``, ``-1``) sends its chunk to the pure
  parser: only speed is lost. What is left maps 1:1 onto ``Value`` (requests: lists of bytes;
  replies: bytes, int, ``None`` from ``$-1``, lists), so hiredis's results are returned as is.
* **Pull, then hand over.** At ``feed()`` every complete value is pulled from hiredis at once.
  It stops at the first thing that is not one (a cut value, an inline command, ``*0``, a nested
  array in a request, any hiredis error); the pure decoder then takes over at the first byte
  hiredis did not return, and raises Redis's error or parses the rest exactly.
* **Where did hiredis stop?** It consumes a cut value's first bytes, so ``has_data()`` cannot
  tell "between values" from "inside one". After the last value the reader is fed the probe
  ``:123456789\\r\\n``: only a reader between values returns it as a top-level integer (inside
  a value, its first byte is line, payload, CRLF or element; any shorter suffix starts with a
  digit, CR or LF, which hiredis refuses).
* **Offsets, lazily.** hiredis accepts only canonical framing, so a value's wire size follows
  from the value. Sizes are computed only when a ``replace()`` run boundary or a hand-over needs
  one; forwarding or rewriting a whole batch computes none.

Measured with ``python3 bench/resp_codec.py`` (numbers in ``protocols/resp.py``'s docstring).
``encode_command`` is not accelerated: ``hiredis.pack_command`` is only ~15% faster on a
3-argument command and needs a tuple, which a wrapper would spend.
"""

from __future__ import annotations

import re
from itertools import chain
from typing import Final

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


def _digits(size: int) -> int:
    return _DIGITS[size] if size < 65536 else len(str(size))


def _command_size(command: list[bytes]) -> int:
    """Bytes of the canonical multibulk encoding of ``command``."""
    sizes = list(map(len, command))
    try:
        digits = sum(map(_DIGITS.__getitem__, sizes))
    except IndexError:  # an argument of 64 KiB or more
        digits = sum(map(_digits, sizes))
    return 3 + _digits(len(sizes)) + 5 * len(sizes) + sum(sizes) + digits


def _reply_size(value: Value) -> int:
    """Bytes of the canonical encoding of a bytes/int/None/list value."""
    if type(value) is bytes:
        return len(value) + 5 + _digits(len(value))
    if type(value) is int:
        return len(b"%d" % value) + 3
    if type(value) is list:
        return 3 + _digits(len(value)) + sum(map(_reply_size, value))
    return 5  # $-1


class _HiredisBatch(_Stream[T]):
    """The batch machinery (see the module docstring); subclasses set the class attributes.

    ``_batch`` holds the values hiredis returned from ``_buf``, ``_index`` how many ``next()``
    handed out, ``_offsets[i]`` (filled lazily) where value ``i`` starts in ``_buf``.
    """

    _first: bytes  # bytes a batch may start with
    _guard: re.Pattern[bytes]

    def _setup(self, limits: RespLimits) -> None:
        self._reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        self._fresh = True
        self._batch: list[T] | None = None
        self._index = 0
        self._offsets: list[int] = []
        self._clean = False
        self._run_index = 0
        self._safe_size = min(limits.max_bulk_len, 6 * limits.max_array_len)

    def at_boundary(self) -> bool:
        """See ``_Stream.at_boundary``."""
        if self._batch is not None:
            return self._clean and self._index == len(self._batch)
        return super().at_boundary()

    def _pull(self) -> list[T]:
        """Every complete value hiredis returns, up to the first it refuses."""
        try:
            return list(iter(self._reader.gets, _INCOMPLETE))
        except Exception:  # whatever hiredis refuses, the pure decoder judges (and words)
            pass
        self._reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        self._reader.feed(self._buf)
        batch: list[T] = []
        try:
            while (value := self._reader.gets()) is not _INCOMPLETE:
                batch.append(value)
        except Exception:
            pass
        return batch

    def _accept(self, values: list[T]) -> list[T]:
        """The leading values that are exactly what the pure decoder would return."""
        raise NotImplementedError

    def _size(self, value: T) -> int:
        raise NotImplementedError

    def _eligible(self, buf: bytes) -> bool:
        return (
            buf[:1] in self._first
            and len(buf) <= self._safe_size
            and self._guard.search(buf) is None
        )

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
        pulled = self._pull()
        batch = self._accept(pulled)
        self._batch, self._index, self._offsets, self._run_index = batch, 0, [0], 0
        self._clean = len(batch) == len(pulled) and self._between_values()

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

    def _next_pure(self) -> T | NeedData:
        """The pure decoder's ``next`` (a plain alias in each subclass: cheaper than super())."""
        raise NotImplementedError

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
    _guard = re.compile(rb"\n[+(=|~%>]")
    _next_pure = RequestDecoder.next

    def __init__(self, limits: RespLimits = CLIENT_LIMITS, *, keep_raw: bool = False) -> None:
        """See ``RequestDecoder``."""
        super().__init__(limits, keep_raw=keep_raw)
        self._setup(limits)

    def _accept(self, values: list[list[bytes]]) -> list[list[bytes]]:
        if [] not in values:
            try:
                b"".join(chain.from_iterable(values))  # only lists of bytes get through
                return values
            except TypeError:
                pass
        for index, command in enumerate(values):
            if type(command) is not list or not command:
                return values[:index]
            if not all(type(arg) is bytes for arg in command):
                return values[:index]
        return values

    def _size(self, value: list[bytes]) -> int:
        return _command_size(value)


_SIMPLE_LINES: Final = re.compile(rb"\n[-$_#,(!=%~|>]")  # with no '*' at all: '+' and ':' only


class HiredisReplyDecoder(_HiredisBatch[Value], ReplyDecoder):
    """``ReplyDecoder`` with hiredis parsing chunks of ``$``/``:``/``*`` or of ``+``/``:`` replies.

    The second shape (``+OK`` after every write in a pipeline) has no payloads, so every LF is
    followed by a type byte and every ``bytes`` hiredis returns is a simple string.
    """

    _first = b"$:*"
    _guard = re.compile(rb"\n(?:[-+_#,(!=%~|>]|\*-)")
    _next_pure = ReplyDecoder.next

    def __init__(self, limits: RespLimits = UPSTREAM_LIMITS, *, keep_raw: bool = False) -> None:
        """See ``ReplyDecoder``."""
        super().__init__(limits, keep_raw=keep_raw)
        self._setup(limits)
        self._simple_lines = False

    def _eligible(self, buf: bytes) -> bool:
        first, no_array = buf[:1], buf.find(b"*") < 0
        self._simple_lines = no_array and (first == b"+" or first == b":")
        if self._simple_lines:
            return len(buf) <= self._safe_size and _SIMPLE_LINES.search(buf) is None
        if not super()._eligible(buf) or buf.startswith(b"*-"):
            return False
        return no_array or buf.count(b"*") < self._limits.max_depth

    def _accept(self, values: list[Value]) -> list[Value]:
        if not self._simple_lines:
            return values
        simple = SIMPLE_CACHE.get
        return [(simple(v) or SimpleString(v)) if type(v) is bytes else v for v in values]

    def _size(self, value: Value) -> int:
        if type(value) is SimpleString:
            return len(value.value) + 3
        return _reply_size(value)
