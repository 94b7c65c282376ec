"""Smoke: PUT/GET/HEAD/DELETE through veil with boto3, ciphertext upstream."""

from __future__ import annotations

import os
from typing import Any

from tests.integration.test_s3_support import *  # noqa: F403 (fixtures)
from tests.integration.test_s3_support import assert_ciphertext


def test_put_get_head_roundtrip(client: Any, direct: Any, bucket: str) -> None:
    data = os.urandom(200_000)
    put = client.put_object(
        Bucket=bucket, Key="a/b.bin", Body=data, ContentType="x/y", Metadata={"who": "me"}
    )
    import hashlib

    assert put["ETag"] == '"' + hashlib.md5(data).hexdigest() + '"'
    got = client.get_object(Bucket=bucket, Key="a/b.bin")
    assert got["Body"].read() == data
    assert got["ContentType"] == "x/y"
    assert got["Metadata"] == {"who": "me"}
    assert got["ETag"] == put["ETag"]
    head = client.head_object(Bucket=bucket, Key="a/b.bin")
    assert head["ContentLength"] == len(data)
    assert_ciphertext(direct, bucket, "a/b.bin", data)
    r = client.get_object(Bucket=bucket, Key="a/b.bin", Range="bytes=70000-140000")
    assert r["Body"].read() == data[70000:140001]
