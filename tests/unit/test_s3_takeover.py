"""proxy.s3.body_takeover: an upstream body read off the socket, against a raw local server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from protocols.s3.errors import S3Error
from proxy.s3 import body_takeover
from proxy.s3.body_takeover import upstream_chunks

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]


async def _collect(script: Script) -> tuple[bytes, bool]:
    """The body ``upstream_chunks`` yields for the response ``script`` writes, and whether the
    take-over was used."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline() not in (b"\r\n", b""):
            pass
        await script(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    used: list[bool] = []
    real = body_takeover._BodyProtocol

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object) -> None:
            used.append(True)
            super().__init__(*args)

    body_takeover._BodyProtocol = Spy  # type: ignore[misc]
    try:
        async with aiohttp.ClientSession(read_bufsize=64 * 1024) as session:
            resp = await session.get(f"http://127.0.0.1:{port}/")
            out = bytearray()
            try:
                async for chunk in upstream_chunks(resp):
                    out += chunk
            finally:
                resp.close()
    finally:
        body_takeover._BodyProtocol = real  # type: ignore[misc]
        server.close()
        await server.wait_closed()
    return bytes(out), bool(used)


def _head(length: int, *extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {length}", *extra, "", ""]
    return "\r\n".join(lines).encode()


def _pieces(body: bytes, size: int, pause: float = 0.0) -> Script:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(_head(len(body)))
        for i in range(0, len(body), size):
            writer.write(body[i : i + size])
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        writer.close()

    return script


@pytest.mark.parametrize("piece", [1000, 65552, 300_000, 2_000_000])
def test_large_body_is_taken_over_byte_exact(piece: int) -> None:
    body = os.urandom(body_takeover.TAKE_OVER_MIN + 3 * body_takeover.BUFFER + 12345)
    got, used = asyncio.run(_collect(_pieces(body, piece)))
    assert used and got == body


def test_slow_upstream_fills_and_drains_the_buffer() -> None:
    body = os.urandom(body_takeover.TAKE_OVER_MIN + 777)
    got, used = asyncio.run(_collect(_pieces(body, 200_000, pause=0.001)))
    assert used and got == body


def test_connection_close_takes_over_a_small_body() -> None:
    body = os.urandom(300_000)

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(_head(len(body), "Connection: close") + body[:1000])
        await writer.drain()
        await asyncio.sleep(0.05)  # the head is parsed before the rest arrives
        writer.write(body[1000:])
        writer.close()

    got, used = asyncio.run(_collect(script))
    assert used and got == body


def test_small_keep_alive_body_stays_with_aiohttp() -> None:
    body = os.urandom(300_000)
    got, used = asyncio.run(_collect(_pieces(body, 50_000, pause=0.001)))
    assert not used and got == body


def test_connection_ending_early_fails_closed() -> None:
    body = os.urandom(body_takeover.TAKE_OVER_MIN + 1000)

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(_head(len(body)) + body[:-1])  # one byte short
        await writer.drain()
        writer.close()

    with pytest.raises(S3Error) as e:
        asyncio.run(_collect(script))
    assert e.value.code == "InternalError"


def test_bytes_past_content_length_are_not_yielded() -> None:
    body = os.urandom(body_takeover.TAKE_OVER_MIN + 1000)

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(_head(len(body)) + body + b"garbage after the body")
        await writer.drain()
        writer.close()

    got, used = asyncio.run(_collect(script))
    assert used and got == body


def test_chunked_body_stays_with_aiohttp() -> None:
    body = os.urandom(body_takeover.TAKE_OVER_MIN)

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 1 << 20):
            piece = body[i : i + (1 << 20)]
            writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        writer.close()

    got, used = asyncio.run(_collect(script))
    assert not used and got == body
