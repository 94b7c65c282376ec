"""Property tests: veil answers exactly as a plaintext store does (moto, directly).

For random objects (0 B to several segments; multipart objects of several parts) and random
``Range`` headers of every form (``a-b``, ``a-``, ``-n``, past the end, malformed, several
ranges), a GET through veil and the same GET of the same plaintext stored directly in moto
must give the same status, bytes and ``Content-Range`` (multipart objects: parts by number
too, against S3's rule since moto ignores ``partNumber``); listings the same sizes. Every
object veil wrote is checked upstream to be ciphertext.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.s3.ranges import parse_range
from tests.integration.test_s3_support import *  # noqa: F403 (fixtures)
from tests.integration.test_s3_support import assert_ciphertext

SEG = 65536
PART = 80 * SEG  # 5 MiB

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def shared_bucket(direct: Any) -> str:
    name = "veil-prop-" + uuid.uuid4().hex[:12]
    direct.create_bucket(Bucket=name)
    return name


def answer(s3: Any, bucket: str, key: str, **kw: Any) -> tuple[int, bytes, str | None]:
    try:
        r = s3.get_object(Bucket=bucket, Key=key, **kw)
    except ClientError as e:
        meta = e.response["ResponseMetadata"]
        return meta["HTTPStatusCode"], b"", meta["HTTPHeaders"].get("content-range")
    return (
        r["ResponseMetadata"]["HTTPStatusCode"],
        r["Body"].read(),
        r["ResponseMetadata"]["HTTPHeaders"].get("content-range"),
    )


Answer = tuple[int, bytes, str | None]


def same(got: Answer, ref: Answer, size: int, header: str, data: bytes) -> None:
    """veil's answer equals the reference's, except where moto is not S3.

    moto differs from S3 on malformed headers (another unit, ``b < a``: S3 ignores them and
    serves the whole object, moto applies or refuses them) and on empty objects (S3 refuses
    every valid range, moto serves a suffix); there the reference is S3's rule as
    :mod:`protocols.s3.ranges` encodes it. On 416 veil also sends ``Content-Range:
    bytes */size`` as S3 does (moto does not).
    """
    if parse_range(header) is None:
        assert got == (200, data, None)
    elif size == 0:
        assert got == (416, b"", "bytes */0")
    elif ref[0] == 416:
        assert got == (416, b"", f"bytes */{size}")
    else:
        assert got == ref


def range_header(size: int) -> st.SearchStrategy[str]:
    near = st.integers(0, size + 2 * SEG)
    return st.one_of(
        st.builds(lambda a, b: f"bytes={min(a, b)}-{max(a, b)}", near, near),
        st.builds(lambda a: f"bytes={a}-", near),
        st.builds(lambda n: f"bytes=-{n}", near),
        st.sampled_from(["bytes=5-1", "bytes=abc", "items=0-1", "bytes=0-1,4-5", "bytes=-0"]),
    )


@st.composite
def object_and_range(draw: st.DrawFn) -> tuple[int, str]:
    size = draw(
        st.one_of(
            st.sampled_from([0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 3 * SEG + 17]),
            st.integers(0, 4 * SEG),
        )
    )
    return size, draw(range_header(size))


@PROPERTY
@given(case=object_and_range())
def test_single_objects_match_the_plaintext_store(
    client: Any, direct: Any, shared_bucket: str, case: tuple[int, str]
) -> None:
    size, header = case
    key = f"obj-{size}"
    data = os.urandom(size)
    client.put_object(Bucket=shared_bucket, Key=key, Body=data)
    direct.put_object(Bucket=shared_bucket, Key="ref/" + key, Body=data)
    assert_ciphertext(direct, shared_bucket, key, data)
    got = answer(client, shared_bucket, key, Range=header)
    ref = answer(direct, shared_bucket, "ref/" + key, Range=header)
    same(got, ref, size, header, data)
    whole = answer(client, shared_bucket, key)
    assert whole == (200, data, None)


LAYOUTS = {"mp2": [PART, 1000], "mp3": [PART, PART, 3 * SEG + 5]}


def part_answer(plain: bytes, sizes: list[int], number: int) -> Answer:
    """S3's answer to ``GET ?partNumber=N`` (moto ignores the parameter, so the reference is
    S3's documented behaviour on the plaintext)."""
    if number > len(sizes):
        return 416, b"", None
    first = sum(sizes[: number - 1])
    last = first + sizes[number - 1] - 1
    return 206, plain[first : last + 1], f"bytes {first}-{last}/{len(plain)}"


@pytest.fixture(scope="module")
def multipart_objects(client: Any, direct: Any, shared_bucket: str) -> dict[str, bytes]:
    found = {}
    for name, sizes in LAYOUTS.items():
        parts = [os.urandom(s) for s in sizes]
        for s3, key in ((client, name), (direct, "ref/" + name)):
            upload = s3.create_multipart_upload(Bucket=shared_bucket, Key=key)
            done = []
            for number, body in enumerate(parts, 1):
                r = s3.upload_part(
                    Bucket=shared_bucket,
                    Key=key,
                    UploadId=upload["UploadId"],
                    PartNumber=number,
                    Body=body,
                )
                done.append({"PartNumber": number, "ETag": r["ETag"]})
            s3.complete_multipart_upload(
                Bucket=shared_bucket,
                Key=key,
                UploadId=upload["UploadId"],
                MultipartUpload={"Parts": done},
            )
        found[name] = b"".join(parts)
        assert_ciphertext(direct, shared_bucket, name, found[name], sizes)
    return found


@PROPERTY
@given(data=st.data())
def test_multipart_ranges_match_the_plaintext_store(
    client: Any,
    direct: Any,
    shared_bucket: str,
    multipart_objects: dict[str, bytes],
    data: st.DataObject,
) -> None:
    name = data.draw(st.sampled_from(sorted(multipart_objects)))
    plain = multipart_objects[name]
    boundary = data.draw(st.sampled_from([PART, 2 * PART, len(plain)]))
    around = st.integers(max(0, boundary - 2 * SEG), boundary + 2 * SEG)
    header = data.draw(
        st.one_of(
            range_header(len(plain)),
            st.builds(lambda a, b: f"bytes={min(a, b)}-{max(a, b)}", around, around),
        )
    )
    number = data.draw(st.integers(1, 4))
    got = answer(client, shared_bucket, name, Range=header)
    ref = answer(direct, shared_bucket, "ref/" + name, Range=header)
    same(got, ref, len(plain), header, plain)
    # a part by number (one past the last included)
    got = answer(client, shared_bucket, name, PartNumber=number)
    assert got == part_answer(plain, LAYOUTS[name], number), (name, number)


def test_listing_sizes_match_the_plaintext_store(
    client: Any, direct: Any, shared_bucket: str, multipart_objects: dict[str, bytes]
) -> None:
    for size in (0, 5, SEG, 2 * SEG + 3):
        data = os.urandom(size)
        client.put_object(Bucket=shared_bucket, Key=f"list/{size}", Body=data)
        direct.put_object(Bucket=shared_bucket, Key=f"ref/list/{size}", Body=data)
    mine = client.list_objects_v2(Bucket=shared_bucket)["Contents"]
    theirs = direct.list_objects_v2(Bucket=shared_bucket, Prefix="ref/")["Contents"]
    sizes = {o["Key"]: o["Size"] for o in mine if not o["Key"].startswith("ref/")}
    reference = {o["Key"][4:]: o["Size"] for o in theirs}
    for key, size in sizes.items():
        assert reference[key] == size, key
    for name, plain in multipart_objects.items():
        assert sizes[name] == len(plain)
        head = client.head_object(Bucket=shared_bucket, Key=name, PartNumber=1)
        assert head["ContentLength"] == PART
