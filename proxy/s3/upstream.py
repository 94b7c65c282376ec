"""The upstream S3 client: aiohttp, path-style URLs, SigV4 with veil's own credentials.

Theory of operation
-------------------
Every upstream request is built here and signed with :func:`protocols.s3.sigv4.sign` over the
exact path, query and headers that go on the wire, so nothing between signing and sending can
change them: URLs are passed to aiohttp pre-encoded (``yarl.URL(..., encoded=True)``) and
aiohttp's automatic headers (``Content-Type``, ``Accept-Encoding``, ``User-Agent``) are skipped.
Bodies stream both ways: a request body may be an async iterator of ciphertext segments
(signed as ``UNSIGNED-PAYLOAD`` with an exact ``Content-Length``), a response body is read
incrementally by the caller. Response decompression is off: an object stored with
``Content-Encoding: gzip`` is ciphertext to veil and must reach the client byte for byte.

Why aiohttp and not aiobotocore: veil needs to stream a body it is still producing (withholding
the last segment until the client's digests verify, then aborting the request on mismatch), to
choose every header (no SDK-added checksums beside a ciphertext body) and to read raw response
headers (``x-amz-meta-veil-env``) without a model layer re-parsing them. botocore's request
pipeline offers none of these without fighting it; a signed aiohttp request is ~100 lines.

Failures: a connection that cannot be made or breaks is ``ServiceUnavailable`` (503) -- the
session is kept, so veil recovers by itself when the upstream is back. An upstream error
response becomes an :class:`~protocols.s3.errors.S3Error` with the upstream's code, message and
status (:func:`error_of`), relayed to the client as is.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from yarl import URL

from protocols.s3 import xml as s3xml
from protocols.s3.errors import ERROR_STATUS, S3Error
from protocols.s3.sigv4 import UNSIGNED_PAYLOAD, Credentials, sign, uri_encode

log = logging.getLogger("veil.s3")

Query = Sequence[tuple[str, str | None]]
Headers = list[tuple[str, str]]
Body = bytes | AsyncIterable[bytes] | None

MAX_ERROR_BODY = 64 * 1024
# HTTP status -> S3 code, for error answers without a body (HEAD)
_STATUS_CODES = {
    304: "NotModified",
    400: "InvalidRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    405: "MethodNotAllowed",
    409: "OperationAborted",
    412: "PreconditionFailed",
    416: "InvalidRange",
    500: "InternalError",
    501: "NotImplemented",
    503: "ServiceUnavailable",
}


SOCK_READ = 300.0  # seconds a response may go without bringing a byte


def unavailable(what: str = "upstream S3 unreachable") -> S3Error:
    return S3Error("ServiceUnavailable", f"veil: {what}")


@dataclass(frozen=True, slots=True)
class Target:
    """What an upstream request addresses (path style)."""

    bucket: str | None = None
    key: str | None = None
    query: Query = ()

    @property
    def path(self) -> str:
        if self.bucket is None:
            return "/"
        path = "/" + uri_encode(self.bucket)
        return path if self.key is None else path + "/" + uri_encode(self.key, keep_slash=True)

    @property
    def query_string(self) -> str:
        parts = []
        for name, value in self.query:
            parts.append(uri_encode(name) + ("" if value is None else "=" + uri_encode(value)))
        return "&".join(parts)


CredentialSource = Callable[[], Credentials]


def static_credentials(access_key: str, secret_key: str) -> CredentialSource:
    creds = Credentials(access_key, secret_key)
    return lambda: creds


def botocore_credentials() -> CredentialSource:
    """The AWS default chain (environment, profile, instance role), refreshed by botocore."""
    import botocore.session

    resolved = botocore.session.get_session().get_credentials()
    if resolved is None:
        raise S3Error("InternalError", "veil: no upstream credentials (s3.upstream_access_key)")

    def current() -> Credentials:
        frozen = resolved.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    return current


class Upstream:
    """One upstream endpoint: a pooled aiohttp session and the signing credentials.

    Args:
        endpoint: ``http(s)://host[:port]`` of the S3 service.
        region: the signing region.
        credentials: returns the key pair to sign with (called per request).
        clock: the signing time source.
        limit: the connection pool size.
    """

    def __init__(
        self,
        endpoint: str,
        region: str,
        credentials: CredentialSource,
        clock: Callable[[], datetime],
        *,
        limit: int = 256,
        ssl: bool = True,
    ) -> None:
        url = URL(endpoint)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"bad upstream endpoint {endpoint!r}")
        self.endpoint = endpoint
        self._origin = f"{url.scheme}://{url.raw_authority}"
        self._host = url.raw_authority  # what the Host header carries (port only if explicit)
        self._region = region
        self._credentials = credentials
        self._clock = clock
        self._limit = limit
        self._ssl = ssl
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit, ttl_dns_cache=60, enable_cleanup_closed=False
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent"),
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=SOCK_READ),
                read_bufsize=256 * 1024,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _signed_headers(
        self, method: str, target: Target, headers: Iterable[tuple[str, str]], payload_hash: str
    ) -> list[tuple[str, str]]:
        pairs = [(name.lower(), value) for name, value in headers]
        pairs.append(("host", self._host))
        signed = sign(
            method,
            target.path,
            target.query_string,
            pairs,
            payload_hash,
            self._credentials(),
            self._region,
            self._clock(),
        )
        return [*pairs, *signed.headers]

    async def send(
        self,
        method: str,
        target: Target,
        headers: Iterable[tuple[str, str]] = (),
        body: Body = None,
        *,
        length: int | None = None,
        sign_body: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send one request; the caller reads (or releases) the response.

        Args:
            method: HTTP method.
            target: bucket, key and query.
            headers: headers to send besides the signature (names any case).
            body: bytes (signed by SHA-256), an async iterator (``UNSIGNED-PAYLOAD``; give
                ``length``), or ``None``.
            length: the exact byte length of an iterator body.
            sign_body: sign a bytes body's SHA-256 (XML documents); ``False`` sends
                ``UNSIGNED-PAYLOAD`` (ciphertext: authenticated by its own tags when read).

        Raises:
            S3Error: ``ServiceUnavailable`` when the upstream cannot be reached.
        """
        send_headers = list(headers)
        if isinstance(body, bytes):
            payload_hash = hashlib.sha256(body).hexdigest() if sign_body else UNSIGNED_PAYLOAD
            send_headers.append(("content-length", str(len(body))))
        elif body is None:
            payload_hash = hashlib.sha256(b"").hexdigest()
            if method in ("PUT", "POST"):
                send_headers.append(("content-length", "0"))
        else:
            payload_hash = UNSIGNED_PAYLOAD
            if length is None:
                raise ValueError("a streamed upstream body needs its length")
            send_headers.append(("content-length", str(length)))
        wire = self._signed_headers(method, target, send_headers, payload_hash)
        query = target.query_string
        url = URL(self._origin + target.path + ("?" + query if query else ""), encoded=True)
        try:
            return await self.session.request(
                method,
                url,
                headers=wire,
                data=body,
                allow_redirects=False,
                ssl=self._ssl,
            )
        except aiohttp.ClientError as e:  # includes a body iterator that raised: aborted
            log.warning("upstream %s: %s", self.endpoint, type(e).__name__)
            raise unavailable() from None
        except TimeoutError:
            raise unavailable("upstream S3 timed out") from None

    async def call(
        self,
        method: str,
        target: Target,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        *,
        ok: Iterable[int] = (200, 204, 206),
        sign_body: bool = True,
    ) -> Reply:
        """Send a request and read its whole (small) answer; an error status raises.

        Raises:
            S3Error: the upstream's error (see :func:`error_of`) or ``ServiceUnavailable``.
        """
        resp = await self.send(method, target, headers, body, sign_body=sign_body)
        async with resp:
            try:
                data = await resp.read()
            except aiohttp.ClientError:
                raise unavailable("upstream S3 connection broke") from None
        reply = Reply(resp.status, raw_headers(resp), data)
        if resp.status not in tuple(ok):
            raise error_of(reply.status, reply.body, method)
        return reply

    async def reachable(self) -> bool:
        """Whether the upstream answers HTTP at all (readiness)."""
        try:
            async with self.session.head(self._origin + "/", timeout=aiohttp.ClientTimeout(3)):
                return True
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole upstream answer: status, headers (lower-case names, wire order), body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


async def read_error(resp: aiohttp.ClientResponse, method: str) -> S3Error:
    """The S3 error of an upstream error response (reads at most 64 KiB of its body)."""
    try:
        body = await resp.content.read(MAX_ERROR_BODY) if method != "HEAD" else b""
    except aiohttp.ClientError:
        body = b""
    resp.release()
    return error_of(resp.status, body, method)


def error_of(status: int, body: bytes, method: str = "GET") -> S3Error:
    """Turn an upstream error answer into the S3 error to relay (same code and status)."""
    code, message = None, None
    if body:
        try:
            root = s3xml.parse(body, max_size=MAX_ERROR_BODY)
        except S3Error:
            root = None
        if root is not None and s3xml.local_name(root.tag) == "Error":
            for child in root:
                name = s3xml.local_name(child.tag)
                if name == "Code":
                    code = (child.text or "").strip() or None
                elif name == "Message":
                    message = (child.text or "").strip() or None
    if code is None:
        code = _STATUS_CODES.get(status, "InternalError")
        if status == 404 and method == "HEAD":
            code = "NoSuchKey"
    if code in ERROR_STATUS and ERROR_STATUS[code][0] == status:
        return S3Error(code, message)
    return S3Error(code, message or code, status=status)


def raw_headers(resp: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    """Response headers as ``(lower-case name, value)`` pairs in wire order."""
    return [
        (k.decode("latin-1").lower(), v.decode("utf-8", "replace")) for k, v in resp.raw_headers
    ]
