"""Pick the authentication mechanism of an S3 request and verify it.

Theory of operation
-------------------
An S3 request authenticates in exactly one way; :func:`authenticate` finds which from the head
and hands over to the verifier of :data:`MECHANISMS`:

==========================  ===============================================  ================
mechanism                   recognised by                                    verifier
==========================  ===============================================  ================
``header``                  an ``Authorization`` header                      by scheme, below
``presigned``               ``X-Amz-Algorithm`` / ``-Credential`` /          SigV4 query
                            ``-Signature`` query parameters
``presigned-v2``            ``AWSAccessKeyId`` or ``Signature`` parameters   SigV2 query
==========================  ===============================================  ================

``Authorization`` schemes (:data:`SCHEMES`): ``AWS4-HMAC-SHA256`` is verified; the SigV2 header
scheme ``AWS`` is refused as S3 refuses it in regions without SigV2 (``InvalidRequest``, "Please
use AWS4-HMAC-SHA256"); SigV4a (``AWS4-ECDSA-P256-SHA256``) is ``NotImplemented``; anything else
is ``InvalidArgument`` "Unsupported Authorization Type". Two mechanisms at once are
``InvalidArgument`` (S3's "Only one auth mechanism allowed"); none at all is ``AccessDenied``:
veil serves no anonymous requests.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from protocols.s3.sigv2 import verify_presigned_v2
from protocols.s3.sigv4 import MAX_SKEW, CredentialsLookup, Verified
from protocols.s3.verify import verify_header, verify_presigned

Verifier = Callable[[RequestHead, CredentialsLookup, datetime, timedelta, str | None], Verified]


def _header(
    head: RequestHead, lookup: CredentialsLookup, now: datetime, skew: timedelta, _: str | None
) -> Verified:
    values = head.header_values("authorization")
    if len(values) != 1:
        raise S3Error("InvalidArgument", "Only one Authorization header is allowed")
    scheme = values[0].strip().partition(" ")[0]
    verifier = SCHEMES.get(scheme, _unsupported_scheme)
    return verifier(head, lookup, now, skew, None)


def _sigv4_header(
    head: RequestHead, lookup: CredentialsLookup, now: datetime, skew: timedelta, _: str | None
) -> Verified:
    return verify_header(head, lookup, now, max_skew=skew)


def _sigv4_query(
    head: RequestHead, lookup: CredentialsLookup, now: datetime, skew: timedelta, _: str | None
) -> Verified:
    return verify_presigned(head, lookup, now, max_skew=skew)


def _sigv2_query(
    head: RequestHead,
    lookup: CredentialsLookup,
    now: datetime,
    _: timedelta,
    virtual_bucket: str | None,
) -> Verified:
    return verify_presigned_v2(head, lookup, now, virtual_bucket=virtual_bucket)


def _refuse(code: str, message: str) -> Verifier:
    def refuse(
        head: RequestHead, lookup: CredentialsLookup, now: datetime, _: timedelta, __: str | None
    ) -> Verified:
        raise S3Error(code, message)

    return refuse


_unsupported_scheme = _refuse("InvalidArgument", "Unsupported Authorization Type")

# Authorization scheme -> verifier
SCHEMES: dict[str, Verifier] = {
    "AWS4-HMAC-SHA256": _sigv4_header,
    "AWS": _refuse(
        "InvalidRequest",
        "The authorization mechanism you have provided is not supported. Please use "
        "AWS4-HMAC-SHA256.",
    ),
    "AWS4-ECDSA-P256-SHA256": _refuse("NotImplemented", "SigV4a is not supported"),
}

# mechanism -> verifier
MECHANISMS: dict[str, Verifier] = {
    "header": _header,
    "presigned": _sigv4_query,
    "presigned-v2": _sigv2_query,
}

_PRESIGN_MARKERS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature")
_V2_MARKERS = ("AWSAccessKeyId", "Signature")


def mechanism(head: RequestHead) -> str | None:
    """Which mechanism the request uses: a key of :data:`MECHANISMS`, or ``None``.

    Raises:
        S3Error: ``InvalidArgument`` when more than one is present.
    """
    found = [
        name
        for name, present in (
            ("header", head.header("authorization") is not None),
            ("presigned", any(head.has_param(marker) for marker in _PRESIGN_MARKERS)),
            ("presigned-v2", any(head.has_param(marker) for marker in _V2_MARKERS)),
        )
        if present
    ]
    if len(found) > 1:
        raise S3Error(
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
            details=(("ArgumentName", "Authorization"),),
        )
    return found[0] if found else None


def authenticate(
    head: RequestHead,
    lookup: CredentialsLookup,
    now: datetime,
    *,
    max_skew: timedelta = MAX_SKEW,
    virtual_bucket: str | None = None,
) -> Verified:
    """Verify whichever signature the request carries.

    Args:
        head: the raw request head.
        lookup: access key id -> secret, ``None`` when unknown.
        now: the current time (aware).
        max_skew: allowed clock difference for header signatures (and future presigned dates).
        virtual_bucket: the bucket named by the Host header of a virtual-hosted request
            (SigV2 signs the path-style resource); ``None`` for path-style requests.

    Returns:
        The verified identity and what the body must still prove.

    Raises:
        S3Error: ``AccessDenied`` for anonymous requests, ``InvalidArgument`` for several
            mechanisms, and whatever the chosen verifier raises.
    """
    found = mechanism(head)
    if found is None:
        raise S3Error("AccessDenied", "Anonymous requests are not allowed")
    return MECHANISMS[found](head, lookup, now, max_skew, virtual_bucket)
