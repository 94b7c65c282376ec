"""Admin API: the key lifecycle over HTTP (SPEC 9). Bodies equal ``veil keys ... --json``.

Every mutating call needs ``Authorization: Bearer <token>`` of a named token (``admin.tokens``
or ``VEIL_ADMIN_TOKEN``); the token's *name* is the actor in the audit log. Errors are
``{"error": "..."}`` with 401 (no token), 403 (wrong token), 400 (bad request), 409 (refused by
state: an illegal transition, a grace period, an incomplete migration), 423 (breaker open),
503 (store or KMS unreachable).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy import wiring
from proxy.app import Context
from proxy.crypto.keys import KeyKind
from proxy.errors import AuthenticationError, UsageError, VeilError
from proxy.keys.lifecycle import Change
from proxy.keys.model import parse_time
from proxy.keys.ops import KeyOps

Action = Callable[[KeyOps, dict[str, Any], KeyKind], Awaitable[Change]]


def error(status: int, message: str) -> web.Response:
    return web.Response(
        text=json.dumps({"error": message}) + "\n", status=status, content_type="application/json"
    )


def actor_of(ctx: Context, request: web.Request) -> str:
    """The name of the bearer token, or raises ``AuthenticationError`` (401 / 403)."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise _NoToken()
    name = ctx.settings.admin.authenticate(header[7:].strip())
    if name is None:
        raise AuthenticationError("wrong token")
    return name


class _NoToken(AuthenticationError):
    http_status = 401

    def __init__(self) -> None:
        super().__init__("missing bearer token (Authorization: Bearer <token>)")


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise UsageError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise UsageError("request body must be a JSON object")
    return body


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise UsageError(f"'{name}' must be true or false")
    return value


def _version(request: web.Request) -> int:
    try:
        return int(request.match_info["version"])
    except ValueError:
        raise UsageError("the key version must be an integer") from None


def _wait(body: dict[str, Any]) -> float:
    value = body.get("wait", body["promote_timeout"])
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise UsageError("'wait' must be a number of seconds")
    return float(value)


async def _promote(ops: KeyOps, b: dict[str, Any], kind: KeyKind, v: int) -> Change:
    return await ops.promote(b["class"], v, kind, wait=_wait(b))


async def _retire(ops: KeyOps, b: dict[str, Any], kind: KeyKind, v: int) -> Change:
    return await ops.retire(b["class"], v, kind)


async def _revoke(ops: KeyOps, b: dict[str, Any], kind: KeyKind, v: int) -> Change:
    b["wait_acknowledged"] = True  # run() waits once this sidecar itself has reloaded
    return await ops.revoke(
        b["class"], v, kind, emergency=_flag(b, "emergency"), force=_flag(b, "force")
    )


async def _destroy(ops: KeyOps, b: dict[str, Any], kind: KeyKind, v: int) -> Change:
    return await ops.destroy(b["class"], v, kind, force=_flag(b, "force"))


VersionAction = Callable[[KeyOps, dict[str, Any], KeyKind, int], Awaitable[Change]]
ACTIONS: dict[str, VersionAction] = {
    "promote": _promote,
    "retire": _retire,
    "revoke": _revoke,
    "destroy": _destroy,
}


def routes(ctx: Context) -> list[web.RouteDef]:
    async def run(request: web.Request, action: Action, kind: KeyKind) -> web.Response:
        try:
            actor = actor_of(ctx, request)
            body = await _body(request)
            body.setdefault("class", "default")
            body["promote_timeout"] = ctx.settings.keys.promote_timeout
            ops = wiring.build_ops(ctx.settings, ctx.store, ctx.runtime.provider, body["class"])
            ops.audit = lambda e: ctx.audit({**e, "actor": actor})
            ctx.audit({"event": "admin.call", "actor": actor, "path": request.path})
            change = await action(ops, body, kind)
            await ctx.runtime.reload()  # this sidecar sees its own change at once
            if body.get("wait_acknowledged"):
                # a revocation returns once every live sidecar holds it (SPEC 5 issue text)
                await ctx.runtime.heartbeat()
                await ops.wait_acknowledged(change.keyring.revision, _wait(body))
            await wiring.write_escrow(ctx.settings, ctx.runtime.provider, change.keyring)
        except VeilError as e:
            return error(e.http_status, e.message)
        return web.json_response(change.keyring.public_json(body["class"]))

    async def rotate(request: web.Request) -> web.Response:
        kind = KeyKind.INDEX if request.path.startswith("/v1/index-keys") else KeyKind.MASTER

        async def action(ops: KeyOps, b: dict[str, Any], kind: KeyKind) -> Change:
            rev = b.get("if_revision")
            if rev is not None and (not isinstance(rev, int) or isinstance(rev, bool)):
                raise UsageError("'if_revision' must be an integer")
            return await ops.rotate(b["class"], kind, rev)

        return await run(request, action, kind)

    async def lifecycle(request: web.Request) -> web.Response:
        try:
            version = _version(request)
        except VeilError as e:
            return error(e.http_status, e.message)
        act = ACTIONS.get(request.match_info["action"])
        if act is None:
            return error(404, f"unknown action {request.match_info['action']!r}")
        kind = KeyKind.INDEX if request.path.startswith("/v1/index-keys") else KeyKind.MASTER

        async def action(ops: KeyOps, b: dict[str, Any], kind: KeyKind) -> Change:
            return await act(ops, b, kind, version)

        return await run(request, action, kind)

    async def freeze(request: web.Request) -> web.Response:
        async def action(ops: KeyOps, b: dict[str, Any], kind: KeyKind) -> Change:
            try:
                until = parse_time(b["until"]) if isinstance(b.get("until"), str) else None
            except ValueError:
                until = None
            if until is None:
                raise UsageError("'until' must be an RFC 3339 time")
            return await ops.freeze(until, str(b.get("reason", "")))

        return await run(request, action, KeyKind.MASTER)

    async def unfreeze(request: web.Request) -> web.Response:
        async def action(ops: KeyOps, b: dict[str, Any], kind: KeyKind) -> Change:
            return await ops.unfreeze()

        return await run(request, action, KeyKind.MASTER)

    return [
        web.post("/v1/keys/freeze", freeze),
        web.post("/v1/keys/unfreeze", unfreeze),
        web.post("/v1/keys/rotate", rotate),
        web.post("/v1/index-keys/rotate", rotate),
        web.post("/v1/keys/{version}/{action}", lifecycle),
        web.post("/v1/index-keys/{version}/{action}", lifecycle),
    ]


def reencrypt_routes(ctx: Context) -> list[web.RouteDef]:
    """``GET /v1/reencrypt`` and ``POST /v1/reencrypt/start|pause|resume`` (SPEC 9)."""
    from proxy.rotation import commands

    names = commands.stores_of(ctx.settings)
    actions = {"start": commands.start, "pause": commands.pause, "resume": commands.resume}

    async def status(request: web.Request) -> web.Response:
        return web.json_response(await commands.status(ctx.store, names))

    async def act(request: web.Request) -> web.Response:
        fn = actions.get(request.match_info["action"])
        if fn is None:
            return error(404, f"unknown action {request.match_info['action']!r}")
        try:
            actor = actor_of(ctx, request)
            ctx.audit({"event": f"reencrypt.{request.match_info['action']}", "actor": actor})
            body = await fn(ctx.store, names, ctx.clock())
        except VeilError as e:
            return error(e.http_status, e.message)
        return web.json_response(body)

    return [web.get("/v1/reencrypt", status), web.post("/v1/reencrypt/{action}", act)]
