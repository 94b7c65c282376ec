"""Small upstream conversations shared by the handlers: HEAD, If-Match pinning, self-copy.

The metadata-only self-copy (:func:`persist_metadata`) is how veil writes what it learns only
after an upload -- the plaintext MD5 of a streamed PUT, a trailing checksum, the ``-N`` ETag
and layout of a multipart object: ``CopyObject`` of the object onto itself with
``x-amz-metadata-directive: REPLACE``, the new ``veil-env`` and every stored header sent again,
conditional on ``x-amz-copy-source-if-match: <the ETag just written>`` so it never overwrites a
newer write. Tags follow by S3's default tagging directive (COPY); an ACL given at upload is sent
again. If the copy fails, the object stays readable and only the persisted digests are missing
(answers then show the store's ETag); the failure is logged, never the client's error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from protocols.s3.errors import S3Error
from protocols.s3.sigv4 import uri_encode
from proxy.errors import VeilError
from proxy.s3.conditions import check_read
from proxy.s3.context import Call, Deps
from proxy.s3.headers import SSE_C_HEADERS
from proxy.s3.info import META_HEADER, StoredObject, stored_object
from proxy.s3.upstream import Target

log = logging.getLogger("veil.s3")
COPY_LIMIT = 5 * 1024**3  # CopyObject's largest source


def object_query(version_id: str | None) -> list[tuple[str, str | None]]:
    return [] if version_id is None else [("versionId", version_id)]


async def head_object(
    deps: Deps,
    bucket: str,
    key: str,
    version_id: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> StoredObject:
    """HEAD the stored object.

    Raises:
        S3Error: the upstream's error (``NoSuchKey``...), or ``InternalError`` (counted as a
            decrypt failure) when its ``veil-env`` metadata is not an envelope.
    """
    reply = await deps.upstream.call("HEAD", Target(bucket, key, object_query(version_id)), headers)
    return parse_stored(deps, reply.headers)


def parse_stored(deps: Deps, headers: list[tuple[str, str]]) -> StoredObject:
    try:
        return stored_object(headers)
    except VeilError as e:
        raise deps.decrypt_failure(e, "unknown") from None


async def pin_if_match(call: Call, bucket: str, key: str) -> list[tuple[str, str]]:
    """Translate a write's ``If-Match`` (the ETag the client saw) into the store's ETag."""
    wanted = call.head.header("if-match")
    if wanted is None:
        return []
    obj = await head_object(call.deps, bucket, key, None, sse_c_headers(call))
    check_read(call.head, obj, ("if-match", "", "", ""))
    return [("if-match", obj.etag)]


def sse_c_headers(call: Call) -> list[tuple[str, str]]:
    return [(name, value) for name, value in call.head.headers if name in SSE_C_HEADERS]


def copy_source(bucket: str, key: str, version_id: str | None = None) -> str:
    value = "/" + uri_encode(bucket) + "/" + uri_encode(key, keep_slash=True)
    return value + ("?versionId=" + uri_encode(version_id) if version_id else "")


async def persist_metadata(
    deps: Deps,
    bucket: str,
    key: str,
    stored_etag: str,
    envelope_value: str,
    headers: Sequence[tuple[str, str]],
    *,
    acl: bytes | None = None,
) -> str | None:
    """Rewrite an object's metadata in place (a conditional metadata-only self-copy).

    Args:
        stored_etag: the store's ETag of the object as written; the copy happens only if the
            object is still that one.
        envelope_value: the new ``x-amz-meta-veil-env``.
        headers: every stored header to keep (content headers, user metadata, storage class,
            ACL, encryption, website redirect, object lock), as for a new write.
        acl: an AccessControlPolicy document to put back after the copy, if any.

    Returns:
        The new version id (versioned buckets) or ``None``; ``None`` also when the copy failed.
    """
    send = [
        (name, value)
        for name, value in headers
        if name not in ("x-amz-tagging", META_HEADER) and name not in SSE_C_HEADERS
    ]
    sse_c = [(name, value) for name, value in headers if name in SSE_C_HEADERS]
    send += sse_c + [(n.replace("x-amz-", "x-amz-copy-source-", 1), v) for n, v in sse_c]
    send += [
        ("x-amz-copy-source", copy_source(bucket, key)),
        ("x-amz-copy-source-if-match", stored_etag),
        ("x-amz-metadata-directive", "REPLACE"),
        (META_HEADER, envelope_value),
    ]
    try:
        reply = await deps.upstream.call("PUT", Target(bucket, key), send)
        if b"<Error>" in reply.body[:512]:
            raise S3Error("InternalError", "copy failed")
        if acl is not None:
            await deps.upstream.call("PUT", Target(bucket, key, (("acl", None),)), (), acl)
    except S3Error as e:
        log.warning("s3: could not persist digests of %s/%s (%s)", bucket, key, e.code)
        return None
    return reply.header("x-amz-version-id")


def too_large_to_copy(obj: StoredObject) -> bool:
    return obj.stored_size > COPY_LIMIT
