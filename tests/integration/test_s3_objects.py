"""Single objects through veil: digests, headers, conditions, copies, listings, deletes."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy.crypto.meta import USER_METADATA_BUDGET
from tests.integration.test_s3_support import *  # noqa: F403 (fixtures)
from tests.integration.test_s3_support import assert_ciphertext, assert_nothing_stored, stored

MiB = 1024 * 1024


def md5_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return str(e.value.response["Error"]["Code"])


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 65536 + 5])
def test_sizes_roundtrip(client: Any, direct: Any, bucket: str, size: int) -> None:
    data = os.urandom(size)
    put = client.put_object(Bucket=bucket, Key="k", Body=data)
    assert put["ETag"] == md5_etag(data)
    got = client.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == data
    assert got["ContentLength"] == size
    assert client.head_object(Bucket=bucket, Key="k")["ETag"] == md5_etag(data)
    assert_ciphertext(direct, bucket, "k", data)


def test_streamed_put_persists_digests_with_self_copy(
    client: Any, direct: Any, bucket: str
) -> None:
    data = os.urandom(9 * MiB)  # above s3.single_put_buffer (8 MiB): streamed
    put = client.put_object(
        Bucket=bucket,
        Key="big",
        Body=data,
        ContentType="text/x",
        Metadata={"a": "1"},
        CacheControl="max-age=5",
        ContentDisposition="inline",
        ContentLanguage="fr",
        Tagging="t=v",
        StorageClass="STANDARD_IA",
    )
    assert put["ETag"] == md5_etag(data)
    assert put["ChecksumCRC32"] == crc32_b64(data)
    head = client.head_object(Bucket=bucket, Key="big", ChecksumMode="ENABLED")
    assert head["ETag"] == md5_etag(data)
    assert head["ChecksumCRC32"] == crc32_b64(data)
    assert head["ContentType"] == "text/x"
    assert head["Metadata"] == {"a": "1"}
    assert head["CacheControl"] == "max-age=5"
    assert head["ContentDisposition"] == "inline"
    assert head["ContentLanguage"] == "fr"
    assert head["StorageClass"] == "STANDARD_IA"
    tags = client.get_object_tagging(Bucket=bucket, Key="big")["TagSet"]
    assert tags == [{"Key": "t", "Value": "v"}]
    assert client.get_object(Bucket=bucket, Key="big")["Body"].read() == data
    assert_ciphertext(direct, bucket, "big", data)


def test_checksum_mode_and_content_md5(client: Any, bucket: str) -> None:
    data = os.urandom(100_000)
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    client.put_object(Bucket=bucket, Key="k", Body=data, ContentMD5=md5, ChecksumAlgorithm="SHA256")
    head = client.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert "ChecksumSHA256" not in client.head_object(Bucket=bucket, Key="k")
    got = client.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert got["Body"].read() == data  # botocore validates the checksum while reading


def test_ranges(client: Any, bucket: str) -> None:
    data = os.urandom(200_000)
    client.put_object(Bucket=bucket, Key="r", Body=data)
    for header, first, last in [
        ("bytes=0-0", 0, 0),
        ("bytes=65530-65545", 65530, 65545),
        ("bytes=100000-", 100000, 199999),
        ("bytes=-70000", 130000, 199999),
        ("bytes=199999-500000", 199999, 199999),
    ]:
        r = client.get_object(Bucket=bucket, Key="r", Range=header)
        assert r["Body"].read() == data[first : last + 1], header
        assert r["ContentRange"] == f"bytes {first}-{last}/200000"
    with pytest.raises(ClientError) as e:
        client.get_object(Bucket=bucket, Key="r", Range="bytes=200000-")
    assert code(e) == "InvalidRange"
    assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["content-range"] == (
        "bytes */200000"
    )


def test_read_conditions_take_the_plaintext_etag(client: Any, bucket: str) -> None:
    data = b"conditional"
    etag = client.put_object(Bucket=bucket, Key="c", Body=data)["ETag"]
    assert client.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == data
    with pytest.raises(ClientError) as e:
        client.get_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert code(e) == "PreconditionFailed"
    with pytest.raises(ClientError) as e:
        client.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    future = datetime.now(UTC) + timedelta(days=1)
    with pytest.raises(ClientError) as e:
        client.head_object(Bucket=bucket, Key="c", IfModifiedSince=future)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    past = datetime.now(UTC) - timedelta(days=1)
    with pytest.raises(ClientError) as e:
        client.head_object(Bucket=bucket, Key="c", IfUnmodifiedSince=past)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    # the store's ETag (what listings show) works too
    listed = client.list_objects_v2(Bucket=bucket)["Contents"][0]["ETag"]
    assert client.head_object(Bucket=bucket, Key="c", IfMatch=listed)["ContentLength"] == 11


def test_conditional_writes(client: Any, direct: Any, bucket: str) -> None:
    first = client.put_object(Bucket=bucket, Key="lock", Body=b"one", IfNoneMatch="*")
    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=bucket, Key="lock", Body=b"two", IfNoneMatch="*")
    assert code(e) == "PreconditionFailed"
    client.put_object(Bucket=bucket, Key="lock", Body=b"three", IfMatch=first["ETag"])
    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=bucket, Key="lock", Body=b"four", IfMatch=first["ETag"])
    assert code(e) == "PreconditionFailed"
    assert client.get_object(Bucket=bucket, Key="lock")["Body"].read() == b"three"


def test_metadata_budget(client: Any, direct: Any, bucket: str) -> None:
    ok = {"m": "x" * (USER_METADATA_BUDGET - 1)}
    client.put_object(Bucket=bucket, Key="ok", Body=b"1", Metadata=ok)
    assert client.head_object(Bucket=bucket, Key="ok")["Metadata"] == ok
    with pytest.raises(ClientError) as e:
        client.put_object(
            Bucket=bucket, Key="big", Body=b"1", Metadata={"m": "x" * USER_METADATA_BUDGET}
        )
    assert code(e) == "MetadataTooLarge"
    assert_nothing_stored(direct, bucket, "big")
    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=bucket, Key="veil", Body=b"1", Metadata={"veil-env": "x"})
    assert code(e) == "InvalidArgument"


def test_copy_is_a_metadata_only_rewrap(client: Any, direct: Any, bucket: str) -> None:
    data = os.urandom(150_000)
    client.put_object(
        Bucket=bucket, Key="src", Body=data, ContentType="a/b", Metadata={"x": "1"}, Tagging="k=v"
    )
    r = client.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert r["CopyObjectResult"]["ETag"] == md5_etag(data)
    got = client.get_object(Bucket=bucket, Key="dst")
    assert got["Body"].read() == data
    assert got["ContentType"] == "a/b" and got["Metadata"] == {"x": "1"}
    assert client.get_object_tagging(Bucket=bucket, Key="dst")["TagSet"] == [
        {"Key": "k", "Value": "v"}
    ]
    src_head, src_body = stored(direct, bucket, "src")
    dst_head, dst_body = stored(direct, bucket, "dst")
    assert src_body == dst_body  # same ciphertext: only the data key wrap changed
    assert src_head["Metadata"]["veil-env"] != dst_head["Metadata"]["veil-env"]
    r = client.copy_object(
        Bucket=bucket,
        Key="dst2",
        CopySource={"Bucket": bucket, "Key": "src"},
        MetadataDirective="REPLACE",
        ContentType="c/d",
        Metadata={"y": "2"},
    )
    got = client.head_object(Bucket=bucket, Key="dst2")
    assert got["ContentType"] == "c/d" and got["Metadata"] == {"y": "2"}
    assert client.get_object(Bucket=bucket, Key="dst2")["Body"].read() == data
    with pytest.raises(ClientError) as e:
        client.copy_object(
            Bucket=bucket,
            Key="dst3",
            CopySource={"Bucket": bucket, "Key": "src"},
            CopySourceIfMatch='"nope"',
        )
    assert code(e) == "PreconditionFailed"
    client.copy_object(
        Bucket=bucket,
        Key="dst3",
        CopySource={"Bucket": bucket, "Key": "src"},
        CopySourceIfMatch=md5_etag(data),
    )


def test_copy_to_another_bucket(client: Any, direct: Any, bucket: str) -> None:
    other = bucket + "-b"
    direct.create_bucket(Bucket=other)
    data = os.urandom(70_000)
    client.put_object(Bucket=bucket, Key="a", Body=data)
    client.copy_object(Bucket=other, Key="b/c", CopySource={"Bucket": bucket, "Key": "a"})
    assert client.get_object(Bucket=other, Key="b/c")["Body"].read() == data


def test_transplanted_ciphertext_is_refused(client: Any, direct: Any, bucket: str) -> None:
    """A stored object copied to another key outside veil does not decrypt there."""
    client.put_object(Bucket=bucket, Key="a", Body=b"secret" * 100)
    direct.copy_object(Bucket=bucket, Key="b", CopySource={"Bucket": bucket, "Key": "a"})
    with pytest.raises(ClientError) as e:
        client.get_object(Bucket=bucket, Key="b")
    assert code(e) == "InternalError"


def test_listings_show_plaintext_sizes(client: Any, bucket: str) -> None:
    sizes = {"a": 0, "b": 1, "c/d": 65536, "c/e": 200_001}
    for key, size in sizes.items():
        client.put_object(Bucket=bucket, Key=key, Body=os.urandom(size))
    v2 = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert {o["Key"]: o["Size"] for o in v2} == sizes
    v1 = client.list_objects(Bucket=bucket)["Contents"]
    assert {o["Key"]: o["Size"] for o in v1} == sizes
    versions = client.list_object_versions(Bucket=bucket)["Versions"]
    assert {o["Key"]: o["Size"] for o in versions} == sizes
    delimited = client.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert delimited["CommonPrefixes"] == [{"Prefix": "c/"}]
    page = client.list_objects_v2(Bucket=bucket, MaxKeys=1, EncodingType="url")
    assert page["IsTruncated"] and page["Contents"][0]["Size"] == 0


def test_object_attributes(client: Any, bucket: str) -> None:
    data = os.urandom(1000)
    client.put_object(Bucket=bucket, Key="k", Body=data, ChecksumAlgorithm="CRC32")
    attrs = client.get_object_attributes(
        Bucket=bucket, Key="k", ObjectAttributes=["ETag", "ObjectSize", "Checksum", "StorageClass"]
    )
    assert attrs["ObjectSize"] == 1000
    assert attrs["ETag"] == hashlib.md5(data).hexdigest()
    assert attrs["Checksum"]["ChecksumCRC32"] == crc32_b64(data)


def test_deletes(client: Any, direct: Any, bucket: str) -> None:
    for key in ("a", "b", "c"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    client.delete_object(Bucket=bucket, Key="a")
    r = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "b"}, {"Key": "c"}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["b", "c"]
    assert direct.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_tagging_and_acl_pass_through(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="t", Body=b"x", ACL="public-read")
    client.put_object_tagging(
        Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}
    )
    assert client.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [
        {"Key": "a", "Value": "b"}
    ]
    grants = client.get_object_acl(Bucket=bucket, Key="t")["Grants"]
    assert any(g["Permission"] == "READ" for g in grants)
    client.delete_object_tagging(Bucket=bucket, Key="t")
    assert client.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == []
