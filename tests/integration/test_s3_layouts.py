"""Layouts learned from the store, versioned buckets, and the opt-in listing and part modes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy.crypto import meta
from tests.integration.test_s3_support import *  # noqa: F403 (fixtures)
from tests.integration.test_s3_support import VeilThread, s3_client, start_veil
from tests.servers import MotoServer

MiB = 1024 * 1024
PART = 5 * MiB


def multipart(client: Any, bucket: str, key: str, sizes: list[int]) -> bytes:
    parts = [os.urandom(s) for s in sizes]
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    done = []
    for n, body in enumerate(parts, 1):
        r = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=n, Body=body
        )
        done.append({"PartNumber": n, "ETag": r["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )
    return b"".join(parts)


def drop_records(direct: Any, bucket: str, key: str, *names: str) -> None:
    """Rewrite veil-env upstream without some records (what a lost self-copy leaves)."""
    head = direct.head_object(Bucket=bucket, Key=key)
    header, digests = meta.decode(head["Metadata"]["veil-env"])
    kept = {k: v for k, v in digests.items() if k not in names}
    direct.copy_object(
        Bucket=bucket,
        Key=key,
        CopySource={"Bucket": bucket, "Key": key},
        MetadataDirective="REPLACE",
        Metadata={**head["Metadata"], "veil-env": meta.encode(header, kept)},
    )


def test_layout_learned_when_not_recorded(
    client: Any, direct: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def lost(*args: Any, **kwargs: Any) -> None:
        return None  # the post-Complete self-copy lost a race (or the object is > 5 GiB)

    monkeypatch.setattr("proxy.s3.complete.persist_metadata", lost)
    data = multipart(client, bucket, "mp", [PART, PART, 777])
    monkeypatch.undo()
    _, digests = meta.decode(direct.head_object(Bucket=bucket, Key="mp")["Metadata"]["veil-env"])
    assert "layout" not in digests and "etag-mp" not in digests
    head = client.head_object(Bucket=bucket, Key="mp")
    assert head["ContentLength"] == len(data)  # sizes need no layout
    assert head["ETag"] == direct.head_object(Bucket=bucket, Key="mp")["ETag"]  # the store's
    r = client.get_object(Bucket=bucket, Key="mp", Range=f"bytes={2 * PART - 5}-{2 * PART + 5}")
    assert r["Body"].read() == data[2 * PART - 5 : 2 * PART + 6]
    assert client.get_object(Bucket=bucket, Key="mp", PartNumber=3)["Body"].read() == data[-777:]
    # a copy of it records the learned layout, so the copy needs no HEAD ?partNumber
    client.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "mp"})
    _, digests = meta.decode(direct.head_object(Bucket=bucket, Key="copy")["Metadata"]["veil-env"])
    assert "layout" in digests
    assert client.get_object(Bucket=bucket, Key="copy")["Body"].read() == data


def test_versioned_bucket(client: Any, direct: Any, bucket: str) -> None:
    direct.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    one = client.put_object(Bucket=bucket, Key="v", Body=b"first")
    two = client.put_object(Bucket=bucket, Key="v", Body=b"second!")
    assert one["VersionId"] != two["VersionId"]
    old = client.get_object(Bucket=bucket, Key="v", VersionId=one["VersionId"])
    assert old["Body"].read() == b"first"
    assert client.get_object(Bucket=bucket, Key="v")["Body"].read() == b"second!"
    versions = client.list_object_versions(Bucket=bucket, Prefix="v")["Versions"]
    assert sorted(v["Size"] for v in versions) == [5, 7]
    client.delete_object(Bucket=bucket, Key="v")
    with pytest.raises(ClientError):
        client.get_object(Bucket=bucket, Key="v")
    markers = client.list_object_versions(Bucket=bucket, Prefix="v")["DeleteMarkers"]
    assert len(markers) == 1


def test_delete_if_match_takes_the_plaintext_etag(client: Any, bucket: str) -> None:
    etag = client.put_object(Bucket=bucket, Key="d", Body=b"x")["ETag"]
    with pytest.raises(ClientError) as e:
        client.delete_object(Bucket=bucket, Key="d", IfMatch='"ffff"')
    assert e.value.response["Error"]["Code"] == "PreconditionFailed"
    client.delete_object(Bucket=bucket, Key="d", IfMatch=etag)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_object_attributes_of_multipart(client: Any, bucket: str) -> None:
    data = multipart(client, bucket, "mp", [PART, 10])
    attrs = client.get_object_attributes(
        Bucket=bucket, Key="mp", ObjectAttributes=["ETag", "ObjectSize", "ObjectParts"]
    )
    assert attrs["ObjectSize"] == len(data)
    assert attrs["ObjectParts"]["TotalPartsCount"] == 2
    assert attrs["ETag"].endswith("-2")


@pytest.fixture(scope="module")
def opt_in_veil(
    tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer
) -> Iterator[VeilThread]:
    veil = start_veil(
        tmp_path_factory.mktemp("veil-opt-in"),
        moto_server,
        list_plaintext_etags=True,
        allow_unaligned_parts=True,
    )
    yield veil
    veil.stop()


def test_plaintext_etags_and_unaligned_parts(opt_in_veil: VeilThread, bucket: str) -> None:
    client = s3_client(opt_in_veil.url)
    small = os.urandom(1234)
    client.put_object(Bucket=bucket, Key="a", Body=small)
    data = multipart(client, bucket, "un", [PART + 1, 3000])  # not a 64 KiB multiple
    listed = {o["Key"]: o for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed["a"]["ETag"] == '"' + hashlib.md5(small).hexdigest() + '"'
    assert listed["un"]["Size"] == len(data)  # exact, through the learned layout
    assert client.get_object(Bucket=bucket, Key="un")["Body"].read() == data
    r = client.get_object(Bucket=bucket, Key="un", Range=f"bytes={PART - 3}-{PART + 3}")
    assert r["Body"].read() == data[PART - 3 : PART + 4]


def test_part_count_from_the_store(client: Any, direct: Any, bucket: str) -> None:
    """No record and no ``-N`` ETag: the part count comes from ``HEAD ?partNumber=1``."""
    data = multipart(client, bucket, "mp", [PART, 4000])
    drop_records(direct, bucket, "mp", "layout", "etag-mp")
    r = client.get_object(Bucket=bucket, Key="mp", Range=f"bytes={PART - 1}-{PART}")
    assert r["Body"].read() == data[PART - 1 : PART + 1]
