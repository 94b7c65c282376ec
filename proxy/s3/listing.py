"""ListObjects (v1, v2), ListObjectVersions and GetObjectAttributes with plaintext values.

Listings show plaintext sizes by arithmetic on the stored sizes (``plaintext_size``: exact for
single PUTs and aligned multipart layouts), with no extra request. ETags are the store's unless
``s3.list_plaintext_etags``, which costs one HEAD per listed object (16 at a time) and also
makes sizes exact for objects the arithmetic cannot describe (legacy plaintext under ``allow``,
unaligned layouts under ``s3.allow_unaligned_parts``). A size no veil object can have (legacy
plaintext, mostly) is shown as stored.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from multidict import CIMultiDict

from protocols.s3 import xml as s3xml
from protocols.s3.errors import S3Error
from proxy.crypto.objects import plaintext_size
from proxy.errors import DecryptionFailed, VeilError
from proxy.s3.conditions import check_read
from proxy.s3.context import Call
from proxy.s3.headers import argument_headers
from proxy.s3.info import StoredObject
from proxy.s3.layouts import layout_of
from proxy.s3.store import head_object
from proxy.s3.upstream import Target

HEAD_CONCURRENCY = 16


def _arithmetic(entry: s3xml.ListEntry) -> s3xml.ListEntry:
    try:
        size = plaintext_size(entry.size)
    except DecryptionFailed:
        size = entry.size
    return s3xml.ListEntry(entry.key, size, entry.etag, entry.version_id)


async def list_objects(call: Call) -> web.StreamResponse:
    deps = call.deps
    query = [(n, v) for n, v in call.head.params if n != "x-id"]
    reply = await deps.upstream.call(
        "GET", Target(call.bucket, None, query), argument_headers(call.head)
    )
    if not deps.ctx.settings.s3.list_plaintext_etags:
        body = s3xml.rewrite_listing(reply.body, _arithmetic)
    else:
        entries: list[s3xml.ListEntry] = []

        def collect(entry: s3xml.ListEntry) -> s3xml.ListEntry:
            entries.append(entry)
            return entry

        s3xml.rewrite_listing(reply.body, collect)
        exact = await _exact(call, entries)
        body = s3xml.rewrite_listing(reply.body, lambda e: exact.get((e.key, e.version_id), e))
    headers = CIMultiDict([("Content-Type", "application/xml")])
    return web.Response(status=200, body=body, headers=headers)


async def _exact(
    call: Call, entries: list[s3xml.ListEntry]
) -> dict[tuple[str, str | None], s3xml.ListEntry]:
    semaphore = asyncio.Semaphore(HEAD_CONCURRENCY)
    args = argument_headers(call.head)

    async def one(entry: s3xml.ListEntry) -> tuple[tuple[str, str | None], s3xml.ListEntry]:
        version = entry.version_id if entry.version_id not in (None, "null") else None
        async with semaphore:
            try:
                obj = await head_object(call.deps, call.bucket, entry.key, version, args)
                size = await _size(call, entry.key, obj, args)
                found = s3xml.ListEntry(entry.key, size, obj.client_etag, entry.version_id)
            except (S3Error, VeilError):
                found = _arithmetic(entry)
        return (entry.key, entry.version_id), found

    return dict(await asyncio.gather(*(one(e) for e in entries)))


async def _size(call: Call, key: str, obj: StoredObject, args: list[tuple[str, str]]) -> int:
    if obj.envelope is None:
        return obj.stored_size
    try:
        return (
            obj.size
            if not obj.multipart
            else (await layout_of(call.deps, call.bucket, key, obj, args)).plaintext_size
        )
    except DecryptionFailed:
        return obj.stored_size


# the attributes GetObjectAttributes may ask for
ATTRIBUTES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")


async def get_object_attributes(call: Call) -> web.StreamResponse:
    deps, head = call.deps, call.head
    wanted = {
        name.strip()
        for value in head.header_values("x-amz-object-attributes")
        for name in value.split(",")
        if name.strip()
    }
    unknown = wanted - set(ATTRIBUTES)
    if not wanted or unknown:
        raise S3Error("InvalidArgument", "Invalid attribute name specified.")
    args = argument_headers(head)
    obj = await head_object(deps, call.bucket, call.key, call.s3.version_id, args)
    check_read(head, obj)
    if obj.envelope is None and deps.ctx.settings.s3.legacy_plaintext != "allow":
        from proxy.s3.info import legacy_refused

        raise legacy_refused()
    ns = s3xml.S3_NAMESPACE
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<GetObjectAttributesResponse xmlns="{ns}">']
    if "ETag" in wanted:
        parts.append(f"<ETag>{_xml(obj.client_etag.strip(chr(34)))}</ETag>")
    if "Checksum" in wanted:
        values = obj.checksums()
        if values:
            parts.append("<Checksum>")
            for name, value in values:
                element = (
                    "ChecksumType"
                    if name == "x-amz-checksum-type"
                    else ("Checksum" + name[len("x-amz-checksum-") :].upper())
                )
                parts.append(f"<{element}>{_xml(value)}</{element}>")
            parts.append("</Checksum>")
    try:
        layout = (
            None
            if obj.envelope is None
            else await layout_of(deps, call.bucket, call.key, obj, args)
        )
    except VeilError as e:
        raise deps.decrypt_failure(e, str(obj.envelope.version if obj.envelope else "")) from None
    if "ObjectParts" in wanted and obj.multipart and layout is not None:
        parts.append(f"<ObjectParts><PartsCount>{len(layout.parts)}</PartsCount></ObjectParts>")
    if "StorageClass" in wanted:
        parts.append(
            f"<StorageClass>{_xml(obj.header('x-amz-storage-class') or 'STANDARD')}</StorageClass>"
        )
    if "ObjectSize" in wanted:
        size = obj.stored_size if layout is None else layout.plaintext_size
        parts.append(f"<ObjectSize>{size}</ObjectSize>")
    parts.append("</GetObjectAttributesResponse>")
    headers = CIMultiDict([("Content-Type", "application/xml")])
    for name in ("last-modified", "x-amz-version-id", "x-amz-delete-marker"):
        found = obj.header(name)
        if found is not None:
            headers[name] = found
    return web.Response(status=200, body="".join(parts).encode(), headers=headers)


def _xml(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(text)
