"""The segmented object envelope (S3), sans-I/O.

Theory of operation
-------------------
Each object (each PUT, each multipart upload) gets a fresh random 32-byte data key (DEK). From
it HKDF derives the body key (AES-256-GCM) and a 32-byte key commitment. The body is cut into
64 KiB plaintext segments; segment ``i`` of part ``p`` is sealed with the nonce::

    part number(4) | segment index within the part(4) | last-segment flag(1) | 00 00 00

and no associated data; every segment carries its 16-byte tag and nothing else, so a stored
segment is exactly 65,552 bytes except the last one of a part. A single PUT is "part 0". There
is no per-part header, so the plaintext size is a function of the stored size alone and a Range
GET fetches only the segments it covers. An empty body is one empty last segment (16 bytes),
so truncation to zero is detected too.

The DEK is wrapped with AES-SIV under the version's wrap key, with associated data
``[object header, commitment, bucket, key]``, and travels in object metadata (``meta.py``), never
in the body: a copy or a rotation rewraps 48 bytes of metadata and moves no body bytes.

Multipart uploads use one DEK per upload, carried to every UploadPart inside the upload id the
client sees (``seal_upload_token``), so parts are encrypted in parallel with no state store.
"""

from __future__ import annotations

import bisect
import hmac
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.crypto import _kdf
from proxy.crypto.envelope import FORMAT_OBJECT, FORMAT_UPLOAD, MAGIC, KeyLookup, keyring_ref
from proxy.crypto.keys import KeyKind, VersionKey
from proxy.errors import DecryptionFailed, UnsupportedFormat, WrongKeyring

SEGMENT = 65536
TAG = 16
STORED_SEGMENT = SEGMENT + TAG
DEK_LEN = 32
COMMIT_LEN = 32
WRAPPED_LEN = 16 + DEK_LEN  # AES-SIV: synthetic IV + key
S3_MAX_PUT = 5 * 1024**3  # S3's single PUT / single part limit, in stored bytes
FLAG_MULTIPART = 0x01

PREFIX = struct.Struct(">3sB4sBHB")  # magic, format, keyring ref, class, version, flags
PREFIX_LEN = PREFIX.size  # 12
OBJECT_HEADER_LEN = PREFIX_LEN + WRAPPED_LEN + COMMIT_LEN  # 92
UPLOAD_TOKEN_LEN = PREFIX_LEN + WRAPPED_LEN  # 60
_NONCE = struct.Struct(">IIB3x")


# --- sizes -------------------------------------------------------------------------------


def segment_count(plain: int) -> int:
    """Segments of one part (or one single-PUT body) of ``plain`` bytes; never 0."""
    return max(1, -(-plain // SEGMENT))


def stored_size(plain: int) -> int:
    """Stored (ciphertext) size of one part or single-PUT body of ``plain`` bytes."""
    if plain < 0:
        raise ValueError("negative size")
    return plain + TAG * segment_count(plain)


def plaintext_size(stored: int) -> int:
    """Plaintext size of a whole object from its stored size alone.

    Exact for single PUTs and for multipart objects whose non-final parts are 64 KiB
    multiples (every segment but the last is then full). Raises ``DecryptionFailed`` for a
    size no veil object can have.
    """
    full, rest = divmod(stored, STORED_SEGMENT)
    if rest == 0 and full > 0:
        return full * SEGMENT
    if rest < TAG:
        raise DecryptionFailed("stored size is not a veil object size")
    return full * SEGMENT + rest - TAG


def max_plaintext_for(stored_limit: int) -> int:
    """The largest plaintext whose stored size fits ``stored_limit`` (one part or PUT)."""
    full, rest = divmod(stored_limit, STORED_SEGMENT)
    return full * SEGMENT + max(0, rest - TAG)


MAX_SINGLE_PUT_PLAINTEXT = max_plaintext_for(S3_MAX_PUT)  # 5,367,398,704 bytes


# --- data keys ---------------------------------------------------------------------------


class DataKey:
    """An object's data key and what derives from it. Never printable."""

    __slots__ = ("_dek", "body", "commitment")

    def __init__(self, dek: bytes) -> None:
        if len(dek) != DEK_LEN:
            raise ValueError("data key must be 32 bytes")
        self._dek = dek
        self.body = AESGCM(_kdf.derive(dek, "body"))
        self.commitment = _kdf.derive(dek, "commit")

    @classmethod
    def generate(cls, random: Callable[[int], bytes] = os.urandom) -> DataKey:
        return cls(random(DEK_LEN))

    @property
    def raw(self) -> bytes:
        return self._dek

    def __repr__(self) -> str:
        return "DataKey(<secret>)"


@dataclass(frozen=True)
class ObjectHeader:
    """The parsed 92-byte object header (what ``x-amz-meta-veil-env`` carries first)."""

    class_id: int
    version: int
    flags: int
    raw: bytes

    @property
    def multipart(self) -> bool:
        return bool(self.flags & FLAG_MULTIPART)


def _prefix(fmt: int, key: VersionKey, flags: int) -> bytes:
    return PREFIX.pack(MAGIC, fmt, keyring_ref(key.keyring_id), key.class_id, key.version, flags)


def wrap_data_key(key: VersionKey, dk: DataKey, bucket: str, obj: str, flags: int = 0) -> bytes:
    """The 92-byte object header: prefix | AES-SIV(wrap key, DEK) | commitment."""
    if key.kind is not KeyKind.MASTER:
        raise ValueError("data keys are wrapped by a master version")
    prefix = _prefix(FORMAT_OBJECT, key, flags)
    wrapped = key.wrapper().encrypt(dk.raw, [prefix, dk.commitment, bucket.encode(), obj.encode()])
    return prefix + wrapped + dk.commitment


def parse_object_header(raw: bytes) -> ObjectHeader:
    if len(raw) != OBJECT_HEADER_LEN or raw[:3] != MAGIC:
        raise DecryptionFailed()
    _, fmt, _, class_id, version, flags = PREFIX.unpack_from(raw)
    if fmt != FORMAT_OBJECT:
        raise UnsupportedFormat(f"object envelope format 0x{fmt:02x} is not known")
    return ObjectHeader(class_id, version, flags, raw)


def unwrap_data_key(
    keys: KeyLookup, raw: bytes, bucket: str, obj: str
) -> tuple[DataKey, ObjectHeader]:
    """Unwraps and checks the commitment. Raises ``DecryptionFailed`` on any mismatch."""
    head = parse_object_header(raw)
    if raw[4:8] != keyring_ref(keys.keyring_id):
        raise WrongKeyring("object was encrypted under another keyring")
    key = keys.decrypt_key(KeyKind.MASTER, head.class_id, head.version)
    prefix = raw[:PREFIX_LEN]
    commitment = raw[PREFIX_LEN + WRAPPED_LEN :]
    try:
        dek = key.wrapper().decrypt(
            raw[PREFIX_LEN : PREFIX_LEN + WRAPPED_LEN],
            [prefix, commitment, bucket.encode(), obj.encode()],
        )
    except InvalidTag:
        raise DecryptionFailed() from None
    dk = DataKey(dek)
    if not hmac.compare_digest(dk.commitment, commitment):
        raise DecryptionFailed()
    return dk, head


def rewrap_data_key(
    keys: KeyLookup, raw: bytes, src: tuple[str, str], new_key: VersionKey, dst: tuple[str, str]
) -> bytes:
    """Unwraps for ``src`` (bucket, key), wraps for ``dst`` under ``new_key`` (copy, rotation)."""
    dk, head = unwrap_data_key(keys, raw, *src)
    return wrap_data_key(new_key, dk, dst[0], dst[1], head.flags)


def seal_upload_token(key: VersionKey, dk: DataKey, bucket: str, obj: str, upload_id: str) -> bytes:
    """60 bytes that carry a multipart upload's DEK inside the upload id the client sees."""
    prefix = _prefix(FORMAT_UPLOAD, key, FLAG_MULTIPART)
    ad = [prefix, bucket.encode(), obj.encode(), upload_id.encode()]
    return prefix + key.wrapper().encrypt(dk.raw, ad)


def open_upload_token(
    keys: KeyLookup, token: bytes, bucket: str, obj: str, upload_id: str
) -> DataKey:
    if len(token) != UPLOAD_TOKEN_LEN or token[:3] != MAGIC or token[3] != FORMAT_UPLOAD:
        raise DecryptionFailed()
    if token[4:8] != keyring_ref(keys.keyring_id):
        raise WrongKeyring("upload was started under another keyring")
    _, _, _, class_id, version, _ = PREFIX.unpack_from(token)
    key = keys.decrypt_key(KeyKind.MASTER, class_id, version)
    ad = [token[:PREFIX_LEN], bucket.encode(), obj.encode(), upload_id.encode()]
    try:
        return DataKey(key.wrapper().decrypt(token[PREFIX_LEN:], ad))
    except InvalidTag:
        raise DecryptionFailed() from None


# --- segments ----------------------------------------------------------------------------


def segment_nonce(part: int, index: int, last: bool) -> bytes:
    return _NONCE.pack(part, index, 1 if last else 0)


class PartEncryptor:
    """Streams one part (or a single-PUT body) into sealed segments.

    ``feed`` returns the segments that are complete *and known not to be last*; ``finish``
    returns the last segment. The last segment is thus withheld until the caller has seen the
    end of the body -- which is where it verifies payload hashes and checksums (SPEC 7).

    Whole segments inside a fed chunk are sealed straight from it (no copy); only a partial
    segment is buffered. Up to one segment is always held back, because it might be the last.
    """

    __slots__ = ("_aead", "_buf", "_index", "_part", "plaintext_bytes")

    def __init__(self, dk: DataKey, part: int) -> None:
        self._aead = dk.body
        self._part = part
        self._index = 0
        self._buf = bytearray()
        self.plaintext_bytes = 0

    def _seal(self, data: bytes | bytearray | memoryview) -> bytes:
        seg = self._aead.encrypt(_NONCE.pack(self._part, self._index, 0), data, None)
        self._index += 1
        return seg

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        n = len(data)
        self.plaintext_bytes += n
        buf = self._buf
        out: list[bytes] = []
        if len(buf) + n <= SEGMENT:
            buf += data  # may be the last segment: hold it back
            return out
        view = memoryview(data)
        pos = 0
        if buf:
            pos = SEGMENT - len(buf)
            buf += view[:pos]
            out.append(self._seal(buf))  # more data follows, so not the last
            buf.clear()
        while n - pos > SEGMENT:
            out.append(self._seal(view[pos : pos + SEGMENT]))
            pos += SEGMENT
        buf += view[pos:]
        return out

    def finish(self) -> bytes:
        seg = self._aead.encrypt(_NONCE.pack(self._part, self._index, 1), bytes(self._buf), None)
        self._buf = bytearray()
        self._index += 1
        return seg


def encrypt_part(dk: DataKey, part: int, plaintext: bytes) -> bytes:
    """Whole-buffer convenience over ``PartEncryptor`` (tests, vectors, small bodies)."""
    enc = PartEncryptor(dk, part)
    return b"".join([*enc.feed(plaintext), enc.finish()])


# --- layout and ranges -------------------------------------------------------------------


class Segment(NamedTuple):
    part: int  # part number (0 for a single PUT)
    number: int  # segment index within the part
    last: bool  # last segment of its part
    stored_start: int  # offset in the stored object
    stored_len: int
    plain_start: int  # offset in the plaintext object
    plain_len: int


@dataclass(frozen=True)
class Layout:
    """Where each part's segments lie. ``parts`` is ``((part number, plaintext size), ...)``."""

    parts: tuple[tuple[int, int], ...]
    _plain: list[int] = field(init=False, repr=False, compare=False)  # cumulative offsets
    _stored: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("a layout has at least one part")
        plain, stored = [0], [0]
        for _, size in self.parts:
            plain.append(plain[-1] + size)
            stored.append(stored[-1] + stored_size(size))
        object.__setattr__(self, "_plain", plain)
        object.__setattr__(self, "_stored", stored)

    @classmethod
    def single(cls, size: int) -> Layout:
        return cls(((0, size),))

    @classmethod
    def uniform(cls, part_size: int, total: int) -> Layout:
        """Parts 1..N of ``part_size`` bytes each but the last (how every SDK uploads)."""
        if part_size <= 0 or part_size % SEGMENT:
            raise ValueError("part size must be a positive multiple of 64 KiB")
        count = max(1, -(-total // part_size))
        sizes = [part_size] * (count - 1) + [total - part_size * (count - 1)]
        return cls(tuple((i + 1, s) for i, s in enumerate(sizes)))

    @property
    def plaintext_size(self) -> int:
        return self._plain[-1]

    @property
    def stored_size(self) -> int:
        return self._stored[-1]

    def segments(self, first: int, last: int) -> list[Segment]:
        """The segments covering plaintext bytes ``first..last`` (inclusive)."""
        plain, stored = self._plain, self._stored
        if not 0 <= first <= last < max(1, plain[-1]):
            raise ValueError("range outside the object")
        to_end = last >= plain[-1] - 1  # then trailing empty parts are verified too
        out: list[Segment] = []
        i = bisect.bisect_right(plain, first) - 1
        i = min(i, len(self.parts) - 1)
        while i < len(self.parts):
            number, size = self.parts[i]
            nseg = segment_count(size)
            lo = (first - plain[i]) // SEGMENT if first > plain[i] else 0
            for s in range(lo, nseg):
                p0 = plain[i] + s * SEGMENT
                if p0 > last and out and not to_end:
                    return out
                plen = min(SEGMENT, size - s * SEGMENT)
                out.append(
                    Segment(
                        number,
                        s,
                        s == nseg - 1,
                        stored[i] + s * STORED_SEGMENT,
                        plen + TAG,
                        p0,
                        plen,
                    )
                )
            i += 1
        return out


class RangeDecryptor:
    """Decrypts the stored bytes of a run of segments and yields exactly the requested range.

    Feed the stored bytes ``segments[0].stored_start .. segments[-1] end`` in any chunking;
    ``feed`` returns plaintext chunks, ``finish`` raises ``DecryptionFailed`` if bytes are missing.
    """

    def __init__(self, dk: DataKey, segments: Sequence[Segment], first: int, last: int) -> None:
        self._aead = dk.body
        self._segs = list(segments)
        self._next = 0
        self._buf = bytearray()
        self._first = first
        self._last = last

    @property
    def stored_range(self) -> tuple[int, int]:
        """Inclusive stored byte range to fetch."""
        end = self._segs[-1]
        return self._segs[0].stored_start, end.stored_start + end.stored_len - 1

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        out: list[bytes] = []
        view = memoryview(data)
        n, pos = len(view), 0
        buf = self._buf
        segs = self._segs
        if buf:  # complete the segment that straddles the previous chunk
            if self._next >= len(segs):
                raise DecryptionFailed()
            need = segs[self._next].stored_len - len(buf)
            if n < need:
                buf += view
                return out
            buf += view[:need]
            pos = need
            out.append(self._open(buf))
            buf.clear()
        while self._next < len(segs) and n - pos >= segs[self._next].stored_len:
            end = pos + segs[self._next].stored_len
            out.append(self._open(view[pos:end]))
            pos = end
        if pos < n:
            if self._next >= len(segs):
                raise DecryptionFailed()  # more bytes than the segments can hold
            buf += view[pos:]
        return out

    def _open(self, stored: bytes | bytearray | memoryview) -> bytes:
        seg = self._segs[self._next]
        try:
            plain = self._aead.decrypt(segment_nonce(seg.part, seg.number, seg.last), stored, None)
        except InvalidTag:
            raise DecryptionFailed() from None
        self._next += 1
        lo = max(0, self._first - seg.plain_start)
        hi = min(seg.plain_len, self._last - seg.plain_start + 1)
        return plain if lo == 0 and hi == seg.plain_len else plain[lo:hi]

    def finish(self) -> None:
        if self._next != len(self._segs) or self._buf:
            raise DecryptionFailed()
