"""The upstream side: one Redis connection pinned to each client connection (STYLE 1.7).

Pinning keeps every piece of per-connection server state correct without veil modelling it:
the selected database, the authenticated user, MULTI/WATCH, subscriptions, CLIENT
SETNAME/TRACKING, blocking commands. The connection is a thin ``asyncio.Protocol`` that hands
bytes to its client connection, which owns the reply decoder (the same codec as requests).

Flow control runs both ways: when this connection's write buffer passes its high-water mark
(Redis is slow to read) the client connection stops reading from its client; when the client's
write buffer passes its mark, the client connection pauses reading here.

``connect`` opens the TCP (or TLS, for ``rediss://``) connection; ``probe`` asks, without
credentials, whether the upstream requires AUTH (the bind guard of SPEC 6).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Protocol, cast

from proxy.config import RedisUrl

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class Owner(Protocol):
    """What the upstream reports to (the client connection)."""

    def upstream_data(self, data: bytes) -> None: ...

    def upstream_lost(self, exc: Exception | None) -> None: ...

    def upstream_paused(self, paused: bool) -> None: ...


class Upstream(asyncio.Protocol):
    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data: bytes) -> None:
        self.owner.upstream_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.owner.upstream_paused(True)

    def resume_writing(self) -> None:
        self.owner.upstream_paused(False)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def tls_context(url: RedisUrl) -> ssl.SSLContext | None:
    """A verifying client context for ``rediss://`` (system CAs, or ``SSL_CERT_FILE``)."""
    if not url.tls:
        return None
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)


CONNECT_TIMEOUT = 5.0


async def connect(url: RedisUrl, owner: Owner, context: ssl.SSLContext | None) -> Upstream:
    """A connected ``Upstream`` for ``owner``.

    Raises:
        OSError, TimeoutError, ssl.SSLError: the upstream is unreachable.
    """
    loop = asyncio.get_running_loop()
    hostname = url.host if context is not None else None
    async with asyncio.timeout(CONNECT_TIMEOUT):
        _, protocol = await loop.create_connection(
            lambda: Upstream(owner), url.host, url.port, ssl=context, server_hostname=hostname
        )
    return protocol


async def probe_requires_auth(url: RedisUrl, context: ssl.SSLContext | None) -> bool:
    """Whether an unauthenticated ``PING`` is refused (``-NOAUTH``) by the upstream."""
    hostname = url.host if context is not None else None
    async with asyncio.timeout(CONNECT_TIMEOUT):
        reader, writer = await asyncio.open_connection(
            url.host, url.port, ssl=context, server_hostname=hostname
        )
        try:
            writer.write(b"*1\r\n$4\r\nPING\r\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    return line.startswith(b"-NOAUTH")
