"""Legacy SigV2 presigned URLs (``?AWSAccessKeyId=..&Expires=..&Signature=..``).

Theory of operation
-------------------
Some clients (old SDKs, botocore with ``signature_version='s3'``, hand-rolled scripts) still hand
out SigV2 query-string URLs for GETs. The signature is ``base64(HMAC-SHA1(secret, sts))`` over::

    METHOD \\n Content-MD5 \\n Content-Type \\n Expires \\n
    [x-amz-name:value \\n ...]
    CanonicalizedResource

The ``x-amz-*`` lines come from the headers and from ``x-amz-*`` query parameters (signers move
them into the URL), lower-cased, sorted, repeated values joined by ``,``. The canonicalized
resource is the *path-style* path as sent (``/bucket/key``, even for a virtual-hosted request,
so the caller passes the bucket it took from the Host header) followed by the S3 sub-resources
of :data:`SUBRESOURCES` present in the query, sorted, with decoded values (``?acl``,
``?versionId=3``, ``?response-content-type=..``). No other query parameter is signed.

``Expires`` is an absolute epoch second; past it, S3 answers ``AccessDenied`` /
``Request has expired``. A SigV2 URL proves nothing about the body (UNSIGNED payload).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import UTC, datetime

from protocols.s3.errors import REQUEST_EXPIRED, S3Error
from protocols.s3.head import RequestHead
from protocols.s3.sigv4 import AuthKind, CredentialsLookup, PayloadMode, Verified

# the query parameters SigV2 signs (S3 "Constructing the CanonicalizedResource Element")
SUBRESOURCES = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "cors",
        "delete",
        "encryption",
        "inventory",
        "legal-hold",
        "lifecycle",
        "location",
        "logging",
        "metrics",
        "notification",
        "object-lock",
        "partNumber",
        "policy",
        "replication",
        "requestPayment",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
        "response-content-language",
        "response-content-type",
        "response-expires",
        "restore",
        "retention",
        "select",
        "select-type",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "versions",
        "website",
    }
)

_V2_PARAMS = ("AWSAccessKeyId", "Expires", "Signature")


def string_to_sign(head: RequestHead, expires: str, virtual_bucket: str | None = None) -> str:
    """The SigV2 string to sign of a presigned request.

    Args:
        head: the raw request head.
        expires: the ``Expires`` parameter, verbatim.
        virtual_bucket: the bucket named by the Host header for virtual-hosted requests.

    Returns:
        The string to sign (see the module docstring).
    """
    amz: dict[str, list[str]] = {}
    for name, value in head.headers:
        if name.startswith("x-amz-"):
            amz.setdefault(name, []).append(value.strip())
    for name, param in head.params:  # x-amz-* moved into the URL by the signer
        if name.lower().startswith("x-amz-") and param is not None:
            amz.setdefault(name.lower(), []).append(param.strip())
    lines = [
        head.method,
        head.header("content-md5") or "",
        head.header("content-type") or "",
        expires,
        *(f"{name}:{','.join(amz[name])}" for name in sorted(amz)),
    ]
    resource = head.path if virtual_bucket is None else f"/{virtual_bucket}{head.path}"
    subresources = sorted((name, value) for name, value in head.params if name in SUBRESOURCES)
    if subresources:
        query = "&".join(
            name if value is None else f"{name}={value}" for name, value in subresources
        )
        resource = f"{resource}?{query}"
    return "\n".join((*lines, resource))


def sign(secret: str, string: str) -> str:
    """``base64(HMAC-SHA1(secret, string))``."""
    digest = hmac.new(secret.encode("utf-8"), string.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_presigned_v2(
    head: RequestHead,
    lookup: CredentialsLookup,
    now: datetime,
    *,
    virtual_bucket: str | None = None,
) -> Verified:
    """Verify a legacy SigV2 presigned URL.

    Args:
        head: the raw request head.
        lookup: access key id -> secret, ``None`` when unknown.
        now: the current time (aware).
        virtual_bucket: the bucket from the Host header for virtual-hosted requests.

    Returns:
        The verified identity, with an UNSIGNED payload.

    Raises:
        S3Error: ``AccessDenied`` (missing parameters, ``Request has expired``),
            ``InvalidAccessKeyId`` or ``SignatureDoesNotMatch``.
    """
    values = {name: head.param(name) for name in _V2_PARAMS}
    access_key, expires, provided = (values[name] or "" for name in _V2_PARAMS)
    if not (access_key and expires and provided):
        raise S3Error(
            "AccessDenied",
            "Query-string authentication requires the Signature, Expires and AWSAccessKeyId "
            "parameters",
        )
    if not expires.isdigit():
        raise S3Error("AccessDenied", "Invalid date (should be seconds since epoch): " + expires)
    deadline = datetime.fromtimestamp(int(expires), UTC)
    if now.astimezone(UTC) > deadline:
        raise S3Error(
            "AccessDenied",
            REQUEST_EXPIRED,
            details=(("Expires", deadline.strftime("%Y-%m-%dT%H:%M:%SZ")),),
        )
    secret = lookup(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", details=(("AWSAccessKeyId", access_key),))
    sts = string_to_sign(head, expires, virtual_bucket)
    expected = base64.b64decode(sign(secret, sts))
    try:
        given = base64.b64decode(provided, validate=True)
    except (binascii.Error, ValueError):
        given = b""
    if not hmac.compare_digest(expected, given):
        raise S3Error(
            "SignatureDoesNotMatch",
            details=(
                ("AWSAccessKeyId", access_key),
                ("StringToSign", sts),
                ("SignatureProvided", provided),
            ),
        )
    return Verified(
        access_key_id=access_key, kind=AuthKind.PRESIGNED_V2, payload=PayloadMode.UNSIGNED
    )
