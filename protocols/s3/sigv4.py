"""AWS Signature Version 4 for S3: the pure stages, verification of clients, signing upstream.

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

Verification (:func:`verify_header`, :func:`verify_presigned`) parses the credential, checks
the clock (``now`` is a parameter, never read here), looks the secret up through a callable,
refuses unsigned ``x-amz-*`` headers (the proxy forwards them, so they must be covered), and
compares signatures with :func:`hmac.compare_digest`. It returns a :class:`Verified` that says
who signed and what the body still has to prove: a declared SHA-256, nothing
(``UNSIGNED-PAYLOAD``), or a chunk-signature chain seeded with the request signature
(:class:`SigningChain`, used by :mod:`protocols.s3.chunked`).

:func:`sign` is the other direction: veil signing its own upstream request with its upstream
credentials; it returns the headers to add.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import quote

from protocols.s3.errors import REQUEST_EXPIRED, S3Error
from protocols.s3.head import RequestHead, parse_query, percent_decode

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


# header literal -> mode (a hex digest is SIGNED); SigV4a streaming is refused, not unknown
_PAYLOAD_LITERALS: dict[str, PayloadMode] = {
    mode.value: mode for mode in PayloadMode if mode is not PayloadMode.SIGNED
}
_REFUSED_PAYLOADS = frozenset(
    {
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
    }
)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


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


def format_amz_date(moment: datetime) -> str:
    """``20130524T000000Z`` for an aware datetime."""
    return _utc(moment).strftime(AMZ_DATE_FORMAT)


# ---------------------------------------------------------------------------------------------
# verification


def verify_header(
    head: RequestHead,
    lookup: CredentialsLookup,
    now: datetime,
    *,
    max_skew: timedelta = MAX_SKEW,
) -> Verified:
    """Verify an ``Authorization: AWS4-HMAC-SHA256 ...`` request.

    Args:
        head: the raw request head.
        lookup: access key id -> secret, ``None`` when unknown.
        now: the current time (aware).
        max_skew: how far the request time may be from ``now`` (S3: 15 minutes).

    Returns:
        The verified identity and payload obligations.

    Raises:
        S3Error: ``AuthorizationHeaderMalformed`` (bad header or scope), ``AccessDenied``
            (no date, unsigned ``x-amz-*`` headers), ``RequestTimeTooSkewed``,
            ``InvalidAccessKeyId``, ``InvalidRequest`` / ``InvalidArgument`` (missing or bad
            ``x-amz-content-sha256``), ``NotImplemented`` (SigV4a streaming) or
            ``SignatureDoesNotMatch``.
    """
    fields = _parse_authorization(head.header("authorization") or "")
    access_key, scope = _parse_credential(fields["Credential"], "AuthorizationHeaderMalformed")
    signed = tuple(fields["SignedHeaders"].split(";"))
    amz_date = _request_time(head)
    if amz_date[:8] != scope[0]:
        raise S3Error(
            "AuthorizationHeaderMalformed",
            "Invalid credential date. Date is not the same as X-Amz-Date.",
        )
    _check_skew(amz_date, now, max_skew)
    secret = _lookup(lookup, access_key)
    _check_signed_headers(head, signed, "AuthorizationHeaderMalformed")
    payload_hash = head.header("x-amz-content-sha256")
    if payload_hash is None:
        raise S3Error(
            "InvalidRequest", "Missing required header for this request: x-amz-content-sha256"
        )
    mode = _payload_mode(payload_hash)
    query = canonical_query(head.params)
    chain = _check_signature(
        head, secret, access_key, scope, amz_date, query, signed, payload_hash, fields["Signature"]
    )
    return Verified(
        access_key_id=access_key,
        kind=AuthKind.HEADER,
        payload=mode,
        content_sha256=payload_hash.lower() if mode is PayloadMode.SIGNED else None,
        chain=chain if mode.chunk_signatures else None,
        region=scope[1],
        signed_headers=signed,
    )


_PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)


def verify_presigned(
    head: RequestHead,
    lookup: CredentialsLookup,
    now: datetime,
    *,
    max_skew: timedelta = MAX_SKEW,
) -> Verified:
    """Verify a SigV4 presigned URL (``X-Amz-Algorithm=AWS4-HMAC-SHA256&...``).

    Args:
        head: the raw request head.
        lookup: access key id -> secret, ``None`` when unknown.
        now: the current time (aware).
        max_skew: how far in the future ``X-Amz-Date`` may be.

    Returns:
        The verified identity; the payload is UNSIGNED unless ``x-amz-content-sha256`` was a
        signed header.

    Raises:
        S3Error: ``AuthorizationQueryParametersError`` (missing/duplicate/bad parameters),
            ``AccessDenied`` (``Request has expired``, not yet valid, unsigned ``x-amz-*``
            headers), ``InvalidAccessKeyId`` or ``SignatureDoesNotMatch``.
    """
    values = _presign_params(head)
    if values["X-Amz-Algorithm"] != ALGORITHM:
        raise S3Error(
            "AuthorizationQueryParametersError",
            'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"',
        )
    access_key, scope = _parse_credential(
        values["X-Amz-Credential"], "AuthorizationQueryParametersError"
    )
    amz_date = values["X-Amz-Date"]
    signed_at = _parse_amz_date(amz_date, "AuthorizationQueryParametersError")
    if amz_date[:8] != scope[0]:
        raise S3Error(
            "AuthorizationQueryParametersError",
            "Invalid credential date. Date is not the same as X-Amz-Date.",
        )
    _check_expiry(signed_at, values["X-Amz-Expires"], now, max_skew)
    secret = _lookup(lookup, access_key)
    signed = tuple(values["X-Amz-SignedHeaders"].split(";"))
    _check_signed_headers(head, signed, "AuthorizationQueryParametersError")
    payload_hash = UNSIGNED_PAYLOAD
    if "x-amz-content-sha256" in signed:
        payload_hash = head.header("x-amz-content-sha256") or UNSIGNED_PAYLOAD
    mode = _payload_mode(payload_hash)
    query = canonical_query(head.params, exclude="X-Amz-Signature")
    provided = values["X-Amz-Signature"]
    chain = _check_signature(
        head, secret, access_key, scope, amz_date, query, signed, payload_hash, provided
    )
    return Verified(
        access_key_id=access_key,
        kind=AuthKind.PRESIGNED,
        payload=mode,
        content_sha256=payload_hash.lower() if mode is PayloadMode.SIGNED else None,
        chain=chain if mode.chunk_signatures else None,
        region=scope[1],
        signed_headers=signed,
    )


def _presign_params(head: RequestHead) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in head.params:
        if name in _PRESIGN_PARAMS:
            if name in values:
                raise S3Error("AuthorizationQueryParametersError", f"Duplicate {name} parameter")
            values[name] = value or ""
    missing = [name for name in _PRESIGN_PARAMS if not values.get(name)]
    if missing:
        raise S3Error(
            "AuthorizationQueryParametersError",
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and "
            "X-Amz-Expires parameters.",
        )
    return values


def _check_expiry(signed_at: datetime, expires: str, now: datetime, max_skew: timedelta) -> None:
    if not expires.isdigit():
        raise S3Error("AuthorizationQueryParametersError", "X-Amz-Expires should be a number")
    seconds = int(expires)
    if seconds > MAX_PRESIGN_EXPIRES:
        raise S3Error(
            "AuthorizationQueryParametersError",
            "X-Amz-Expires must be less than a week (in seconds) that is 604800",
        )
    now = _utc(now)
    if signed_at - now > max_skew:
        raise S3Error("AccessDenied", "Request is not valid yet")
    if now > signed_at + timedelta(seconds=seconds):
        raise S3Error(
            "AccessDenied",
            REQUEST_EXPIRED,
            details=(
                ("X-Amz-Expires", expires),
                ("Expires", _iso(signed_at + timedelta(seconds=seconds))),
                ("ServerTime", _iso(now)),
            ),
        )


def _check_signature(
    head: RequestHead,
    secret: str,
    access_key: str,
    scope: tuple[str, str],
    amz_date: str,
    query: str,
    signed: tuple[str, ...],
    payload_hash: str,
    provided: str,
) -> SigningChain:
    """Compare ``provided`` with the signature of each canonical-URI candidate."""
    date, region = scope
    key = signing_key(secret, date, region)
    scope_text = "/".join((date, region, SERVICE, TERMINATOR))
    headers = canonical_headers(head.headers, signed)
    candidates = [canonical_uri(head.path)]
    if head.path != candidates[0]:
        candidates.append(head.path)
    first_request = first_sts = ""
    provided_bytes = provided.encode("ascii", "replace")
    for uri in candidates:
        request = canonical_request(head.method, uri, query, headers, signed, payload_hash)
        sts = string_to_sign(amz_date, scope_text, request)
        expected = signature(key, sts)
        if hmac.compare_digest(expected.encode("ascii"), provided_bytes):
            return SigningChain(amz_date, scope_text, expected, key)
        first_request, first_sts = first_request or request, first_sts or sts
    raise S3Error(
        "SignatureDoesNotMatch",
        details=(
            ("AWSAccessKeyId", access_key),
            ("StringToSign", first_sts),
            ("SignatureProvided", provided),
            ("CanonicalRequest", first_request),
        ),
    )


_AUTH_FIELD = re.compile(r"\s*(Credential|SignedHeaders|Signature)=([^,\s]*)\s*")


def _parse_authorization(value: str) -> dict[str, str]:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise S3Error("AuthorizationHeaderMalformed", "Unsupported authorization algorithm")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        match = _AUTH_FIELD.fullmatch(part)
        if match is None or match.group(1) in fields or not match.group(2):
            raise S3Error(
                "AuthorizationHeaderMalformed",
                f"The authorization header is malformed; incorrect component: {part.strip()!r}",
            )
        fields[match.group(1)] = match.group(2)
    if len(fields) != 3:
        raise S3Error(
            "AuthorizationHeaderMalformed",
            "The authorization header is malformed; the Credential, SignedHeaders and "
            "Signature components are required.",
        )
    return fields


def _parse_credential(value: str, code: str) -> tuple[str, tuple[str, str]]:
    """``AKID/20130524/us-east-1/s3/aws4_request`` -> (AKID, (date, region))."""
    parts = value.rsplit("/", 4)
    if len(parts) != 5 or not parts[0] or not re.fullmatch(r"\d{8}", parts[1]) or not parts[2]:
        raise S3Error(
            code,
            'The Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/'
            'aws4_request".',
        )
    access_key, date, region, service, terminator = parts
    if service != SERVICE:
        raise S3Error(
            code,
            f'The Credential has an incorrect service "{service}". This endpoint belongs to "s3".',
        )
    if terminator != TERMINATOR:
        raise S3Error(
            code,
            f'The Credential has an incorrect terminal "{terminator}". This endpoint uses '
            '"aws4_request".',
        )
    return access_key, (date, region)


def _request_time(head: RequestHead) -> str:
    """The request's SigV4 timestamp: ``x-amz-date``, else the ``Date`` header."""
    amz_date = head.header("x-amz-date")
    if amz_date is not None:
        _parse_amz_date(amz_date, "AccessDenied")
        return amz_date
    date = head.header("date")
    if date is not None:
        try:
            return format_amz_date(parsedate_to_datetime(date))
        except (TypeError, ValueError):
            pass
    raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")


def _parse_amz_date(value: str, code: str) -> datetime:
    try:
        return datetime.strptime(value, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        if code == "AccessDenied":
            message = "AWS authentication requires a valid Date or x-amz-date header"
        else:
            message = "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\""
        raise S3Error(code, message) from None


def _check_skew(amz_date: str, now: datetime, max_skew: timedelta) -> None:
    request_time = _parse_amz_date(amz_date, "AccessDenied")
    now = _utc(now)
    if abs(request_time - now) > max_skew:
        raise S3Error(
            "RequestTimeTooSkewed",
            details=(
                ("RequestTime", amz_date),
                ("ServerTime", _iso(now)),
                ("MaxAllowedSkewMilliseconds", str(int(max_skew.total_seconds() * 1000))),
            ),
        )


def _lookup(lookup: CredentialsLookup, access_key: str) -> str:
    secret = lookup(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", details=(("AWSAccessKeyId", access_key),))
    return secret


def _check_signed_headers(head: RequestHead, signed: tuple[str, ...], code: str) -> None:
    """``host`` must be signed, and so must every ``x-amz-*`` header the request carries."""
    if "host" not in signed or any(not name or name != name.lower() for name in signed):
        raise S3Error(code, "SignedHeaders must be lower case and include host")
    unsigned = sorted(
        {name for name, _ in head.headers if name.startswith("x-amz-") and name not in signed}
    )
    if unsigned:
        raise S3Error(
            "AccessDenied",
            "There were headers present in the request which were not signed",
            details=(("HeadersNotSigned", ", ".join(unsigned)),),
        )


def _payload_mode(value: str) -> PayloadMode:
    mode = _PAYLOAD_LITERALS.get(value)
    if mode is not None:
        return mode
    if _HEX64.fullmatch(value):
        return PayloadMode.SIGNED
    if value in _REFUSED_PAYLOADS:
        raise S3Error("NotImplemented", f"{value} (SigV4a) is not supported")
    raise S3Error(
        "InvalidArgument",
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, or a "
        "valid sha256 value.",
        details=(("ArgumentName", "x-amz-content-sha256"), ("ArgumentValue", value)),
    )


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


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
