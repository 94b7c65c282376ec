"""Which headers cross veil, in each direction (tables, not branches).

Theory of operation
-------------------
**Client -> upstream on writes** (PutObject, CreateMultipartUpload, CopyObject with
``REPLACE``): only :data:`OBJECT_HEADERS` (content headers, user metadata, ACL, storage class,
tagging, server-side encryption, object lock, website redirect) plus the request arguments of
:data:`ARGUMENT_HEADERS` pass. Everything that describes the *plaintext body* stays behind --
``Content-MD5``, ``x-amz-checksum-*``, ``x-amz-sdk-checksum-algorithm``, ``x-amz-trailer``,
``x-amz-decoded-content-length`` -- because the upstream receives ciphertext, and so do the
client's own signature headers. ``aws-chunked`` is removed from ``Content-Encoding``.
``x-amz-meta-veil-*`` is reserved: a client sending it is refused.

**Upstream -> client** (GET, HEAD): everything but :data:`STORE_ONLY` -- the store's size,
range, ETag and checksums describe ciphertext and are replaced by plaintext values, veil's
metadata is removed, and hop-by-hop headers are the listener's business.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocols.s3.chunked import strip_aws_chunked
from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from proxy.crypto import meta
from proxy.s3.info import META_HEADER, RESERVED_META_PREFIX

CONTENT_HEADERS = frozenset(
    {
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-type",
        "expires",
    }
)
# stored with the object; a metadata-only copy must carry them again
OBJECT_HEADERS = CONTENT_HEADERS | frozenset(
    {
        "x-amz-acl",
        "x-amz-grant-full-control",
        "x-amz-grant-read",
        "x-amz-grant-read-acp",
        "x-amz-grant-write-acp",
        "x-amz-storage-class",
        "x-amz-tagging",
        "x-amz-website-redirect-location",
        "x-amz-server-side-encryption",
        "x-amz-server-side-encryption-aws-kms-key-id",
        "x-amz-server-side-encryption-context",
        "x-amz-server-side-encryption-bucket-key-enabled",
        "x-amz-object-lock-mode",
        "x-amz-object-lock-retain-until-date",
        "x-amz-object-lock-legal-hold",
    }
)
SSE_C_HEADERS = frozenset(
    {
        "x-amz-server-side-encryption-customer-algorithm",
        "x-amz-server-side-encryption-customer-key",
        "x-amz-server-side-encryption-customer-key-md5",
    }
)
# request arguments that mean the same to the upstream as to veil
ARGUMENT_HEADERS = frozenset({"x-amz-expected-bucket-owner", "x-amz-request-payer"}) | (
    SSE_C_HEADERS
)
ACL_HEADERS = frozenset(name for name in OBJECT_HEADERS if "acl" in name or "grant" in name)

# upstream answer headers that describe the stored ciphertext or the hop, never forwarded
STORE_ONLY = frozenset(
    {
        "content-length",
        "content-range",
        "content-md5",
        "etag",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "server",
        "date",
        "x-amz-request-id",
        "x-amz-id-2",
        "x-amzn-requestid",
        "x-amz-mp-parts-count",
        "x-amz-checksum-type",
        "access-control-allow-origin",
        META_HEADER,
    }
)


def is_checksum_header(name: str) -> bool:
    return name.startswith("x-amz-checksum-") and name != "x-amz-checksum-mode"


def user_metadata(head: RequestHead) -> dict[str, str]:
    """The client's ``x-amz-meta-*`` as S3 counts them (name without the prefix)."""
    return {
        name[len("x-amz-meta-") :]: value
        for name, value in head.headers
        if name.startswith("x-amz-meta-")
    }


def check_user_metadata(head: RequestHead) -> None:
    """Refuse reserved names and metadata over the budget, before any byte is uploaded.

    Raises:
        S3Error: ``InvalidArgument`` for ``x-amz-meta-veil-*``, ``MetadataTooLarge`` over
            ``2048 - R`` bytes.
    """
    check_metadata_pairs(head.headers)


def check_metadata_pairs(pairs: Iterable[tuple[str, str]]) -> None:
    found: dict[str, str] = {}
    for name, value in pairs:
        if name.startswith(RESERVED_META_PREFIX):
            raise S3Error("InvalidArgument", f"veil: the metadata name {name} is reserved for veil")
        if name.startswith("x-amz-meta-"):
            found[name[len("x-amz-meta-") :]] = value
    size = meta.user_metadata_size(found)
    if size > meta.USER_METADATA_BUDGET:
        raise S3Error(
            "MetadataTooLarge",
            f"Your metadata headers exceed the maximum allowed metadata size (veil keeps "
            f"{meta.R} of S3's 2048 bytes for its envelope: {size} > "
            f"{meta.USER_METADATA_BUDGET})",
            details=(
                ("Size", str(size)),
                ("MaxSizeAllowed", str(meta.USER_METADATA_BUDGET)),
            ),
        )


def object_headers(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers stored with an object (request or HEAD answer -> a write's headers)."""
    out = []
    for name, value in pairs:
        if name == "content-encoding":
            stripped = strip_aws_chunked(value)
            if stripped:
                out.append((name, stripped))
        elif name in OBJECT_HEADERS or (
            name.startswith("x-amz-meta-") and not name.startswith(RESERVED_META_PREFIX)
        ):
            out.append((name, value))
    return out


def argument_headers(head: RequestHead, extra: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The request arguments the upstream needs as they are (bucket owner, SSE-C, ...)."""
    wanted = ARGUMENT_HEADERS | frozenset(extra)
    return [(name, value) for name, value in head.headers if name in wanted]


def write_headers(head: RequestHead) -> list[tuple[str, str]]:
    """Client headers for an upstream write of a new object (PutObject, Create)."""
    return object_headers(head.headers) + argument_headers(head)


def client_headers(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream answer headers a client may see (store-only and checksum ones removed)."""
    return [
        (name, value)
        for name, value in pairs
        if name not in STORE_ONLY and not is_checksum_header(name)
    ]


def response_overrides(head: RequestHead) -> list[tuple[str, str | None]]:
    """The ``response-*`` query parameters of a GET (the upstream applies them)."""
    return [(name, value) for name, value in head.params if name.startswith("response-")]


def from_object_head(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """What a metadata-only self-copy must send again, from the object's HEAD answer.

    ``x-amz-storage-class`` is absent from HEAD answers for STANDARD objects, which is also
    the copy's default. ACLs are not in a HEAD answer (see the callers).
    """
    out = []
    for name, value in pairs:
        if name in CONTENT_HEADERS or (
            name.startswith("x-amz-meta-") and not name.startswith(RESERVED_META_PREFIX)
        ):
            out.append((name, value))
        elif name in (
            "x-amz-storage-class",
            "x-amz-website-redirect-location",
            "x-amz-server-side-encryption",
            "x-amz-server-side-encryption-aws-kms-key-id",
            "x-amz-server-side-encryption-bucket-key-enabled",
        ):
            out.append((name, value))
    return out
