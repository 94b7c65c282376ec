"""aws-chunked decoding: AWS's published examples, captured boto3 uploads, and attacks.

Vectors: tests/vectors/s3_chunked.json (see tests/vectors/s3_make_vectors.py). Every vector is
fed whole, byte by byte and in random splits (Hypothesis); tampering, reordering, truncation and
wrong trailers must fail with S3's error codes and never release a byte of a bad chunk.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.s3 import checksums
from protocols.s3.auth import authenticate
from protocols.s3.body import BodyReader
from protocols.s3.chunked import (
    ChunkDecoder,
    ChunkEncoder,
    encoded_length,
    strip_aws_chunked,
)
from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from protocols.s3.sigv4 import PayloadMode, SigningChain, Verified, signing_key

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "s3_chunked.json").read_text())
EXAMPLES = {case["name"]: case for case in VECTORS["aws_examples"]}


def head_of(case: dict[str, Any]) -> RequestHead:
    return RequestHead.create(case["method"], case["target"], [tuple(h) for h in case["headers"]])


def verify(case: dict[str, Any]) -> Verified:
    keys = {case.get("access_key", VECTORS["access_key"]): case.get("secret", VECTORS["secret"])}
    now = datetime.datetime.fromisoformat(case.get("now", VECTORS["now"]))
    return authenticate(head_of(case), keys.get, now)


def example_body(case: dict[str, Any]) -> tuple[bytes, bytes]:
    """(wire body, payload) of an AWS example, built from its published signatures."""
    fill = case["fill"].encode()
    parts = []
    for size, signature in zip(case["chunk_sizes"], case["chunk_signatures"], strict=False):
        parts.append(f"{size:x};chunk-signature={signature}\r\n".encode() + fill * size + b"\r\n")
    parts.append(f"0;chunk-signature={case['chunk_signatures'][-1]}\r\n".encode())
    parts.extend(f"{name}:{value}\r\n".encode() for name, value in case["trailers"])
    if case["trailer_signature"]:
        parts.append(f"x-amz-trailer-signature:{case['trailer_signature']}\r\n".encode())
    parts.append(b"\r\n")
    return b"".join(parts), fill * sum(case["chunk_sizes"])


def decode_all(decoder: ChunkDecoder | BodyReader, body: bytes, step: int) -> bytes:
    out = bytearray()
    for index in range(0, len(body), step):
        for piece in decoder.feed(body[index : index + step]):
            out += piece
    return bytes(out)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@pytest.mark.parametrize("step", [1, 7, 4096, 10**9])
def test_aws_examples_decode(name: str, step: int) -> None:
    case = EXAMPLES[name]
    verified = verify(case)
    assert verified.chain is not None
    assert verified.chain.seed_signature == case["seed_signature"]
    body, payload = example_body(case)
    assert len(body) == case["encoded_length"]
    reader = BodyReader(head_of(case), verified)
    assert decode_all(reader, body, step) == payload
    result = reader.finish()
    assert result.length == len(payload)
    assert result.md5 == hashlib.md5(payload).digest()
    assert result.trailers == dict(case["trailers"])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_encoder_reproduces_aws_examples(name: str) -> None:
    case = EXAMPLES[name]
    verified = verify(case)
    assert verified.chain is not None
    body, payload = example_body(case)
    encoder = ChunkEncoder(verified.chain)
    sizes = case["chunk_sizes"]
    encoded = encoder.chunk(payload[: sizes[0]]) + encoder.chunk(payload[sizes[0] :])
    encoded += encoder.finish([tuple(t) for t in case["trailers"]])
    assert encoded == body
    trailers = [tuple(t) for t in case["trailers"]]
    assert encoded_length(len(payload), sizes[0], signed=True, trailers=trailers) == len(body)


@pytest.mark.parametrize("case", VECTORS["captured"], ids=[c["name"] for c in VECTORS["captured"]])
def test_captured_boto3_requests(case: dict[str, Any]) -> None:
    verified = verify(case)
    body = zlib.decompress(base64.b64decode(case["body_zlib_b64"]))
    reader = BodyReader(head_of(case), verified)
    payload = decode_all(reader, body, 65536 + 3)
    result = reader.finish()
    assert result.length == len(payload)
    if verified.payload is PayloadMode.STREAMING_UNSIGNED_TRAILER:
        assert set(result.checksums) == {checksums.Algorithm.CRC32}
        crc = checksums.new(checksums.Algorithm.CRC32)
        crc.update(payload)
        assert result.trailers["x-amz-checksum-crc32"] == crc.b64()
        decoded = head_of(case).header("x-amz-decoded-content-length")
        assert decoded is not None and int(decoded) == len(payload)


def test_captured_multipart_part_with_wrong_trailer_checksum_is_bad_digest() -> None:
    case = next(c for c in VECTORS["captured"] if "partNumber=1" in c["target"])
    body = zlib.decompress(base64.b64decode(case["body_zlib_b64"]))
    index = body.rindex(b"x-amz-checksum-crc32:") + len(b"x-amz-checksum-crc32:")
    tampered = body[:index] + b"AAAAAA==" + body[index + 8 :]
    reader = BodyReader(head_of(case), verify(case))
    decode_all(reader, tampered, 1 << 20)
    with pytest.raises(S3Error) as error:
        reader.finish()
    assert error.value.code == "BadDigest"


def test_captured_unsigned_body_with_flipped_byte_is_bad_digest() -> None:
    case = VECTORS["captured"][0]
    body = bytearray(zlib.decompress(base64.b64decode(case["body_zlib_b64"])))
    body[body.index(b"\r\n") + 10] ^= 1
    reader = BodyReader(head_of(case), verify(case))
    decode_all(reader, bytes(body), 999)
    with pytest.raises(S3Error, match="BadDigest"):
        reader.finish()


# -- attacks on the signed example -------------------------------------------------------------


def signed_case() -> tuple[SigningChain, bytes]:
    case = EXAMPLES["aws-streaming-signed"]
    chain = verify(case).chain
    assert chain is not None
    return chain, example_body(case)[0]


def expect_failure(chain: SigningChain, body: bytes, code: str, trailer: bool = False) -> bytes:
    decoder = ChunkDecoder(chain, trailer=trailer)
    released = bytearray()
    with pytest.raises(S3Error) as error:
        for piece in decoder.feed(body):
            released += piece
        decoder.finish()
    assert error.value.code == code
    return bytes(released)


def test_tampered_chunk_releases_nothing_of_it() -> None:
    chain, body = signed_case()
    tampered = bytearray(body)
    tampered[200] ^= 0x01  # inside the first chunk's data
    decoder = ChunkDecoder(chain)
    with pytest.raises(S3Error) as error:
        decoder.feed(bytes(tampered))
    assert error.value.code == "SignatureDoesNotMatch"


def test_tampered_second_chunk_releases_only_the_first() -> None:
    chain, body = signed_case()
    tampered = bytearray(body)
    tampered[-200] ^= 0x01  # inside the 1 KiB chunk
    decoder = ChunkDecoder(chain)
    released = decode_until_error(decoder, bytes(tampered))
    assert released == b"a" * 65536


def decode_until_error(decoder: ChunkDecoder, body: bytes) -> bytes:
    released = bytearray()
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        for index in range(0, len(body), 1000):
            for piece in decoder.feed(body[index : index + 1000]):
                released += piece
    return bytes(released)


def test_reordered_chunks_fail() -> None:
    chain = signed_case()[0]
    encoder = ChunkEncoder(chain)
    first, second = encoder.chunk(b"x" * 9000), encoder.chunk(b"y" * 9000)
    expect_failure(chain, second + first + encoder.finish(), "SignatureDoesNotMatch")


def test_dropped_chunk_fails() -> None:
    chain = signed_case()[0]
    encoder = ChunkEncoder(chain)
    encoder.chunk(b"x" * 9000)
    second = encoder.chunk(b"y" * 9000)
    expect_failure(chain, second + encoder.finish(), "SignatureDoesNotMatch")


@pytest.mark.parametrize("cut", [1, 3, 30, 100, 66000, 66822])
def test_truncated_body_is_incomplete(cut: int) -> None:
    chain, body = signed_case()
    decoder = ChunkDecoder(chain)
    decoder.feed(body[:-cut])
    with pytest.raises(S3Error) as error:
        decoder.finish()
    assert error.value.code == "IncompleteBody"


def test_missing_final_chunk_is_incomplete() -> None:
    chain = signed_case()[0]
    encoder = ChunkEncoder(chain)
    decoder = ChunkDecoder(chain)
    decoder.feed(encoder.chunk(b"z" * 100))
    with pytest.raises(S3Error, match="IncompleteBody"):
        decoder.finish()


def test_missing_chunk_signature_in_signed_mode() -> None:
    chain = signed_case()[0]
    expect_failure(chain, b"5\r\nhello\r\n0\r\n\r\n", "SignatureDoesNotMatch")


def test_trailing_garbage_after_the_end() -> None:
    chain, body = signed_case()
    expect_failure(chain, body + b"x", "InvalidRequest")


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n",  # not hex
        b"5\nhello\r\n",  # bare LF
        b"5\r\nhelloXX\r\n",  # data longer than declared
        b"12345678901234567\r\n",  # more than 16 hex digits
        b"5\r\nhello\r\n0\r\nno-colon-here\r\n\r\n",
        b"1" + b"0" * 5000 + b"\r\n",  # size line too long
    ],
)
def test_malformed_unsigned_framing(body: bytes) -> None:
    decoder = ChunkDecoder(None, trailer=True)
    with pytest.raises(S3Error) as error:
        decoder.feed(body)
        decoder.finish()
    assert error.value.code in ("InvalidRequest", "IncompleteBody")


def test_signed_chunk_larger_than_the_limit_is_refused_before_buffering() -> None:
    chain = signed_case()[0]
    decoder = ChunkDecoder(chain, max_chunk_size=1024)
    with pytest.raises(S3Error, match="InvalidRequest"):
        decoder.feed(b"801;chunk-signature=" + b"0" * 64 + b"\r\n")


def test_signed_trailer_tampered_value_and_signature() -> None:
    case = EXAMPLES["aws-streaming-signed-trailer"]
    chain = verify(case).chain
    assert chain is not None
    body = example_body(case)[0]
    changed = body.replace(b"sOO8/Q==", b"sOO8/Q=A")
    expect_failure(chain, changed, "SignatureDoesNotMatch", trailer=True)
    no_signature = body[: body.rindex(b"x-amz-trailer-signature")] + b"\r\n"
    expect_failure(chain, no_signature, "SignatureDoesNotMatch", trailer=True)


def test_signed_trailer_wrong_checksum_is_bad_digest() -> None:
    case = EXAMPLES["aws-streaming-signed-trailer"]
    verified = verify(case)
    assert verified.chain is not None
    payload = b"b" * 66560  # correctly signed chunks, but the published crc32c is for "a"s
    encoder = ChunkEncoder(verified.chain)
    body = encoder.chunk(payload[:65536]) + encoder.chunk(payload[65536:])
    body += encoder.finish([("x-amz-checksum-crc32c", "sOO8/Q==")])
    reader = BodyReader(head_of(case), verified)
    assert decode_all(reader, body, 5000) == payload
    with pytest.raises(S3Error) as error:
        reader.finish()
    assert error.value.code == "BadDigest"


def test_undeclared_trailer_is_refused() -> None:
    decoder = ChunkDecoder(None, trailer=True, expected_trailers={"x-amz-checksum-crc32"})
    decoder.feed(b"1\r\na\r\n0\r\nx-amz-checksum-sha256:abc\r\n\r\n".replace(b"\r\n\r\n", b"\r\n"))
    with pytest.raises(S3Error, match="InvalidRequest"):
        decoder.feed(b"\r\n")


def test_trailers_outside_trailer_mode_are_refused() -> None:
    chain, body = signed_case()
    injected = body[:-2] + b"x-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    expect_failure(chain, injected, "InvalidRequest")


def test_final_empty_line_is_optional() -> None:
    decoder = ChunkDecoder(None, trailer=True)
    assert bytes(decoder.feed(b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:NSRBwg==\r\n")[0]) == b"abc"
    assert decoder.finish() == {"x-amz-checksum-crc32": "NSRBwg=="}


def test_strip_aws_chunked() -> None:
    assert strip_aws_chunked("aws-chunked") is None
    assert strip_aws_chunked("aws-chunked,gzip") == "gzip"
    assert strip_aws_chunked("gzip, aws-chunked") == "gzip"
    assert strip_aws_chunked(None) is None


# -- properties --------------------------------------------------------------------------------

CHAIN = SigningChain(
    "20260314T150926Z",
    "20260314/eu-west-3/s3/aws4_request",
    "0" * 64,
    signing_key("secret", "20260314", "eu-west-3"),
)


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(max_size=3000),
    chunk=st.integers(min_value=1, max_value=700),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
    signed=st.booleans(),
)
def test_random_chunking_and_splits_decode_identically(
    payload: bytes, chunk: int, cuts: list[int], signed: bool
) -> None:
    chain = CHAIN if signed else None
    encoder = ChunkEncoder(chain)
    crc = checksums.new(checksums.Algorithm.CRC32)
    crc.update(payload)
    body = b"".join(encoder.chunk(payload[i : i + chunk]) for i in range(0, len(payload), chunk))
    body += encoder.finish([("x-amz-checksum-crc32", crc.b64())])
    trailer = [("x-amz-checksum-crc32", crc.b64())]
    assert len(body) == encoded_length(len(payload), chunk, signed=signed, trailers=trailer)
    decoder = ChunkDecoder(chain, trailer=True, expected_trailers={"x-amz-checksum-crc32"})
    out = bytearray()
    previous = 0
    for cut in [*sorted(c for c in cuts if c <= len(body)), len(body)]:
        for piece in decoder.feed(body[previous:cut]):
            out += piece
        previous = cut
    assert decoder.finish() == {"x-amz-checksum-crc32": crc.b64()}
    assert bytes(out) == payload
    assert decoder.decoded_length == len(payload)


@settings(max_examples=80, deadline=None)
@given(garbage=st.binary(max_size=300), signed=st.booleans())
def test_garbage_decodes_or_raises_s3_error(garbage: bytes, signed: bool) -> None:
    decoder = ChunkDecoder(CHAIN if signed else None, trailer=not signed)
    try:
        decoder.feed(garbage)
        decoder.finish()
    except S3Error as error:
        assert error.code in ("InvalidRequest", "IncompleteBody", "SignatureDoesNotMatch")
