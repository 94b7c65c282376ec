"""RESP2/RESP3 wire codec, sans-I/O: ``feed(bytes)`` then ``next()``; values in, ``bytes`` out.

Theory of operation
===================
Two decoders share one buffer discipline (``_Stream``). ``feed()`` only stores bytes; ``next()``
parses as far as it can and returns one value, or ``NEED_DATA``. Parsing is resumable: an
aggregate cut by a read boundary keeps its finished elements (a request's argument list, a
reply's frame stack) and resumes at the unfinished one, so a reply or pipeline fed in N pieces
costs O(total), never O(N * total). When an element is cut, the decoder records how many bytes
it needs before it can progress; ``feed()`` appends to a list until that many have arrived and
joins once, so a 512 MiB bulk string fed in 64 KiB reads is copied once, not 8000 times.

* ``RequestDecoder`` (client side) parses exactly what Redis's ``processInputBuffer`` parses:
  a leading ``*`` selects multibulk (a header found by the first CR, each element a ``$`` bulk,
  the 2 bytes after a bulk skipped unchecked, ``*0``/``*-1`` ignored), anything else is an inline
  command split by ``split_args`` (Redis ``sdssplitargs``: quotes, ``\\x41`` escapes; a NUL hides
  the newline as ``strchr`` does). Mirroring Redis byte for byte matters: if veil and Redis framed
  a stream differently, a client could smuggle a command past the policy. Errors carry Redis's
  wording (``Protocol error: invalid bulk length`` ...).
* ``ReplyDecoder`` (upstream side) parses every RESP2 and RESP3 type (CRLF line ends, canonical
  integers; the 2 bytes after a bulk skipped unchecked, as hiredis and redis-py do). RESP3
  streamed strings and aggregates (``$?``, ``*?``) are refused: Redis never sends them.

Values (``Value``): a bulk string is ``bytes``, an integer ``int``, a RESP3 boolean ``bool``, an
array ``list``, a null bulk or RESP3 null ``None``, a RESP2 null array ``NULL_ARRAY``. Everything
else is an explicit wrapper, so the proxy can tell types apart: ``SimpleString``, ``ErrorReply``
(``bulk=True`` for ``!``), ``Double`` (keeps Redis's text), ``BigNumber``, ``Verbatim``, and
``Map``/``Set``/``Push`` over a flat ``list`` (a map may repeat or nest keys; order is kept),
``Attributed(attributes, value)`` for a ``|`` attribute and the value it annotates.

Encoding: ``encode_command(args)`` writes a multibulk request; ``encode_reply(value, protocol)``
writes a reply for a RESP2 or RESP3 client. RESP3-only types downgrade as Redis itself answers a
RESP2 client: map -> flat array, set and push -> array, double -> bulk string of the same text,
boolean -> integer 1/0, big number -> bulk string of its digits, verbatim -> bulk string without
the ``txt:`` prefix, bulk error -> simple error, attributes dropped, RESP3 null -> null bulk
``$-1``. Redis answers ``*-1`` (not ``$-1``) where the command returns a null *array* (BLPOP
timeout, aborted EXEC, XREAD without data ...): a value decoded from a RESP3 ``_`` cannot know
that, so the caller passes ``NULL_ARRAY`` for those commands. Likewise Redis 7 *reshapes* some
replies for RESP3 (``ZRANGE ... WITHSCORES`` and friends answer ``[member, score]`` pairs, not a
flat list): that is command knowledge, not a type, and stays with the proxy (which is simplest
when the upstream connection speaks the client's protocol). Simple strings and errors never
carry CR or LF on the wire: an error's CR/LF become spaces (as Redis does), a simple string's
raise ``ValueError``.

Forwarding raw bytes: most traffic passes veil unchanged, and re-encoding is the single largest
avoidable cost. A decoder built with ``keep_raw=True`` keeps the wire bytes of everything
``next()`` returned; ``replace(data)`` substitutes bytes for the last value (``b""`` drops it) and
``forward()`` returns the bytes to send on: one slice for a run of unchanged values, so a
pipeline forwarded untouched costs one slice, not one per command. Offsets are tracked only
where needed (the hiredis decoders get them from their verification, or compute them when a
run boundary needs one). Call ``replace()`` right after the ``next()`` that returned the value,
and ``forward()`` after the ``next()`` loop, before the next ``feed()``.

hiredis (``protocols._hiredis``, chosen by ``request_decoder_class()``/``reply_decoder_class()``):
hiredis 3.x conflates ``+OK``/``$2 OK``, ``$-1``/``*-1``/``_``, sets/arrays, loses a double's text
and a verbatim format, mangles attributes, refuses ``!`` and aggregate map keys, skips bulk
trailers unchecked, enforces no limit and reports no offsets. So it only parses, and what it
returns is verified before use: requests and ``$`` replies (bulk strings, flat arrays of them)
by comparing the buffer with their canonical re-encoding (``hiredis.pack_command``, in C),
``+``/``:``-only replies (a pipeline of ``+OK``) by a byte guard and a probe; the pure decoder
takes over at the first unverified byte. Everything else (errors, nulls, RESP3 types, nested
aggregates) is parsed by the pure decoder. Measured with ``python3 bench/resp_codec.py``
(depth-16 pipelines, 100-byte values; ns per item, best of 9 round-robin rounds on the shared
2-core dev box; a raw ``hiredis.Reader`` that verifies nothing is the floor):

    requests  SET key <100 B>   floor 206   pure 2543   hiredis 1297   hiredis + forward() 1723
    replies   $100 (GET)        floor 112   pure 1270   hiredis  979
    replies   +OK                           pure  859   hiredis  696
    replies   *2 of $100 (MGET)             pure 3621   hiredis 1148

Across runs (absolute numbers moved up to 2x with the machine's load) the ratios held: hiredis
decodes requests 1.7-2x, bulk replies 1.3-1.7x, ``+OK`` 1.2x and arrays 2.5-3x faster than pure.
A guard-only design was faster (requests 3.5x) but unsound: after a bulk whose 2 trailer bytes
are not CRLF (Redis skips them unchecked), a ``+``/``~`` could hide from the guard; the frozen
vectors ``*_after_bulk_trailer``/``bulk_trailer_then_*`` pin that case.
``encode_command`` stays pure: ``hiredis.pack_command`` is only ~15% faster and needs a tuple.

Limits (``RespLimits``) are checked when a header is read, before any of the body is buffered:
bulk length, aggregate length, nesting depth, line length (a header or inline line, type byte
included). ``CLIENT_LIMITS``: 512 MiB bulk (``proto-max-bulk-len``), 1 Mi elements, depth 32,
64 KiB lines (``PROTO_INLINE_MAX_SIZE``); ``UPSTREAM_LIMITS`` allow 2^32-1 elements and 1 MiB
lines. Any violation or malformed input raises ``RespProtocolError``: the peer sent garbage, and
the connection must be closed after answering ``resp_error``.

Where veil deliberately differs from Redis (always by refusing, never by reading otherwise):
more than ``max_array_len`` arguments (Redis 7 allows INT_MAX); a NUL inside a multibulk header
line is refused at once (Redis's ``strchr`` stalls the connection instead); a line is too long
by its length alone (Redis decides by how much happens to be buffered, so a long line may pass
or fail depending on read sizes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, cast

from protocols._resp_decode import CACHED, ReplyDecoder, RequestDecoder, split_args
from protocols._resp_values import (
    CLIENT_LIMITS,
    CRLF,
    DOUBLE_RE,
    NEED_DATA,
    NULL_ARRAY,
    OK,
    UPSTREAM_LIMITS,
    Attributed,
    BigNumber,
    Double,
    ErrorReply,
    Map,
    NeedData,
    NullArray,
    Protocol,
    Push,
    RespLimits,
    RespProtocolError,
    Set,
    SimpleString,
    Value,
    Verbatim,
)

__all__ = [
    "CLIENT_LIMITS",
    "NEED_DATA",
    "NULL_ARRAY",
    "OK",
    "UPSTREAM_LIMITS",
    "Attributed",
    "BigNumber",
    "Double",
    "ErrorReply",
    "Map",
    "NeedData",
    "NullArray",
    "Protocol",
    "Push",
    "ReplyDecoder",
    "RequestDecoder",
    "RespLimits",
    "RespProtocolError",
    "Set",
    "SimpleString",
    "Value",
    "Verbatim",
    "encode_command",
    "encode_reply",
    "reply_decoder_class",
    "request_decoder_class",
    "split_args",
]


_BULK_PREFIX: Final = [b"$%d\r\n" % i for i in range(CACHED)]


def _bulk_prefix(size: int) -> bytes:
    return _BULK_PREFIX[size] if size < CACHED else b"$%d\r\n" % size


def encode_command(args: Sequence[bytes]) -> bytes:
    """A request as a multibulk array of bulk strings (what every Redis client sends).

    Args:
        args: the command name and arguments.

    Returns:
        ``*<n>\\r\\n`` followed by ``$<len>\\r\\n<arg>\\r\\n`` per argument.
    """
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        size = len(arg)
        out += (_BULK_PREFIX[size] if size < CACHED else b"$%d\r\n" % size, arg, CRLF)
    return b"".join(out)


def encode_reply(value: Value, protocol: Protocol = 2) -> bytes:
    """A reply for a client speaking ``protocol``, downgrading RESP3 types for RESP2 clients.

    Args:
        value: a decoded or constructed value.
        protocol: 2 or 3, what the client negotiated with HELLO.

    Returns:
        The wire bytes.

    Raises:
        TypeError: ``value`` holds something that is not a ``Value``.
        ValueError: a simple string with CR/LF, a verbatim format that is not 3 bytes, a double
            that is not a number, or a map/attribute list with an odd number of items.
    """
    kind = type(value)
    if kind is bytes:
        data = cast(bytes, value)
        return b"".join((_bulk_prefix(len(data)), data, CRLF))
    if value is OK:
        return b"+OK\r\n"
    if kind is int:
        return b":%d\r\n" % cast(int, value)
    out: list[bytes] = []
    _encode(value, out, protocol == 3)
    return b"".join(out)


def _encode(value: Value, out: list[bytes], resp3: bool) -> None:
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        raise TypeError(f"cannot encode {type(value).__name__} as RESP")
    encoder(value, out, resp3)


def _bulk(data: bytes, out: list[bytes]) -> None:
    out += (_bulk_prefix(len(data)), data, CRLF)


def _items(head: bytes, count: int, items: list[Value], out: list[bytes], resp3: bool) -> None:
    out.append(b"%s%d\r\n" % (head, count))
    for item in items:
        if type(item) is bytes:
            out += (_bulk_prefix(len(item)), item, CRLF)
        else:
            _encode(item, out, resp3)


def _pairs(head: bytes, items: list[Value], out: list[bytes], resp3: bool) -> None:
    if len(items) % 2:
        raise ValueError("a map or attribute list needs an even number of items")
    if resp3:
        _items(head, len(items) // 2, items, out, resp3)
    else:
        _items(b"*", len(items), items, out, resp3)


def _enc_simple(value: Value, out: list[bytes], resp3: bool) -> None:
    text = cast(SimpleString, value).value
    if b"\r" in text or b"\n" in text:
        raise ValueError("a simple string cannot contain CR or LF")
    out.append(b"+%s\r\n" % text)


def _enc_error(value: Value, out: list[bytes], resp3: bool) -> None:
    error = cast(ErrorReply, value)
    if error.bulk and resp3:
        out += (b"!%d\r\n" % len(error.message), error.message, CRLF)
    else:
        out.append(b"-%s\r\n" % error.message.replace(b"\r", b" ").replace(b"\n", b" "))


def _enc_double(value: Value, out: list[bytes], resp3: bool) -> None:
    raw = cast(Double, value).raw
    if DOUBLE_RE.fullmatch(raw) is None:
        raise ValueError(f"not a RESP double: {raw!r}")
    if resp3:
        out.append(b",%s\r\n" % raw)
    else:
        _bulk(raw, out)


def _enc_big_number(value: Value, out: list[bytes], resp3: bool) -> None:
    number = cast(BigNumber, value).value
    if resp3:
        out.append(b"(%d\r\n" % number)
    else:
        _bulk(b"%d" % number, out)


def _enc_verbatim(value: Value, out: list[bytes], resp3: bool) -> None:
    verbatim = cast(Verbatim, value)
    if len(verbatim.format) != 3 or b":" in verbatim.format:
        raise ValueError("a verbatim format is 3 bytes without ':'")
    if resp3:
        body = b"%s:%s" % (verbatim.format, verbatim.text)
        out += (b"=%d\r\n" % len(body), body, CRLF)
    else:
        _bulk(verbatim.text, out)


def _enc_attributed(value: Value, out: list[bytes], resp3: bool) -> None:
    attributed = cast(Attributed, value)
    if len(attributed.attributes) % 2:
        raise ValueError("an attribute list needs an even number of items")
    if resp3:
        _pairs(b"|", attributed.attributes, out, resp3)
    _encode(attributed.value, out, resp3)


def _enc_bool(value: Value, out: list[bytes], resp3: bool) -> None:
    if resp3:
        out.append(b"#t\r\n" if value else b"#f\r\n")
    else:
        out.append(b":1\r\n" if value else b":0\r\n")


# type -> encoder; RESP3-only types downgrade for RESP2 clients (see the module docstring)
_ENCODERS: Final[dict[type, Callable[[Value, list[bytes], bool], None]]] = {
    bytes: lambda value, out, resp3: _bulk(cast(bytes, value), out),
    int: lambda value, out, resp3: out.append(b":%d\r\n" % cast(int, value)),
    bool: _enc_bool,
    type(None): lambda value, out, resp3: out.append(b"_\r\n" if resp3 else b"$-1\r\n"),
    NullArray: lambda value, out, resp3: out.append(b"_\r\n" if resp3 else b"*-1\r\n"),
    list: lambda value, out, resp3: _items(b"*", len(v := cast(list[Value], value)), v, out, resp3),
    Set: lambda value, out, resp3: _items(
        b"~" if resp3 else b"*", len(v := cast(Set, value).items), v, out, resp3
    ),
    Push: lambda value, out, resp3: _items(
        b">" if resp3 else b"*", len(v := cast(Push, value).items), v, out, resp3
    ),
    Map: lambda value, out, resp3: _pairs(b"%", cast(Map, value).items, out, resp3),
    Attributed: _enc_attributed,
    SimpleString: _enc_simple,
    ErrorReply: _enc_error,
    Double: _enc_double,
    BigNumber: _enc_big_number,
    Verbatim: _enc_verbatim,
}


def request_decoder_class() -> type[RequestDecoder]:
    """The fastest ``RequestDecoder`` available (uvicorn ``auto.py`` style): hiredis if installed.

    Returns:
        ``protocols._hiredis.HiredisRequestDecoder`` when hiredis imports, else ``RequestDecoder``.
    """
    try:
        from protocols._hiredis import HiredisRequestDecoder
    except ImportError:
        return RequestDecoder
    return HiredisRequestDecoder


def reply_decoder_class() -> type[ReplyDecoder]:
    """The fastest ``ReplyDecoder`` available: hiredis if installed (same values either way).

    Returns:
        ``protocols._hiredis.HiredisReplyDecoder`` when hiredis imports, else ``ReplyDecoder``.
    """
    try:
        from protocols._hiredis import HiredisReplyDecoder
    except ImportError:
        return ReplyDecoder
    return HiredisReplyDecoder
