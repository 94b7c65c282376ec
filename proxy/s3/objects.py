"""PutObject, GetObject, HeadObject and GetObjectAttributes.

Theory of operation
-------------------
**PutObject.** Refusals come before the first body byte (and before ``100 Continue``): user
metadata over the budget, a plaintext that would pass 5 GiB once encrypted, a stale keyring,
a failed ``If-Match``. A fresh data key is wrapped for (bucket, key) into the object header.
Bodies up to ``s3.single_put_buffer`` are buffered, verified, encrypted and uploaded with every
plaintext digest (MD5, checksum) already in ``veil-env``; larger bodies stream through
:class:`~proxy.s3.streams.SealedUpload` with the digests known up front (``Content-MD5``,
``x-amz-checksum-*`` headers) and, if something was only known at the end (the MD5, a
trailing checksum), one conditional metadata-only self-copy afterwards
(:func:`proxy.s3.store.persist_metadata`). The answer carries the plaintext MD5 ETag.

**GetObject / HeadObject.** Without ``Range``/``partNumber`` one upstream GET gives both the
metadata and the body. With them, a HEAD gives the metadata and the size first; the range is
resolved against the plaintext size (:mod:`protocols.s3.ranges`), mapped to the covering
segments (:meth:`proxy.crypto.objects.Layout.segments`), and only those stored bytes are
fetched, pinned to the HEAD's ETag so a concurrent overwrite cannot splice two objects.
Conditions are evaluated by veil on plaintext ETags (:mod:`proxy.s3.conditions`).
"""

from __future__ import annotations

import base64

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from protocols.s3 import checksums
from protocols.s3.body import BodyReader, BodyResult
from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from protocols.s3.ranges import (
    content_range,
    parse_range,
    resolve,
    unsatisfied_content_range,
)
from proxy.crypto import meta
from proxy.crypto.objects import (
    MAX_SINGLE_PUT_PLAINTEXT,
    DataKey,
    Layout,
    PartEncryptor,
    RangeDecryptor,
    stored_size,
    wrap_data_key,
)
from proxy.errors import VeilError
from proxy.s3.conditions import check_read, write_conditions
from proxy.s3.context import Call, HeaderedError
from proxy.s3.headers import (
    argument_headers,
    check_user_metadata,
    client_headers,
    response_overrides,
    write_headers,
)
from proxy.s3.info import (
    CHECKSUM_RECORDS,
    FULL_OBJECT,
    META_HEADER,
    StoredObject,
    legacy_refused,
)
from proxy.s3.layouts import layout_of
from proxy.s3.store import head_object, object_query, parse_stored, persist_metadata, pin_if_match
from proxy.s3.streams import SealedUpload, read_whole, relay_plaintext
from proxy.s3.upstream import Target, raw_headers, read_error

# --------------------------------------------------------------------------------- PutObject


def digests_of(result: BodyResult) -> dict[str, bytes]:
    """The digest records a verified body yields (MD5 and its checksum)."""
    digests = {"md5": result.md5}
    for algorithm, digest in result.checksums.items():
        record = CHECKSUM_RECORDS.get(algorithm)
        if record is not None:
            digests[record] = digest
            digests["checksum-type"] = bytes([FULL_OBJECT])
    return digests


def declared_digests(head: RequestHead) -> dict[str, bytes]:
    """The digest records known before the body arrives (headers, not trailers; the body
    reader has already refused malformed ones)."""
    digests: dict[str, bytes] = {}
    md5 = head.header("content-md5")
    if md5 is not None:
        digests["md5"] = base64.b64decode(md5.strip())
    for name, value in head.headers:
        algorithm = checksums.BY_HEADER.get(name)
        record = CHECKSUM_RECORDS.get(algorithm) if algorithm is not None else None
        if algorithm is not None and record is not None:
            digests[record] = checksums.decode_b64(algorithm, value)
            digests["checksum-type"] = bytes([FULL_OBJECT])
    return digests


def checked_length(reader: BodyReader, limit: int = MAX_SINGLE_PUT_PLAINTEXT) -> int:
    """The declared plaintext length, refused over what fits 5 GiB once encrypted."""
    length = reader.declared_length
    if length is None:
        raise S3Error("MissingContentLength")
    if length > limit:
        raise S3Error(
            "EntityTooLarge",
            f"veil: a single PUT or part holds at most {limit} plaintext bytes (S3's 5 GiB "
            f"once encrypted); use a multipart upload",
            details=(("ProposedSize", str(length)), ("MaxSizeAllowed", str(limit))),
        )
    return length


def put_answer(
    call: Call, result: BodyResult, reply_headers: list[tuple[str, str]]
) -> web.Response:
    headers = [("ETag", f'"{result.md5.hex()}"')]
    for name, value in reply_headers:
        if name == "x-amz-version-id" or name.startswith("x-amz-server-side-encryption"):
            headers.append((name, value))
    for algorithm, digest in result.checksums.items():
        headers.append((algorithm.header, _b64(digest)))
        headers.append(("x-amz-checksum-type", "FULL_OBJECT"))
    return web.Response(status=200, headers=_multi(headers))


async def put_object(call: Call) -> web.StreamResponse:
    deps, head = call.deps, call.head
    settings = deps.ctx.settings.s3
    check_user_metadata(head)
    reader = BodyReader(head, call.verified)
    length = checked_length(reader)
    version_key = deps.encryption_key(call.bucket)
    pinned = await pin_if_match(call, call.bucket, call.key)
    headers = write_headers(head) + pinned + write_conditions(head)
    dk = DataKey.generate()
    header = wrap_data_key(version_key, dk, call.bucket, call.key)
    target = Target(call.bucket, call.key)
    await call.expect_continue()
    if length <= settings.single_put_buffer:
        plaintext, result = await read_whole(call, reader, length)
        encryptor = PartEncryptor(dk, 0)
        body = b"".join([*encryptor.feed(plaintext), encryptor.finish()])
        del plaintext
        value = meta.encode(header, digests_of(result))
        reply = await deps.upstream.call(
            "PUT", target, [*headers, (META_HEADER, value)], body, sign_body=False
        )
        deps.count_encrypt(version_key)
        return put_answer(call, result, reply.headers)
    known = declared_digests(head)
    upload = SealedUpload(call, dk, 0, reader=reader)
    value = meta.encode(header, known)
    reply_headers = await send_sealed(
        call, target, [*headers, (META_HEADER, value)], upload, length
    )
    deps.count_encrypt(version_key)
    assert upload.result is not None
    full = digests_of(upload.result)
    if full != known:
        etag = dict(reply_headers).get("etag", "")
        version = await persist_metadata(
            deps, call.bucket, call.key, etag, meta.encode(header, full), headers
        )
        if version is not None:
            reply_headers = [(n, v) for n, v in reply_headers if n != "x-amz-version-id"]
            reply_headers.append(("x-amz-version-id", version))
    return put_answer(call, upload.result, reply_headers)


async def send_sealed(
    call: Call,
    target: Target,
    headers: list[tuple[str, str]],
    upload: SealedUpload,
    plain_length: int,
    query_method: str = "PUT",
) -> list[tuple[str, str]]:
    """Stream a sealed upload to the store; the client's error wins over the abort's."""
    try:
        resp = await call.deps.upstream.send(
            query_method, target, headers, upload.stream(), length=stored_size(plain_length)
        )
    except S3Error:
        if upload.error is not None:
            raise upload.error from None
        raise
    if upload.error is not None:
        resp.close()
        raise upload.error
    if resp.status != 200:
        raise await read_error(resp, query_method)
    pairs = raw_headers(resp)
    await resp.read()
    resp.release()
    if upload.result is None:
        raise S3Error("InternalError", "veil: upstream answered before the body was sent")
    return pairs


# ------------------------------------------------------------------------- GetObject / Head


def object_answer_headers(call: Call, obj: StoredObject) -> list[tuple[str, str]]:
    headers = client_headers(obj.headers)
    headers.append(("ETag", obj.client_etag))
    headers.append(("Accept-Ranges", "bytes"))
    return headers


def with_checksums(call: Call, obj: StoredObject, headers: list[tuple[str, str]]) -> None:
    if (call.head.header("x-amz-checksum-mode") or "").upper() == "ENABLED":
        headers.extend(obj.checksums())


async def get_object(call: Call) -> web.StreamResponse:
    head = call.head
    wants_range = head.header("range") is not None
    if wants_range and call.s3.part_number is not None:
        raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query")
    if not wants_range and call.s3.part_number is None:
        return await _get_whole(call)
    for _ in range(2):  # a concurrent overwrite between HEAD and GET: start again once
        try:
            return await _get_range(call)
        except _Changed:
            continue
    raise S3Error("SlowDown", "veil: the object changed while it was being read; retry")


class _Changed(Exception):
    pass


def _query(call: Call) -> list[tuple[str, str | None]]:
    return object_query(call.s3.version_id) + response_overrides(call.head)


async def _get_whole(call: Call) -> web.StreamResponse:
    deps = call.deps
    args = argument_headers(call.head)
    upstream = await deps.upstream.send("GET", Target(call.bucket, call.key, _query(call)), args)
    if upstream.status != 200:
        raise await read_error(upstream, "GET")
    try:
        obj = parse_stored(deps, raw_headers(upstream))
        check_read(call.head, obj)
        if obj.envelope is None:
            return await _legacy(call, upstream)
        layout = await _layout(call, obj, args)
        dk, parsed = await deps.unwrap(obj.envelope.header, call.bucket, call.key)
    except BaseException:
        upstream.close()
        raise
    size = layout.plaintext_size
    decryptor = RangeDecryptor(dk, layout.segments(0, max(0, size - 1)), 0, size - 1)
    headers = object_answer_headers(call, obj)
    with_checksums(call, obj, headers)
    response = web.StreamResponse(status=200, headers=_multi(headers))
    response.content_length = size
    deps.count_decrypt(parsed.version)
    deps.note_read(call.bucket, call.key, parsed, call.s3.version_id)
    return await relay_plaintext(
        call, upstream, decryptor, response, lambda e: _failed(call, obj, e)
    )


async def _layout(call: Call, obj: StoredObject, args: list[tuple[str, str]]) -> Layout:
    try:
        return await layout_of(call.deps, call.bucket, call.key, obj, args)
    except VeilError as e:
        raise _failed(call, obj, e) from None


def _failed(call: Call, obj: StoredObject, error: VeilError) -> S3Error:
    version = str(obj.envelope.version) if obj.envelope is not None else "unknown"
    return call.deps.decrypt_failure(error, version)


async def _legacy(call: Call, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """A legacy plaintext object: refused, or relayed as stored under ``allow``."""
    if call.deps.ctx.settings.s3.legacy_plaintext != "allow":
        upstream.close()
        raise legacy_refused()
    call.deps.ctx.metrics.hot.decrypts[("s3", "plaintext")] += 1
    call.deps.note_read(call.bucket, call.key, None, call.s3.version_id)
    pairs = raw_headers(upstream)
    headers = client_headers(pairs)
    for name, value in pairs:
        if name in ("etag", "content-range"):
            headers.append((name, value))
    response = web.StreamResponse(status=upstream.status, headers=_multi(headers))
    length = dict(pairs).get("content-length")
    if length is not None and length.isdigit():
        response.content_length = int(length)
    response.headers["x-amz-request-id"] = call.request_id
    await response.prepare(call.request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    finally:
        upstream.close()
    await response.write_eof()
    return response


def _plain_range(call: Call, layout: Layout) -> tuple[int, int, list[tuple[str, str]], int]:
    """(first, last, extra headers, status) of a ranged or partNumber read."""
    size = layout.plaintext_size
    number = call.s3.part_number
    if number is not None:
        parts = layout.parts
        multipart = parts[0][0] != 0
        if number > len(parts):
            raise S3Error(
                "InvalidPartNumber", "The requested partnumber is not satisfiable", status=416
            )
        first = sum(s for _, s in parts[: number - 1])
        last = first + parts[number - 1][1] - 1
        extra = [("x-amz-mp-parts-count", str(len(parts)))] if multipart else []
        if last < first:  # an empty part (or object)
            return first, last, extra, 206
        return first, last, [*extra, ("Content-Range", content_range(first, last, size))], 206
    byte_range = parse_range(call.head.header("range"))
    if byte_range is None:  # ignored, as S3 ignores a range it does not support
        return 0, size - 1, [], 200
    try:
        first, last = resolve(byte_range, size)
    except S3Error as e:
        raise HeaderedError(e, [("Content-Range", unsatisfied_content_range(size))]) from None
    return first, last, [("Content-Range", content_range(first, last, size))], 206


async def _get_range(call: Call) -> web.StreamResponse:
    deps = call.deps
    args = argument_headers(call.head)
    obj = await head_object(deps, call.bucket, call.key, call.s3.version_id, args)
    check_read(call.head, obj)
    if obj.envelope is None:
        forwarded = [*args, *[(n, v) for n, v in call.head.headers if n == "range"]]
        query = _query(call)
        if call.s3.part_number is not None:
            query.append(("partNumber", str(call.s3.part_number)))
        upstream = await deps.upstream.send("GET", Target(call.bucket, call.key, query), forwarded)
        if upstream.status not in (200, 206):
            raise await read_error(upstream, "GET")
        return await _legacy(call, upstream)
    layout = await _layout(call, obj, args)
    first, last, extra, status = _plain_range(call, layout)
    dk, parsed = await deps.unwrap(obj.envelope.header, call.bucket, call.key)
    headers = object_answer_headers(call, obj) + extra
    if status == 200:
        with_checksums(call, obj, headers)
    length = max(0, last - first + 1)
    segments = (
        layout.segments(first, max(first, last))
        if layout.plaintext_size
        else (layout.segments(0, 0))
    )
    decryptor = RangeDecryptor(dk, segments, first, last)
    lo, hi = decryptor.stored_range
    query = _query(call)
    fetch = [*args, ("if-match", obj.etag)]
    if (lo, hi) != (0, obj.stored_size - 1):
        fetch.append(("range", f"bytes={lo}-{hi}"))
    upstream = await deps.upstream.send("GET", Target(call.bucket, call.key, query), fetch)
    if upstream.status == 412:
        upstream.close()
        raise _Changed()
    if upstream.status not in (200, 206):
        raise await read_error(upstream, "GET")
    response = web.StreamResponse(status=status, headers=_multi(headers))
    response.content_length = length
    deps.count_decrypt(parsed.version)
    deps.note_read(call.bucket, call.key, parsed, call.s3.version_id)
    return await relay_plaintext(
        call, upstream, decryptor, response, lambda e: _failed(call, obj, e)
    )


async def head_object_handler(call: Call) -> web.StreamResponse:
    deps = call.deps
    args = argument_headers(call.head)
    obj = await head_object(deps, call.bucket, call.key, call.s3.version_id, args)
    check_read(call.head, obj)
    if obj.envelope is None:
        if deps.ctx.settings.s3.legacy_plaintext != "allow":
            raise legacy_refused()
        headers = [*client_headers(obj.headers), ("ETag", obj.etag)]
        return await _head_answer(call, 200, headers, obj.stored_size)
    headers = object_answer_headers(call, obj)
    if call.s3.part_number is None and call.head.header("range") is None:
        try:
            size = obj.size
        except VeilError as e:
            raise _failed(call, obj, e) from None
        with_checksums(call, obj, headers)
        status = 200
        length = size
    else:
        layout = await _layout(call, obj, args)
        first, last, extra, status = _plain_range(call, layout)
        headers += extra
        length = max(0, last - first + 1)
    return await _head_answer(call, status, headers, length)


async def _head_answer(
    call: Call, status: int, headers: list[tuple[str, str]], length: int
) -> web.StreamResponse:
    """A HEAD answer: the object's headers and length, no body."""
    response = web.StreamResponse(status=status, headers=_multi(headers))
    response.headers["x-amz-request-id"] = call.request_id
    response.content_length = length
    await response.prepare(call.request)
    await response.write_eof()
    return response


def _multi(pairs: list[tuple[str, str]]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
