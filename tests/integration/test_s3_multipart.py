"""Multipart uploads through veil: parallel out-of-order parts, checksums, layout, refusals."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.integration.test_s3_support import *  # noqa: F403 (fixtures)
from tests.integration.test_s3_support import assert_ciphertext

MiB = 1024 * 1024
PART = 5 * MiB


def etag_of_parts(parts: list[bytes]) -> str:
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


def upload_parts(client: Any, bucket: str, key: str, parts: list[bytes], **create: Any) -> Any:
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, **create)
    uid = upload["UploadId"]

    def send(number: int) -> dict[str, Any]:
        r = client.upload_part(
            Bucket=bucket, Key=key, UploadId=uid, PartNumber=number, Body=parts[number - 1]
        )
        return {
            "PartNumber": number,
            "ETag": r["ETag"],
            **{k: v for k, v in r.items() if k.startswith("Checksum")},
        }

    with ThreadPoolExecutor(4) as pool:  # parallel, completing out of order
        done = list(pool.map(send, reversed(range(1, len(parts) + 1))))
    done.sort(key=lambda p: p["PartNumber"])
    return client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done}
    )


def test_parallel_parts_out_of_order(client: Any, direct: Any, bucket: str) -> None:
    parts = [os.urandom(PART), os.urandom(PART), os.urandom(123_457)]
    data = b"".join(parts)
    done = upload_parts(client, bucket, "mp", parts)
    assert done["ETag"] == etag_of_parts(parts)
    got = client.get_object(Bucket=bucket, Key="mp")
    assert got["ContentLength"] == len(data)
    assert got["ETag"] == etag_of_parts(parts)
    assert got["Body"].read() == data
    head = assert_ciphertext(direct, bucket, "mp", data, [len(p) for p in parts])
    assert head["ETag"] != done["ETag"]
    # ranges across the part boundary and parts by number
    r = client.get_object(Bucket=bucket, Key="mp", Range=f"bytes={PART - 10}-{PART + 70000}")
    assert r["Body"].read() == data[PART - 10 : PART + 70001]
    assert r["ContentRange"] == f"bytes {PART - 10}-{PART + 70000}/{len(data)}"
    r = client.get_object(Bucket=bucket, Key="mp", PartNumber=2)
    assert r["Body"].read() == parts[1]
    assert r["PartsCount"] == 3
    assert client.head_object(Bucket=bucket, Key="mp", PartNumber=3)["ContentLength"] == 123_457
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert listed[0]["Size"] == len(data)


def test_transfer_manager_with_crc32(client: Any, direct: Any, bucket: str) -> None:
    data = os.urandom(2 * PART + 1000)
    config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART)
    client.upload_fileobj(
        io.BytesIO(data), bucket, "tm", Config=config, ExtraArgs={"ChecksumAlgorithm": "CRC32"}
    )
    head = client.head_object(Bucket=bucket, Key="tm", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    assert "ChecksumCRC32" in head
    out = io.BytesIO()
    client.download_fileobj(bucket, "tm", out)
    assert out.getvalue() == data
    assert_ciphertext(direct, bucket, "tm", data, [PART, PART, 1000])


def test_full_object_crc32(client: Any, bucket: str) -> None:
    parts = [os.urandom(PART), os.urandom(4321)]
    data = b"".join(parts)
    upload = client.create_multipart_upload(
        Bucket=bucket, Key="fo", ChecksumAlgorithm="CRC32", ChecksumType="FULL_OBJECT"
    )
    done = []
    for n, p in enumerate(parts, 1):
        r = client.upload_part(
            Bucket=bucket,
            Key="fo",
            UploadId=upload["UploadId"],
            PartNumber=n,
            Body=p,
            ChecksumAlgorithm="CRC32",
        )
        done.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumCRC32": r["ChecksumCRC32"]})
    whole = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    result = client.complete_multipart_upload(
        Bucket=bucket,
        Key="fo",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": done},
        ChecksumCRC32=whole,
        ChecksumType="FULL_OBJECT",
    )
    assert result["ChecksumCRC32"] == whole
    head = client.head_object(Bucket=bucket, Key="fo", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == whole
    assert head["ChecksumType"] == "FULL_OBJECT"
    assert client.get_object(Bucket=bucket, Key="fo")["Body"].read() == data


def test_list_parts_and_abort(client: Any, direct: Any, bucket: str) -> None:
    upload = client.create_multipart_upload(Bucket=bucket, Key="lp")
    uid = upload["UploadId"]
    client.upload_part(Bucket=bucket, Key="lp", UploadId=uid, PartNumber=1, Body=b"x" * 70000)
    listed = client.list_parts(Bucket=bucket, Key="lp", UploadId=uid)
    assert listed["UploadId"] == uid
    assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [(1, 70000)]
    uploads = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [u["Key"] for u in uploads] == ["lp"]
    client.abort_multipart_upload(Bucket=bucket, Key="lp", UploadId=uid)
    assert direct.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_reupload_identical_ok_different_refused(client: Any, direct: Any, bucket: str) -> None:
    upload = client.create_multipart_upload(Bucket=bucket, Key="re")
    uid = upload["UploadId"]
    body = os.urandom(100_000)
    first = client.upload_part(Bucket=bucket, Key="re", UploadId=uid, PartNumber=1, Body=body)
    again = client.upload_part(Bucket=bucket, Key="re", UploadId=uid, PartNumber=1, Body=body)
    assert again["ETag"] == first["ETag"]
    stored = direct.list_parts(Bucket=bucket, Key="re", UploadId=uid.split("~")[1][82:])
    before = stored["Parts"][0]["ETag"]
    with pytest.raises(ClientError) as e:
        client.upload_part(
            Bucket=bucket, Key="re", UploadId=uid, PartNumber=1, Body=os.urandom(100_000)
        )
    assert e.value.response["Error"]["Code"] == "InvalidRequest"
    after = direct.list_parts(Bucket=bucket, Key="re", UploadId=uid.split("~")[1][82:])
    assert after["Parts"][0]["ETag"] == before


def test_unaligned_and_gapped_parts_refused(client: Any, bucket: str) -> None:
    upload = client.create_multipart_upload(Bucket=bucket, Key="un")
    uid = upload["UploadId"]
    etags = []
    for n, size in ((1, PART + 1), (2, 10)):
        r = client.upload_part(
            Bucket=bucket, Key="un", UploadId=uid, PartNumber=n, Body=b"a" * size
        )
        etags.append({"PartNumber": n, "ETag": r["ETag"]})
    with pytest.raises(ClientError) as e:
        client.complete_multipart_upload(
            Bucket=bucket, Key="un", UploadId=uid, MultipartUpload={"Parts": etags}
        )
    assert e.value.response["Error"]["Code"] == "InvalidPart"
    r = client.upload_part(Bucket=bucket, Key="un", UploadId=uid, PartNumber=3, Body=b"b")
    with pytest.raises(ClientError) as e:
        client.complete_multipart_upload(
            Bucket=bucket,
            Key="un",
            UploadId=uid,
            MultipartUpload={"Parts": [etags[1], {"PartNumber": 3, "ETag": r["ETag"]}]},
        )
    assert e.value.response["Error"]["Code"] == "InvalidPart"


def test_upload_part_copy_reencrypts(client: Any, direct: Any, bucket: str) -> None:
    source = os.urandom(PART + 300_000)
    client.put_object(Bucket=bucket, Key="src", Body=source)
    upload = client.create_multipart_upload(Bucket=bucket, Key="dst")
    uid = upload["UploadId"]
    a = client.upload_part_copy(
        Bucket=bucket,
        Key="dst",
        UploadId=uid,
        PartNumber=1,
        CopySource={"Bucket": bucket, "Key": "src"},
        CopySourceRange=f"bytes=0-{PART - 1}",
    )
    b = client.upload_part_copy(
        Bucket=bucket,
        Key="dst",
        UploadId=uid,
        PartNumber=2,
        CopySource={"Bucket": bucket, "Key": "src"},
        CopySourceRange=f"bytes={PART}-{len(source) - 1}",
    )
    assert a["CopyPartResult"]["ETag"] == '"' + hashlib.md5(source[:PART]).hexdigest() + '"'
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="dst",
        UploadId=uid,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": a["CopyPartResult"]["ETag"]},
                {"PartNumber": 2, "ETag": b["CopyPartResult"]["ETag"]},
            ]
        },
    )
    assert client.get_object(Bucket=bucket, Key="dst")["Body"].read() == source
    assert_ciphertext(direct, bucket, "dst", source, [PART, 300_000])


def test_complete_if_none_match(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="lock", Body=b"taken")
    upload = client.create_multipart_upload(Bucket=bucket, Key="lock")
    r = client.upload_part(
        Bucket=bucket, Key="lock", UploadId=upload["UploadId"], PartNumber=1, Body=b"mine"
    )
    with pytest.raises(ClientError) as e:
        client.complete_multipart_upload(
            Bucket=bucket,
            Key="lock",
            UploadId=upload["UploadId"],
            IfNoneMatch="*",
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r["ETag"]}]},
        )
    assert e.value.response["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=bucket, Key="lock")["Body"].read() == b"taken"
