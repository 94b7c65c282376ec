"""The S3 proxy's pure parts: operation table, upload ids, metadata views, headers, conditions."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from protocols.s3.checksums import Algorithm
from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from protocols.s3.request import HANDLED, PASSTHROUGH, Operation
from proxy.crypto import meta
from proxy.crypto.objects import SEGMENT, Layout, stored_size
from proxy.s3 import handlers
from proxy.s3.conditions import check_read
from proxy.s3.headers import check_metadata_pairs, client_headers, object_headers
from proxy.s3.info import COMPOSITE, layout_record, multipart_etag_record, stored_object
from proxy.s3.multipart import PREFIX, compose_upload_id, parse_upload_id
from proxy.s3.upstream import Target, error_of

HEADER = bytes.fromhex("c1f556") + bytes([0x03]) + b"\x00" * 4 + bytes([1, 0, 7, 0]) + b"\x00" * 80


def test_every_operation_has_a_row() -> None:
    assert set(handlers.HANDLERS) == set(Operation)
    for op in PASSTHROUGH:
        assert handlers.HANDLERS[op] is handlers.passthrough
    # handled operations that forward as is once verified: their bodies carry no object data
    forwarded = {Operation.DELETE_OBJECTS, Operation.LIST_MULTIPART_UPLOADS}
    for op in HANDLED - forwarded:
        assert handlers.HANDLERS[op] is not handlers.passthrough, op
    assert handlers.HANDLERS[Operation.UNSUPPORTED] is handlers.not_implemented


@pytest.mark.parametrize("algorithm", [None, Algorithm.CRC32, Algorithm.SHA256])
def test_upload_id_roundtrip(algorithm: Algorithm | None) -> None:
    token = os.urandom(60)
    upstream = "2~xYz.upstream-ID_with~odd.chars"
    value = compose_upload_id(upstream, token, algorithm, 3)
    assert value.startswith(PREFIX)
    parsed = parse_upload_id(value)
    assert (parsed.upstream, parsed.token, parsed.algorithm, parsed.flags) == (
        upstream,
        token,
        algorithm,
        3,
    )
    assert parse_upload_id(upstream).token is None  # a bare (listed) id: the store's own
    with pytest.raises(S3Error):
        parse_upload_id("")
    with pytest.raises(S3Error):
        parse_upload_id(PREFIX + "9" + "0" + "A" * 80 + "x")


def _object(digests: dict[str, bytes], stored: int, etag: str = '"abc-2"') -> object:
    headers = [
        ("content-length", str(stored)),
        ("etag", etag),
        ("x-amz-meta-veil-env", meta.encode(HEADER[:11] + bytes([1]) + HEADER[12:], digests)),
    ]
    return stored_object(headers)


def test_layout_record_roundtrip_and_views() -> None:
    layout = Layout.uniform(80 * SEGMENT, 2 * 80 * SEGMENT + 1234)
    record = layout_record(layout)
    assert record is not None
    md5s = [hashlib.md5(b"a").digest(), hashlib.md5(b"b").digest(), hashlib.md5(b"c").digest()]
    combined = hashlib.md5(b"".join(md5s)).hexdigest()
    digests = {
        "layout": record,
        "etag-mp": multipart_etag_record(combined, 3),
        "crc32": b"\x01\x02\x03\x04",
        "checksum-type": bytes([COMPOSITE]),
    }
    obj = _object(digests, layout.stored_size)
    assert obj.recorded_layout() == layout  # type: ignore[attr-defined]
    assert obj.client_etag == f'"{combined}-3"'  # type: ignore[attr-defined]
    assert obj.etag_matches(f'"{combined}-3"') and obj.etag_matches("abc-2")  # type: ignore[attr-defined]
    assert not obj.etag_matches('"other"')  # type: ignore[attr-defined]
    shown = dict(obj.checksums())  # type: ignore[attr-defined]
    assert shown["x-amz-checksum-crc32"] == base64.b64encode(b"\x01\x02\x03\x04").decode() + "-3"
    assert shown["x-amz-checksum-type"] == "COMPOSITE"


def test_layout_records_only_what_they_can_describe() -> None:
    assert layout_record(Layout(((1, 100),))) is not None  # one part of any size
    assert layout_record(Layout(((1, SEGMENT), (3, 10)))) is None  # a gap
    assert layout_record(Layout(((1, SEGMENT + 1), (2, 10)))) is None  # unaligned
    assert layout_record(Layout(((1, SEGMENT), (2, 2 * SEGMENT)))) is None  # last is larger
    assert layout_record(Layout(((1, 2 * SEGMENT), (2, SEGMENT), (3, 5)))) is None  # not uniform


def test_stored_size_from_content_range() -> None:
    obj = stored_object([("content-length", "10"), ("content-range", "bytes 0-9/70000")])
    assert obj.stored_size == 70000 and obj.envelope is None


def test_metadata_budget_and_reserved_names() -> None:
    check_metadata_pairs([("x-amz-meta-a", "x" * (meta.USER_METADATA_BUDGET - 1))])
    with pytest.raises(S3Error) as e:
        check_metadata_pairs([("x-amz-meta-a", "x" * meta.USER_METADATA_BUDGET)])
    assert e.value.code == "MetadataTooLarge"
    with pytest.raises(S3Error) as e:
        check_metadata_pairs([("x-amz-meta-veil-env", "x")])
    assert e.value.code == "InvalidArgument"


def test_header_tables() -> None:
    sent = object_headers(
        [
            ("content-encoding", "aws-chunked,gzip"),
            ("content-md5", "x"),
            ("x-amz-checksum-crc32", "x"),
            ("x-amz-meta-k", "v"),
            ("x-amz-storage-class", "STANDARD_IA"),
            ("authorization", "x"),
        ]
    )
    assert sent == [
        ("content-encoding", "gzip"),
        ("x-amz-meta-k", "v"),
        ("x-amz-storage-class", "STANDARD_IA"),
    ]
    shown = client_headers(
        [
            ("etag", "x"),
            ("content-length", "1"),
            ("x-amz-checksum-crc32", "x"),
            ("x-amz-meta-veil-env", "x"),
            ("content-type", "a/b"),
            ("x-amz-meta-k", "v"),
        ]
    )
    assert shown == [("content-type", "a/b"), ("x-amz-meta-k", "v")]


def test_read_conditions_order() -> None:
    obj = stored_object([("etag", '"s"'), ("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT")])

    def head(**headers: str) -> RequestHead:
        return RequestHead.create(
            "GET", "/b/k", {k.replace("_", "-"): v for k, v in headers.items()}
        )

    check_read(head(if_match='"s"', if_unmodified_since="Tue, 01 Jan 2019 00:00:00 GMT"), obj)
    with pytest.raises(S3Error) as e:
        check_read(head(if_match='"t"'), obj)
    assert e.value.status == 412
    with pytest.raises(S3Error) as e:
        check_read(head(if_none_match="*"), obj)
    assert e.value.status == 304
    check_read(head(if_none_match='"t"', if_modified_since="Thu, 01 Jan 2026 00:00:00 GMT"), obj)
    with pytest.raises(S3Error) as e:
        check_read(head(if_modified_since="Thu, 01 Jan 2026 00:00:00 GMT"), obj)
    assert e.value.status == 304


def test_target_encoding_and_upstream_errors() -> None:
    target = Target("b", "a b/c+d~é", (("uploadId", "x/y"), ("uploads", None)))
    assert target.path == "/b/a%20b/c%2Bd~%C3%A9"
    assert target.query_string == "uploadId=x%2Fy&uploads"
    body = b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>"
    error = error_of(404, body)
    assert (error.code, error.status, error.message) == ("NoSuchKey", 404, "gone")
    assert error_of(404, b"", "HEAD").code == "NoSuchKey"
    assert error_of(503, b"").code == "ServiceUnavailable"
    assert error_of(418, b"<Error><Code>Teapot</Code></Error>").status == 418


def test_sizes_stay_consistent_with_the_crypto_layer() -> None:
    for size in (0, 1, SEGMENT, SEGMENT + 1):
        assert stored_size(size) >= size + 16


@pytest.mark.parametrize("condition", [None, "x-amz-copy-source-if-match", "if-none-match"])
async def test_a_copy_whose_source_moved_runs_again_unless_the_client_set_a_condition(
    condition: str | None,
) -> None:
    """veil pins a copy's source to the ETag it read; when the store refuses that pin (the
    source was rewritten meanwhile -- by a client or by the migration), the copy runs again,
    unless the 412 may be the client's own."""
    from types import SimpleNamespace

    headers = (("host", "x"),) if condition is None else (("host", "x"), (condition, '"e"'))
    call = SimpleNamespace(head=RequestHead("PUT", "/b/k", headers=headers))
    runs: list[int] = []

    async def copy(call: object) -> str:
        runs.append(1)
        if len(runs) < 3:
            raise S3Error("PreconditionFailed")
        return "copied"

    run = handlers.retry_moved_source(copy)  # type: ignore[arg-type]
    if condition is None:
        assert await run(call) == "copied" and len(runs) == 3  # type: ignore[arg-type]
    else:
        with pytest.raises(S3Error):
            await run(call)  # type: ignore[arg-type]
        assert len(runs) == 1
