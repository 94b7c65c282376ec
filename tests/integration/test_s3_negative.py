"""Refusals: each gets the right S3 error, and nothing is stored or changed upstream."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from protocols.s3.chunked import ChunkEncoder
from protocols.s3.sigv4 import Credentials, sign
from tests.integration.test_s3_support import *  # noqa: F403 (fixtures)
from tests.integration.test_s3_support import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    VeilThread,
    assert_nothing_stored,
    s3_client,
    start_veil,
    stored,
)
from tests.servers import MotoServer, free_port, wait_port

MiB = 1024 * 1024


def code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return str(e.value.response["Error"]["Code"])


def raw_request(
    veil: VeilThread,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes = b"",
    payload_hash: str = "UNSIGNED-PAYLOAD",
    *,
    send_body: bool = True,
    secret: str = SECRET_KEY,
) -> tuple[int, dict[str, str], bytes]:
    """Sign with SigV4 (our own signer, as a client would) and send over http.client."""
    host, port = veil.address()
    pairs = [("host", f"{host}:{port}"), *((k.lower(), v) for k, v in headers.items())]
    signed = sign(
        method,
        path,
        "",
        pairs,
        payload_hash,
        Credentials(ACCESS_KEY, secret),
        REGION,
        datetime.now(UTC),
    )
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in [*pairs, *signed.headers]:
        conn.putheader(name, value)
    conn.endheaders()
    if send_body and body:
        conn.send(body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data


def test_unsigned_wrong_signature_unknown_key(
    veil_s3: VeilThread, direct: Any, bucket: str
) -> None:
    anonymous = boto3.client(
        "s3",
        endpoint_url=veil_s3.url,
        region_name=REGION,
        config=Config(signature_version=UNSIGNED),
    )
    with pytest.raises(ClientError) as e:
        anonymous.put_object(Bucket=bucket, Key="a", Body=b"x")
    assert code(e) == "AccessDenied"
    wrong = boto3.client(
        "s3",
        endpoint_url=veil_s3.url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key="wrong",
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as e:
        wrong.put_object(Bucket=bucket, Key="a", Body=b"x")
    assert code(e) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as e:
        wrong.get_object(Bucket=bucket, Key="a")
    assert code(e) == "SignatureDoesNotMatch"
    unknown = boto3.client(
        "s3",
        endpoint_url=veil_s3.url,
        region_name=REGION,
        aws_access_key_id="nobody",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as e:
        unknown.list_objects_v2(Bucket=bucket)
    assert code(e) == "InvalidAccessKeyId"
    assert_nothing_stored(direct, bucket, "a")


def test_tampered_chunk_signature(veil_s3: VeilThread, direct: Any, bucket: str) -> None:
    data = os.urandom(200_000)
    path = f"/{bucket}/chunked"
    host, port = veil_s3.address()
    mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    headers = [
        ("host", f"{host}:{port}"),
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", str(len(data))),
    ]
    signed = sign(
        "PUT",
        path,
        "",
        headers,
        mode,
        Credentials(ACCESS_KEY, SECRET_KEY),
        REGION,
        datetime.now(UTC),
    )
    encoder = ChunkEncoder(signed.chain)
    body = b"".join(encoder.chunk(data[i : i + 65536]) for i in range(0, len(data), 65536))
    body += encoder.finish()
    for tampered in (False, True):
        payload = bytearray(body)
        if tampered:
            payload[len(payload) // 2] ^= 1  # a byte inside the second chunk's data
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.putrequest("PUT", path, skip_host=True, skip_accept_encoding=True)
        for name, value in [*headers, *signed.headers, ("content-length", str(len(payload)))]:
            conn.putheader(name, value)
        conn.endheaders()
        conn.send(bytes(payload))
        response = conn.getresponse()
        answer = response.read()
        conn.close()
        if tampered:
            assert response.status == 403 and b"SignatureDoesNotMatch" in answer
            assert_nothing_stored(direct, bucket, "chunked")
        else:
            assert response.status == 200, answer
            direct.delete_object(Bucket=bucket, Key="chunked")


def test_payload_hash_mismatch(veil_s3: VeilThread, direct: Any, bucket: str) -> None:
    status, _, answer = raw_request(
        veil_s3,
        "PUT",
        f"/{bucket}/sha",
        {"content-length": "5"},
        b"hello",
        hashlib.sha256(b"other").hexdigest(),
    )
    assert status == 400 and b"XAmzContentSHA256Mismatch" in answer
    assert_nothing_stored(direct, bucket, "sha")


@pytest.mark.parametrize("size", [1000, 9 * MiB])  # buffered, and streamed (aborted upstream)
def test_wrong_content_md5_and_checksum(client: Any, direct: Any, bucket: str, size: int) -> None:
    data = os.urandom(size)
    wrong_md5 = base64.b64encode(hashlib.md5(b"not it").digest()).decode()
    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=bucket, Key="md5", Body=data, ContentMD5=wrong_md5)
    assert code(e) == "BadDigest"
    assert_nothing_stored(direct, bucket, "md5")
    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=bucket, Key="crc", Body=data, ChecksumCRC32="AAAAAA==")
    assert code(e) == "BadDigest"
    assert_nothing_stored(direct, bucket, "crc")


def test_wrong_checksum_leaves_existing_object_alone(client: Any, direct: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="keep", Body=b"original")
    before = stored(direct, bucket, "keep")[1]
    with pytest.raises(ClientError):
        client.put_object(
            Bucket=bucket, Key="keep", Body=os.urandom(9 * MiB), ChecksumCRC32="AAAAAA=="
        )
    assert stored(direct, bucket, "keep")[1] == before
    assert client.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"original"


def test_too_large_refused_before_the_body(veil_s3: VeilThread, direct: Any, bucket: str) -> None:
    status, _, answer = raw_request(
        veil_s3,
        "PUT",
        f"/{bucket}/huge",
        {"content-length": str(6 * 1024**3), "expect": "100-continue"},
        send_body=False,
    )
    assert status == 400 and b"EntityTooLarge" in answer
    assert_nothing_stored(direct, bucket, "huge")


def _form(fields: dict[str, str], file: bytes) -> tuple[str, bytes]:
    boundary = "veilformboundary"
    out = b""
    for name, value in fields.items():
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    out += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    out += file + f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", out


def test_post_object_and_select_not_implemented(
    veil_s3: VeilThread, direct: Any, bucket: str
) -> None:
    status, _, answer = raw_request(
        veil_s3,
        "POST",
        f"/{bucket}",
        {"content-type": "multipart/form-data; boundary=x", "content-length": "0"},
    )
    assert status == 501 and b"NotImplemented" in answer and b"POST Object" in answer
    # a browser form upload as a browser sends it: the policy and its signature are form
    # fields, no Authorization header. 501 (not 403), and nothing reaches the store.
    content_type, form = _form(
        {
            "key": "posted",
            "policy": base64.b64encode(b'{"conditions": []}').decode(),
            "x-amz-algorithm": "AWS4-HMAC-SHA256",
            "x-amz-credential": f"{ACCESS_KEY}/20260101/{REGION}/s3/aws4_request",
            "x-amz-date": "20260101T000000Z",
            "x-amz-signature": "0" * 64,
        },
        b"form body bytes",
    )
    host, port = veil_s3.address()
    for path in (f"/{bucket}", f"/{bucket}/"):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("POST", path, body=form, headers={"Content-Type": content_type})
        response = conn.getresponse()
        answer = response.read()
        conn.close()
        assert response.status == 501, answer
        assert b"<Code>NotImplemented</Code>" in answer and b"POST Object" in answer
    # signed with SigV4 headers as well: the same answer
    status, _, answer = raw_request(
        veil_s3,
        "POST",
        f"/{bucket}",
        {"content-type": content_type, "content-length": str(len(form))},
        form,
    )
    assert status == 501 and b"POST Object" in answer
    assert_nothing_stored(direct, bucket, "posted")
    client = s3_client(veil_s3.url)
    with pytest.raises(ClientError) as e:
        client.select_object_content(
            Bucket=bucket,
            Key="k",
            Expression="select * from s3object",
            ExpressionType="SQL",
            InputSerialization={"CSV": {}},
            OutputSerialization={"CSV": {}},
        )
    assert code(e) == "NotImplemented"


def _metric(veil: VeilThread, name: str) -> float:
    assert veil.ctx is not None
    text = veil.ctx.metrics.render().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and 'store="s3"' in line
    )


def test_tampered_stored_segment(
    veil_s3: VeilThread, client: Any, direct: Any, bucket: str
) -> None:
    data = os.urandom(5 * 65536)
    client.put_object(Bucket=bucket, Key="t", Body=data)
    head, body = stored(direct, bucket, "t")
    before = _metric(veil_s3, "veil_decrypt_failures_total")
    for offset in (10, 3 * 65552 + 10):  # the first segment, then a later one
        tampered = bytearray(body)
        tampered[offset] ^= 0x80
        direct.put_object(Bucket=bucket, Key="t", Body=bytes(tampered), Metadata=head["Metadata"])
        if offset == 10:
            with pytest.raises(ClientError) as e:
                client.get_object(Bucket=bucket, Key="t")
            assert code(e) == "InternalError"
        else:  # the head went out with the first segments: the connection is cut, no garbage
            got = client.get_object(Bucket=bucket, Key="t")
            with pytest.raises(Exception):  # noqa: B017 - botocore's streaming error types vary
                got["Body"].read()
            r = client.get_object(Bucket=bucket, Key="t", Range="bytes=0-65535")
            assert r["Body"].read() == data[:65536]  # untouched segments still decrypt
    assert _metric(veil_s3, "veil_decrypt_failures_total") >= before + 2
    assert veil_s3.ctx is not None
    veil_s3.run(_flush(veil_s3))
    audit = Path(veil_s3.settings.audit.path).read_text().splitlines()
    events = [json.loads(line) for line in audit]
    failed = [e for e in events if e["event"] == "decrypt.failed"]
    assert failed and failed[-1]["reason"] == "tampered" and failed[-1]["count"] >= 1


async def _flush(veil: VeilThread) -> None:
    assert veil.ctx is not None
    listener = veil.ctx.listeners["s3"]
    listener.deps.failures.flush()  # type: ignore[attr-defined]


def test_stale_keyring_stops_encryption_not_decryption(
    veil_s3: VeilThread, client: Any, bucket: str
) -> None:
    client.put_object(Bucket=bucket, Key="before", Body=b"readable")
    assert veil_s3.ctx is not None
    runtime = veil_s3.ctx.runtime
    age = runtime.max_keyring_age
    runtime.max_keyring_age = -1
    try:
        with pytest.raises(ClientError) as e:
            client.put_object(Bucket=bucket, Key="after", Body=b"x")
        assert code(e) == "ServiceUnavailable" and "stale" in str(e.value)
        assert client.get_object(Bucket=bucket, Key="before")["Body"].read() == b"readable"
    finally:
        runtime.max_keyring_age = age


@pytest.fixture(scope="module")
def legacy_veil(
    tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer
) -> Iterator[VeilThread]:
    veil = start_veil(tmp_path_factory.mktemp("veil-legacy"), moto_server, legacy_plaintext="allow")
    yield veil
    veil.stop()


def test_legacy_plaintext_refused_or_allowed(
    client: Any, legacy_veil: VeilThread, direct: Any, bucket: str
) -> None:
    direct.put_object(Bucket=bucket, Key="old", Body=b"legacy bytes", ContentType="text/old")
    with pytest.raises(ClientError) as e:
        client.get_object(Bucket=bucket, Key="old")
    assert code(e) == "InvalidObjectState"
    allowing = s3_client(legacy_veil.url)
    got = allowing.get_object(Bucket=bucket, Key="old")
    assert got["Body"].read() == b"legacy bytes" and got["ContentType"] == "text/old"
    r = allowing.get_object(Bucket=bucket, Key="old", Range="bytes=7-")
    assert r["Body"].read() == b"bytes"
    # a copy of a legacy object through veil is encrypted
    allowing.copy_object(Bucket=bucket, Key="new", CopySource={"Bucket": bucket, "Key": "old"})
    assert "veil-env" in direct.head_object(Bucket=bucket, Key="new")["Metadata"]
    assert allowing.get_object(Bucket=bucket, Key="new")["Body"].read() == b"legacy bytes"
    with pytest.raises(ClientError) as e:  # another keyring (the other sidecar) cannot read it
        client.get_object(Bucket=bucket, Key="new")
    assert code(e) == "InternalError"


def test_upstream_down_then_back(tmp_path: Path, moto_server: MotoServer) -> None:
    from moto.server import ThreadedMotoServer

    port = free_port()
    upstream = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    upstream.start()
    wait_port(port)
    veil = start_veil(tmp_path, MotoServer(port, upstream))
    try:
        client = s3_client(veil.url)
        direct = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        direct.create_bucket(Bucket="outage-bucket")
        client.put_object(Bucket="outage-bucket", Key="k", Body=b"v")
        upstream.stop()
        with pytest.raises(ClientError) as e:
            client.get_object(Bucket="outage-bucket", Key="k")
        assert code(e) == "ServiceUnavailable"
        assert not veil.run(veil.ctx.listeners["s3"].ready())  # type: ignore[union-attr]
        upstream = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        upstream.start()
        wait_port(port)
        assert client.get_object(Bucket="outage-bucket", Key="k")["Body"].read() == b"v"
    finally:
        veil.stop()
        upstream.stop()


def test_presigned_tampered_query(veil_s3: VeilThread, client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="p", Body=b"x")
    url = s3_client(veil_s3.url, signature_version="s3v4").generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "p"}
    )
    parts = urllib.parse.urlsplit(url)
    host, port = veil_s3.address()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", parts.path.replace("/p", "/q") + "?" + parts.query)
    response = conn.getresponse()
    assert response.status == 403 and b"SignatureDoesNotMatch" in response.read()


def _read_until_cut(url: str, headers: dict[str, str] | None = None) -> tuple[int, int, bytes]:
    """(status, declared Content-Length, bytes received before the connection ended)."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", f"{parts.path}?{parts.query}", headers=headers or {})
    response = conn.getresponse()
    declared = int(response.getheader("content-length") or -1)
    got = bytearray()
    try:
        while chunk := response.read(65536):
            got += chunk
    except http.client.IncompleteRead as e:
        got += e.partial
    except ConnectionError:
        pass
    conn.close()
    return response.status, declared, bytes(got)


def test_tampered_segment_deep_in_a_large_object(
    veil_s3: VeilThread, client: Any, direct: Any, bucket: str
) -> None:
    """Segments past the first go out in batches (one writev per upstream chunk): a bad
    segment deep in the body still cuts the connection before any of its bytes, and what the
    client got is an exact prefix of the plaintext -- never garbage, never a full length."""
    seg, stored_seg = 65536, 65552
    data = os.urandom(48 * seg + 1234)
    client.put_object(Bucket=bucket, Key="deep", Body=data)
    head, body = stored(direct, bucket, "deep")
    bad = 40
    tampered = bytearray(body)
    tampered[bad * stored_seg + 100] ^= 0x01
    direct.put_object(Bucket=bucket, Key="deep", Body=bytes(tampered), Metadata=head["Metadata"])
    signer = s3_client(veil_s3.url, signature_version="s3v4")
    url = signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "deep"})
    before = _metric(veil_s3, "veil_decrypt_failures_total")
    status, declared, got = _read_until_cut(url)
    assert status == 200 and declared == len(data)
    assert len(got) <= bad * seg and got == data[: len(got)]
    # a range that starts before the bad segment and spans it: cut the same way
    status, declared, got = _read_until_cut(url, {"Range": f"bytes={30 * seg + 7}-"})
    assert status == 206 and declared == len(data) - 30 * seg - 7
    assert len(got) <= (bad - 30) * seg - 7 and got == data[30 * seg + 7 : 30 * seg + 7 + len(got)]
    # a range that starts in the bad segment: a proper S3 error (nothing was sent yet)
    with pytest.raises(ClientError) as e:
        client.get_object(Bucket=bucket, Key="deep", Range=f"bytes={bad * seg + 5}-")
    assert code(e) == "InternalError"
    # ranges that avoid it still decrypt, through batches of many segments
    r = client.get_object(Bucket=bucket, Key="deep", Range=f"bytes=1-{bad * seg - 1}")
    assert r["Body"].read() == data[1 : bad * seg]
    r = client.get_object(Bucket=bucket, Key="deep", Range=f"bytes={(bad + 1) * seg}-")
    assert r["Body"].read() == data[(bad + 1) * seg :]
    assert _metric(veil_s3, "veil_decrypt_failures_total") >= before + 3
    assert stored(direct, bucket, "deep")[1] == bytes(tampered)  # a read changes nothing


def test_client_going_away_mid_body(veil_s3: VeilThread, client: Any, bucket: str) -> None:
    """A client that drops the connection mid-GET: veil stops reading the upstream and keeps
    serving everyone else (repeatedly, so leaked upstream connections would show)."""
    import socket

    data = os.urandom(24 * MiB)
    client.put_object(Bucket=bucket, Key="gone", Body=data)
    signer = s3_client(veil_s3.url, signature_version="s3v4")
    url = signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "gone"})
    parts = urllib.parse.urlsplit(url)
    host, port = veil_s3.address()
    for _ in range(12):
        sock = socket.create_connection((host, port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        request = f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
        sock.sendall(request.encode())
        received = 0
        while received < 300_000:
            chunk = sock.recv(65536)
            assert chunk
            received += len(chunk)
        sock.close()  # unread data: the peer sees a reset
    assert client.get_object(Bucket=bucket, Key="gone")["Body"].read() == data
    r = client.get_object(Bucket=bucket, Key="gone", Range="bytes=-100000")
    assert r["Body"].read() == data[-100000:]


def test_missing_signature_on_reads_and_presigned(
    veil_s3: VeilThread, client: Any, direct: Any, bucket: str
) -> None:
    client.put_object(Bucket=bucket, Key="r", Body=b"secret")
    host, port = veil_s3.address()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", f"/{bucket}/r")
    response = conn.getresponse()
    assert response.status == 403 and b"<Code>AccessDenied</Code>" in response.read()
    conn.close()
    url = s3_client(veil_s3.url, signature_version="s3v4").generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "r"}
    )
    parts = urllib.parse.urlsplit(url)
    query = "&".join(q for q in parts.query.split("&") if not q.startswith("X-Amz-Signature="))
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", f"{parts.path}?{query}")
    response = conn.getresponse()
    answer = response.read()
    conn.close()
    # S3's answer to a presigned query without its signature
    assert response.status == 400 and b"secret" not in answer
    assert b"<Code>AuthorizationQueryParametersError</Code>" in answer


def test_expired_presigned_put_stores_nothing(
    veil_s3: VeilThread, direct: Any, bucket: str
) -> None:
    signer = s3_client(veil_s3.url, signature_version="s3v4")
    url = signer.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "late"}, ExpiresIn=1
    )
    time.sleep(2.1)
    request = urllib.request.Request(
        url,
        data=b"too late",
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=10)
    answer = e.value.read()
    assert e.value.code == 403 and b"<Code>AccessDenied</Code>" in answer
    assert b"expired" in answer.lower()
    assert_nothing_stored(direct, bucket, "late")


def test_wrong_content_md5_on_upload_part(client: Any, direct: Any, bucket: str) -> None:
    upload = client.create_multipart_upload(Bucket=bucket, Key="mp")
    uid = upload["UploadId"]
    body = os.urandom(6 * MiB)  # streamed: the last segment is withheld, the part aborted
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as e:
        client.upload_part(
            Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=body, ContentMD5=wrong
        )
    assert code(e) == "BadDigest"
    with pytest.raises(ClientError) as e:
        client.upload_part(
            Bucket=bucket,
            Key="mp",
            UploadId=uid,
            PartNumber=2,
            Body=body,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(b"other").digest()).decode(),
        )
    assert code(e) in ("BadDigest", "InvalidRequest")
    upstream_id = uid.split("~")[1][82:]
    assert direct.list_parts(Bucket=bucket, Key="mp", UploadId=upstream_id).get("Parts", []) == []
    client.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid)


def _chunked_put(
    veil: VeilThread, path: str, data: bytes, mode: str, tamper: str, http_chunks: int = 0
) -> tuple[int, bytes]:
    """An aws-chunked PUT of ``data`` with a CRC32 trailer, broken as ``tamper`` says; with
    ``http_chunks``, sent with ``Transfer-Encoding: chunked`` in HTTP chunks of that size (as
    SDKs streaming a body of unknown length do) instead of a ``Content-Length``."""
    import zlib

    host, port = veil.address()
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    if tamper == "trailer-checksum":
        crc = base64.b64encode((zlib.crc32(data) ^ 1).to_bytes(4, "big")).decode()
    headers = [
        ("host", f"{host}:{port}"),
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", str(len(data))),
        ("x-amz-trailer", "x-amz-checksum-crc32"),
    ]
    signed = sign(
        "PUT",
        path,
        "",
        headers,
        mode,
        Credentials(ACCESS_KEY, SECRET_KEY),
        REGION,
        datetime.now(UTC),
    )
    encoder = ChunkEncoder(signed.chain if mode.startswith("STREAMING-AWS4") else None)
    body = b"".join(encoder.chunk(data[i : i + MiB]) for i in range(0, len(data), MiB))
    end = encoder.finish([("x-amz-checksum-crc32", crc)])
    if tamper == "final-chunk-signature":  # "0;chunk-signature=<64 hex>\r\n..."
        at = end.index(b"chunk-signature=") + len(b"chunk-signature=")
        end = end[:at] + (b"0" if end[at : at + 1] != b"0" else b"1") + end[at + 1 :]
    elif tamper == "trailer-signature":
        at = end.index(b"x-amz-trailer-signature:") + len(b"x-amz-trailer-signature:")
        end = end[:at] + (b"0" if end[at : at + 1] != b"0" else b"1") + end[at + 1 :]
    payload = body + end
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.putrequest("PUT", path, skip_host=True, skip_accept_encoding=True)
    framing = (
        ("transfer-encoding", "chunked") if http_chunks else ("content-length", str(len(payload)))
    )
    for name, value in [*headers, *signed.headers, framing]:
        conn.putheader(name, value)
    conn.endheaders()
    if http_chunks:
        for i in range(0, len(payload), http_chunks):
            piece = payload[i : i + http_chunks]
            conn.send(b"%x\r\n%s" % (len(piece), piece))
            if i == 0:  # veil reads the chunk's data before the chunk's end arrives
                time.sleep(0.2)
            conn.send(b"\r\n")
        conn.send(b"0\r\n\r\n")
    else:
        conn.send(payload)
    response = conn.getresponse()
    answer = response.read()
    conn.close()
    return response.status, answer


@pytest.mark.parametrize(
    ("mode", "tamper", "status", "error"),
    [
        ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", "none", 200, b""),
        ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", "final-chunk-signature", 403, b"Signature"),
        ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", "trailer-signature", 403, b"Signature"),
        ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", "trailer-checksum", 400, b"BadDigest"),
        ("STREAMING-UNSIGNED-PAYLOAD-TRAILER", "trailer-checksum", 400, b"BadDigest"),
    ],
)
def test_streamed_body_refused_at_its_end(
    veil_s3: VeilThread,
    client: Any,
    direct: Any,
    bucket: str,
    mode: str,
    tamper: str,
    status: int,
    error: bytes,
) -> None:
    """Everything but the end of a streamed (over the buffer) body is fine: the last segment
    is withheld until the final chunk signature, trailer signature and trailing checksum
    verify, so the upstream PUT is aborted and the object already there stays as it was."""
    client.put_object(Bucket=bucket, Key="end", Body=b"previous version")
    before = stored(direct, bucket, "end")[1]
    data = os.urandom(9 * MiB + 11)
    got, answer = _chunked_put(veil_s3, f"/{bucket}/end", data, mode, tamper)
    assert got == status, answer
    if status == 200:
        assert client.get_object(Bucket=bucket, Key="end")["Body"].read() == data
        return
    assert error in answer
    assert stored(direct, bucket, "end")[1] == before
    assert client.get_object(Bucket=bucket, Key="end")["Body"].read() == b"previous version"


@pytest.mark.parametrize("http_chunks", [1000, 300_000])
def test_streamed_body_in_http_chunks_is_stored_whole(
    veil_s3: VeilThread, client: Any, direct: Any, bucket: str, http_chunks: int
) -> None:
    """``Transfer-Encoding: chunked`` under aws-chunked: every HTTP chunk boundary is only a
    boundary (aiohttp marks each with an empty read), never the end of the body."""
    data = os.urandom(3 * MiB + 5)
    got, answer = _chunked_put(
        veil_s3, f"/{bucket}/te", data, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "none", http_chunks
    )
    assert got == 200, answer
    assert client.get_object(Bucket=bucket, Key="te")["Body"].read() == data
    assert data[:64] not in stored(direct, bucket, "te")[1]
