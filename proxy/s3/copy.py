"""CopyObject, and the source side of every copy (UploadPartCopy included).

Theory of operation
-------------------
SPEC 5 binds bucket and key into the *wrap* of an object's data key, not into its body, so a copy
is a metadata-only operation: veil unwraps the source's data key for (source bucket, key),
wraps it again for (destination bucket, key) under the destination class's active version,
and lets the store copy the body bytes (``CopyObject`` with ``x-amz-metadata-directive:
REPLACE`` and the new ``veil-env``). The digest records travel along -- plaintext MD5, ``-N``
ETag, checksums -- and a multipart source's layout is added to the destination's metadata when
it had to be learned, so the copy stays readable wherever the store puts part boundaries.
``COPY`` directives are honoured by sending the source's stored headers again (user metadata,
content headers), since veil's own metadata must change; request headers that are not metadata
(storage class, ACL, encryption, tagging directive) apply as S3 applies them.

Where the body itself must change, veil re-encrypts by streaming instead (GET, decrypt, encrypt
under a new data key, PUT; bounded memory): a legacy plaintext source under
``s3.legacy_plaintext = allow`` (the copy is encrypted), or a multipart source whose layout no
``layout`` record can describe. Sources over what one PUT can hold are refused as S3 refuses
copies over 5 GiB.

:func:`source_plaintext` is the shared source side: HEAD (with the ``x-amz-copy-source-if-*``
conditions evaluated on plaintext ETags), then the decrypted bytes of a plaintext range.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from aiohttp import web
from multidict import CIMultiDict

from protocols.s3 import xml as s3xml
from protocols.s3.errors import S3Error
from protocols.s3.request import CopySource
from proxy.crypto import meta
from proxy.crypto.objects import (
    MAX_SINGLE_PUT_PLAINTEXT,
    DataKey,
    PartEncryptor,
    RangeDecryptor,
    stored_size,
    wrap_data_key,
)
from proxy.errors import VeilError
from proxy.s3.conditions import COPY_SOURCE_HEADERS, check_read, write_conditions
from proxy.s3.context import Call
from proxy.s3.headers import (
    CONTENT_HEADERS,
    OBJECT_HEADERS,
    argument_headers,
    check_user_metadata,
    from_object_head,
    object_headers,
)
from proxy.s3.info import COMPOSITE, META_HEADER, StoredObject, layout_record, legacy_refused
from proxy.s3.layouts import layout_of
from proxy.s3.store import copy_source, head_object, persist_metadata, pin_if_match
from proxy.s3.streams import DecryptFailure, decrypted
from proxy.s3.upstream import Target, read_error

_SOURCE_SSE_C = "x-amz-copy-source-server-side-encryption-customer-"


def source_headers(call: Call) -> list[tuple[str, str]]:
    """The request arguments that apply to reading the copy source."""
    out = []
    for name, value in call.head.headers:
        if name.startswith(_SOURCE_SSE_C):
            out.append(
                ("x-amz-server-side-encryption-customer-" + name[len(_SOURCE_SSE_C) :], value)
            )
        elif name == "x-amz-source-expected-bucket-owner":
            out.append(("x-amz-expected-bucket-owner", value))
        elif name == "x-amz-request-payer":
            out.append((name, value))
    return out


async def open_source(call: Call) -> tuple[CopySource, StoredObject]:
    """HEAD the copy source and evaluate the ``x-amz-copy-source-if-*`` conditions."""
    src = call.s3.copy_source
    assert src is not None
    obj = await head_object(call.deps, src.bucket, src.key, src.version_id, source_headers(call))
    check_read(call.head, obj, COPY_SOURCE_HEADERS, not_modified=False)
    if obj.envelope is None and call.deps.ctx.settings.s3.legacy_plaintext != "allow":
        raise legacy_refused()
    return src, obj


async def source_plaintext(
    call: Call, src: CopySource, obj: StoredObject, first: int, last: int
) -> AsyncIterator[bytes]:
    """The plaintext bytes ``first..last`` of the source (``last < first``: empty)."""
    deps = call.deps
    args = source_headers(call)
    query: list[tuple[str, str | None]] = [("versionId", src.version_id)] if src.version_id else []
    target = Target(src.bucket, src.key, query)
    if last < first:
        return
    if obj.envelope is None:  # legacy plaintext, allowed
        fetch = [*args, ("if-match", obj.etag), ("range", f"bytes={first}-{last}")]
        upstream = await deps.upstream.send("GET", target, fetch)
        if upstream.status not in (200, 206):
            raise await read_error(upstream, "GET")
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk
        finally:
            upstream.close()
        return
    try:
        layout = await layout_of(deps, src.bucket, src.key, obj, args)
    except VeilError as e:
        raise deps.decrypt_failure(e, str(obj.envelope.version)) from None
    dk, parsed = await deps.unwrap(obj.envelope.header, src.bucket, src.key)
    decryptor = RangeDecryptor(dk, layout.segments(first, last), first, last)
    lo, hi = decryptor.stored_range
    fetch = [*args, ("if-match", obj.etag), ("range", f"bytes={lo}-{hi}")]
    upstream = await deps.upstream.send("GET", target, fetch)
    if upstream.status not in (200, 206):
        raise await read_error(upstream, "GET")
    deps.count_decrypt(parsed.version)
    try:
        async for piece in decrypted(upstream, decryptor):
            yield piece
    except DecryptFailure as e:
        raise deps.decrypt_failure(e.error, str(parsed.version)) from None
    finally:
        upstream.close()


class SealedStream:
    """Encrypt a plaintext async iterator (a copy source) into ciphertext segments."""

    def __init__(self, source: AsyncIterator[bytes], dk: DataKey, part: int) -> None:
        self._source = source
        self._encryptor = PartEncryptor(dk, part)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.md5: bytes | None = None
        self.length = 0
        self.error: S3Error | None = None

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._source:
                self._md5.update(chunk)
                self.length += len(chunk)
                for segment in self._encryptor.feed(chunk):
                    yield segment
        except S3Error as e:
            self.error = e
            raise
        self.md5 = self._md5.digest()
        yield self._encryptor.finish()


async def send_stream(
    call: Call, target: Target, headers: list[tuple[str, str]], sealed: SealedStream, length: int
) -> list[tuple[str, str]]:
    """PUT a sealed stream; the source's error wins over the abort's."""
    from proxy.s3.upstream import raw_headers

    try:
        resp = await call.deps.upstream.send(
            "PUT", target, headers, sealed.stream(), length=stored_size(length)
        )
    except S3Error:
        if sealed.error is not None:
            raise sealed.error from None
        raise
    if sealed.error is not None:
        resp.close()
        raise sealed.error
    if resp.status != 200:
        raise await read_error(resp, "PUT")
    pairs = raw_headers(resp)
    await resp.read()
    resp.release()
    if sealed.md5 is None or sealed.length != length:
        raise S3Error("InternalError", "veil: the copy source changed size while being read")
    return pairs


def destination_headers(call: Call, obj: StoredObject) -> list[tuple[str, str]]:
    """What the destination stores, per ``x-amz-metadata-directive``."""
    head = call.head
    directive = (head.header("x-amz-metadata-directive") or "COPY").upper()
    if directive == "REPLACE":
        return object_headers(head.headers)
    if directive != "COPY":
        raise S3Error("InvalidArgument", "Unknown metadata directive.")
    kept = from_object_head(obj.headers)
    overriding = [
        (name, value)
        for name, value in head.headers
        if name in OBJECT_HEADERS and name not in CONTENT_HEADERS
    ]
    names = {name for name, _ in overriding}
    return [(n, v) for n, v in kept if n not in names] + overriding


async def copy_object(call: Call) -> web.StreamResponse:
    deps, head = call.deps, call.head
    if (head.header("x-amz-metadata-directive") or "").upper() == "REPLACE":
        check_user_metadata(head)
    src, obj = await open_source(call)
    version_key = deps.encryption_key(call.bucket)
    headers = destination_headers(call, obj) + argument_headers(head)
    headers += [(n, v) for n, v in head.headers if n == "x-amz-tagging-directive"]
    headers += await pin_if_match(call, call.bucket, call.key) + write_conditions(head)
    if obj.envelope is None:
        return await _reencrypt(call, src, obj, headers)
    try:
        layout = await layout_of(deps, src.bucket, src.key, obj, source_headers(call))
    except VeilError as e:
        raise deps.decrypt_failure(e, str(obj.envelope.version)) from None
    digests = dict(obj.envelope.digests)
    if obj.multipart and "layout" not in digests:
        record = layout_record(layout)
        if record is None:
            return await _reencrypt(call, src, obj, headers)
        digests["layout"] = record
    dk, parsed = await deps.unwrap(obj.envelope.header, src.bucket, src.key)
    header = wrap_data_key(version_key, dk, call.bucket, call.key, parsed.flags)
    send = [
        *headers,
        *[(n, v) for n, v in head.headers if n.startswith(_SOURCE_SSE_C)],
        ("x-amz-copy-source", copy_source(src.bucket, src.key, src.version_id)),
        ("x-amz-copy-source-if-match", obj.etag),
        ("x-amz-metadata-directive", "REPLACE"),
        (META_HEADER, meta.encode(header, digests)),
    ]
    reply = await deps.upstream.call("PUT", Target(call.bucket, call.key), send)
    _raise_embedded_error(reply.body)
    deps.count_encrypt(version_key)
    persisted = "md5" in digests or "etag-mp" in digests
    body = s3xml.rewrite_result(reply.body, etag=obj.client_etag if persisted else None)
    return _copy_answer(reply.headers, body)


def _copy_answer(pairs: list[tuple[str, str]], body: bytes) -> web.Response:
    headers = CIMultiDict(
        (name, value)
        for name, value in pairs
        if name in ("x-amz-version-id", "x-amz-copy-source-version-id")
        or name.startswith("x-amz-server-side-encryption")
    )
    headers["Content-Type"] = "application/xml"
    return web.Response(status=200, body=body, headers=headers)


def _raise_embedded_error(body: bytes) -> None:
    """S3 may answer a copy 200 and put an ``<Error>`` in the body."""
    if b"<Error>" in body[:1024]:
        from proxy.s3.upstream import error_of

        error = error_of(500, body)
        raise S3Error(error.code, error.message) if error.code != "InternalError" else error


async def _reencrypt(
    call: Call, src: CopySource, obj: StoredObject, headers: list[tuple[str, str]]
) -> web.StreamResponse:
    """Copy by streaming re-encryption (legacy sources, layouts no record can describe)."""
    deps = call.deps
    try:
        size = obj.size
    except VeilError as e:
        raise deps.decrypt_failure(e, "unknown") from None
    if size > MAX_SINGLE_PUT_PLAINTEXT:
        raise S3Error(
            "InvalidRequest",
            "The specified copy source is larger than the maximum allowable size for a copy "
            "source: 5368709120",
        )
    version_key = deps.encryption_key(call.bucket)
    dk = DataKey.generate()
    header = wrap_data_key(version_key, dk, call.bucket, call.key)
    known: dict[str, bytes] = {}
    if obj.envelope is not None:
        digests = obj.envelope.digests
        if "md5" in digests:
            known["md5"] = digests["md5"]
        if digests.get("checksum-type", b"\x01")[0] != COMPOSITE:
            known.update(
                {k: v for k, v in digests.items() if k not in ("md5", "etag-mp", "layout")}
            )
    sealed = SealedStream(source_plaintext(call, src, obj, 0, size - 1), dk, 0)
    target = Target(call.bucket, call.key)
    pairs = await send_stream(
        call, target, [*headers, (META_HEADER, meta.encode(header, known))], sealed, size
    )
    deps.count_encrypt(version_key)
    assert sealed.md5 is not None
    if "md5" not in known:
        full = {**known, "md5": sealed.md5}
        etag = dict(pairs).get("etag", "")
        version = await persist_metadata(
            deps, call.bucket, call.key, etag, meta.encode(header, full), headers
        )
        if version is not None:
            pairs = [(n, v) for n, v in pairs if n != "x-amz-version-id"]
            pairs.append(("x-amz-version-id", version))
    modified = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<CopyObjectResult xmlns='
        f'"{s3xml.S3_NAMESPACE}"><LastModified>{modified}</LastModified>'
        f"<ETag>&quot;{sealed.md5.hex()}&quot;</ETag></CopyObjectResult>"
    ).encode()
    if src.version_id:
        pairs.append(("x-amz-copy-source-version-id", src.version_id))
    return _copy_answer(pairs, body)
