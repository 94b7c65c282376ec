"""Request classification: every table row, addressing styles, key decoding, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from protocols.s3.request import (
    HANDLED,
    OPERATION_TABLE,
    PASSTHROUGH,
    CopySource,
    Operation,
    Scope,
    classify,
    parse_copy_source,
)
from protocols.s3.sigv4 import uri_encode

PATHS = {Scope.SERVICE: "/", Scope.BUCKET: "/bkt", Scope.OBJECT: "/bkt/some/key"}
SUBRESOURCE_VALUES = {"uploadId": "u1", "list-type": "2"}


def classify_one(method: str, target: str, headers: dict[str, str] | None = None) -> Operation:
    return classify(RequestHead.create(method, target, headers or {})).op


@pytest.mark.parametrize(
    ("scope", "method"), sorted(OPERATION_TABLE, key=lambda row: (row[0].value, row[1]))
)
def test_every_table_row(scope: Scope, method: str) -> None:
    rows, default = OPERATION_TABLE[(scope, method)]
    assert classify_one(method, PATHS[scope]) is default
    for name, op in rows:
        value = SUBRESOURCE_VALUES.get(name)
        query = name if value is None else f"{name}={value}"
        if op in (Operation.UPLOAD_PART,):
            query += "&partNumber=1"
        request = classify(RequestHead.create(method, f"{PATHS[scope]}?{query}"))
        assert request.op is op, (scope, method, name)
        if op is not Operation.UNSUPPORTED:
            assert request.subresource == name


def test_every_operation_has_one_disposition() -> None:
    assert HANDLED.isdisjoint(PASSTHROUGH)
    assert HANDLED | PASSTHROUGH | {Operation.UNSUPPORTED} == set(Operation)
    reachable = {op for rows, default in OPERATION_TABLE.values() for _, op in rows} | {
        default for _, default in OPERATION_TABLE.values()
    }
    assert reachable | {Operation.COPY_OBJECT, Operation.UPLOAD_PART_COPY} == set(Operation)


@pytest.mark.parametrize(
    ("method", "target", "headers", "op"),
    [
        ("GET", "/", {}, Operation.LIST_BUCKETS),
        ("GET", "/b", {}, Operation.LIST_OBJECTS),
        ("GET", "/b/?list-type=2&prefix=a%20b", {}, Operation.LIST_OBJECTS_V2),
        ("GET", "/b?versions&key-marker=x", {}, Operation.LIST_OBJECT_VERSIONS),
        ("GET", "/b?uploads", {}, Operation.LIST_MULTIPART_UPLOADS),
        ("GET", "/b/k?partNumber=2&versionId=v", {}, Operation.GET_OBJECT),
        ("GET", "/b/k?x-id=GetObject&response-content-type=a", {}, Operation.GET_OBJECT),
        ("HEAD", "/b/k", {}, Operation.HEAD_OBJECT),
        ("PUT", "/b/k", {}, Operation.PUT_OBJECT),
        ("PUT", "/b/k", {"x-amz-copy-source": "/s/k"}, Operation.COPY_OBJECT),
        ("PUT", "/b/k?partNumber=3&uploadId=u", {}, Operation.UPLOAD_PART),
        (
            "PUT",
            "/b/k?partNumber=3&uploadId=u",
            {"x-amz-copy-source": "s/k"},
            Operation.UPLOAD_PART_COPY,
        ),
        ("POST", "/b/k?uploads", {}, Operation.CREATE_MULTIPART_UPLOAD),
        ("POST", "/b/k?uploadId=u", {}, Operation.COMPLETE_MULTIPART_UPLOAD),
        ("DELETE", "/b/k?uploadId=u", {}, Operation.ABORT_MULTIPART_UPLOAD),
        ("GET", "/b/k?uploadId=u", {}, Operation.LIST_PARTS),
        ("DELETE", "/b/k?versionId=v", {}, Operation.DELETE_OBJECT),
        ("POST", "/b?delete", {}, Operation.DELETE_OBJECTS),
        ("GET", "/b/k?attributes", {}, Operation.GET_OBJECT_ATTRIBUTES),
        ("PUT", "/b/k?tagging", {}, Operation.PUT_OBJECT_TAGGING),
        ("POST", "/b/k?restore", {}, Operation.RESTORE_OBJECT),
        ("PUT", "/b?versioning", {}, Operation.PUT_BUCKET_SUBRESOURCE),
        ("GET", "/b?location", {}, Operation.GET_BUCKET_LOCATION),
        # refused
        ("POST", "/b", {"content-type": "multipart/form-data"}, Operation.UNSUPPORTED),
        ("POST", "/b/k?select&select-type=2", {}, Operation.UNSUPPORTED),
        ("GET", "/b/k?torrent", {}, Operation.UNSUPPORTED),
        ("GET", "/b/k?unknownthing", {}, Operation.UNSUPPORTED),
        ("GET", "/b?unknownthing", {}, Operation.UNSUPPORTED),
        ("POST", "/b/k", {}, Operation.UNSUPPORTED),
        ("PATCH", "/b/k", {}, Operation.UNSUPPORTED),
        ("PUT", "/", {}, Operation.UNSUPPORTED),
    ],
)
def test_operations(method: str, target: str, headers: dict[str, str], op: Operation) -> None:
    assert classify_one(method, target, headers) is op


def test_unsupported_names_what_was_refused() -> None:
    assert "POST Object" in classify(RequestHead.create("POST", "/b")).reason
    assert "SelectObjectContent" in classify(RequestHead.create("POST", "/b/k?select")).reason
    assert "?nope" in classify(RequestHead.create("GET", "/b/k?nope")).reason


@pytest.mark.parametrize(
    ("target", "bucket", "key"),
    [
        ("/b", "b", None),
        ("/b/", "b", None),
        ("/b/a%20b", "b", "a b"),
        ("/b/a+b", "b", "a+b"),
        ("/b/a%2Bb", "b", "a+b"),
        ("/b/a%2Fb", "b", "a/b"),
        ("/b/dir/", "b", "dir/"),
        ("/b//lead", "b", "/lead"),
        ("/b/%E2%9C%93/%F0%9F%94%91", "b", "✓/🔑"),
        ("/b/100%25", "b", "100%"),
    ],
)
def test_path_style_keys(target: str, bucket: str, key: str | None) -> None:
    request = classify(RequestHead.create("GET", target))
    assert (request.bucket, request.key, request.virtual_host) == (bucket, key, False)


@pytest.mark.parametrize(
    ("host", "target", "bucket", "key", "virtual"),
    [
        ("bkt.s3.local", "/a/b", "bkt", "a/b", True),
        ("bkt.s3.local:9000", "/", "bkt", None, True),
        ("my.dotted.bucket.s3.local", "/k", "my.dotted.bucket", "k", True),
        ("s3.local:9000", "/bkt/k", "bkt", "k", False),
        ("127.0.0.1:9000", "/bkt/k", "bkt", "k", False),
        ("[::1]:9000", "/bkt/k", "bkt", "k", False),
        ("BKT.S3.LOCAL", "/k", "bkt", "k", True),
    ],
)
def test_virtual_host_addressing(
    host: str, target: str, bucket: str, key: str | None, virtual: bool
) -> None:
    head = RequestHead.create("GET", target, {"Host": host})
    request = classify(head, base_domains=("s3.local",))
    assert (request.bucket, request.key, request.virtual_host) == (bucket, key, virtual)


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/b/%FF", "InvalidURI"),
        ("/b/" + "k" * 1025, "KeyTooLongError"),
        ("/bad*bucket/k", "InvalidBucketName"),
        ("/b/k?partNumber=0&uploadId=u", "InvalidArgument"),
        ("/b/k?partNumber=x&uploadId=u", "InvalidArgument"),
        ("/b/k?uploadId=u", "InvalidArgument"),
    ],
)
def test_bad_requests(target: str, code: str) -> None:
    with pytest.raises(S3Error) as error:
        classify(RequestHead.create("PUT", target))
    assert error.value.code == code


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("src/k", CopySource("src", "k")),
        ("/src/a%20b%2Bc/d", CopySource("src", "a b+c/d")),
        ("src/k%3Fq?versionId=3%2F4", CopySource("src", "k?q", "3/4")),
    ],
)
def test_copy_source(value: str, expected: CopySource) -> None:
    assert parse_copy_source(value) == expected


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("src", "InvalidArgument"),
        ("/src/", "InvalidArgument"),
        ("arn:aws:s3:x/o", "NotImplemented"),
    ],
)
def test_bad_copy_source(value: str, code: str) -> None:
    with pytest.raises(S3Error) as error:
        parse_copy_source(value)
    assert error.value.code == code


def test_resource_for_error_documents() -> None:
    assert classify(RequestHead.create("GET", "/b/a%20b")).resource == "/b/a b"
    assert classify(RequestHead.create("GET", "/b")).resource == "/b"
    assert classify(RequestHead.create("GET", "/")).resource == "/"


@given(st.text(min_size=1, max_size=60).filter(lambda k: "\x00" not in k))
def test_any_key_round_trips_through_uri_encoding(key: str) -> None:
    target = "/bkt/" + uri_encode(key, keep_slash=True)
    assert classify(RequestHead.create("GET", target)).key == key
    virtual = RequestHead.create("GET", "/" + uri_encode(key, keep_slash=True), {"Host": "bkt.x"})
    assert classify(virtual, base_domains=("x",)).key == key
