"""The RESP fast path (``proxy.redis.fast``) answers exactly as the general path does.

Two connections of one veil listener see the same chunks: one with the fast path, one with it
off (``conn.fast = None``, as in MULTI or observe mode). Each forwards what it sends upstream to
its own database of a real redis-server and gets Redis's reply bytes back, split as the test
chooses. The client-visible bytes must be identical, and what each wrote upstream must decode
to the same commands -- with every sealed SET value opening to the same plaintext under the same
context (the envelopes differ only by nonce).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import App
from proxy.config import Settings
from proxy.crypto.envelope import MAGIC
from tests.servers import RedisServer, init_keyring, veil_settings


class Transport:
    """The client side: collects what veil writes to its client."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.data += chunk

    def set_write_buffer_limits(self, *args: Any) -> None:
        pass

    def get_extra_info(self, *args: Any, **kw: Any) -> None:
        return None

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@dataclass
class Upstream:
    """The upstream side: a blocking socket to one database of the real Redis."""

    sock: socket.socket
    sent: list[bytes] = field(default_factory=list)
    closed: bool = False

    @property
    def transport(self) -> Upstream:  # as ``proxy.redis.upstream.Upstream``: its transport
        return self

    def write(self, data: bytes) -> None:
        self.sent.append(data)
        self.sock.sendall(data)

    def close(self) -> None:
        self.closed = True

    def replies(self, count: int) -> bytes:
        """Reads until ``count`` whole replies arrived; returns their bytes."""
        reader, buf, got = hiredis.Reader(), bytearray(), 0
        while got < count:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "redis closed the connection"
            buf += chunk
            reader.feed(chunk)
            while reader.gets() is not False:
                got += 1
        return bytes(buf)


@dataclass
class Pair:
    fast: Any
    general: Any
    up_fast: Upstream
    up_general: Upstream
    cipher: Any

    def run(
        self, request: bytes, count: int, split: int = 0, request_split: int = 0
    ) -> tuple[bytes, bytes]:
        """Sends ``request`` to both (``count``: the replies Redis owes for it), whole or in
        chunks of ``request_split`` bytes; Redis's replies come back whole or, with ``split``,
        in chunks of ``split`` bytes. Returns both clients' bytes."""
        out = []
        step = request_split or len(request) or 1
        for conn, up in ((self.fast, self.up_fast), (self.general, self.up_general)):
            conn.transport.data.clear()
            before = len(up.sent)
            for i in range(0, len(request), step):
                conn.data_received(request[i : i + step])
            assert len(up.sent) > before or count == 0
            replies = up.replies(count)
            if not replies:
                pass
            elif split:
                for i in range(0, len(replies), split):
                    conn.upstream_data(replies[i : i + split])
            else:
                conn.upstream_data(replies)
            out.append(bytes(conn.transport.data))
        return out[0], out[1]


def commands(chunks: list[bytes]) -> list[list[bytes]]:
    reader = hiredis.Reader()
    for chunk in chunks:
        reader.feed(chunk)
    out = []
    while (cmd := reader.gets()) is not False:
        out.append(cmd)
    return out


@pytest.fixture(params=["native", "python"])
def chunks(request: pytest.FixtureRequest) -> str:
    """Which whole-chunk functions the fast connection runs: the compiled ones
    (``proxy.redis._fastc``, which every install with a C compiler has) or ``fast``'s own."""
    if request.param == "native":
        from proxy.redis import _fastc  # noqa: F401  (built by `pip install -e .`; never skipped)
    return str(request.param)


@pytest.fixture
async def pair(tmp_path: Path, redis_server: RedisServer, chunks: str) -> AsyncIterator[Pair]:
    redis_server.cli("FLUSHALL")
    settings = veil_settings(
        tmp_path,
        redis={"listen": "127.0.0.1:0", "upstream": redis_server.url, "plaintext": ["plain:*"]},
        admin={"listen": "off"},
    )
    assert isinstance(settings, Settings)
    await init_keyring(settings)
    app = App(settings, migrate=False)
    ctx = await app.start()
    server = ctx.listeners["resp"]
    from proxy.redis.connection import ClientConnection

    conns, ups = [], []
    for db in (1, 2):
        sock = socket.create_connection(("127.0.0.1", redis_server.port), timeout=10)
        sock.sendall(b"*2\r\n$6\r\nSELECT\r\n$1\r\n%d\r\n" % db)
        assert sock.recv(100) == b"+OK\r\n"
        conn = ClientConnection(server)
        conn.transport = Transport()
        up = Upstream(sock)
        conn.upstream, conn.established = up, True
        server.connections.add(conn)
        conns.append(conn)
        ups.append(up)
    conns[1].fast = None  # the general path only, for requests and replies
    conns[1].chunk_replies = lambda conn, data: False
    from proxy.redis import fast

    functions = fast.chunk_functions(server.dispatch.table, server.cipher, chunks == "native")
    assert (functions[0] is fast.requests) == (chunks == "python")
    conns[0].chunk_requests, conns[0].chunk_replies = functions
    assert conns[0].fast is not None
    yield Pair(conns[0], conns[1], ups[0], ups[1], server.cipher)
    for up in ups:
        up.sock.close()
    await app.stop(grace=0.1)


def cmd(*args: bytes) -> bytes:
    return hiredis.pack_command(args)  # type: ignore[no-any-return]


async def test_fast_and_general_paths_answer_alike(pair: Pair) -> None:
    taken = {"requests": 0, "replies": 0}
    for name in taken:
        real = getattr(pair.fast, f"chunk_{name}")

        def counted(conn: Any, data: bytes, real: Any = real, name: str = name) -> bool:
            ok: bool = real(conn, data)
            taken[name] += ok
            return ok

        setattr(pair.fast, f"chunk_{name}", counted)
    values = [b"", b"x", b"v" * 100, b"\r\n$3\r\n*", b"w" * 5000]
    # first contact with a key classifies it on the general path; after that, the fast path
    # takes chunks of GET/SET/single-key commands
    warm = b"".join(cmd(b"SET", b"k%d" % i, v) for i, v in enumerate(values))
    warm += cmd(b"SET", b"plain:a", b"7") + cmd(b"GET", b"missing")
    cases: list[tuple[bytes, int]] = [(warm, len(values) + 2)]
    for depth in (1, 3, 16):
        gets = b"".join(cmd(b"GET", b"k%d" % (i % len(values))) for i in range(depth))
        sets = b"".join(cmd(b"SET", b"k%d" % (i % 5), b"n%d" % i) for i in range(depth))
        lower = b"".join(cmd(b"get", b"k%d" % (i % 5)) for i in range(depth))
        cases += [(gets, depth), (sets, depth), (lower, depth)]
    cases += [
        (cmd(b"GET", b"missing") + cmd(b"GET", b"k2"), 2),
        (cmd(b"GET", b"plain:a") + cmd(b"INCR", b"plain:a") + cmd(b"GET", b"plain:a"), 3),
        (cmd(b"EXISTS", b"k1") + cmd(b"TTL", b"k1") + cmd(b"TYPE", b"k1"), 3),
        (cmd(b"DEL", b"k4") + cmd(b"GET", b"k4") + cmd(b"STRLEN", b"plain:a"), 3),
        (cmd(b"SET", b"k1", b"a", b"EX", b"100") + cmd(b"GET", b"k1"), 2),  # options: general
        (cmd(b"INCR", b"k1"), 0),  # refused on an encrypted key, never forwarded
        (cmd(b"GET", b"k1") + cmd(b"INCR", b"k1") + cmd(b"GET", b"k1"), 2),
        (cmd(b"HSET", b"h", b"f", b"v") + cmd(b"GET", b"h"), 2),  # WRONGTYPE error reply
        (cmd(b"GET", b"__veil__:keyring"), 0),  # reserved: refused
        # split by 5: ":1\r\n:" -- hiredis has consumed the second reply's type byte and
        # reports no data left; the chunk is not whole (and the next goes to the general path)
        (cmd(b"EXISTS", b"k1") + cmd(b"EXISTS", b"k2") + cmd(b"GET", b"fresh"), 3),
        # an integer reply 0 is a reply (``iter(reader.gets, False)`` would stop at it)
        (cmd(b"EXISTS", b"k1") + cmd(b"EXISTS", b"plain:none") + cmd(b"GET", b"k1"), 3),
    ]
    for request, count in cases:
        for split in (0, 1, 5, 7):
            fast, general = pair.run(request, count, split)
            assert fast == general, (request[:80], split, fast[:200], general[:200])
    # what went upstream: the same commands; sealed values open to the same plaintext
    sent_fast = commands(pair.up_fast.sent)
    sent_general = commands(pair.up_general.sent)
    assert len(sent_fast) == len(sent_general)
    sealed = 0
    for a, b in zip(sent_fast, sent_general, strict=True):
        assert a[0].upper() == b[0].upper() and a[1:2] == b[1:2], (a[:2], b[:2])
        if a[0].upper() == b"SET" and a[1] != b"plain:a":
            assert a[2][:3] == MAGIC and b[2][:3] == MAGIC and a[2:] != b[2:]
            info = pair.cipher.key(a[1])
            plain_a = pair.cipher.open_string(info, a[2], a[1])
            assert plain_a == pair.cipher.open_string(info, b[2], b[1])
            assert a[3:] == b[3:]
            sealed += 1
        else:  # other sealed arguments (a hash value) differ by nonce only
            for x, y in zip(a[1:], b[1:], strict=True):
                assert x == y or (x[:3] == y[:3] == MAGIC and len(x) == len(y))
    assert sealed > 20
    # the fast path really answered most chunks (the comparison is not general vs general)
    assert taken["requests"] > 25 and taken["replies"] > 12, taken


# every command here is answered by Redis (none is refused), so a pipeline owes one reply each
_KEYS = [b"k0", b"k1", b"k2", b"k3", b"k4"]
_VALUES = st.binary(max_size=300) | st.sampled_from([b"$3\r\nSET\r\n", b"*2\r\n", b"-ERR x\r\n"])
_COMMANDS = st.one_of(
    st.tuples(st.sampled_from([b"GET", b"get", b"Get"]), st.sampled_from([*_KEYS, b"plain:a"])),
    st.tuples(st.sampled_from([b"SET", b"set"]), st.sampled_from([*_KEYS, b"plain:b"]), _VALUES),
    st.tuples(st.just(b"GET"), st.binary(min_size=1, max_size=8).map(lambda k: b"new:" + k)),
    st.tuples(
        st.sampled_from([b"EXISTS", b"TTL", b"TYPE", b"exists"]),
        st.sampled_from([*_KEYS, b"plain:none"]),
    ),
    st.tuples(st.sampled_from([b"INCR", b"STRLEN", b"APPEND"]), st.just(b"plain:n")).map(
        lambda c: c + ((b"1",) if c[0] == b"APPEND" else ())
    ),
    st.tuples(st.just(b"HSET"), st.just(b"h"), st.just(b"f"), _VALUES),
    st.tuples(st.just(b"LRANGE"), st.just(b"plain:list"), st.just(b"0"), st.just(b"-1")),
)


async def test_random_pipelines_answer_alike(pair: Pair) -> None:
    """Random pipelines of GET/SET/single-key and general commands on encrypted, plaintext and
    new keys, requests and replies split anywhere: the fast connection's client bytes equal
    the general path's, chunk after chunk (each writes its own database, so later GETs also
    compare what earlier SETs stored)."""
    warm = b"".join(cmd(b"SET", k, b"warm") for k in _KEYS)
    warm += cmd(b"RPUSH", b"plain:list", b"a", b"b") + cmd(b"SET", b"plain:n", b"1")
    fast, general = pair.run(warm, len(_KEYS) + 2)
    assert fast == general

    @settings(
        max_examples=150, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )  # fmt: skip
    @given(
        pipeline=st.lists(_COMMANDS, min_size=1, max_size=24),
        split=st.sampled_from([0, 0, 1, 5, 64]),
        request_split=st.sampled_from([0, 0, 0, 3, 40]),
    )
    def check(pipeline: list[tuple[bytes, ...]], split: int, request_split: int) -> None:
        request = b"".join(cmd(*c) for c in pipeline)
        fast, general = pair.run(request, len(pipeline), split, request_split)
        assert fast == general, (pipeline, split, request_split)

    check()
