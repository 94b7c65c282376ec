"""AWS Signature Version 4 for S3: the shared types, the pure stages, and upstream signing.

Theory of operation
-------------------
A SigV4 signature is computed in four stages, each a pure function here (botocore's
``SigV4Auth`` split, without its clock):

1. :func:`canonical_request` -- method, canonical URI, canonical query, canonical headers,
   signed header list and the payload hash, joined by ``\\n``;
2. :func:`string_to_sign` -- ``AWS4-HMAC-SHA256``, the timestamp, the scope
   (``date/region/s3/aws4_request``) and the SHA-256 of stage 1;
3. :func:`signing_key` -- the HMAC chain ``AWS4+secret -> date -> region -> service ->
   aws4_request``;
4. :func:`signature` -- hex HMAC-SHA256 of stage 2 under stage 3.

Canonical forms, as S3 computes them:

* URI: S3 does **not** normalise or double-encode the path. The raw path is percent-decoded once
  and re-encoded with the SigV4 rules (every byte but ``A-Za-z0-9-._~`` and ``/`` as ``%XX``).
  For every SDK that already sends canonical paths (botocore included) this is the raw path; a
  client that sent a non-canonical encoding but signed exactly what it sent is also accepted, by
  trying the raw path as a second candidate (both decode to the same key, so nothing else is
  authorised by it).
* Query: names and values decoded, re-encoded with the same rules (``/`` encoded), sorted by name
  then value, ``name=value`` joined by ``&`` (a bare ``?uploads`` is ``uploads=``).
* Headers: the names listed in ``SignedHeaders``; each value trimmed, runs of whitespace folded to
  one space, repeated headers joined by ``,`` in wire order.
* Payload hash: the ``x-amz-content-sha256`` value verbatim (hex digest, ``UNSIGNED-PAYLOAD`` or
  one of the ``STREAMING-*`` literals); presigned URLs use ``UNSIGNED-PAYLOAD``.

Verification of client requests lives in :mod:`protocols.s3.verify`; it returns a
:class:`Verified` that says who signed and what the body still has to prove (a declared SHA-256,
nothing, or a chunk-signature chain seeded with the request signature, :class:`SigningChain`,
used by :mod:`protocols.s3.chunked`).

:func:`sign` is the other direction: veil signing its own upstream request with its upstream
credentials; it returns the headers to add.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from protocols.s3.head import parse_query, percent_decode

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
SERVICE = "s3"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_SKEW = timedelta(minutes=15)
MAX_PRESIGN_EXPIRES = 604800  # one week, S3's limit for X-Amz-Expires
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

CredentialsLookup = Callable[[str], str | None]
"""access key id -> secret access key, or ``None`` for an unknown key."""


class PayloadMode(enum.Enum):
    """What ``x-amz-content-sha256`` says about the body; values are the header literals."""

    SIGNED = "<sha256 hex>"
    UNSIGNED = "UNSIGNED-PAYLOAD"
    STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

    @property
    def streaming(self) -> bool:
        """Whether the body is aws-chunked."""
        return self.value.startswith("STREAMING-")

    @property
    def chunk_signatures(self) -> bool:
        """Whether each chunk (and the trailer, if any) carries a chained signature."""
        return self in (PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER)

    @property
    def trailer(self) -> bool:
        """Whether trailing headers follow the last chunk."""
        return self.value.endswith("-TRAILER")


class AuthKind(enum.Enum):
    """How the request was authenticated."""

    HEADER = "AWS4-HMAC-SHA256 Authorization header"
    PRESIGNED = "AWS4-HMAC-SHA256 query string"
    PRESIGNED_V2 = "legacy SigV2 query string"


@dataclass(frozen=True, slots=True)
class Credentials:
    """A key pair (plus session token) used to sign upstream requests."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SigningChain:
    """What chained chunk signatures hang off: the seed signature and the signing key.

    ``chunk_string_to_sign`` / ``trailer_string_to_sign`` are the S3 streaming formats::

        AWS4-HMAC-SHA256-PAYLOAD | amz date | scope | previous sig | sha256("") | sha256(chunk)
        AWS4-HMAC-SHA256-TRAILER | amz date | scope | previous sig | sha256(trailer lines)

    (fields joined by ``\\n``).
    """

    amz_date: str
    scope: str
    seed_signature: str
    key: bytes = field(repr=False)

    def chunk_string_to_sign(self, previous: str, chunk_sha256_hex: str) -> str:
        """The string to sign for one data chunk (``previous`` = the prior signature)."""
        parts = ("AWS4-HMAC-SHA256-PAYLOAD", self.amz_date, self.scope, previous, EMPTY_SHA256)
        return "\n".join((*parts, chunk_sha256_hex))

    def trailer_string_to_sign(self, previous: str, trailer_sha256_hex: str) -> str:
        """The string to sign for the trailing headers (``previous`` = final chunk's sig)."""
        parts = ("AWS4-HMAC-SHA256-TRAILER", self.amz_date, self.scope, previous)
        return "\n".join((*parts, trailer_sha256_hex))

    def sign(self, string: str) -> str:
        """Hex HMAC-SHA256 of ``string`` under the signing key."""
        return signature(self.key, string)


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature checked out, and what its body must still prove.

    Attributes:
        access_key_id: the client identity.
        kind: header, presigned or legacy presigned.
        payload: the body mode from ``x-amz-content-sha256`` (UNSIGNED for presigned URLs).
        content_sha256: the declared lower-case hex digest when ``payload`` is SIGNED; the body
            must hash to it or the request fails with ``XAmzContentSHA256Mismatch``.
        chain: the seed for chunk signatures when ``payload.chunk_signatures``.
        region: the region of the credential scope (``None`` for SigV2).
        signed_headers: the header names the signature covers.
    """

    access_key_id: str
    kind: AuthKind
    payload: PayloadMode
    content_sha256: str | None = None
    chain: SigningChain | None = None
    region: str | None = None
    signed_headers: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# pure stages


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """SigV4 ``UriEncode``: every UTF-8 byte except ``A-Za-z0-9-._~`` (and ``/``) as ``%XX``."""
    return quote(text, safe="/" if keep_slash else "")


def canonical_uri(raw_path: str) -> str:
    """The canonical URI of a raw (percent-encoded) S3 path: decoded once, re-encoded once.

    Raises:
        S3Error: ``InvalidURI`` for escapes that are not UTF-8.
    """
    return uri_encode(percent_decode(raw_path or "/"), keep_slash=True)


def canonical_query(params: Iterable[tuple[str, str | None]], *, exclude: str = "") -> str:
    """The canonical query string of decoded parameters (``exclude``: a name to leave out)."""
    pairs = sorted(
        (uri_encode(name), uri_encode(value or ""))
        for name, value in params
        if not (exclude and name == exclude)
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def canonical_headers(headers: Sequence[tuple[str, str]], signed: Sequence[str]) -> str:
    """``name:value\\n`` for each signed header, in the order of ``signed``.

    Args:
        headers: ``(lower-case name, value)`` pairs in wire order.
        signed: the signed header names (lower case).
    """
    lines = []
    for name in signed:
        values = [" ".join(value.split()) for key, value in headers if key == name]
        lines.append(f"{name}:{','.join(values)}\n")
    return "".join(lines)


def canonical_request(
    method: str,
    uri: str,
    query: str,
    headers: str,
    signed_headers: Sequence[str],
    payload_hash: str,
) -> str:
    """Stage 1: join the canonical parts (``headers`` from :func:`canonical_headers`)."""
    return "\n".join((method, uri, query, headers, ";".join(signed_headers), payload_hash))


def string_to_sign(amz_date: str, scope: str, request: str) -> str:
    """Stage 2: ``AWS4-HMAC-SHA256\\n<amz date>\\n<scope>\\n<sha256 hex of the request>``."""
    digest = hashlib.sha256(request.encode("utf-8")).hexdigest()
    return "\n".join((ALGORITHM, amz_date, scope, digest))


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """Stage 3: the derived key for one day, region and service."""
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def signature(key: bytes, string: str) -> str:
    """Stage 4: the hex signature of a string to sign."""
    return hmac.new(key, string.encode("utf-8"), hashlib.sha256).hexdigest()


def utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return moment.astimezone(UTC)


def format_amz_date(moment: datetime) -> str:
    """``20130524T000000Z`` for an aware datetime."""
    return utc(moment).strftime(AMZ_DATE_FORMAT)


# ---------------------------------------------------------------------------------------------
# signing upstream requests

# never signed: hop-by-hop headers a proxy or HTTP client may rewrite (botocore's list, too)
UNSIGNABLE_HEADERS = frozenset(
    {
        "authorization",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The headers :func:`sign` adds, and the chain for signing aws-chunked chunks."""

    headers: tuple[tuple[str, str], ...]
    chain: SigningChain


def sign(
    method: str,
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    payload_hash: str,
    credentials: Credentials,
    region: str,
    now: datetime,
) -> SignedRequest:
    """Sign an upstream S3 request with SigV4 (Authorization header).

    Args:
        method: HTTP method.
        path: the path as it will be sent (build it with :func:`uri_encode`, keeping ``/``).
        query: the raw query string as it will be sent (no ``?``).
        headers: every header that will be sent, including ``host``; hop-by-hop headers
            (:data:`UNSIGNABLE_HEADERS`) are left out of the signature.
        payload_hash: hex SHA-256 of the body, ``UNSIGNED-PAYLOAD`` or a ``STREAMING-*`` literal.
        credentials: the upstream key pair.
        region: the upstream region.
        now: the signing time (aware).

    Returns:
        The headers to add (``x-amz-date``, ``x-amz-content-sha256``, the security token if
        any, ``authorization``) and the seed chain for aws-chunked signing.

    Raises:
        ValueError: no ``host`` header.
    """
    amz_date = format_amz_date(now)
    added = [("x-amz-date", amz_date), ("x-amz-content-sha256", payload_hash)]
    if credentials.session_token is not None:
        added.append(("x-amz-security-token", credentials.session_token))
    replaced = {name for name, _ in added}
    pairs = [
        (name.lower(), value)
        for name, value in headers
        if name.lower() not in UNSIGNABLE_HEADERS and name.lower() not in replaced
    ]
    pairs.extend(added)
    signed = tuple(sorted({name for name, _ in pairs}))
    if "host" not in signed:
        raise ValueError("sign() needs the host header")
    date = amz_date[:8]
    scope = "/".join((date, region, SERVICE, TERMINATOR))
    request = canonical_request(
        method.upper(),
        canonical_uri(path),
        canonical_query(parse_query(query)),
        canonical_headers(pairs, signed),
        signed,
        payload_hash,
    )
    key = signing_key(credentials.secret_access_key, date, region)
    sig = signature(key, string_to_sign(amz_date, scope, request))
    authorization = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(signed)}, Signature={sig}"
    )
    added.append(("authorization", authorization))
    return SignedRequest(tuple(added), SigningChain(amz_date, scope, sig, key))
