"""SigV4 verification of client requests: Authorization header and presigned URLs.

Theory of operation
-------------------
:func:`verify_header` and :func:`verify_presigned` run the same checks in the same order:

1. parse the credential (``AKID/date/region/s3/aws4_request``) and the signed header list;
   malformed parts are ``AuthorizationHeaderMalformed`` (header) or
   ``AuthorizationQueryParametersError`` (query), as S3 answers;
2. check the clock against ``now`` (a parameter: nothing here reads the time): a header
   signature more than ``max_skew`` (15 minutes) off is ``RequestTimeTooSkewed``; a presigned
   URL past ``X-Amz-Date + X-Amz-Expires`` (at most a week) is ``AccessDenied`` /
   ``Request has expired``;
3. look the secret up through the caller's callable (``None`` -> ``InvalidAccessKeyId``);
4. require ``host`` and every ``x-amz-*`` header present to be signed (``AccessDenied`` with
   ``HeadersNotSigned``), since the proxy forwards those headers upstream under its own
   signature and must not forward anything the client did not sign;
5. read the payload mode from ``x-amz-content-sha256`` (required for header signatures;
   ``UNSIGNED-PAYLOAD`` for presigned URLs unless that header is signed);
6. rebuild the canonical request (:mod:`protocols.s3.sigv4` stages) and compare signatures with
   :func:`hmac.compare_digest`, for the canonical URI and, when it differs, the raw path
   (see :func:`protocols.s3.sigv4.canonical_uri`). A mismatch is ``SignatureDoesNotMatch``
   with S3's ``StringToSign`` and ``CanonicalRequest`` details (derived from the request only).

The result, :class:`~protocols.s3.sigv4.Verified`, names the access key and what the body
still owes: a SHA-256, nothing, or a chunk-signature chain seeded with the request signature.
"""

from __future__ import annotations

import hmac
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from protocols.s3.errors import REQUEST_EXPIRED, S3Error
from protocols.s3.head import RequestHead
from protocols.s3.sigv4 import (
    ALGORITHM,
    AMZ_DATE_FORMAT,
    MAX_PRESIGN_EXPIRES,
    MAX_SKEW,
    SERVICE,
    TERMINATOR,
    UNSIGNED_PAYLOAD,
    AuthKind,
    CredentialsLookup,
    PayloadMode,
    SigningChain,
    Verified,
    canonical_headers,
    canonical_query,
    canonical_request,
    canonical_uri,
    format_amz_date,
    signature,
    signing_key,
    string_to_sign,
    utc,
)

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
    now = utc(now)
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
            moment = parsedate_to_datetime(date)
            # "-0000" (what botocore's formatdate writes) parses as naive: it means UTC
            return format_amz_date(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
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
    now = utc(now)
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


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
