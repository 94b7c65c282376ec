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

**Complete** is in :mod:`proxy.s3.complete`.

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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from multidict import CIMultiDict

from protocols.s3 import xml as s3xml
from protocols.s3.body import BodyReader
from protocols.s3.checksums import Algorithm
from protocols.s3.errors import S3Error
from protocols.s3.ranges import parse_copy_source_range
from proxy.crypto import meta
from proxy.crypto.objects import (
    FLAG_MULTIPART,
    UPLOAD_TOKEN_LEN,
    DataKey,
    seal_upload_token,
    wrap_data_key,
)
from proxy.errors import DecryptionFailed, KeyringStale
from proxy.s3.context import Call, s3_error
from proxy.s3.copy import SealedStream, open_source, send_stream, source_plaintext
from proxy.s3.headers import ACL_HEADERS, argument_headers, check_user_metadata, write_headers
from proxy.s3.info import (
    META_HEADER,
    part_plaintext_size,
)
from proxy.s3.objects import checked_length, send_sealed
from proxy.s3.streams import SealedUpload
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

    @property
    def version(self) -> int:
        """The key version the token was sealed under (for metrics)."""
        return int.from_bytes(self.token[9:11], "big") if self.token else 0


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


def answer(pairs: list[tuple[str, str]], body: bytes | None = None) -> web.Response:
    headers = CIMultiDict(pairs)
    if body is not None:
        headers["Content-Type"] = "application/xml"
    return web.Response(status=200, body=body, headers=headers)


def relayed(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
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
    upstream_id = element(reply.body, "UploadId")
    token = seal_upload_token(version_key, dk, call.bucket, call.key, upstream_id)
    client_id = compose_upload_id(upstream_id, token, algorithm, flags)
    body = s3xml.rewrite_result(reply.body, upload_id=client_id)
    pairs = relayed(reply.headers)
    if algorithm is not None:
        pairs.append(("x-amz-checksum-algorithm", algorithm.value))
        pairs.append(("x-amz-checksum-type", "FULL_OBJECT" if full_object else "COMPOSITE"))
    return answer(pairs, body)


def element(body: bytes, name: str) -> str:
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
    return parts_of(reply.body).get(number)


def parts_of(body: bytes) -> dict[int, tuple[str, int]]:
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


def reupload_check(number: int, stored_etag: str) -> Callable[[bytes], None]:
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
        check = reupload_check(number, existing[0])
        sealed = SealedUpload(call, dk, number, reader=reader, last_check=check)
        await sealed.drain()
    else:
        sealed = SealedUpload(call, dk, number, reader=reader)
        pairs = await send_sealed(
            call, _part_target(call, upload), argument_headers(call.head), sealed, length
        )
    result = sealed.result
    assert result is not None
    call.deps.ctx.metrics.hot.encrypts[("s3", str(upload.version))] += 1
    headers = [("ETag", f'"{result.md5.hex()}"'), *relayed(pairs)]
    for algorithm, digest in result.checksums.items():
        headers.append((algorithm.header, base64.b64encode(digest).decode("ascii")))
    return answer(headers)


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
        reupload_check(number, existing[0])(md5.digest())
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
    headers = relayed(pairs)
    if src.version_id:
        headers.append(("x-amz-copy-source-version-id", src.version_id))
    return answer(headers, body)


def checked_length_value(length: int) -> None:
    from proxy.crypto.objects import MAX_SINGLE_PUT_PLAINTEXT

    if length > MAX_SINGLE_PUT_PLAINTEXT:
        raise S3Error(
            "EntityTooLarge", f"veil: a part holds at most {MAX_SINGLE_PUT_PLAINTEXT} bytes"
        )


# ------------------------------------------------------------------------- abort, list parts


async def abort_multipart_upload(call: Call) -> web.StreamResponse:
    upload = parse_upload_id(call.s3.upload_id)
    target = Target(call.bucket, call.key, (("uploadId", upload.upstream),))
    reply = await call.deps.upstream.call("DELETE", target, argument_headers(call.head))
    return web.Response(status=reply.status, headers=CIMultiDict(relayed(reply.headers)))


async def list_parts(call: Call) -> web.StreamResponse:
    upload = parse_upload_id(call.s3.upload_id)
    query = [(n, v) for n, v in call.head.params if n not in ("uploadId", "x-id")]
    query.append(("uploadId", upload.upstream))
    target = Target(call.bucket, call.key, query)
    reply = await call.deps.upstream.call("GET", target, argument_headers(call.head))

    assert call.s3.upload_id is not None
    body = _rewrite_parts(reply.body, call.s3.upload_id)
    return answer(relayed(reply.headers), body)


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
