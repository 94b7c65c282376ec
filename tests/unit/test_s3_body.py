"""Request bodies in identity framing: declared SHA-256, Content-MD5, checksum headers, length."""

from __future__ import annotations

import base64
import datetime
import hashlib
import zlib

import pytest

from protocols.s3.auth import authenticate
from protocols.s3.body import BodyReader
from protocols.s3.checksums import Algorithm
from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from protocols.s3.sigv4 import UNSIGNED_PAYLOAD, Credentials, sign

NOW = datetime.datetime(2026, 3, 14, 12, 0, tzinfo=datetime.UTC)
CREDENTIALS = Credentials("AKIABODY", "secret/body")
BODY = b"the plaintext body " * 100


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def reader_for(
    body: bytes, payload_hash: str, extra: list[tuple[str, str]] | None = None
) -> BodyReader:
    headers = [("host", "veil:9000"), ("content-length", str(len(body))), *(extra or [])]
    signed = sign("PUT", "/b/k", "", headers, payload_hash, CREDENTIALS, "us-east-1", NOW)
    head = RequestHead.create("PUT", "/b/k", [*headers, *signed.headers])
    verified = authenticate(head, {CREDENTIALS.access_key_id: "secret/body"}.get, NOW)
    return BodyReader(head, verified)


def feed(reader: BodyReader, body: bytes, step: int = 100) -> bytes:
    out = bytearray()
    for index in range(0, len(body), step):
        for piece in reader.feed(body[index : index + step]):
            out += piece
    return bytes(out)


def test_signed_payload_verifies_and_reports_digests() -> None:
    crc = zlib.crc32(BODY).to_bytes(4, "big")
    extra = [("content-md5", b64(hashlib.md5(BODY).digest())), ("x-amz-checksum-crc32", b64(crc))]
    reader = reader_for(BODY, hashlib.sha256(BODY).hexdigest(), extra)
    assert reader.declared_length == len(BODY)
    assert feed(reader, BODY) == BODY
    result = reader.finish()
    assert result.md5 == hashlib.md5(BODY).digest()
    assert result.checksums == {Algorithm.CRC32: crc}


def test_signed_payload_mismatch() -> None:
    reader = reader_for(BODY, hashlib.sha256(b"other").hexdigest())
    feed(reader, BODY)
    with pytest.raises(S3Error) as error:
        reader.finish()
    assert error.value.code == "XAmzContentSHA256Mismatch"
    assert error.value.status == 400


@pytest.mark.parametrize(
    ("header", "value", "code"),
    [
        ("content-md5", b64(hashlib.md5(b"x").digest()), "BadDigest"),
        ("x-amz-checksum-crc32", b64(b"\0\0\0\0"), "BadDigest"),
        ("x-amz-checksum-sha256", b64(hashlib.sha256(b"x").digest()), "BadDigest"),
    ],
)
def test_digest_mismatch_is_bad_digest(header: str, value: str, code: str) -> None:
    reader = reader_for(BODY, UNSIGNED_PAYLOAD, [(header, value)])
    feed(reader, BODY)
    with pytest.raises(S3Error) as error:
        reader.finish()
    assert error.value.code == code


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ([("content-md5", "not-md5")], "InvalidDigest"),
        ([("x-amz-checksum-crc32", "zz")], "InvalidRequest"),
        (
            [("x-amz-checksum-crc32", b64(b"\0" * 4)), ("x-amz-checksum-sha1", b64(b"\0" * 20))],
            "InvalidRequest",
        ),
    ],
)
def test_malformed_digest_headers_fail_before_any_byte(
    extra: list[tuple[str, str]], code: str
) -> None:
    with pytest.raises(S3Error) as error:
        reader_for(BODY, UNSIGNED_PAYLOAD, extra)
    assert error.value.code == code


def test_short_and_long_bodies() -> None:
    reader = reader_for(BODY, UNSIGNED_PAYLOAD)
    feed(reader, BODY[:-1])
    with pytest.raises(S3Error, match="IncompleteBody"):
        reader.finish()
    reader = reader_for(BODY, UNSIGNED_PAYLOAD)
    with pytest.raises(S3Error, match="IncompleteBody"):
        feed(reader, BODY + b"!")


def test_unsupported_trailer_is_refused() -> None:
    extra = [("x-amz-trailer", "x-amz-meta-something"), ("content-encoding", "aws-chunked")]
    with pytest.raises(S3Error, match="InvalidRequest"):
        reader_for(BODY, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", extra)


def test_pieces_are_zero_copy_views() -> None:
    reader = reader_for(BODY, UNSIGNED_PAYLOAD)
    piece = reader.feed(BODY)[0]
    assert isinstance(piece, memoryview) and piece.obj is BODY
