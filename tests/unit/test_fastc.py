"""The compiled chunk parser (``proxy.redis._fastc``) on hostile bytes.

It reads client and upstream bytes in place, so it is held to two properties on random and
mutated chunks: whatever it takes is exactly what hiredis (and so Redis) reads -- the same
number of whole commands or replies, nothing partial, nothing left over -- and a chunk of
whole, canonical commands or replies is always taken. The integration test
``tests/integration/test_redis_fast.py`` shows that what it answers equals the general path.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import hiredis
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.redis import _fastc  # built by `pip install -e .`: never skipped
from proxy.redis.fast import _all, _whole

GET_IDX, SET_IDX, EXISTS_IDX, DEL_IDX = 1, 2, 3, 4
SPECS = {b"EXISTS": (EXISTS_IDX, 2), b"exists": (EXISTS_IDX, 2), b"DEL": (DEL_IDX, -2)}
NAMES = {b"GET": GET_IDX, b"get": GET_IDX, b"SET": SET_IDX, b"set": SET_IDX, b"EXISTS": 3,
         b"exists": 3, b"DEL": 4}  # fmt: skip


class Sink:
    closed = False

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.transport = self

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Conn:
    """What the chunk functions touch on a ``ClientConnection``."""

    def __init__(self, pending: list[Any] | None = None) -> None:
        self.pending: deque[Any] = deque(pending or [])
        self.counts = [0] * 8
        self.upstream = Sink()
        self.transport = Sink()
        self.sample = None
        self.sent = self.done = 0
        self.drain_waiter = None
        self.out: list[bytes] = []

    def _sent(self, n: int) -> None:
        self.sent += n


def chunks() -> Any:
    # only plaintext keys: nothing is sealed or opened, so the cipher is never reached
    return _fastc.Chunks({b"p": None, b"q": None}, SPECS, GET_IDX, SET_IDX, None, None)


def parse_all(data: bytes) -> list[Any] | None:
    """hiredis's reading of ``data`` as whole values only (None: partial or invalid)."""
    reader = hiredis.Reader()
    reader.feed(data)
    try:
        values = _all(reader)
    except Exception:
        return None
    return values if _whole(reader) else None


def mutate(data: bytes, how: tuple[int, int, int]) -> bytes:
    """Cut, overwrite or insert one byte at a position chosen by ``how``."""
    op, at, byte = how
    if not data:
        return data
    at %= len(data) + 1
    if op == 0:
        return data[:at]
    if op == 1 and at < len(data):
        return data[:at] + bytes([byte]) + data[at + 1 :]
    return data[:at] + bytes([byte]) + data[at:]


_KEY = st.sampled_from([b"p", b"q"])
_ARG = st.binary(max_size=12) | st.sampled_from([b"\r\n", b"*1\r\n", b"$0\r\n\r\n"])
_COMMAND = st.one_of(
    st.tuples(st.sampled_from([b"GET", b"get"]), _KEY),
    st.tuples(st.sampled_from([b"SET", b"set"]), _KEY, _ARG),
    st.tuples(st.sampled_from([b"EXISTS", b"exists"]), _KEY),
    st.tuples(st.just(b"DEL"), _KEY).map(lambda c: (*c, b"q")),
)
_HOW = st.none() | st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.sampled_from(
    [ord(c) for c in "*$:+-\r\n0123456789ab"]
))  # fmt: skip


@settings(max_examples=400, derandomize=True, deadline=None)
@given(commands=st.lists(_COMMAND, min_size=1, max_size=8), how=_HOW)
def test_requests_take_exactly_what_hiredis_reads(
    commands: list[tuple[bytes, ...]], how: tuple[int, int, int] | None
) -> None:
    whole = b"".join(hiredis.pack_command(c) for c in commands)
    data = whole if how is None else mutate(whole, how)
    conn = Conn()
    taken = chunks().requests(conn, data) if data else False
    parsed = parse_all(data)
    if taken:
        assert parsed is not None and len(parsed) == len(conn.pending)
        assert conn.upstream.written == [data]  # plaintext keys: forwarded as received
        for cmd, idx in zip(parsed, conn.pending, strict=True):
            assert NAMES[cmd[0]] == idx and cmd[1] in (b"p", b"q")
        assert conn.sent == len(parsed) and sum(conn.counts) == len(parsed)
    else:
        assert not conn.pending and not conn.upstream.written and not any(conn.counts)
    if how is None:
        assert taken, commands


def encode(value: Any) -> bytes:
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(encode(v) for v in value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, str):
        return b"+%s\r\n" % value.encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


_VALUE = st.recursive(
    st.integers(-(10**18) + 1, 10**18 - 1) | st.none() | st.binary(max_size=20)
    | st.text("abcOK ", max_size=8),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=400, derandomize=True, deadline=None)
@given(values=st.lists(_VALUE, min_size=1, max_size=8), extra=st.integers(0, 3), how=_HOW)
def test_replies_take_exactly_what_hiredis_reads(
    values: list[Any], extra: int, how: tuple[int, int, int] | None
) -> None:
    whole = b"".join(encode(v) for v in values)
    data = whole if how is None else mutate(whole, how)
    conn = Conn([EXISTS_IDX] * (len(values) + extra))
    before = len(conn.pending)
    taken = chunks().replies(conn, data) if data else False
    parsed = parse_all(data)
    if taken:
        count = before - len(conn.pending)
        assert parsed is not None and len(parsed) == count
        assert not any(isinstance(v, hiredis.ReplyError) for v in parsed)
        assert conn.transport.written == [data] and conn.done == count
    else:
        assert len(conn.pending) == before and not conn.transport.written
    if how is None:
        assert taken, values


def test_error_replies_and_resp3_go_to_the_general_path() -> None:
    for data in (b"-ERR x\r\n", b":1\r\n-MOVED 1 h:1\r\n", b"%1\r\n:1\r\n:2\r\n", b"_\r\n",
                 b",1.5\r\n", b"#t\r\n", b"$01\r\na\r\n", b"*1\r\n", b"$3\r\nabc\n\n"):  # fmt: skip
        conn = Conn([EXISTS_IDX, EXISTS_IDX])
        assert chunks().replies(conn, data) is False, data
        assert len(conn.pending) == 2 and not conn.transport.written
    # an error nested in an array (EXEC) is data, as hiredis's top-level check sees it
    conn = Conn([EXISTS_IDX])
    assert chunks().replies(conn, b"*2\r\n-ERR x\r\n:1\r\n") is True


def test_odd_requests_go_to_the_general_path() -> None:
    for data in (b"GET p\r\n", b"*2\r\n$3\r\nGET\r\n$1\r\np\r\n*",
                 b"*02\r\n$3\r\nGET\r\n$1\r\np\r\n",
                 b"*2\r\n$3\r\nGet\r\n$1\r\np\r\n", b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n",
                 b"*3\r\n$3\r\nGET\r\n$1\r\np\r\n$1\r\np\r\n", b"*1\r\n$3\r\nGET\r\n",
                 b"*2\r\n$3\r\nGET\r\n$-1\r\n", b"*2\r\n$3\r\nGET\r\n:1\r\n"):  # fmt: skip
        conn = Conn()
        assert chunks().requests(conn, data) is False, data
        assert not conn.pending and not conn.upstream.written
