"""The compact object metadata: one user-metadata entry, ``x-amz-meta-veil-env``.

Its value is unpadded base64url of::

    object header (92 bytes, see objects.py) | digest records

where each digest record is ``type(1) | length(1) | value``. Records are optional and appear in
ascending type order, at most once each. S3 counts user metadata as the UTF-8 bytes of every
key (without ``x-amz-meta-``) and value, up to 2048; veil's entry takes at most ``R`` of them,
so user metadata over ``2048 - R`` is refused with ``MetadataTooLarge`` before any upload.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from proxy.crypto.objects import OBJECT_HEADER_LEN
from proxy.errors import DecryptionFailed

META_KEY = "veil-env"  # as S3 counts it; the header is x-amz-meta-veil-env
S3_USER_METADATA_LIMIT = 2048

# record name -> (type byte, value length). Frozen: docs/FORMAT.md, "Object metadata".
DIGESTS: dict[str, tuple[int, int]] = {
    "md5": (0x01, 16),  # plaintext MD5: the ETag of a single PUT
    "etag-mp": (0x02, 18),  # MD5 of part MD5s (16) + part count (2): a "-N" ETag
    "crc32": (0x03, 4),
    "crc32c": (0x04, 4),
    "crc64nvme": (0x05, 8),
    "sha1": (0x06, 20),
    "sha256": (0x07, 32),
    "checksum-type": (0x08, 1),  # 1 = FULL_OBJECT, 2 = COMPOSITE
    "layout": (0x09, 6),  # uniform part size / 64 KiB (4) + part count (2)
}
_BY_TYPE = {t: (name, n) for name, (t, n) in DIGESTS.items()}
MAX_RECORDS_LEN = sum(2 + n for _, n in DIGESTS.values())


def _b64len(n: int) -> int:
    return -(-n * 4 // 3)


R = len(META_KEY) + _b64len(OBJECT_HEADER_LEN + MAX_RECORDS_LEN)
USER_METADATA_BUDGET = S3_USER_METADATA_LIMIT - R


def encode(header: bytes, digests: Mapping[str, bytes] | None = None) -> str:
    if len(header) != OBJECT_HEADER_LEN:
        raise ValueError("object header must be 92 bytes")
    parts = [header]
    for name in sorted(digests or {}, key=lambda n: DIGESTS[n][0]):
        kind, length = DIGESTS[name]
        value = (digests or {})[name]
        if len(value) != length:
            raise ValueError(f"digest {name} must be {length} bytes")
        parts.append(bytes((kind, length)) + value)
    return base64.urlsafe_b64encode(b"".join(parts)).rstrip(b"=").decode("ascii")


def decode(value: str) -> tuple[bytes, dict[str, bytes]]:
    """``(92-byte object header, digests)``; malformed metadata is ``DecryptionFailed``."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise DecryptionFailed("malformed veil metadata") from None
    if len(raw) < OBJECT_HEADER_LEN:
        raise DecryptionFailed("malformed veil metadata")
    digests: dict[str, bytes] = {}
    pos, last = OBJECT_HEADER_LEN, 0
    while pos < len(raw):
        if pos + 2 > len(raw):
            raise DecryptionFailed("malformed veil metadata")
        kind, length = raw[pos], raw[pos + 1]
        known = _BY_TYPE.get(kind)
        if known is None or known[1] != length or kind <= last or pos + 2 + length > len(raw):
            raise DecryptionFailed("malformed veil metadata")
        digests[known[0]] = raw[pos + 2 : pos + 2 + length]
        pos += 2 + length
        last = kind
    return raw[:OBJECT_HEADER_LEN], digests


def user_metadata_size(metadata: Mapping[str, str]) -> int:
    """Bytes S3 counts for user metadata (keys without ``x-amz-meta-``, plus values)."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
