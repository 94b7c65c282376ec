"""The operation table: every S3 operation veil knows, and who handles it.

:data:`HANDLERS` maps each :class:`~protocols.s3.request.Operation` to a coroutine taking a
:class:`~proxy.s3.context.Call`. Operations that touch object bodies, sizes, ETags or metadata
have their own handler; bucket operations, tagging, ACLs, retention and the like pass through
(:func:`passthrough`: the same request, verified, re-signed with veil's upstream credentials,
the answer streamed back); refused operations get 501 ``NotImplemented``. A test walks every
row, and an operation missing from the table is refused, never forwarded blindly.
"""

from __future__ import annotations

import base64
import dataclasses

from aiohttp import web
from multidict import CIMultiDict

from protocols.s3.chunked import strip_aws_chunked
from protocols.s3.errors import S3Error
from protocols.s3.request import PASSTHROUGH, Operation
from proxy.s3.complete import complete_multipart_upload
from proxy.s3.context import Call, Handler
from proxy.s3.copy import copy_object
from proxy.s3.listing import get_object_attributes, list_objects
from proxy.s3.multipart import (
    abort_multipart_upload,
    create_multipart_upload,
    list_parts,
    upload_part,
    upload_part_copy,
)
from proxy.s3.objects import get_object, head_object_handler, put_object
from proxy.s3.store import pin_if_match
from proxy.s3.streams import read_small_body
from proxy.s3.upstream import Target, raw_headers

# request headers that belong to the client's hop or signature, never forwarded
_NOT_FORWARDED = frozenset(
    {
        "authorization",
        "connection",
        "content-length",
        "expect",
        "host",
        "keep-alive",
        "transfer-encoding",
        "user-agent",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amz-decoded-content-length",
        "x-amz-security-token",
        "x-amz-trailer",
    }
)
# query parameters of presigned URLs (the client's signature, not the request)
_AUTH_PARAMS = frozenset(
    {
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
        "AWSAccessKeyId",
        "Signature",
        "Expires",
    }
)
# answer headers of the upstream hop
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "server",
        "date",
        "content-length",
        "x-amz-request-id",
        "x-amz-id-2",
        "x-amzn-requestid",
    }
)
_BODIES = frozenset({"PUT", "POST"})


async def passthrough(call: Call) -> web.StreamResponse:
    """Forward the request as it came (verified, re-signed); stream the answer back."""
    head = call.head
    headers = []
    for name, value in head.headers:
        if name in _NOT_FORWARDED:
            continue
        if name == "content-encoding":
            stripped = strip_aws_chunked(value)
            if stripped:
                headers.append((name, stripped))
            continue
        headers.append((name, value))
    body: bytes | None = None
    if head.method in _BODIES:
        await call.expect_continue()
        body, result = await read_small_body(call)
        for algorithm, digest in result.checksums.items():  # trailing checksums -> headers
            if not any(name == algorithm.header for name, _ in headers):
                headers.append((algorithm.header, base64.b64encode(digest).decode("ascii")))
    query = [(n, v) for n, v in head.params if n not in _AUTH_PARAMS]
    target = Target(call.s3.bucket, call.s3.key, query)
    upstream = await call.deps.upstream.send(head.method, target, headers, body)
    try:
        pairs = raw_headers(upstream)
        response = web.StreamResponse(
            status=upstream.status,
            headers=CIMultiDict((n, v) for n, v in pairs if n not in _HOP),
        )
        response.headers["x-amz-request-id"] = call.request_id
        length = upstream.headers.get("Content-Length")
        if length is not None and length.isdigit():
            response.content_length = int(length)
        await response.prepare(call.request)
        if head.method != "HEAD":
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        await response.write_eof()
    finally:
        upstream.close()
    return response


async def delete_object(call: Call) -> web.StreamResponse:
    """DeleteObject: ``If-Match`` is the ETag the client saw, pinned to the store's."""
    pinned = await pin_if_match(call, call.bucket, call.key)
    if pinned:
        headers = [(n, v) for n, v in call.head.headers if n != "if-match"] + pinned
        call.head = dataclasses.replace(call.head, headers=tuple(headers))
    return await passthrough(call)


async def not_implemented(call: Call) -> web.StreamResponse:
    raise S3Error("NotImplemented", call.s3.reason or None)


# conditions a client can put on a copy; without any, a 412 can only be veil's own pin on the
# source's ETag (the source changed between veil's HEAD and its read: a client write, or the
# migration rewrapping or re-encrypting it)
_CLIENT_CONDITIONS = frozenset(
    {
        "if-match",
        "if-none-match",
        "x-amz-copy-source-if-match",
        "x-amz-copy-source-if-none-match",
        "x-amz-copy-source-if-modified-since",
        "x-amz-copy-source-if-unmodified-since",
    }
)


def retry_moved_source(handler: Handler, attempts: int = 3) -> Handler:
    """Runs a copy again when its source changed under it and the client set no condition:
    nothing was written (the store refused the conditional copy or read before any body), and
    the client asked for a copy of the object, not of one version of its ciphertext."""

    async def run(call: Call) -> web.StreamResponse:
        for attempt in range(attempts):
            try:
                return await handler(call)
            except S3Error as e:
                if (
                    e.code != "PreconditionFailed"
                    or attempt == attempts - 1
                    or any(name in _CLIENT_CONDITIONS for name, _ in call.head.headers)
                ):
                    raise
        raise AssertionError("unreachable")

    return run


HANDLERS: dict[Operation, Handler] = {
    **dict.fromkeys(PASSTHROUGH, passthrough),
    Operation.GET_OBJECT: get_object,
    Operation.HEAD_OBJECT: head_object_handler,
    Operation.PUT_OBJECT: put_object,
    Operation.COPY_OBJECT: retry_moved_source(copy_object),
    Operation.DELETE_OBJECT: delete_object,
    Operation.DELETE_OBJECTS: passthrough,
    Operation.CREATE_MULTIPART_UPLOAD: create_multipart_upload,
    Operation.UPLOAD_PART: upload_part,
    Operation.UPLOAD_PART_COPY: retry_moved_source(upload_part_copy),
    Operation.COMPLETE_MULTIPART_UPLOAD: complete_multipart_upload,
    Operation.ABORT_MULTIPART_UPLOAD: abort_multipart_upload,
    Operation.LIST_PARTS: list_parts,
    Operation.LIST_MULTIPART_UPLOADS: passthrough,
    Operation.LIST_OBJECTS: list_objects,
    Operation.LIST_OBJECTS_V2: list_objects,
    Operation.LIST_OBJECT_VERSIONS: list_objects,
    Operation.GET_OBJECT_ATTRIBUTES: get_object_attributes,
    Operation.UNSUPPORTED: not_implemented,
}
