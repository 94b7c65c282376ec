"""proxy.s3.body_takeover: an upstream body read off the socket, against a raw local server."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from protocols.s3.errors import S3Error
from proxy.s3 import body_takeover
from proxy.s3.body_takeover import upstream_chunks
from tests.vectors.s3_make_vectors import _self_signed

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]


async def _collect(script: Script, tls: Path | None = None) -> tuple[bytes, bool]:
    """The body ``upstream_chunks`` yields for the response ``script`` writes, and whether the
    take-over was used; with ``tls`` (a directory for a self-signed certificate), over HTTPS
    as real S3 is."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline() not in (b"\r\n", b""):
            pass
        await script(writer)

    server_tls = client_tls = None
    if tls is not None:
        cert, key = _self_signed(tls)
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(cert, key)
        client_tls = ssl.create_default_context(cafile=str(cert))
        client_tls.check_hostname = False
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if tls is not None else "http"
    used: list[bool] = []
    real = body_takeover._BodyProtocol

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object) -> None:
            used.append(True)
            super().__init__(*args)

    body_takeover._BodyProtocol = Spy  # type: ignore[misc]
    try:
        async with aiohttp.ClientSession(read_bufsize=64 * 1024) as session:
            resp = await session.get(f"{scheme}://127.0.0.1:{port}/", ssl=client_tls or True)
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


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_upstream_is_taken_over_byte_exact(tmp_path: Path, loop: str) -> None:
    """Real S3 is HTTPS: the take-over swaps the protocol under the TLS transport, whose
    records are decrypted into the buffer (asyncio's and uvloop's TLS alike)."""
    body = os.urandom(body_takeover.TAKE_OVER_MIN + 2 * body_takeover.BUFFER + 999)
    run = asyncio.run
    if loop == "uvloop":
        import uvloop

        run = uvloop.run
    got, used = run(_collect(_pieces(body, 300_000, pause=0.0005), tls=tmp_path))
    assert used and got == body


def test_tls_upstream_ending_early_fails_closed(tmp_path: Path) -> None:
    body = os.urandom(body_takeover.TAKE_OVER_MIN + 1000)

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(_head(len(body)) + body[:-10])
        await writer.drain()
        writer.close()

    with pytest.raises(S3Error):
        asyncio.run(_collect(script, tls=tmp_path))
