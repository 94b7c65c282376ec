"""The CLI's side of ``--admin URL``: one HTTP call to a running sidecar's admin API."""

from __future__ import annotations

from typing import Any

import aiohttp

from proxy.errors import (
    AuthenticationError,
    BreakerOpen,
    RefusedError,
    UnavailableError,
    UsageError,
    VeilError,
)

# HTTP status -> the error (and so the CLI exit code) it stands for
STATUS_ERRORS: dict[int, type[VeilError]] = {
    400: UsageError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: UsageError,
    409: RefusedError,
    423: BreakerOpen,
    503: UnavailableError,
}


async def call(
    base: str, method: str, path: str, token: str | None, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON body of a 2xx answer; otherwise raises the error the status maps to."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.request(method, base.rstrip("/") + path, json=body, headers=headers) as r,
        ):
            try:
                data = await r.json(content_type=None)
            except ValueError:
                data = {"error": (await r.text()).strip() or f"HTTP {r.status}"}
    except aiohttp.ClientError as e:
        raise UnavailableError(f"admin API {base} unreachable ({type(e).__name__})") from None
    if r.status < 300:
        result: dict[str, Any] = data
        return result
    message = str(data.get("error", f"HTTP {r.status}")) if isinstance(data, dict) else str(data)
    raise STATUS_ERRORS.get(r.status, VeilError)(message)
