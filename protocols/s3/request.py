"""Classify an S3 request: which operation, on which bucket and key.

Theory of operation
-------------------
:func:`classify` turns a :class:`~protocols.s3.head.RequestHead` into an :class:`S3Request` in
three table-driven steps:

1. **Addressing.** The bucket comes from the Host header when the host is
   ``<bucket>.<base domain>`` for one of the configured ``base_domains`` (virtual-hosted
   style), else from the first path segment (path style). The key is the rest of the path,
   percent-decoded once (``%2F`` is ``/``, ``+`` stays ``+``, UTF-8 escapes become unicode,
   a trailing ``/`` is part of the key). ``/bucket`` and ``/bucket/`` address the bucket;
   ``/`` addresses the service.
2. **Operation.** The scope (service, bucket or object) and the method select a row of
   :data:`OPERATION_TABLE`: an ordered list of ``(sub-resource, operation)`` pairs, the first
   sub-resource present in the query wins, else the row's default. ``x-amz-copy-source``
   turns PutObject into CopyObject and UploadPart into UploadPartCopy
   (:data:`COPY_VARIANTS`).
3. **Refusals.** Anything veil must not pass blindly becomes :attr:`Operation.UNSUPPORTED` with a
   reason (the proxy answers 501 ``NotImplemented``): POST Object (browser form upload),
   SelectObjectContent, torrents, unknown methods, and any *unknown sub-resource* -- a query
   parameter without a value that is neither a known sub-resource nor a known parameter
   (:data:`KNOWN_PARAMETERS`). Unknown parameters *with* a value are ignored, as S3 ignores
   them (SDKs add e.g. ``x-id=PutObject``).

Every operation is in exactly one of :data:`HANDLED` (touches object bodies, sizes, ETags or
metadata, so the proxy needs a handler) or :data:`PASSTHROUGH` (forwarded as is, re-signed), or
is UNSUPPORTED.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead, percent_decode

MAX_KEY_BYTES = 1024
MAX_PART_NUMBER = 10000


class Operation(enum.Enum):
    """S3 operations veil recognises; the value is the S3 API name."""

    # service
    LIST_BUCKETS = "ListBuckets"
    # objects
    GET_OBJECT = "GetObject"
    HEAD_OBJECT = "HeadObject"
    PUT_OBJECT = "PutObject"
    COPY_OBJECT = "CopyObject"
    DELETE_OBJECT = "DeleteObject"
    DELETE_OBJECTS = "DeleteObjects"
    CREATE_MULTIPART_UPLOAD = "CreateMultipartUpload"
    UPLOAD_PART = "UploadPart"
    UPLOAD_PART_COPY = "UploadPartCopy"
    COMPLETE_MULTIPART_UPLOAD = "CompleteMultipartUpload"
    ABORT_MULTIPART_UPLOAD = "AbortMultipartUpload"
    LIST_PARTS = "ListParts"
    LIST_MULTIPART_UPLOADS = "ListMultipartUploads"
    LIST_OBJECTS = "ListObjects"
    LIST_OBJECTS_V2 = "ListObjectsV2"
    LIST_OBJECT_VERSIONS = "ListObjectVersions"
    GET_OBJECT_ATTRIBUTES = "GetObjectAttributes"
    GET_OBJECT_TAGGING = "GetObjectTagging"
    PUT_OBJECT_TAGGING = "PutObjectTagging"
    DELETE_OBJECT_TAGGING = "DeleteObjectTagging"
    GET_OBJECT_ACL = "GetObjectAcl"
    PUT_OBJECT_ACL = "PutObjectAcl"
    GET_OBJECT_RETENTION = "GetObjectRetention"
    PUT_OBJECT_RETENTION = "PutObjectRetention"
    GET_OBJECT_LEGAL_HOLD = "GetObjectLegalHold"
    PUT_OBJECT_LEGAL_HOLD = "PutObjectLegalHold"
    RESTORE_OBJECT = "RestoreObject"
    # buckets
    CREATE_BUCKET = "CreateBucket"
    DELETE_BUCKET = "DeleteBucket"
    HEAD_BUCKET = "HeadBucket"
    GET_BUCKET_LOCATION = "GetBucketLocation"
    GET_BUCKET_SUBRESOURCE = "GetBucketSubresource"
    PUT_BUCKET_SUBRESOURCE = "PutBucketSubresource"
    DELETE_BUCKET_SUBRESOURCE = "DeleteBucketSubresource"
    # refused: POST Object, Select, torrents, unknown sub-resources and methods
    UNSUPPORTED = "Unsupported"


class Scope(enum.Enum):
    """What the request addresses."""

    SERVICE = "service"
    BUCKET = "bucket"
    OBJECT = "object"


HANDLED = frozenset(
    {
        Operation.GET_OBJECT,
        Operation.HEAD_OBJECT,
        Operation.PUT_OBJECT,
        Operation.COPY_OBJECT,
        Operation.DELETE_OBJECT,
        Operation.DELETE_OBJECTS,
        Operation.CREATE_MULTIPART_UPLOAD,
        Operation.UPLOAD_PART,
        Operation.UPLOAD_PART_COPY,
        Operation.COMPLETE_MULTIPART_UPLOAD,
        Operation.ABORT_MULTIPART_UPLOAD,
        Operation.LIST_PARTS,
        Operation.LIST_MULTIPART_UPLOADS,
        Operation.LIST_OBJECTS,
        Operation.LIST_OBJECTS_V2,
        Operation.LIST_OBJECT_VERSIONS,
        Operation.GET_OBJECT_ATTRIBUTES,
    }
)
PASSTHROUGH = frozenset(Operation) - HANDLED - {Operation.UNSUPPORTED}

# Bucket sub-resources passed through (GET/PUT/DELETE ?<name>), from the S3 API reference.
BUCKET_SUBRESOURCES = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "cors",
        "encryption",
        "intelligent-tiering",
        "inventory",
        "lifecycle",
        "logging",
        "metrics",
        "notification",
        "object-lock",
        "ownershipControls",
        "policy",
        "policyStatus",
        "publicAccessBlock",
        "replication",
        "requestPayment",
        "tagging",
        "versioning",
        "website",
    }
)

_Row = tuple[tuple[str, Operation], ...]
_UNSUPPORTED_OBJECT: _Row = (
    ("select", Operation.UNSUPPORTED),
    ("torrent", Operation.UNSUPPORTED),
    ("renameObject", Operation.UNSUPPORTED),
)
_BUCKET_GET: _Row = tuple(
    (name, Operation.GET_BUCKET_SUBRESOURCE) for name in sorted(BUCKET_SUBRESOURCES)
)
_BUCKET_PUT: _Row = tuple(
    (name, Operation.PUT_BUCKET_SUBRESOURCE) for name in sorted(BUCKET_SUBRESOURCES)
)
_BUCKET_DELETE: _Row = tuple(
    (name, Operation.DELETE_BUCKET_SUBRESOURCE) for name in sorted(BUCKET_SUBRESOURCES)
)

# (scope, method) -> (ordered sub-resource rows, default operation)
OPERATION_TABLE: dict[tuple[Scope, str], tuple[_Row, Operation]] = {
    (Scope.SERVICE, "GET"): ((), Operation.LIST_BUCKETS),
    (Scope.BUCKET, "GET"): (
        (
            ("list-type", Operation.LIST_OBJECTS_V2),
            ("versions", Operation.LIST_OBJECT_VERSIONS),
            ("uploads", Operation.LIST_MULTIPART_UPLOADS),
            ("location", Operation.GET_BUCKET_LOCATION),
            ("session", Operation.UNSUPPORTED),
            *_BUCKET_GET,
        ),
        Operation.LIST_OBJECTS,
    ),
    (Scope.BUCKET, "HEAD"): ((), Operation.HEAD_BUCKET),
    (Scope.BUCKET, "PUT"): (_BUCKET_PUT, Operation.CREATE_BUCKET),
    (Scope.BUCKET, "DELETE"): (_BUCKET_DELETE, Operation.DELETE_BUCKET),
    # POST /bucket without ?delete is a browser form upload (POST Object): refused
    (Scope.BUCKET, "POST"): ((("delete", Operation.DELETE_OBJECTS),), Operation.UNSUPPORTED),
    (Scope.OBJECT, "GET"): (
        (
            *_UNSUPPORTED_OBJECT,
            ("uploadId", Operation.LIST_PARTS),
            ("attributes", Operation.GET_OBJECT_ATTRIBUTES),
            ("tagging", Operation.GET_OBJECT_TAGGING),
            ("acl", Operation.GET_OBJECT_ACL),
            ("retention", Operation.GET_OBJECT_RETENTION),
            ("legal-hold", Operation.GET_OBJECT_LEGAL_HOLD),
        ),
        Operation.GET_OBJECT,
    ),
    (Scope.OBJECT, "HEAD"): (_UNSUPPORTED_OBJECT, Operation.HEAD_OBJECT),
    (Scope.OBJECT, "PUT"): (
        (
            *_UNSUPPORTED_OBJECT,
            ("uploadId", Operation.UPLOAD_PART),
            ("tagging", Operation.PUT_OBJECT_TAGGING),
            ("acl", Operation.PUT_OBJECT_ACL),
            ("retention", Operation.PUT_OBJECT_RETENTION),
            ("legal-hold", Operation.PUT_OBJECT_LEGAL_HOLD),
        ),
        Operation.PUT_OBJECT,
    ),
    (Scope.OBJECT, "POST"): (
        (
            *_UNSUPPORTED_OBJECT,
            ("uploads", Operation.CREATE_MULTIPART_UPLOAD),
            ("uploadId", Operation.COMPLETE_MULTIPART_UPLOAD),
            ("restore", Operation.RESTORE_OBJECT),
        ),
        Operation.UNSUPPORTED,
    ),
    (Scope.OBJECT, "DELETE"): (
        (
            *_UNSUPPORTED_OBJECT,
            ("uploadId", Operation.ABORT_MULTIPART_UPLOAD),
            ("tagging", Operation.DELETE_OBJECT_TAGGING),
        ),
        Operation.DELETE_OBJECT,
    ),
}

# refusal -> the name S3 users know it by (for the 501 message)
_REFUSAL_NAMES = {
    "POST on a bucket": "POST Object (browser form upload)",
    "?select": "SelectObjectContent",
    "?torrent": "GetObjectTorrent",
    "?renameObject": "RenameObject",
    "?session": "CreateSession",
}

COPY_VARIANTS: dict[Operation, Operation] = {
    Operation.PUT_OBJECT: Operation.COPY_OBJECT,
    Operation.UPLOAD_PART: Operation.UPLOAD_PART_COPY,
}

# Query parameters that are arguments, not sub-resources (S3 API reference + auth parameters).
KNOWN_PARAMETERS = frozenset(
    {
        "AWSAccessKeyId",
        "Expires",
        "Signature",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-Security-Token",
        "X-Amz-Signature",
        "X-Amz-SignedHeaders",
        "bucket-region",
        "continuation-token",
        "delimiter",
        "encoding-type",
        "fetch-owner",
        "id",
        "key-marker",
        "list-type",
        "marker",
        "max-buckets",
        "max-keys",
        "max-parts",
        "max-uploads",
        "part-number-marker",
        "partNumber",
        "prefix",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
        "response-content-language",
        "response-content-type",
        "response-expires",
        "select-type",
        "start-after",
        "upload-id-marker",
        "uploadId",
        "version-id-marker",
        "versionId",
        "x-id",
    }
)
_SUBRESOURCES = frozenset(
    name for rows, _ in OPERATION_TABLE.values() for name, _ in rows
) | frozenset({"delete", "uploads"})

_BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


@dataclass(frozen=True, slots=True)
class CopySource:
    """A parsed ``x-amz-copy-source``."""

    bucket: str
    key: str
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class S3Request:
    """The classified request.

    Attributes:
        op: the operation.
        scope: service, bucket or object.
        bucket: the bucket, or ``None`` for the service.
        key: the decoded object key, or ``None`` below object scope.
        virtual_host: whether the bucket came from the Host header.
        subresource: the query key that selected ``op`` (``None`` for the default).
        upload_id / part_number / version_id: the common arguments, when present.
        copy_source: for CopyObject and UploadPartCopy.
        reason: for UNSUPPORTED, what was refused (for the 501 message).
    """

    op: Operation
    scope: Scope
    bucket: str | None = None
    key: str | None = None
    virtual_host: bool = False
    subresource: str | None = None
    upload_id: str | None = None
    part_number: int | None = None
    version_id: str | None = None
    copy_source: CopySource | None = None
    reason: str = ""

    @property
    def resource(self) -> str:
        """``/bucket/key`` (or ``/bucket``, ``/``) for ``<Resource>`` in error documents."""
        if self.bucket is None:
            return "/"
        return f"/{self.bucket}" if self.key is None else f"/{self.bucket}/{self.key}"


def classify(head: RequestHead, *, base_domains: tuple[str, ...] = ()) -> S3Request:
    """Classify one request.

    Args:
        head: the raw request head.
        base_domains: the host names under which ``<bucket>.<domain>`` is virtual-hosted
            addressing (e.g. ``("s3.localhost", "s3.example.com")``); any other host is path
            style.

    Returns:
        The operation, bucket, key and common arguments.

    Raises:
        S3Error: ``InvalidURI`` (bad escapes), ``InvalidBucketName``, ``KeyTooLongError``,
            ``InvalidArgument`` (bad ``partNumber``, ``list-type`` or copy source),
            ``NotImplemented`` (copy from an access-point ARN).
    """
    bucket, key, virtual = _address(head, base_domains)
    scope = Scope.SERVICE if bucket is None else Scope.BUCKET if key is None else Scope.OBJECT
    row = OPERATION_TABLE.get((scope, head.method))
    if row is None:
        return _unsupported(scope, bucket, key, virtual, f"{head.method} on a {scope.value}")
    unknown = _unknown_subresource(head)
    if unknown is not None:
        return _unsupported(scope, bucket, key, virtual, f"sub-resource ?{unknown}")
    rows, op = row
    subresource = next((name for name, _ in rows if head.has_param(name)), None)
    if subresource is not None:
        op = dict(rows)[subresource]
    if op is Operation.UNSUPPORTED:
        what = f"?{subresource}" if subresource else f"{head.method} on a {scope.value}"
        return _unsupported(scope, bucket, key, virtual, _REFUSAL_NAMES.get(what, what))
    copy_header = head.header("x-amz-copy-source")
    copy_source = None
    if op in COPY_VARIANTS and copy_header is not None:
        op = COPY_VARIANTS[op]
        copy_source = parse_copy_source(copy_header)
    if op is Operation.LIST_OBJECTS_V2 and head.param("list-type") != "2":
        raise S3Error("InvalidArgument", "Invalid List Type specified")
    return S3Request(
        op=op,
        scope=scope,
        bucket=bucket,
        key=key,
        virtual_host=virtual,
        subresource=subresource,
        upload_id=head.param("uploadId"),
        part_number=_part_number(head, required=op in _NEEDS_PART_NUMBER),
        version_id=head.param("versionId"),
        copy_source=copy_source,
    )


_NEEDS_PART_NUMBER = frozenset({Operation.UPLOAD_PART, Operation.UPLOAD_PART_COPY})


def parse_copy_source(value: str) -> CopySource:
    """Parse ``x-amz-copy-source``: ``[/]bucket/url-encoded-key[?versionId=id]``.

    Raises:
        S3Error: ``InvalidArgument`` without a bucket and key, ``NotImplemented`` for an
            access-point ARN, ``InvalidURI`` for bad escapes.
    """
    raw = value.strip().removeprefix("/")
    path, _, query = raw.partition("?")
    decoded = percent_decode(path)
    if decoded.startswith("arn:"):
        raise S3Error("NotImplemented", "Copying from an access point ARN is not supported")
    bucket, _, key = decoded.partition("/")
    if not bucket or not key:
        raise S3Error(
            "InvalidArgument",
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
        )
    version = RequestHead("GET", "/", query).param("versionId") if query else None
    return CopySource(bucket, _check_key(key), version or None)


def _address(
    head: RequestHead, base_domains: tuple[str, ...]
) -> tuple[str | None, str | None, bool]:
    """(bucket, key, virtual-hosted?) from the Host header and the path."""
    bucket = _virtual_bucket(head.header("host"), base_domains)
    path = head.path
    if not path.startswith("/"):
        raise S3Error("InvalidURI")
    if bucket is not None:
        rest = path[1:]
        return _check_bucket(bucket), _check_key(percent_decode(rest)) if rest else None, True
    raw_bucket, slash, rest = path[1:].partition("/")
    if not raw_bucket:
        return None, None, False
    key = _check_key(percent_decode(rest)) if slash and rest else None
    return _check_bucket(percent_decode(raw_bucket)), key, False


def _virtual_bucket(host: str | None, base_domains: tuple[str, ...]) -> str | None:
    if not host or not base_domains:
        return None
    name = host.strip().lower()
    name = name.rsplit(":", 1)[0] if not name.endswith("]") else name  # drop the port
    for domain in sorted(base_domains, key=len, reverse=True):
        domain = domain.lower()
        if name == domain:
            return None
        if name.endswith("." + domain):
            return name[: -len(domain) - 1]
    return None


def _check_bucket(bucket: str) -> str:
    if not _BUCKET_NAME.fullmatch(bucket):
        raise S3Error("InvalidBucketName", details=(("BucketName", bucket),))
    return bucket


def _check_key(key: str) -> str:
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", details=(("MaxSizeAllowed", str(MAX_KEY_BYTES)),))
    return key


def _unknown_subresource(head: RequestHead) -> str | None:
    for name, value in head.params:
        if value or name in KNOWN_PARAMETERS or name in _SUBRESOURCES:
            continue
        if name.lower().startswith("x-amz-"):
            continue  # SigV2 signers move x-amz-* headers into the URL
        return name
    return None


def _part_number(head: RequestHead, *, required: bool) -> int | None:
    value = head.param("partNumber")
    if value is None and not required:
        return None
    if value is None or not value.isdigit() or not 1 <= int(value) <= MAX_PART_NUMBER:
        raise S3Error(
            "InvalidArgument",
            "Part number must be an integer between 1 and 10000, inclusive",
            details=(("ArgumentName", "partNumber"), ("ArgumentValue", value or "")),
        )
    return int(value)


def _unsupported(
    scope: Scope, bucket: str | None, key: str | None, virtual: bool, what: str
) -> S3Request:
    return S3Request(
        op=Operation.UNSUPPORTED,
        scope=scope,
        bucket=bucket,
        key=key,
        virtual_host=virtual,
        reason=f"{what} is not supported by veil",
    )
