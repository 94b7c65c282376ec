"""The admin listener (SPEC 9): health, readiness, metrics and the keyring, over HTTP.

This module serves the read-only core every deployment needs from day one: ``/healthz``
(liveness), ``/readyz`` (keyring loaded and fresh, upstreams reachable), ``/metrics``
(Prometheus) and ``GET /v1/keys``. Off loopback it requires TLS (enforced by config) and a
bearer token for every call.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

from aiohttp import web

from proxy.admin import keys_api
from proxy.app import Context, ready
from proxy.config import is_loopback

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"


class AdminListener:
    name = "admin"

    def __init__(self, runner: web.AppRunner, address: tuple[str, int]) -> None:
        self._runner = runner
        self.address = address

    async def ready(self) -> bool:
        return True

    async def close(self, grace: float) -> None:
        await self._runner.cleanup()


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, indent=1) + "\n", status=status, content_type="application/json"
    )


def build(ctx: Context) -> web.Application:
    settings = ctx.settings.admin
    listen = settings.listen
    exposed = listen is not None and not is_loopback(listen.host)

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        # probes reveal one bit and kubelets cannot keep a token secret: they stay open
        if exposed and request.path not in ("/healthz", "/readyz"):
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                return _json({"error": "missing bearer token"}, 401)
            if ctx.settings.admin.authenticate(header[7:]) is None:  # SIGHUP may rotate them
                return _json({"error": "wrong token"}, 403)
        response: web.StreamResponse = await handler(request)
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        ok = await ready(ctx)
        return web.Response(text="ready\n" if ok else "not ready\n", status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=ctx.metrics.render(), headers={"Content-Type": CONTENT_TYPE_METRICS}
        )

    async def keys(request: web.Request) -> web.Response:
        kr = ctx.runtime.keyset.keyring
        name = request.query.get("class", "default")
        if name not in kr.classes:
            return _json({"error": f"key class '{name}' is not in the keyring"}, 404)
        return _json(kr.public_json(name))

    app = web.Application(middlewares=[guard])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/keys", keys)
    app.router.add_routes(keys_api.routes(ctx))
    app.router.add_routes(keys_api.reencrypt_routes(ctx))
    return app


async def start(ctx: Context) -> AdminListener:
    settings = ctx.settings.admin
    assert settings.listen is not None
    tls = None
    if settings.tls_cert and settings.tls_key:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(settings.tls_cert, settings.tls_key)
    runner = web.AppRunner(build(ctx), access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, settings.listen.host, settings.listen.port, ssl_context=tls)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    address = (
        sockets[0].getsockname()[:2] if sockets else (settings.listen.host, settings.listen.port)
    )
    return AdminListener(runner, (str(address[0]), int(address[1])))
