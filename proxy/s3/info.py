"""What a stored object is, read from an upstream HEAD/GET answer, and what the client sees.

Theory of operation
-------------------
An upstream answer for an object carries everything veil needs in its headers: the stored
(ciphertext) size (``Content-Length``, or the total of ``Content-Range``), the store's ETag,
and ``x-amz-meta-veil-env`` (:mod:`proxy.crypto.meta`: the 92-byte object header and the
digest records). :func:`stored_object` parses them into a :class:`StoredObject`; an object
without ``veil-env`` is legacy plaintext (``envelope is None``).

The client sees plaintext values only (:class:`StoredObject` methods):

* the size -- ``plaintext_size(stored)``, exact for single PUTs and aligned multipart layouts;
* the ETag -- the persisted plaintext MD5 (``md5`` record, ``"<hex>"``) or multipart ETag
  (``etag-mp``, ``"<hex>-N"``); the store's ETag when neither was persisted (a multipart
  object over 5 GiB, which no CopyObject can rewrite), never anything derived from ciphertext
  checksums;
* checksums -- the persisted plaintext checksum records, with ``-N`` for COMPOSITE ones;
* the layout -- a single body for single PUTs; for multipart objects the uniform layout of the
  ``layout`` record, or ``None`` when it must be learned (see :mod:`proxy.s3.layouts`).
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from protocols.s3.checksums import Algorithm
from protocols.s3.errors import S3Error
from proxy.crypto import meta
from proxy.crypto.objects import (
    SEGMENT,
    Layout,
    ObjectHeader,
    parse_object_header,
    plaintext_size,
    stored_size,
)
from proxy.errors import DecryptionFailed, VeilError

META_HEADER = "x-amz-meta-" + meta.META_KEY
RESERVED_META_PREFIX = "x-amz-meta-veil-"

# checksum algorithm <-> digest record of proxy.crypto.meta (the ones S3 keeps per object)
CHECKSUM_RECORDS: dict[Algorithm, str] = {
    Algorithm.CRC32: "crc32",
    Algorithm.CRC32C: "crc32c",
    Algorithm.CRC64NVME: "crc64nvme",
    Algorithm.SHA1: "sha1",
    Algorithm.SHA256: "sha256",
}
FULL_OBJECT, COMPOSITE = 1, 2
CHECKSUM_TYPES = {FULL_OBJECT: "FULL_OBJECT", COMPOSITE: "COMPOSITE"}
_LAYOUT = struct.Struct(">IH")
_COUNT = struct.Struct(">H")
_MP_ETAG = re.compile(r'"?([0-9a-fA-F]{32})-(\d+)"?')


@dataclass(frozen=True)
class Envelope:
    """The parsed ``x-amz-meta-veil-env``: object header and digest records."""

    header: bytes
    parsed: ObjectHeader
    digests: dict[str, bytes] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return self.parsed.version

    def encode(
        self, digests: Mapping[str, bytes] | None = None, header: bytes | None = None
    ) -> str:
        """The metadata value with these digests (default: the current ones)."""
        return meta.encode(header or self.header, self.digests if digests is None else digests)


def parse_envelope(value: str) -> Envelope:
    """Raises: DecryptionFailed / UnsupportedFormat for malformed metadata."""
    header, digests = meta.decode(value.strip())
    return Envelope(header, parse_object_header(header), digests)


@dataclass(frozen=True)
class StoredObject:
    """An upstream object as veil sees it (from a HEAD or GET answer)."""

    headers: list[tuple[str, str]]
    stored_size: int
    etag: str
    last_modified: str | None
    version_id: str | None
    envelope: Envelope | None

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def multipart(self) -> bool:
        return self.envelope is not None and self.envelope.parsed.multipart

    @property
    def size(self) -> int:
        """The plaintext size (raises DecryptionFailed for a size no veil object has)."""
        if self.envelope is None:
            return self.stored_size
        return plaintext_size(self.stored_size)

    @property
    def client_etag(self) -> str:
        """The ETag the client sees: plaintext when persisted, else the store's."""
        env = self.envelope
        if env is not None:
            md5 = env.digests.get("md5")
            if md5 is not None:
                return f'"{md5.hex()}"'
            mp = env.digests.get("etag-mp")
            if mp is not None:
                return f'"{mp[:16].hex()}-{_COUNT.unpack(mp[16:])[0]}"'
        return self.etag

    def etag_matches(self, wanted: str) -> bool:
        """``If-Match`` semantics: the ETag the client saw (plaintext or the store's), or ``*``."""
        for candidate in (part.strip() for part in wanted.split(",")):
            if candidate == "*" or _bare(candidate) in (_bare(self.client_etag), _bare(self.etag)):
                return True
        return False

    @property
    def part_count(self) -> int | None:
        """Parts of a multipart object, from veil's records or the store's ``-N`` ETag."""
        if not self.multipart:
            return None
        assert self.envelope is not None
        layout = self.envelope.digests.get("layout")
        if layout is not None:
            return int(_LAYOUT.unpack(layout)[1])
        mp = self.envelope.digests.get("etag-mp")
        if mp is not None:
            return int(_COUNT.unpack(mp[16:])[0])
        count = self.header("x-amz-mp-parts-count")
        if count is not None and count.isdigit():
            return int(count)
        match = _MP_ETAG.fullmatch(self.etag.strip())
        return int(match.group(2)) if match else None

    def checksums(self) -> list[tuple[str, str]]:
        """``x-amz-checksum-*`` response headers for the persisted plaintext checksums."""
        env = self.envelope
        if env is None:
            return []
        kind = env.digests.get("checksum-type", bytes([FULL_OBJECT]))[0]
        out = []
        for algorithm, record in CHECKSUM_RECORDS.items():
            digest = env.digests.get(record)
            if digest is None:
                continue
            value = base64.b64encode(digest).decode("ascii")
            if kind == COMPOSITE and self.part_count:
                value += f"-{self.part_count}"
            out.append((algorithm.header, value))
        if out:
            out.append(("x-amz-checksum-type", CHECKSUM_TYPES.get(kind, "FULL_OBJECT")))
        return out

    def recorded_layout(self) -> Layout | None:
        """The part layout, when the size or the metadata alone give it (no request needed).

        Raises:
            DecryptionFailed: sizes or records that no veil object can have.
        """
        if self.envelope is None:
            return None
        if not self.multipart:
            return Layout.single(plaintext_size(self.stored_size))
        record = self.envelope.digests.get("layout")
        if record is None:
            return None
        units, count = _LAYOUT.unpack(record)
        layout = Layout.uniform(units * SEGMENT, plaintext_size(self.stored_size))
        if len(layout.parts) != count or layout.stored_size != self.stored_size:
            raise DecryptionFailed("layout record disagrees with the stored size")
        return layout


def _bare(etag: str) -> str:
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"')


def stored_object(headers: Iterable[tuple[str, str]]) -> StoredObject:
    """Parse an upstream HEAD/GET answer's headers (lower-case names).

    Raises:
        S3Error: ``InternalError`` for metadata that is not a veil envelope (tampered).
    """
    pairs = list(headers)
    found = dict(pairs)
    size = _total_size(found)
    envelope = None
    value = found.get(META_HEADER)
    if value is not None:
        envelope = parse_envelope(value)
    return StoredObject(
        headers=pairs,
        stored_size=size,
        etag=found.get("etag", ""),
        last_modified=found.get("last-modified"),
        version_id=found.get("x-amz-version-id"),
        envelope=envelope,
    )


def _total_size(found: Mapping[str, str]) -> int:
    content_range = found.get("content-range")
    if content_range is not None and "/" in content_range:
        total = content_range.rpartition("/")[2].strip()
        if total.isdigit():
            return int(total)
    length = found.get("content-length", "0").strip()
    return int(length) if length.isdigit() else 0


def layout_record(layout: Layout) -> bytes | None:
    """The ``layout`` digest record for a uniform, aligned layout numbered 1..N, else None."""
    parts = layout.parts
    if any(number != index + 1 for index, (number, _) in enumerate(parts)):
        return None
    size = parts[0][1]
    if len(parts) == 1:  # a one-part upload: any part size at least as large describes it
        size = max(1, -(-size // SEGMENT)) * SEGMENT
    if size <= 0 or size % SEGMENT or size // SEGMENT > 0xFFFFFFFF or len(parts) > 0xFFFF:
        return None
    if any(s != size for _, s in parts[:-1]) or parts[-1][1] > size:
        return None
    if len(parts) > 1 and parts[-1][1] == 0:
        return None
    return _LAYOUT.pack(size // SEGMENT, len(parts))


def multipart_etag_record(hex_md5: str, count: int) -> bytes:
    return bytes.fromhex(hex_md5) + _COUNT.pack(count)


def aligned(layout: Layout) -> bool:
    """Whether every non-final part is a 64 KiB multiple (sizes then follow by arithmetic)."""
    return all(size % SEGMENT == 0 for _, size in layout.parts[:-1])


def part_plaintext_size(stored: int) -> int:
    """The plaintext size of one stored part (always exact: a part is one segmented body)."""
    size = plaintext_size(stored)
    if stored_size(size) != stored:
        raise DecryptionFailed("part size is not a veil part size")
    return size


def legacy_refused() -> S3Error:
    return S3Error(
        "InvalidObjectState",
        "veil: this object is not encrypted (legacy plaintext) and s3.legacy_plaintext is 'refuse'",
    )


def crypto_error(error: VeilError) -> S3Error:
    return S3Error("InternalError", f"veil: {error.message}")
