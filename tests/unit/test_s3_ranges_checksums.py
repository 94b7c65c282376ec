"""Range resolution against a plaintext reference, and checksums against known values."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.s3 import checksums
from protocols.s3.checksums import Algorithm
from protocols.s3.errors import S3Error
from protocols.s3.ranges import (
    ByteRange,
    content_range,
    parse_copy_source_range,
    parse_range,
    resolve,
    unsatisfied_content_range,
)

# -- ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-200", 100, (90, 99)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=99-99", 100, (99, 99)),
        ("bytes=0-0", 1, (0, 0)),
    ],
)
def test_resolve(header: str, size: int, expected: tuple[int, int]) -> None:
    parsed = parse_range(header)
    assert parsed is not None and resolve(parsed, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=0-", 0),
     ("bytes=-5", 0), ("bytes=0-0", 0)],
)  # fmt: skip
def test_unsatisfiable(header: str, size: int) -> None:
    parsed = parse_range(header)
    assert parsed is not None
    with pytest.raises(S3Error) as error:
        resolve(parsed, size)
    assert (error.value.code, error.value.status) == ("InvalidRange", 416)
    assert ("ActualObjectSize", str(size)) in error.value.details


@pytest.mark.parametrize(
    "header",
    [None, "", "bytes=", "bytes=a-b", "bytes=5-3", "items=0-1", "bytes=0-1,3-4", "bytes=--1",
     "bytes=1", "bytes 0-1"],
)  # fmt: skip
def test_ignored_like_s3(header: str | None) -> None:
    assert parse_range(header) is None


def test_content_range_headers() -> None:
    assert content_range(0, 9, 100) == "bytes 0-9/100"
    assert unsatisfied_content_range(0) == "bytes */0"


@given(
    data=st.binary(max_size=200),
    first=st.integers(min_value=0, max_value=250),
    last=st.one_of(st.none(), st.integers(min_value=0, max_value=250)),
    suffix=st.booleans(),
)
def test_range_property_against_a_reference(
    data: bytes, first: int, last: int | None, suffix: bool
) -> None:
    if suffix:
        header = f"bytes=-{first}"
    elif last is None:
        header = f"bytes={first}-"
    else:
        header = f"bytes={first}-{last}"
    parsed = parse_range(header)
    if parsed is None:
        assert not suffix and last is not None and last < first
        return
    if suffix:
        reference = data[-first:] if first else b""
    else:
        reference = data[first : None if last is None else last + 1]
    if not reference:
        with pytest.raises(S3Error, match="InvalidRange"):
            resolve(parsed, len(data))
        return
    start, end = resolve(parsed, len(data))
    assert data[start : end + 1] == reference


def test_copy_source_range() -> None:
    assert parse_copy_source_range("bytes=0-9") == (0, 9)
    for bad in ("bytes=0-", "bytes=-5", "bytes=5-4", "0-9"):
        with pytest.raises(S3Error, match="InvalidArgument"):
            parse_copy_source_range(bad)
    with pytest.raises(S3Error, match="InvalidRange"):
        parse_copy_source_range("bytes=0-10", source_size=10)


def test_byte_range_keeps_text() -> None:
    assert parse_range(" bytes=1-2 ") == ByteRange(1, 2, None, "bytes=1-2")


# -- checksums ---------------------------------------------------------------------------------

# "123456789" check values (CRC catalogue; NIST/RFC digests; xxHash reference outputs)
CHECK = {
    Algorithm.CRC32: "cbf43926",
    Algorithm.CRC32C: "e3069283",
    Algorithm.CRC64NVME: "ae8b14860a799888",
    Algorithm.SHA1: "f7c3bc1d808e04732adf679965ccc34ca7ae3441",
    Algorithm.SHA256: "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225",
    Algorithm.MD5: "25f9e794323b453885f5181f1b624d0b",
    Algorithm.SHA512: hashlib.sha512(b"123456789").hexdigest(),
    Algorithm.XXHASH64: "8cb841db40e6ae83",
    Algorithm.XXHASH3: "72dcb18b67a17dff",
    Algorithm.XXHASH128: "33119477ede5dcd5e9716427681d5860",
}


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_known_values_in_pieces(algorithm: Algorithm) -> None:
    checksum = checksums.new(algorithm)
    for piece in (b"12", memoryview(b"3456"), bytearray(b"789")):
        checksum.update(piece)
    assert checksum.digest().hex() == CHECK[algorithm]
    assert len(checksum.digest()) == algorithm.digest_size
    assert base64.b64decode(checksum.b64()) == checksum.digest()
    assert checksums.BY_HEADER[algorithm.header] is algorithm


@pytest.mark.parametrize("algorithm", [Algorithm.CRC32, Algorithm.CRC32C, Algorithm.CRC64NVME])
def test_pure_python_fallback_matches(algorithm: Algorithm) -> None:
    data = os.urandom(3000)
    fast = checksums.new(algorithm)
    fast.update(data)
    slow = checksums.pure_crc(algorithm)
    assert slow(data, 0).to_bytes(algorithm.digest_size, "big") == fast.digest()
    assert slow(b"123456789", 0) == int(CHECK[algorithm], 16)


def test_crc32c_and_crc64nvme_are_accelerated() -> None:
    """awscrt is a declared dependency: the slow fallback must not be what runs."""
    assert checksums.ACCELERATED == {Algorithm.CRC32, Algorithm.CRC32C, Algorithm.CRC64NVME}
    data = bytes(8 << 20)
    for algorithm in (Algorithm.CRC32C, Algorithm.CRC64NVME):
        checksum = checksums.new(algorithm)
        start = time.perf_counter()
        checksum.update(data)
        # > 16 MB/s; the pure-Python fallback runs at ~6 MB/s
        assert time.perf_counter() - start < 0.5


@given(st.lists(st.binary(max_size=300), max_size=6))
def test_full_object_crc_combination(parts: list[bytes]) -> None:
    for algorithm in (Algorithm.CRC32, Algorithm.CRC32C, Algorithm.CRC64NVME):
        digests = []
        for part in parts:
            checksum = checksums.new(algorithm)
            checksum.update(part)
            digests.append((checksum.digest(), len(part)))
        whole = checksums.new(algorithm)
        whole.update(b"".join(parts))
        assert checksums.combine_crc(algorithm, digests) == whole.digest()


def test_composite_and_multipart_etag() -> None:
    parts = [b"a" * 10, b"b" * 20]
    crcs = [zlib.crc32(p).to_bytes(4, "big") for p in parts]
    expected = base64.b64encode(zlib.crc32(b"".join(crcs)).to_bytes(4, "big")).decode()
    assert checksums.composite_checksum(Algorithm.CRC32, crcs) == f"{expected}-2"
    md5s = [hashlib.md5(p).digest() for p in parts]
    assert checksums.multipart_etag(md5s) == f'"{hashlib.md5(b"".join(md5s)).hexdigest()}-2"'
    with pytest.raises(ValueError):
        checksums.composite_checksum(Algorithm.CRC64NVME, crcs)
    with pytest.raises(ValueError):
        checksums.combine_crc(Algorithm.SHA256, [])
    assert Algorithm.CRC64NVME.full_object and not Algorithm.CRC64NVME.composite


@pytest.mark.parametrize("value", ["", "AAAA", "not base64!", "AAAAAAAA"])
def test_decode_b64_rejects_bad_values(value: str) -> None:
    with pytest.raises(S3Error, match="InvalidRequest"):
        checksums.decode_b64(Algorithm.CRC32, value)
