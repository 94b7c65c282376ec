"""Real clients through veil: AWS CLI, aiobotocore, presigned URLs (V4, V2), boto3 over TLS."""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.test_s3_support import *  # noqa: F403 (fixtures)
from tests.integration.test_s3_support import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    VeilThread,
    assert_ciphertext,
    s3_client,
    start_veil,
)
from tests.servers import MotoServer

MiB = 1024 * 1024


def aws(veil: VeilThread, tmp: Path, *args: str) -> str:
    config = tmp / "aws-config"
    config.write_text(
        "[default]\nregion = us-east-1\ns3 =\n"
        "  multipart_threshold = 5MB\n  multipart_chunksize = 5MB\n"
        "  max_concurrent_requests = 4\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",  # no network: never ask an instance for anything
    }
    out = subprocess.run(
        ["aws", "--endpoint-url", veil.url, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_aws_cli_multipart_cp_copy_ls_s3api(
    veil_s3: VeilThread, client: Any, direct: Any, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(12 * MiB + 12345)  # three parts of 5 MiB (5,242,880 = 80 x 64 KiB)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    aws(veil_s3, tmp_path, "s3", "cp", str(src), f"s3://{bucket}/dir/big.bin")
    head = client.head_object(Bucket=bucket, Key="dir/big.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-3"')
    parts = [5 * MiB, 5 * MiB, len(data) - 10 * MiB]
    assert_ciphertext(direct, bucket, "dir/big.bin", data, parts)
    # server-side copy of a multipart object (the CLI copies > 5 MB with UploadPartCopy)
    aws(veil_s3, tmp_path, "s3", "cp", f"s3://{bucket}/dir/big.bin", f"s3://{bucket}/copy.bin")
    copied = client.head_object(Bucket=bucket, Key="copy.bin")
    assert copied["ContentLength"] == len(data)
    assert copied["ETag"].endswith('-3"')  # UploadPartCopy, re-encrypted part by part
    assert_ciphertext(direct, bucket, "copy.bin", data, parts)
    back = tmp_path / "back.bin"
    aws(veil_s3, tmp_path, "s3", "cp", f"s3://{bucket}/copy.bin", str(back))
    assert back.read_bytes() == data
    listing = aws(veil_s3, tmp_path, "s3", "ls", "--recursive", f"s3://{bucket}/")
    sizes = {line.split()[-1]: int(line.split()[-2]) for line in listing.splitlines()}
    assert sizes == {"dir/big.bin": len(data), "copy.bin": len(data)}
    out = aws(veil_s3, tmp_path, "s3api", "head-object", "--bucket", bucket, "--key", "copy.bin")
    assert f'"ContentLength": {len(data)}' in out
    small = tmp_path / "small.txt"
    small.write_text("hello veil\n")
    aws(
        veil_s3,
        tmp_path,
        "s3api",
        "put-object",
        "--bucket",
        bucket,
        "--key",
        "s.txt",
        "--body",
        str(small),
        "--content-type",
        "text/plain",
    )
    out = aws(
        veil_s3,
        tmp_path,
        "s3api",
        "get-object",
        "--bucket",
        bucket,
        "--key",
        "s.txt",
        str(tmp_path / "s.out"),
    )
    assert (tmp_path / "s.out").read_text() == "hello veil\n"
    assert hashlib.md5(b"hello veil\n").hexdigest() in out
    assert '"ContentType": "text/plain"' in out
    assert_ciphertext(direct, bucket, "s.txt", b"hello veil\n")
    out = aws(veil_s3, tmp_path, "s3api", "list-objects-v2", "--bucket", bucket)
    assert '"Size": 11' in out and f'"Size": {len(data)}' in out
    aws(veil_s3, tmp_path, "s3api", "delete-object", "--bucket", bucket, "--key", "s.txt")
    assert direct.list_objects_v2(Bucket=bucket, Prefix="s.txt").get("Contents", []) == []


async def test_aiobotocore(veil_s3: VeilThread, direct: Any, bucket: str) -> None:
    from aiobotocore.session import get_session

    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=veil_s3.url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as s3:
        data = os.urandom(300_000)
        await s3.put_object(Bucket=bucket, Key="aio", Body=data)
        got = await s3.get_object(Bucket=bucket, Key="aio", Range="bytes=1000-199999")
        async with got["Body"] as stream:
            assert await stream.read() == data[1000:200000]
        parts = [os.urandom(5 * MiB), os.urandom(70_001)]
        upload = await s3.create_multipart_upload(Bucket=bucket, Key="aio-mp")
        done = []
        for number, body in enumerate(parts, 1):
            r = await s3.upload_part(
                Bucket=bucket,
                Key="aio-mp",
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=body,
            )
            done.append({"PartNumber": number, "ETag": r["ETag"]})
        await s3.complete_multipart_upload(
            Bucket=bucket,
            Key="aio-mp",
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": done},
        )
        got = await s3.get_object(Bucket=bucket, Key="aio-mp")
        async with got["Body"] as stream:
            assert await stream.read() == b"".join(parts)
        listed = await s3.list_objects_v2(Bucket=bucket)
        sizes = {o["Key"]: o["Size"] for o in listed["Contents"]}
        assert sizes == {"aio": 300_000, "aio-mp": sum(map(len, parts))}
    assert_ciphertext(direct, bucket, "aio", data)
    assert_ciphertext(direct, bucket, "aio-mp", b"".join(parts), [len(p) for p in parts])


def test_boto3_default_checksums_over_http(client: Any, direct: Any, bucket: str) -> None:
    """boto3's default checksum behaviour over plain HTTP: signed payloads with a CRC32 header
    (buffered and streamed PUTs), and the transfer manager's multipart upload."""
    import io

    from boto3.s3.transfer import TransferConfig

    sent: list[dict[str, Any]] = []

    def record(request: Any, **_: Any) -> None:
        sent.append({k.lower(): v for k, v in request.headers.items()})

    client.meta.events.register("before-send.s3.PutObject", record)
    try:
        for key, size in (("small", 1000), ("streamed", 9 * MiB + 5)):
            data = os.urandom(size)
            put = client.put_object(Bucket=bucket, Key=key, Body=data)
            assert put["ETag"] == '"' + hashlib.md5(data).hexdigest() + '"'
            head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            assert head["ContentLength"] == size
            assert head.get("ChecksumCRC32") == put["ChecksumCRC32"]
            assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
            assert_ciphertext(direct, bucket, key, data)
    finally:
        client.meta.events.unregister("before-send.s3.PutObject", record)
    assert all("x-amz-checksum-crc32" in h or "x-amz-trailer" in h for h in sent), sent
    data = os.urandom(2 * 5 * MiB + 777)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    client.upload_fileobj(io.BytesIO(data), bucket, "tm-default", Config=config)
    out = io.BytesIO()
    client.download_fileobj(bucket, "tm-default", out, Config=config)
    assert out.getvalue() == data
    assert client.head_object(Bucket=bucket, Key="tm-default")["ETag"].endswith('-3"')
    assert_ciphertext(direct, bucket, "tm-default", data, [5 * MiB, 5 * MiB, 777])


def test_presigned_urls_sigv4_and_sigv2(
    veil_s3: VeilThread, client: Any, direct: Any, bucket: str
) -> None:
    client.put_object(Bucket=bucket, Key="p/q r.txt", Body=b"presigned body")
    assert_ciphertext(direct, bucket, "p/q r.txt", b"presigned body")
    client = s3_client(veil_s3.url, signature_version="s3v4")
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "p/q r.txt"}, ExpiresIn=60
    )
    assert "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read() == b"presigned body"
    v2 = s3_client(veil_s3.url, signature_version="s3")
    url = v2.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "p/q r.txt"}, ExpiresIn=60
    )
    assert "AWSAccessKeyId=" in url
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read() == b"presigned body"
    put = client.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "up"}, ExpiresIn=60
    )
    # urllib's default form Content-Type makes moto (werkzeug) swallow the body as a form
    headers = {"Content-Type": "application/octet-stream"}
    req = urllib.request.Request(put, data=b"uploaded", method="PUT", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    assert client.get_object(Bucket=bucket, Key="up")["Body"].read() == b"uploaded"
    assert_ciphertext(direct, bucket, "up", b"uploaded")
    # a larger presigned PUT (streamed, not buffered) and a ranged presigned GET
    big = os.urandom(9 * MiB + 3)
    put = client.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "up-big"}, ExpiresIn=60
    )
    req = urllib.request.Request(put, data=big, method="PUT", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
        assert r.headers["ETag"] == '"' + hashlib.md5(big).hexdigest() + '"'
    assert_ciphertext(direct, bucket, "up-big", big)
    get = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "up-big"}, ExpiresIn=60
    )
    ranged = urllib.request.Request(get, headers={"Range": "bytes=100000-5000000"})
    with urllib.request.urlopen(ranged, timeout=30) as r:
        assert r.status == 206 and r.read() == big[100000:5000001]
    expired = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "up"}, ExpiresIn=1
    )
    time.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(expired, timeout=10)
    assert e.value.code == 403 and b"AccessDenied" in e.value.read()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_veil(
    tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer
) -> Iterator[tuple[VeilThread, Path]]:
    tmp = tmp_path_factory.mktemp("veil-tls")
    cert, key = _self_signed(tmp)
    veil = start_veil(tmp, moto_server, tls_cert=str(cert), tls_key=str(key))
    yield veil, cert
    veil.stop()


def test_boto3_over_tls_uses_aws_chunked_trailers(
    tls_veil: tuple[VeilThread, Path], direct: Any, bucket: str
) -> None:
    veil, cert = tls_veil
    import boto3

    sent: list[dict[str, str]] = []
    tls = boto3.client(
        "s3",
        endpoint_url=veil.url,
        region_name=REGION,
        verify=str(cert),
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(retries={"max_attempts": 1}),
    )
    tls.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers))
    )
    data = os.urandom(9 * MiB + 7)  # streamed (over the buffer), CRC32 in an aws-chunked trailer
    put = tls.put_object(Bucket=bucket, Key="tls", Body=data)
    assert sent[0]["x-amz-content-sha256"] in (
        b"STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    )
    assert put["ETag"] == '"' + hashlib.md5(data).hexdigest() + '"'
    small = os.urandom(1000)
    tls.put_object(Bucket=bucket, Key="tls-small", Body=small)
    head = tls.head_object(Bucket=bucket, Key="tls", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == put["ChecksumCRC32"]
    assert tls.get_object(Bucket=bucket, Key="tls")["Body"].read() == data
    assert tls.get_object(Bucket=bucket, Key="tls-small")["Body"].read() == small
    assert_ciphertext(direct, bucket, "tls", data)
    context = ssl.create_default_context(cafile=str(cert))
    url = tls.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "tls-small"})
    with urllib.request.urlopen(url, context=context, timeout=10) as r:
        assert r.read() == small
