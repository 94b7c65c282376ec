"""Multipart uploads with no state store: the data key rides in the upload id.

Theory of operation
-------------------
**Create.** A fresh data key is wrapped for (bucket, key) into the object header, which goes
into the upload's metadata (so the completed object carries it), and sealed once more into the
*upload token* (:func:`proxy.crypto.objects.seal_upload_token`, bound to the upstream upload
id). The client sees :data:`PREFIX` + checksum code + flags + base64url(token) + upstream id;
any sidecar can then encrypt any part, in parallel, out of order.

**UploadPart.** Part ``n`` is encrypted under the upload's key with ``n`` in every nonce. A
second upload of a part number that is already stored would reuse those nonces with other
plaintext, so veil first asks the store (ListParts for that one number): if the part exists,
the new body is encrypted and hashed *without being sent*, and accepted only if its ciphertext
MD5 equals the stored part's ETag (an identical retry); otherwise it is refused and nothing
leaves veil. Two uploads of one part number racing each other are not caught (no state store);
docs/S3.md states this residual risk.

**Complete.** The store's parts come from ListParts (ETags and sizes); the client's list
(plaintext ETags veil gave it) must name consecutive parts 1..N whose non-final plaintext sizes
are 64 KiB multiples (``InvalidPart`` otherwise, unless ``s3.allow_unaligned_parts``) and at
least 5 MiB (``EntityTooSmall``), so the layout and every size follow by arithmetic. veil
completes upstream with the store's ETags, then computes the plaintext ``-N`` ETag, the
checksum (COMPOSITE from the parts' checksums, or FULL_OBJECT by CRC combination) and the
layout record, and persists them with one conditional metadata-only self-copy (objects up to
5 GiB; larger ones keep the store's ETag and their layout is learned on read).

**ListParts** shows plaintext part sizes (exact: a part is one segmented body) and the upload
id the client used. **ListMultipartUploads** passes through: the store lists its own upload ids,
which veil accepts for ListParts, Complete and Abort but not for adding parts (only the id
CreateMultipartUpload returned carries the data key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from aiohttp import web
from multidict import CIMultiDict

from protocols.s3 import checksums
from protocols.s3 import xml as s3xml
from protocols.s3.body import BodyReader
from protocols.s3.checksums import Algorithm
from protocols.s3.errors import S3Error
from protocols.s3.ranges import parse_copy_source_range
from protocols.s3.xml import CompletedPart
from proxy.crypto import meta
from proxy.crypto.objects import (
    FLAG_MULTIPART,
    SEGMENT,
    UPLOAD_TOKEN_LEN,
    DataKey,
    Layout,
    seal_upload_token,
    wrap_data_key,
)
from proxy.errors import DecryptionFailed, KeyringStale
from proxy.s3.conditions import write_conditions
from proxy.s3.context import Call, s3_error
from proxy.s3.copy import SealedStream, open_source, send_stream, source_plaintext
from proxy.s3.headers import ACL_HEADERS, argument_headers, check_user_metadata, write_headers
from proxy.s3.info import (
    CHECKSUM_RECORDS,
    COMPOSITE,
    FULL_OBJECT,
    META_HEADER,
    layout_record,
    multipart_etag_record,
    part_plaintext_size,
)
from proxy.s3.objects import checked_length, send_sealed
from proxy.s3.store import COPY_LIMIT, head_object, persist_metadata, pin_if_match
from proxy.s3.streams import SealedUpload, read_small_body
from proxy.s3.upstream import Target

PREFIX = "veil~"
MIN_PART = 5 * 1024 * 1024
TOKEN_CHARS = 80  # base64url of the 60-byte token, unpadded
_ALGORITHMS = ("", "CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
FLAG_FULL_OBJECT, FLAG_ACL = 1, 2
_HEX_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')


@dataclass(frozen=True)
class UploadId:
    """A client-visible upload id, parsed."""

    upstream: str
    token: bytes | None = None
    algorithm: Algorithm | None = None
    flags: int = 0

    @property
    def full_object(self) -> bool:
        return bool(self.flags & FLAG_FULL_OBJECT)


def compose_upload_id(upstream: str, token: bytes, algorithm: Algorithm | None, flags: int) -> str:
    code = str(_ALGORITHMS.index(algorithm.value if algorithm else ""))
    encoded = base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")
    return f"{PREFIX}{code}{flags:x}{encoded}{upstream}"


def parse_upload_id(value: str | None) -> UploadId:
    """Raises: S3Error ``NoSuchUpload`` for an id veil cannot have issued (empty)."""
    if not value:
        raise S3Error("NoSuchUpload")
    if not value.startswith(PREFIX) or len(value) <= len(PREFIX) + 2 + TOKEN_CHARS:
        return UploadId(value)
    rest = value[len(PREFIX) :]
    code, flags, encoded, upstream = (
        rest[0],
        rest[1],
        rest[2 : 2 + TOKEN_CHARS],
        rest[2 + TOKEN_CHARS :],
    )
    try:
        token = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        name = _ALGORITHMS[int(code)]
        flag_bits = int(flags, 16)
    except (binascii.Error, ValueError, IndexError):
        raise S3Error("NoSuchUpload") from None
    if len(token) != UPLOAD_TOKEN_LEN:
        raise S3Error("NoSuchUpload")
    return UploadId(upstream, token, Algorithm(name) if name else None, flag_bits)


async def _data_key(call: Call, upload: UploadId) -> DataKey:
    if upload.token is None:
        raise S3Error(
            "NoSuchUpload",
            "veil: parts can only be added with the upload id CreateMultipartUpload returned",
        )
    if call.deps.ctx.runtime.is_stale():
        raise s3_error(KeyringStale())
    return await call.deps.open_token(upload.token, call.bucket, call.key, upload.upstream)


def _part_target(call: Call, upload: UploadId) -> Target:
    assert call.s3.part_number is not None
    query = (("partNumber", str(call.s3.part_number)), ("uploadId", upload.upstream))
    return Target(call.bucket, call.key, query)


def _answer(pairs: list[tuple[str, str]], body: bytes | None = None) -> web.Response:
    headers = CIMultiDict(pairs)
    if body is not None:
        headers["Content-Type"] = "application/xml"
    return web.Response(status=200, body=body, headers=headers)


def _relayed(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, value in pairs
        if name.startswith("x-amz-server-side-encryption")
        or name in ("x-amz-version-id", "x-amz-abort-date", "x-amz-abort-rule-id")
    ]


# ---------------------------------------------------------------------------------- create


async def create_multipart_upload(call: Call) -> web.StreamResponse:
    deps, head = call.deps, call.head
    check_user_metadata(head)
    version_key = deps.encryption_key(call.bucket)
    name = (head.header("x-amz-checksum-algorithm") or "").upper()
    try:
        algorithm = Algorithm(name) if name else None
    except ValueError:
        raise S3Error("InvalidRequest", "Checksum algorithm provided is unsupported.") from None
    if algorithm is not None and algorithm.value not in _ALGORITHMS:
        raise S3Error("NotImplemented", f"veil: {algorithm.value} multipart checksums")
    kind = (head.header("x-amz-checksum-type") or "").upper()
    full_object = kind == "FULL_OBJECT" or (not kind and algorithm is Algorithm.CRC64NVME)
    if full_object and algorithm is not None and not algorithm.full_object:
        raise S3Error("InvalidRequest", f"{algorithm.value} does not support FULL_OBJECT")
    flags = (FLAG_FULL_OBJECT if full_object else 0) | (
        FLAG_ACL if any(n in ACL_HEADERS for n, _ in head.headers) else 0
    )
    dk = DataKey.generate()
    header = wrap_data_key(version_key, dk, call.bucket, call.key, FLAG_MULTIPART)
    headers = [*write_headers(head), (META_HEADER, meta.encode(header))]
    target = Target(call.bucket, call.key, (("uploads", None),))
    reply = await deps.upstream.call("POST", target, headers)
    upstream_id = _element(reply.body, "UploadId")
    token = seal_upload_token(version_key, dk, call.bucket, call.key, upstream_id)
    client_id = compose_upload_id(upstream_id, token, algorithm, flags)
    body = s3xml.rewrite_result(reply.body, upload_id=client_id)
    pairs = _relayed(reply.headers)
    if algorithm is not None:
        pairs.append(("x-amz-checksum-algorithm", algorithm.value))
        pairs.append(("x-amz-checksum-type", "FULL_OBJECT" if full_object else "COMPOSITE"))
    return _answer(pairs, body)


def _element(body: bytes, name: str) -> str:
    root = s3xml.parse(body)
    for child in root.iter():
        if s3xml.local_name(child.tag) == name and child.text:
            return child.text.strip()
    raise S3Error("InternalError", f"veil: upstream answer without <{name}>")


# ------------------------------------------------------------------------------ upload part


async def stored_part(call: Call, upload: UploadId, number: int) -> tuple[str, int] | None:
    """The store's (ETag, stored size) of one part of an upload, or ``None``."""
    query = (
        ("uploadId", upload.upstream),
        ("max-parts", "1"),
        ("part-number-marker", str(number - 1)),
    )
    reply = await call.deps.upstream.call("GET", Target(call.bucket, call.key, query))
    return _parts(reply.body).get(number)


def _parts(body: bytes) -> dict[int, tuple[str, int]]:
    root = s3xml.parse(body, max_size=64 * s3xml.MAX_DOCUMENT)
    found: dict[int, tuple[str, int]] = {}
    for part in root:
        if s3xml.local_name(part.tag) != "Part":
            continue
        fields = {s3xml.local_name(c.tag): (c.text or "").strip() for c in part}
        number, size = fields.get("PartNumber", ""), fields.get("Size", "")
        if number.isdigit() and size.isdigit():
            found[int(number)] = (fields.get("ETag", ""), int(size))
    return found


def _reupload_check(number: int, stored_etag: str) -> object:
    def check(ciphertext_md5: bytes) -> None:
        if stored_etag.strip('"').lower() != ciphertext_md5.hex():
            raise S3Error(
                "InvalidRequest",
                f"veil: part {number} of this upload is already stored with other content; "
                "re-uploading a part with different data is refused (it would reuse its "
                "nonces). Upload it under a new part number or start a new upload.",
            )

    return check


async def upload_part(call: Call) -> web.StreamResponse:
    upload = parse_upload_id(call.s3.upload_id)
    dk = await _data_key(call, upload)
    number = call.s3.part_number
    assert number is not None
    reader = BodyReader(call.head, call.verified)
    length = checked_length(reader)
    existing = await stored_part(call, upload, number)
    await call.expect_continue()
    pairs: list[tuple[str, str]] = []
    if existing is not None:
        check = _reupload_check(number, existing[0])
        sealed = SealedUpload(call, dk, number, reader=reader, last_check=check)  # type: ignore[arg-type]
        await sealed.drain()
    else:
        sealed = SealedUpload(call, dk, number, reader=reader)
        pairs = await send_sealed(
            call, _part_target(call, upload), argument_headers(call.head), sealed, length
        )
    result = sealed.result
    assert result is not None
    call.deps.ctx.metrics.hot.encrypts[("s3", str(int.from_bytes(upload.token[9:11], "big")))] += 1  # type: ignore[index]
    headers = [("ETag", f'"{result.md5.hex()}"'), *_relayed(pairs)]
    for algorithm, digest in result.checksums.items():
        headers.append((algorithm.header, base64.b64encode(digest).decode("ascii")))
    return _answer(headers)


async def upload_part_copy(call: Call) -> web.StreamResponse:
    upload = parse_upload_id(call.s3.upload_id)
    dk = await _data_key(call, upload)
    number = call.s3.part_number
    assert number is not None
    src, obj = await open_source(call)
    size = obj.size
    header = call.head.header("x-amz-copy-source-range")
    first, last = parse_copy_source_range(header, size) if header else (0, size - 1)
    length = last - first + 1
    checked_length_value(length)
    existing = await stored_part(call, upload, number)
    sealed = SealedStream(source_plaintext(call, src, obj, first, last), dk, number)
    if existing is not None:
        md5 = hashlib.md5(usedforsecurity=False)
        async for segment in sealed.stream():
            md5.update(segment)
        _reupload_check(number, existing[0])(md5.digest())  # type: ignore[operator]
        pairs: list[tuple[str, str]] = []
    else:
        pairs = await send_stream(
            call, _part_target(call, upload), argument_headers(call.head), sealed, length
        )
    assert sealed.md5 is not None
    modified = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<CopyPartResult xmlns="{s3xml.S3_NAMESPACE}">'
        f"<LastModified>{modified}</LastModified>"
        f"<ETag>&quot;{sealed.md5.hex()}&quot;</ETag></CopyPartResult>"
    ).encode()
    headers = _relayed(pairs)
    if src.version_id:
        headers.append(("x-amz-copy-source-version-id", src.version_id))
    return _answer(headers, body)


def checked_length_value(length: int) -> None:
    from proxy.crypto.objects import MAX_SINGLE_PUT_PLAINTEXT

    if length > MAX_SINGLE_PUT_PLAINTEXT:
        raise S3Error(
            "EntityTooLarge", f"veil: a part holds at most {MAX_SINGLE_PUT_PLAINTEXT} bytes"
        )


# --------------------------------------------------------------------------------- complete


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
        page = _parts(reply.body)
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
        from proxy.s3.upstream import error_of

        raise error_of(500, reply.body)
    pairs = _relayed(reply.headers)
    digests = {"etag-mp": etag_record, **records}
    record = layout_record(layout)
    if record is not None:
        digests["layout"] = record
    if layout.stored_size <= COPY_LIMIT:
        version = await _persist(call, upload, _element(reply.body, "ETag"), digests)
        if version is not None:
            pairs = [(n, v) for n, v in pairs if n != "x-amz-version-id"]
            pairs.append(("x-amz-version-id", version))
    return _answer(pairs, _complete_result(reply.body, etag, shown, records))


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
    from proxy.s3.headers import from_object_head

    return await persist_metadata(
        deps,
        call.bucket,
        call.key,
        obj.etag,
        obj.envelope.encode(digests),
        from_object_head(obj.headers) + args,
        acl=acl,
    )


# ------------------------------------------------------------------------- abort, list parts


async def abort_multipart_upload(call: Call) -> web.StreamResponse:
    upload = parse_upload_id(call.s3.upload_id)
    target = Target(call.bucket, call.key, (("uploadId", upload.upstream),))
    reply = await call.deps.upstream.call("DELETE", target, argument_headers(call.head))
    return web.Response(status=reply.status, headers=CIMultiDict(_relayed(reply.headers)))


async def list_parts(call: Call) -> web.StreamResponse:
    upload = parse_upload_id(call.s3.upload_id)
    query = [(n, v) for n, v in call.head.params if n not in ("uploadId", "x-id")]
    query.append(("uploadId", upload.upstream))
    target = Target(call.bucket, call.key, query)
    reply = await call.deps.upstream.call("GET", target, argument_headers(call.head))

    assert call.s3.upload_id is not None
    body = _rewrite_parts(reply.body, call.s3.upload_id)
    return _answer(_relayed(reply.headers), body)


def _rewrite_parts(body: bytes, client_id: str) -> bytes:
    """ListParts with plaintext part sizes, the client's upload id and no store checksums."""
    root = s3xml.parse(body, max_size=64 * s3xml.MAX_DOCUMENT)
    namespace = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    root.tag = namespace + "ListPartsResult"
    for element in root:
        name = s3xml.local_name(element.tag)
        if name == "UploadId":
            element.text = client_id
        elif name == "Part":
            for child in list(element):
                field = s3xml.local_name(child.tag)
                if field == "Size" and (child.text or "").strip().isdigit():
                    try:
                        child.text = str(part_plaintext_size(int((child.text or "").strip())))
                    except DecryptionFailed:
                        pass
                elif field.startswith("Checksum"):
                    element.remove(child)
    text = ET.tostring(root, encoding="unicode", default_namespace=namespace[1:-1] or None)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + text).encode("utf-8")
