"""The RESP listener: ``start(ctx)`` for ``proxy.app`` (one ``ClientConnection`` per client).

Theory of operation
===================
``start`` builds what every connection shares -- the policy ``Table``, the ``Cipher`` (hot-path
view of ``RedisValues``), the ``Dispatcher`` -- checks the bind guard, and listens (TLS when
``redis.tls_cert`` is set, client certificates required when ``redis.tls_client_ca`` is).
Everything per client lives in ``connection.ClientConnection`` and its pinned upstream.

The bind guard (SPEC 6): a non-loopback ``redis.listen`` is refused unless the upstream
requires AUTH (an unauthenticated probe ``PING`` gets ``-NOAUTH``) or the listener demands
client certificates -- an exposed port must never become a plaintext oracle.

A one-second timer re-checks the keyring's staleness (so the hot path never reads the clock),
moves per-connection counters into ``veil_requests_total`` and per-version counters into
``veil_encrypt_total``/``veil_decrypt_total``; once a minute it audits decrypt failures in
aggregate. ``on_stale`` is the lazy re-encryption hook (``(db, key, role)``, default none):
the rotation engine may set it; the read path pays one attribute check for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Coroutine
from itertools import compress
from typing import Any

from proxy.config import is_loopback
from proxy.errors import ConfigError
from proxy.redis import fast
from proxy.redis.cipher import Cipher, StaleHook
from proxy.redis.connection import ClientConnection
from proxy.redis.dispatch import Dispatcher
from proxy.redis.policy import Table
from proxy.redis.upstream import probe_requires_auth, tls_context
from proxy.redis.values import RedisValues

log = logging.getLogger("veil.redis")


class RespServer:
    """Shared state of the RESP listener and the ``Listener`` that ``proxy.app`` manages."""

    name = "resp"

    def __init__(self, ctx: Any, table: Table | None = None) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.settings = settings.redis
        self.runtime = ctx.runtime
        self.metrics = ctx.metrics
        self.url = settings.redis.upstream
        self.upstream_tls = tls_context(self.url)
        self.observe = settings.redis.mode == "observe"
        self.values = RedisValues(settings.redis, settings.keys, ctx.runtime)
        self.cipher = Cipher(self.values, ctx.metrics, ctx.audit)
        self.dispatch = Dispatcher(table or Table(), self.cipher)
        self.fast = fast.build(self.dispatch.table, self.cipher)
        self.chunk_requests, self.chunk_replies = fast.chunk_functions(
            self.dispatch.table, self.cipher
        )
        self.set_idx = self.dispatch.table.rows["set"].index
        self.loop = asyncio.get_running_loop()
        self.durations = ctx.metrics.hot.durations["resp"]
        self.connections: set[ClientConnection] = set()
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.AbstractServer | None = None
        self._timer: asyncio.Task[None] | None = None
        self._sides: dict[int, Any] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()
        self.runtime.listeners.append(self.cipher.reset)
        lazy = ctx.lazy.get("redis") if hasattr(ctx, "lazy") else None
        if lazy is not None:  # reads that meet an old version queue the key (SPEC 8)
            note = lazy.note
            self.cipher.on_stale = lambda db, key, role: note((db, key))

    @property
    def on_stale(self) -> StaleHook | None:
        return self.cipher.on_stale

    @on_stale.setter
    def on_stale(self, hook: StaleHook | None) -> None:
        self.cipher.on_stale = hook

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> RespServer:
        listen = self.settings.listen
        assert listen is not None
        await self.bind_guard(listen.host)
        server_tls = self.server_tls()
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), listen.host, listen.port, ssl=server_tls,
            reuse_address=True,
        )  # fmt: skip
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        self._timer = asyncio.ensure_future(self._tick())
        if self.chunk_requests is fast.requests:
            log.warning(
                "resp fast path: Python (veil was installed without a C compiler, so "
                "proxy/redis/_fastc.pyx was not built): same behaviour, more CPU per command"
            )
        return self

    async def bind_guard(self, host: str) -> None:
        """Refuses a non-loopback listener that would serve plaintext to anyone (SPEC 6)."""
        if is_loopback(host) or self.settings.tls_client_ca is not None:
            return
        try:
            requires_auth = await probe_requires_auth(self.url, self.upstream_tls)
        except (TimeoutError, OSError) as e:
            raise ConfigError(
                f"redis.listen {host} is not loopback and the upstream could not be probed "
                f"for AUTH ({type(e).__name__}); refusing to start"
            ) from None
        if not requires_auth:
            raise ConfigError(
                f"redis.listen {host} is not loopback, the upstream does not require AUTH and "
                "the listener has no client certificates (redis.tls_client_ca): refusing to "
                "expose a plaintext oracle"
            )

    def server_tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.tls_cert is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(s.tls_cert, s.tls_key)
        if s.tls_client_ca is not None:
            context.load_verify_locations(s.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def ready(self) -> bool:
        """Readiness: the upstream answers a PING on a fresh connection."""
        try:
            await self.side(0).ping()
        except Exception:
            return False
        return True

    async def close(self, grace: float) -> None:
        """Stops accepting, lets commands in flight finish within ``grace``, then closes."""
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + grace
        while any(c.pending for c in self.connections) and self.loop.time() < deadline:
            self.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), 0.05)
        for conn in list(self.connections):
            conn.close()
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        self._flush()
        for side in self._sides.values():
            with contextlib.suppress(Exception):
                await side.aclose()
        self._sides.clear()

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Runs ``coro`` as a task that is kept referenced until it finishes."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def side(self, db: int) -> Any:
        """A redis-py client in database ``db`` on the upstream's own credentials."""
        client = self._sides.get(db)
        if client is None:
            import redis.asyncio as aioredis

            client = self._sides[db] = aioredis.Redis.from_url(
                self.url.reveal(), db=db, socket_timeout=10, socket_connect_timeout=5
            )
        return client

    # --- metrics ---------------------------------------------------------------------------

    async def _tick(self) -> None:
        seconds = 0
        while True:
            await asyncio.sleep(1.0)
            seconds += 1
            try:
                self.cipher.check()
                self._flush()
                if seconds % 60 == 0:
                    self.cipher.audit_failures()
            except Exception:  # never let bookkeeping stop the listener
                log.exception("RESP metrics tick failed")

    def _flush(self) -> None:
        for conn in list(self.connections):
            self.collect(conn)
        self.cipher.flush_metrics()

    def collect(self, conn: ClientConnection) -> None:
        """Moves a connection's per-row counters into ``veil_requests_total``."""
        taken = conn.take_counts()
        if taken is None:
            return
        counts, errors, refused = taken
        labels = self.dispatch.table.labels
        requests = self.metrics.hot.requests
        refused_outcome = "would_refuse" if self.observe else "refused"
        rows = range(len(counts))
        # only the rows that moved (C-level scans); an error may arrive in the window after
        # its command was counted, so rows with errors or refusals alone count too
        touched = {*compress(rows, counts), *compress(rows, errors), *compress(rows, refused)}
        for idx in touched:
            n = counts[idx]
            label = labels[idx] if idx < len(labels) else "other"
            bad = errors[idx] + refused[idx]
            if n > bad:
                requests[("resp", label, "ok")] += n - bad
            if errors[idx]:
                requests[("resp", label, "error")] += errors[idx]
            if refused[idx]:
                requests[("resp", label, refused_outcome)] += refused[idx]


async def start(ctx: Any) -> RespServer:
    """The listener module entry point (``proxy.app.LISTENERS``)."""
    return await RespServer(ctx).start()
