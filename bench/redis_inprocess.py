"""The RESP fast path's own cost per command, without sockets, beside the floor proxy's logic.

    python3 bench/redis_inprocess.py [--rounds 7]

``bench/redis_proxy.py`` measures what clients see; on two shared cores most of that is kernel
time, the same for every proxy. This script isolates the proxy's own work: one veil
``ClientConnection`` (a real listener's, built by ``App``) is fed GET and SET chunks at pipeline
depth 1 and 16 and answered with the replies Redis would send, its transports replaced by sinks,
once with the compiled chunk functions (``proxy/redis/_fastc.pyx``, as installed) and once with
the Python ones (``proxy/redis/fast.py``); the floor proxy's request and reply logic (hiredis
parse, AES-GCM, re-encode) gets the same chunks. It prints microseconds per command, best of
``--rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

KEY = b"key:__rand_int__"
GET = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(KEY), KEY)
SET = b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$100\r\n%s\r\n" % (len(KEY), KEY, b"x" * 100)


class Sink:
    """A transport that drops what is written."""

    closed = False

    @property
    def transport(self) -> Sink:  # as an ``Upstream``: its transport
        return self

    def write(self, data: bytes) -> None:
        self.last = data

    def writelines(self, chunks: list[bytes]) -> None:
        pass

    def set_write_buffer_limits(self, *args: Any) -> None:
        pass

    def get_extra_info(self, *args: Any, **kw: Any) -> None:
        return None

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def steps(
    get_reply: bytes, request: Callable[[bytes], object], reply: Callable[[bytes], object]
) -> list[tuple[tuple[int, str], tuple[Callable[[], None], int]]]:
    """``((depth, "GET"|"SET"), (step, n))``: a step sends one chunk of ``depth`` commands
    through ``request`` and answers it through ``reply``; ``n`` steps make a measurement."""
    out = []
    for depth in (1, 16):
        for cmd, chunk, answer in (
            ("GET", GET * depth, get_reply * depth),
            ("SET", SET * depth, b"+OK\r\n" * depth),
        ):

            def step(chunk: bytes = chunk, answer: bytes = answer) -> None:
                request(chunk)
                reply(answer)

            out.append(((depth, cmd), (step, 50_000 // depth)))
    return out


def per_command(step: Callable[[], None], depth: int, n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            step()
        best = min(best, (time.perf_counter() - t) / (n * depth) * 1e6)
    return best


async def veil(rounds: int) -> dict[tuple[int, str, str], float]:
    from proxy.app import App
    from proxy.redis import fast
    from proxy.redis.connection import ClientConnection
    from tests.servers import init_keyring, veil_settings

    tmp = Path(tempfile.mkdtemp(prefix="veil-bench-inproc-"))
    settings: Any = veil_settings(
        tmp, redis={"listen": "127.0.0.1:0", "upstream": "redis://127.0.0.1:1/0"},
        admin={"listen": "off"},
    )  # fmt: skip
    await init_keyring(settings)
    app = App(settings, migrate=False)
    ctx = await app.start()
    server: Any = ctx.listeners["resp"]
    conn = ClientConnection(server)
    conn.transport = Sink()  # type: ignore[assignment]
    upstream = Sink()
    conn.upstream, conn.established = upstream, True  # type: ignore[assignment]
    server.connections.add(conn)
    for _ in range(2):  # the first SET classifies the key (general path); then the fast path
        conn.data_received(SET)
        conn.upstream_data(b"+OK\r\n")
    reader = hiredis.Reader()
    reader.feed(upstream.last)
    sealed = reader.gets()[2]
    get_reply = b"$%d\r\n%s\r\n" % (len(sealed), sealed)
    out = {}
    compiled = fast.chunk_functions(server.dispatch.table, server.cipher, native=True)
    paths = {"compiled": compiled, "python": (fast.requests, fast.replies)}
    if compiled[0] is fast.requests:
        del paths["compiled"]  # installed without a C compiler
    for path, functions in paths.items():
        conn.chunk_requests, conn.chunk_replies = functions
        for (depth, cmd), (step, n) in steps(get_reply, conn.data_received, conn.upstream_data):
            out[(depth, cmd, path)] = per_command(step, depth, n, rounds)
    await app.stop(grace=0.1)
    return out


def floor(rounds: int) -> dict[tuple[int, str], float]:
    """``bench/redis_proxy.py``'s floor proxy logic (``FloorConnection``), on the same chunks."""
    from redis_proxy import FloorConnection, floor_key

    conn = FloorConnection(*floor_key())
    sealed = conn.seal(b"x" * 100)
    get_reply = b"$%d\r\n%s\r\n" % (len(sealed), sealed)
    steps_ = steps(get_reply, conn.request, conn.reply)
    return {case: per_command(step, case[0], n, rounds) for case, (step, n) in steps_}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    try:
        import uvloop

        ours = uvloop.run(veil(args.rounds))
    except ImportError:
        ours = asyncio.run(veil(args.rounds))
    theirs = floor(args.rounds)
    print(f"\n{'case':<16}{'veil us/cmd':>12}{'python path':>13}{'floor us/cmd':>14}"
          f"{'veil/floor cost':>17}")  # fmt: skip
    for depth in (1, 16):
        for cmd in ("GET", "SET"):
            v = ours.get((depth, cmd, "compiled"), float("nan"))
            p, f = ours[(depth, cmd, "python")], theirs[(depth, cmd)]
            print(f"{cmd + ' depth ' + str(depth):<16}{v:>12.2f}{p:>13.2f}{f:>14.2f}{v / f:>17.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
