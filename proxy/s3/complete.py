"""CompleteMultipartUpload: check the layout, complete upstream, persist the plaintext view.

The store's parts come from ListParts (ETags and sizes); the client's list (the plaintext ETags
veil answered to UploadPart) must name consecutive parts 1..N whose non-final plaintext sizes
are 64 KiB multiples (``InvalidPart`` otherwise, unless ``s3.allow_unaligned_parts``) and at
least 5 MiB (``EntityTooSmall``), so the layout and every size follow by arithmetic. veil
completes upstream with the store's ETags, then computes the plaintext ``-N`` ETag, the
checksum (COMPOSITE from the parts' checksums, or FULL_OBJECT by CRC combination) and the
layout record, and persists them with one conditional metadata-only self-copy (objects up to
5 GiB; larger ones keep the store's ETag and their layout is learned on read).
"""

from __future__ import annotations

import base64
import re
from xml.sax.saxutils import escape

from aiohttp import web

from protocols.s3 import checksums
from protocols.s3 import xml as s3xml
from protocols.s3.checksums import Algorithm
from protocols.s3.errors import S3Error
from protocols.s3.xml import CompletedPart
from proxy.crypto.objects import SEGMENT, Layout
from proxy.errors import DecryptionFailed
from proxy.s3.conditions import write_conditions
from proxy.s3.context import Call
from proxy.s3.headers import argument_headers, from_object_head
from proxy.s3.info import (
    CHECKSUM_RECORDS,
    COMPOSITE,
    FULL_OBJECT,
    layout_record,
    multipart_etag_record,
    part_plaintext_size,
)
from proxy.s3.multipart import (
    FLAG_ACL,
    UploadId,
    answer,
    element,
    parse_upload_id,
    parts_of,
    relayed,
)
from proxy.s3.store import COPY_LIMIT, head_object, persist_metadata, pin_if_match
from proxy.s3.streams import read_small_body
from proxy.s3.upstream import Target, error_of

MIN_PART = 5 * 1024 * 1024
_HEX_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')


async def list_all_parts(call: Call, upload: UploadId) -> dict[int, tuple[str, int]]:
    found: dict[int, tuple[str, int]] = {}
    marker = 0
    while True:
        query = (
            ("uploadId", upload.upstream),
            ("max-parts", "1000"),
            ("part-number-marker", str(marker)),
        )
        reply = await call.deps.upstream.call("GET", Target(call.bucket, call.key, query))
        page = parts_of(reply.body)
        found.update(page)
        if not page or b"<IsTruncated>true</IsTruncated>" not in reply.body:
            return found
        marker = max(page)


def _plain_layout(
    call: Call, parts: list[CompletedPart], stored: dict[int, tuple[str, int]]
) -> Layout:
    sizes = []
    for index, part in enumerate(parts):
        if part.part_number != index + 1:
            raise S3Error(
                "InvalidPart",
                "veil: the parts of a completed upload must be numbered 1, 2, ... N",
                details=(("PartNumber", str(part.part_number)),),
            )
        found = stored.get(part.part_number)
        if found is None:
            raise S3Error("InvalidPart", details=(("PartNumber", str(part.part_number)),))
        try:
            sizes.append(part_plaintext_size(found[1]))
        except DecryptionFailed:
            raise S3Error("InvalidPart", "veil: a stored part is not a veil part") from None
    for number, size in enumerate(sizes[:-1], start=1):
        if size < MIN_PART:
            raise S3Error(
                "EntityTooSmall",
                details=(("PartNumber", str(number)), ("ProposedSize", str(size))),
            )
        if size % SEGMENT and not call.deps.ctx.settings.s3.allow_unaligned_parts:
            raise S3Error(
                "InvalidPart",
                f"veil: part {number} is {size} bytes; every part but the last must be a "
                "multiple of 64 KiB (65536 bytes) -- every common SDK's part sizes are",
                details=(("PartNumber", str(number)),),
            )
    return Layout(tuple((n, s) for n, s in zip(range(1, len(sizes) + 1), sizes, strict=True)))


def _etag_mp(parts: list[CompletedPart]) -> tuple[str, bytes]:
    md5s = []
    for part in parts:
        match = _HEX_ETAG.fullmatch(part.etag.strip())
        if match is None:
            raise S3Error("InvalidPart", details=(("PartNumber", str(part.part_number)),))
        md5s.append(bytes.fromhex(match.group(1)))
    etag = checksums.multipart_etag(md5s)
    return etag, multipart_etag_record(etag.strip('"').split("-")[0], len(parts))


def _checksum(
    call: Call, upload: UploadId, parts: list[CompletedPart], layout: Layout
) -> tuple[dict[str, bytes], dict[Algorithm, str]]:
    """Checksum records and the value shown, from the parts' plaintext checksums."""
    algorithm = upload.algorithm or next(iter(parts[0].checksums), None)
    if algorithm is None or CHECKSUM_RECORDS.get(algorithm) is None:
        return {}, {}
    digests = []
    for part in parts:
        value = part.checksums.get(algorithm)
        if value is None:
            raise S3Error(
                "InvalidRequest",
                f"The upload was created using a {algorithm.value.lower()} checksum. The "
                f"complete request must include the checksum for each part. It was missing "
                f"for part {part.part_number} in the request.",
            )
        digests.append(checksums.decode_b64(algorithm, value))
    kind = (call.head.header("x-amz-checksum-type") or "").upper()
    full = upload.full_object or kind == "FULL_OBJECT"
    if full and algorithm.full_object:
        sizes = [size for _, size in layout.parts]
        digest = checksums.combine_crc(algorithm, list(zip(digests, sizes, strict=True)))
        shown = base64.b64encode(digest).decode("ascii")
        claimed = call.head.header(algorithm.header)
        if claimed is not None and claimed.strip() != shown:
            raise S3Error("BadDigest", f"The {algorithm.value} you specified did not match.")
        records = {CHECKSUM_RECORDS[algorithm]: digest, "checksum-type": bytes([FULL_OBJECT])}
        return records, {algorithm: shown}
    hasher = checksums.new(algorithm)
    for digest in digests:
        hasher.update(digest)
    composite = hasher.digest()
    records = {CHECKSUM_RECORDS[algorithm]: composite, "checksum-type": bytes([COMPOSITE])}
    return records, {algorithm: f"{base64.b64encode(composite).decode()}-{len(parts)}"}


async def complete_multipart_upload(call: Call) -> web.StreamResponse:
    deps = call.deps
    upload = parse_upload_id(call.s3.upload_id)
    body, _ = await read_small_body(call, s3xml.MAX_DOCUMENT, object_checksums=True)
    parts = s3xml.parse_complete_multipart(body)
    stored = await list_all_parts(call, upload)
    layout = _plain_layout(call, parts, stored)
    etag, etag_record = _etag_mp(parts)
    records, shown = _checksum(call, upload, parts, layout)
    headers = argument_headers(call.head) + write_conditions(call.head)
    headers += await pin_if_match(call, call.bucket, call.key)
    document = "".join(
        f"<Part><PartNumber>{p.part_number}</PartNumber>"
        f"<ETag>{escape(stored[p.part_number][0])}</ETag></Part>"
        for p in parts
    )
    ns = s3xml.S3_NAMESPACE
    xml = f'<CompleteMultipartUpload xmlns="{ns}">{document}</CompleteMultipartUpload>'
    target = Target(call.bucket, call.key, (("uploadId", upload.upstream),))
    reply = await deps.upstream.call("POST", target, headers, xml.encode())
    if b"<Error>" in reply.body[:1024]:
        raise error_of(500, reply.body)
    pairs = relayed(reply.headers)
    digests = {"etag-mp": etag_record, **records}
    record = layout_record(layout)
    if record is not None:
        digests["layout"] = record
    if layout.stored_size <= COPY_LIMIT:
        version = await _persist(call, upload, element(reply.body, "ETag"), digests)
        if version is not None:
            pairs = [(n, v) for n, v in pairs if n != "x-amz-version-id"]
            pairs.append(("x-amz-version-id", version))
    return answer(pairs, _complete_result(reply.body, etag, shown, records))


def _complete_result(
    upstream: bytes, etag: str, shown: dict[Algorithm, str], records: dict[str, bytes]
) -> bytes:
    """Our own CompleteMultipartUploadResult (some stores name the root differently)."""
    fields = {s3xml.local_name(c.tag): (c.text or "") for c in s3xml.parse(upstream) if len(c) == 0}
    parts = [
        f'<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult '
        f'xmlns="{s3xml.S3_NAMESPACE}">'
    ]
    for name in ("Location", "Bucket", "Key"):
        if name in fields:
            parts.append(f"<{name}>{escape(fields[name])}</{name}>")
    parts.append(f"<ETag>{escape(etag)}</ETag>")
    for algorithm, value in shown.items():
        parts.append(f"<Checksum{algorithm.value}>{value}</Checksum{algorithm.value}>")
    if shown:
        kind = "COMPOSITE" if records.get("checksum-type") == bytes([COMPOSITE]) else "FULL_OBJECT"
        parts.append(f"<ChecksumType>{kind}</ChecksumType>")
    parts.append("</CompleteMultipartUploadResult>")
    return "".join(parts).encode("utf-8")


async def _persist(
    call: Call, upload: UploadId, stored_etag: str, digests: dict[str, bytes]
) -> str | None:
    """The post-Complete self-copy: ``-N`` ETag, checksum and layout into ``veil-env``."""
    deps = call.deps
    args = argument_headers(call.head)
    try:
        obj = await head_object(deps, call.bucket, call.key, None, args)
    except S3Error:
        return None
    if obj.envelope is None or obj.etag.strip('"') != stored_etag.strip('"'):
        return None
    acl = None
    if upload.flags & FLAG_ACL:
        try:
            reply = await deps.upstream.call("GET", Target(call.bucket, call.key, (("acl", None),)))
            acl = reply.body
        except S3Error:
            acl = None
    return await persist_metadata(
        deps,
        call.bucket,
        call.key,
        obj.etag,
        obj.envelope.encode(digests),
        from_object_head(obj.headers) + args,
        acl=acl,
    )
