"""The S3 listener: an aiohttp low-level server that verifies, classifies and dispatches.

One request: build the raw :class:`~protocols.s3.head.RequestHead` from aiohttp's raw target
and raw headers, :func:`~protocols.s3.request.classify` it, :func:`~protocols.s3.auth.
authenticate` it against the configured client credentials (403 with S3's error code
otherwise), and hand a :class:`~proxy.s3.context.Call` to ``HANDLERS[op]``. Every refusal, in
any layer, is an :class:`~protocols.s3.errors.S3Error` (veil's own errors carry their S3 code)
turned into S3's XML error document here -- the one place errors are rendered. The body is
never read before authentication, and ``Expect: 100-continue`` is answered by the handler only
once it has accepted the request, so a refused upload never sends its body.

The server neither decompresses request bodies nor limits their size: handlers stream them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time

from aiohttp import web
from multidict import CIMultiDict

from protocols.s3.auth import authenticate
from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from protocols.s3.request import Operation, S3Request, classify
from proxy.app import Context
from proxy.errors import VeilError
from proxy.s3.context import Call, Deps, HeaderedError, request_id, s3_error
from proxy.s3.handlers import HANDLERS
from proxy.s3.upstream import Upstream, botocore_credentials, static_credentials

log = logging.getLogger("veil.s3")

# errors that mean "refused by policy or authentication" rather than "failed"
REFUSALS = frozenset(
    {
        "AccessDenied",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "NotImplemented",
        "RequestTimeTooSkewed",
        "AuthorizationHeaderMalformed",
        "AuthorizationQueryParametersError",
        "MetadataTooLarge",
        "EntityTooLarge",
    }
)
_NO_BODY = frozenset({304})


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _form_upload(head: RequestHead, s3: S3Request) -> bool:
    """POST Object: a POST on a bucket that is not DeleteObjects."""
    return s3.op is Operation.UNSUPPORTED and head.method == "POST" and s3.key is None


class Dispatcher:
    """Turns aiohttp requests into calls and answers (errors rendered here only)."""

    def __init__(self, deps: Deps, base_domains: tuple[str, ...]) -> None:
        self.deps = deps
        self.base_domains = base_domains
        secrets = {k: v.reveal() for k, v in deps.ctx.settings.s3.client_credentials().items()}
        self._lookup = secrets.get

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        rid = request_id()
        op, resource, outcome = "other", "/", "ok"
        hot = self.deps.ctx.metrics.hot
        try:
            head = RequestHead.create(
                request.method,
                request.raw_path,
                [(_text(k), _text(v)) for k, v in request.raw_headers],
            )
            s3 = classify(head, base_domains=self.base_domains)
            resource = s3.resource
            op = s3.op.value if s3.op is not Operation.UNSUPPORTED else "other"
            if _form_upload(head, s3):
                # a browser form upload signs its policy inside the form, never in headers:
                # refused as not implemented (SPEC 7), not as unsigned; nothing is read or sent
                raise S3Error("NotImplemented", s3.reason)
            verified = authenticate(
                head,
                self._lookup,
                self.deps.ctx.clock(),
                virtual_bucket=s3.bucket if s3.virtual_host else None,
            )
            call = Call(self.deps, request, head, s3, verified, rid)
            response = await HANDLERS.get(s3.op, HANDLERS[Operation.UNSUPPORTED])(call)
            if not response.prepared:
                response.headers["x-amz-request-id"] = rid
        except S3Error as e:
            outcome = "refused" if e.code in REFUSALS else "error"
            response = self.error(request, e, resource, rid)
        except VeilError as e:
            outcome = "error"
            response = self.error(request, s3_error(e), resource, rid)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("s3: internal error (request %s)", rid)
            outcome = "error"
            response = self.error(request, S3Error("InternalError"), resource, rid)
        hot.requests[("s3", op, outcome)] += 1
        hot.durations["s3"].observe(time.perf_counter() - started)
        return response

    @staticmethod
    def error(
        request: web.BaseRequest, error: S3Error, resource: str, rid: str
    ) -> web.StreamResponse:
        headers = CIMultiDict([("x-amz-request-id", rid)])
        if isinstance(error, HeaderedError):
            headers.extend(error.headers)
        if request.method == "HEAD" or error.status in _NO_BODY:
            response = web.Response(status=error.status, headers=headers)
        else:
            headers["Content-Type"] = "application/xml"
            body = error.to_xml(resource, rid)
            response = web.Response(status=error.status, body=body, headers=headers)
        if not request.content.at_eof():
            # refused before its body was read: a client waiting for "100 Continue" will not
            # send it, another will; only closing the connection keeps the next request framed
            response.force_close()
        return response


class S3Listener:
    name = "s3"

    def __init__(
        self,
        server: asyncio.AbstractServer,
        web_server: web.Server,
        deps: Deps,
        address: tuple[str, int],
        periodic: asyncio.Task[None],
    ) -> None:
        self._server = server
        self._web = web_server
        self.deps = deps
        self.address = address
        self._periodic = periodic

    async def ready(self) -> bool:
        return await self.deps.upstream.reachable()

    async def close(self, grace: float) -> None:
        self._server.close()
        for conn in self._web.connections:
            # idle keep-alive connections end now (aiohttp's shutdown would wait out the grace
            # for them); a request in progress finishes first, then its connection closes
            conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._web.shutdown(grace), grace + 1)
        self._periodic.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._periodic
        self.deps.failures.flush()
        await self.deps.upstream.close()


def base_domains(host: str) -> tuple[str, ...]:
    """Hosts under which ``<bucket>.<host>`` is virtual-hosted addressing."""
    domains = ["localhost"]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host not in ("", "localhost"):
            domains.append(host)
    return tuple(domains)


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert or not key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def start(ctx: Context) -> S3Listener:
    """The S3 listener of ``ctx.settings.s3`` (``App`` calls this when ``s3.listen`` is set)."""
    s = ctx.settings.s3
    assert s.listen is not None and s.upstream is not None
    if s.upstream_access_key and s.upstream_secret_key:
        credentials = static_credentials(s.upstream_access_key, s.upstream_secret_key.reveal())
    else:
        credentials = botocore_credentials()
    upstream = Upstream(s.upstream, s.region, credentials, ctx.clock)
    deps = Deps(ctx, upstream)
    dispatcher = Dispatcher(deps, base_domains(s.listen.host))
    web_server = web.Server(
        dispatcher,
        access_log=None,
        auto_decompress=False,
        read_bufsize=256 * 1024,
        max_field_size=16 * 1024,
        max_line_size=16 * 1024,
    )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        web_server,
        s.listen.host,
        s.listen.port,
        ssl=tls_context(s.tls_cert, s.tls_key),
        backlog=1024,
    )
    sockets = server.sockets
    address = sockets[0].getsockname()[:2] if sockets else (s.listen.host, s.listen.port)
    periodic = asyncio.create_task(deps.run_periodic(), name="veil-s3-audit")
    return S3Listener(server, web_server, deps, (str(address[0]), int(address[1])), periodic)
