"""Generate the frozen S3 vectors ONCE with botocore; the tests only read the JSON files.

    python3 tests/vectors/s3_make_vectors.py            # rewrites sigv4.json and s3_chunked.json

How they are produced (botocore 1.43, boto3 1.43):

* ``sigv4.json`` -- ``header``: requests signed by ``botocore.auth.S3SigV4Auth`` (the signer boto3
  uses for S3), with the canonical request and string to sign captured from botocore's own
  stage methods during ``add_auth``; ``presigned``: ``S3SigV4QueryAuth`` URLs; ``presigned_v2``:
  ``HmacV1QueryAuth`` (legacy SigV2) URLs with botocore's canonical string; ``invalid``: copies
  of those requests with one thing changed (header, signature, secret, clock, expiry, unsigned
  header...) and the S3 error code expected. Clocks are fixed by patching botocore's clock
  *here*, so the tests never mock time.
* ``s3_chunked.json`` -- ``aws_examples``: the two aws-chunked worked examples of the S3 API
  reference (``sigv4-streaming`` and ``sigv4-streaming-trailers``: 66560 bytes of ``a`` in
  64 KiB + 1 KiB chunks, seed/chunk/trailer signatures as published); ``captured``: raw requests
  that boto3 sent to a local HTTPS capture server (self-signed certificate, 127.0.0.1, port 0)
  for ``put_object`` with the default checksum behaviour (aws-chunked,
  ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``, CRC32 trailer) and for ``upload_fileobj`` of a
  two-part multipart upload; bodies are stored zlib-compressed and base64-encoded, and each
  request keeps the time boto3 signed it at (``now``), since boto3 reads its own clock.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import socket
import ssl
import tempfile
import threading
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.auth import HmacV1QueryAuth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

HERE = Path(__file__).resolve().parent
ACCESS_KEY = "AKIAVEILEXAMPLE00001"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYVEILKEY01"
TOKEN = "FwoGZXIvYXdzEXAMPLETOKEN//veil=="
NOW = datetime.datetime(2026, 3, 14, 15, 9, 26, tzinfo=datetime.UTC)
REGION = "eu-west-3"
ENDPOINT = "http://127.0.0.1:9000"

KEYS = [
    "plain.txt",
    "dir/sub/file name with spaces.bin",
    "plus+sign&amp=equals?question#hash",
    "unicodé/ファイル/🔑.dat",
    "percent%20literal%2Fnot-a-slash",
    "trailing/slash/",
    "/leading-slash",
    "double//slash",
    "tilde~star*paren(s)!apos'",
    "semi;colon,comma:colon@at$dollar",
]


def _fixed_clock() -> Any:
    return mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None))


class _Recording(S3SigV4Auth):
    stages: dict[str, str]

    def canonical_request(self, request: AWSRequest) -> str:
        result: str = super().canonical_request(request)
        self.stages = {"canonical_request": result}
        return result

    def string_to_sign(self, request: AWSRequest, canonical_request: str) -> str:
        result: str = super().string_to_sign(request, canonical_request)
        self.stages["string_to_sign"] = result
        return result

    def signature(self, string_to_sign: str, request: AWSRequest) -> str:
        result: str = super().signature(string_to_sign, request)
        self.stages["signature"] = result
        return result


class _RecordingQuery(S3SigV4QueryAuth, _Recording):
    pass


def _wire(request: AWSRequest) -> tuple[str, str, list[list[str]]]:
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    headers = [[name, value] for name, value in prepared.headers.items()]
    if not any(name.lower() == "host" for name, _ in headers):
        headers.insert(0, ["Host", parts.netloc])
    return prepared.method, target, headers


def _s3_config(sign_payload: bool) -> Any:
    return mock.Mock(s3={"payload_signing_enabled": sign_payload})


def header_vectors() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    variants: list[tuple[str, str, dict[str, str], bytes, dict[str, Any]]] = []
    for key in KEYS:
        variants.append(("PUT", key, {"Content-Type": "text/plain"}, b"hello veil\n", {}))
        variants.append(("GET", key, {"Range": "bytes=0-9"}, b"", {}))
    variants += [
        ("GET", "", {}, b"", {"query": "list-type=2&prefix=dir%2Fsub%20x&delimiter=%2F"}),
        ("POST", "big.bin", {}, b"", {"query": "uploads"}),
        ("PUT", "big.bin", {}, b"part", {"query": "partNumber=2&uploadId=2~abc%2Bdef"}),
        ("PUT", "k", {"X-Amz-Meta-Note": "  many    spaces\tand tab  "}, b"x", {}),
        ("PUT", "k", {"X-Amz-Copy-Source": "/src/" + quote("a b+c", safe="/~")}, b"", {}),
        ("PUT", "k", {"Date": "x"}, b"date header", {}),
        ("PUT", "k", {}, b"unsigned", {"unsigned": True}),
        ("PUT", "k", {}, b"trailer", {"trailer": True}),
        ("GET", "k", {}, b"", {"token": True}),
        (
            "PUT",
            "k",
            {"Content-MD5": base64.b64encode(hashlib.md5(b"m").digest()).decode()},
            b"m",
            {"https": True},
        ),
    ]
    for index, (method, key, headers, body, options) in enumerate(variants):
        creds = Credentials(ACCESS_KEY, SECRET, TOKEN if options.get("token") else None)
        base = "https://127.0.0.1:9443" if options.get("https") else ENDPOINT
        url = f"{base}/veil-bucket/{quote(key, safe='/~')}"
        if options.get("query"):
            url += "?" + options["query"]
        request = AWSRequest(method, url, headers=dict(headers), data=body)
        request.context["client_config"] = _s3_config(not options.get("unsigned"))
        if options.get("unsigned"):
            request.url = url.replace("http://", "https://")
            request.headers["Content-MD5"] = "XrY7u+Ae7tCTyyK7j1rNww=="
            request.context["has_streaming_input"] = True
        if options.get("trailer"):
            request.context["checksum"] = {"request_algorithm": {"in": "trailer"}}
        auth = _Recording(creds, "s3", REGION)
        with _fixed_clock():
            auth.add_auth(request)
        method_, target, wire_headers = _wire(request)
        cases.append(
            {
                "name": f"header-{index:02d}-{method}-{(options and sorted(options)) or 'plain'}",
                "method": method_,
                "target": target,
                "headers": wire_headers,
                "body_b64": base64.b64encode(body).decode(),
                **auth.stages,
            }
        )
    return cases


def presigned_vectors() -> list[dict[str, Any]]:
    cases = []
    for index, key in enumerate(KEYS):
        for method, query in (("GET", ""), ("GET", "versionId=3%2B4&response-content-type=a%2Fb")):
            url = f"{ENDPOINT}/veil-bucket/{quote(key, safe='/~')}" + (f"?{query}" if query else "")
            request = AWSRequest(method, url)
            auth = _RecordingQuery(Credentials(ACCESS_KEY, SECRET), "s3", REGION, expires=900)
            with _fixed_clock():
                auth.add_auth(request)
            method_, target, headers = _wire(request)
            cases.append(
                {
                    "name": f"presigned-{index:02d}-{method}{'-query' if query else ''}",
                    "method": method_,
                    "target": target,
                    "headers": headers,
                    "expires": 900,
                    **auth.stages,
                }
            )
    return cases


class _RecordingV1(HmacV1QueryAuth):
    string: str = ""

    def canonical_string(self, *args: Any, **kwargs: Any) -> str:
        result: str = super().canonical_string(*args, **kwargs)
        self.string = result
        return result


def presigned_v2_vectors() -> list[dict[str, Any]]:
    cases = []
    for index, key in enumerate(KEYS[:6]):
        for query in ("", "response-content-disposition=attachment%3B%20x&versionId=7"):
            path = f"/veil-bucket/{quote(key, safe='/~')}"
            url = ENDPOINT + path + (f"?{query}" if query else "")
            request = AWSRequest("GET", url)
            request.auth_path = path
            auth = _RecordingV1(Credentials(ACCESS_KEY, SECRET), expires=600)
            with mock.patch("botocore.auth.time.time", return_value=NOW.timestamp()):
                auth.add_auth(request)
            method, target, headers = _wire(request)
            cases.append(
                {
                    "name": f"presigned-v2-{index:02d}{'-query' if query else ''}",
                    "method": method,
                    "target": target,
                    "headers": headers,
                    "string_to_sign": auth.string,
                }
            )
    return cases


def _replace_header(case: dict[str, Any], name: str, value: str) -> list[list[str]]:
    return [[n, value if n.lower() == name else v] for n, v in case["headers"]]


def invalid_vectors(
    header: list[dict[str, Any]], presigned: list[dict[str, Any]], v2: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    put, get = header[0], header[1]
    signature = put["signature"]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    later = (NOW + datetime.timedelta(minutes=16)).isoformat()
    expired = (NOW + datetime.timedelta(seconds=901)).isoformat()
    out: list[dict[str, Any]] = []

    def add(name: str, base: dict[str, Any], error: str, **changes: Any) -> None:
        out.append(
            {
                "name": name,
                **{k: base[k] for k in ("method", "target", "headers")},
                "now": NOW.isoformat(),
                **changes,
                "error": error,
            }
        )

    add(
        "tampered-header",
        put,
        "SignatureDoesNotMatch",
        headers=_replace_header(put, "content-type", "text/html"),
    )
    auth_value = next(v for n, v in put["headers"] if n.lower() == "authorization")
    add(
        "tampered-signature",
        put,
        "SignatureDoesNotMatch",
        headers=_replace_header(put, "authorization", auth_value.replace(signature, flipped)),
    )
    add("wrong-secret", put, "SignatureDoesNotMatch", secret=SECRET[:-1] + "X")
    add("unknown-key", put, "InvalidAccessKeyId", access_key="AKIAUNKNOWN000000000")
    add("skewed-clock-late", put, "RequestTimeTooSkewed", now=later)
    add(
        "skewed-clock-early",
        put,
        "RequestTimeTooSkewed",
        now=(NOW - datetime.timedelta(minutes=16)).isoformat(),
    )
    add("tampered-path", get, "SignatureDoesNotMatch", target=get["target"] + "x")
    add("tampered-method", get, "SignatureDoesNotMatch", method="DELETE")
    add(
        "unsigned-amz-header",
        put,
        "AccessDenied",
        headers=[*put["headers"], ["x-amz-meta-injected", "1"]],
    )
    add(
        "tampered-payload-hash",
        put,
        "SignatureDoesNotMatch",
        headers=_replace_header(put, "x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
    )
    add(
        "malformed-authorization",
        put,
        "AuthorizationHeaderMalformed",
        headers=_replace_header(put, "authorization", "AWS4-HMAC-SHA256 Credential=x"),
    )
    add(
        "sigv2-header",
        put,
        "InvalidRequest",
        headers=_replace_header(put, "authorization", f"AWS {ACCESS_KEY}:c2lnbmF0dXJl"),
    )
    add(
        "anonymous",
        get,
        "AccessDenied",
        headers=[[n, v] for n, v in get["headers"] if n.lower() != "authorization"],
    )
    pre = presigned[0]
    add("presigned-expired", pre, "AccessDenied", now=expired)
    add(
        "presigned-not-yet-valid",
        pre,
        "AccessDenied",
        now=(NOW - datetime.timedelta(hours=1)).isoformat(),
    )
    add(
        "presigned-tampered-expiry",
        pre,
        "SignatureDoesNotMatch",
        target=pre["target"].replace("X-Amz-Expires=900", "X-Amz-Expires=9000"),
    )
    add(
        "presigned-tampered-key",
        pre,
        "SignatureDoesNotMatch",
        target=pre["target"].replace("plain.txt", "plain.tx2"),
    )
    add(
        "presigned-and-header",
        pre,
        "InvalidArgument",
        headers=[*pre["headers"], ["Authorization", auth_value]],
    )
    old = v2[0]
    add(
        "presigned-v2-expired",
        old,
        "AccessDenied",
        now=(NOW + datetime.timedelta(seconds=601)).isoformat(),
    )
    add(
        "presigned-v2-tampered",
        old,
        "SignatureDoesNotMatch",
        target=old["target"].replace("plain.txt", "plain.tx2"),
    )
    return out


# ---------------------------------------------------------------------------------------------
# captured boto3 uploads


class _Capture(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = io.BytesIO()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return raw.getvalue()
                raw.write(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _answer(self) -> None:
        body = self._read_body()
        self.requests.append(
            {
                "method": self.command,
                "target": self.path,
                "headers": [[n, v] for n, v in self.headers.items()],
                "body_zlib_b64": base64.b64encode(zlib.compress(body, 9)).decode(),
            }
        )
        reply = b""
        if "uploads" in self.path:
            reply = (
                b'<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult '
                b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>veil-bucket</Bucket>'
                b"<Key>big.bin</Key><UploadId>UPLOAD1</UploadId></InitiateMultipartUploadResult>"
            )
        elif "uploadId" in self.path and self.command == "POST":
            reply = (
                b'<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult '
                b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><ETag>"x-2"</ETag>'
                b"</CompleteMultipartUploadResult>"
            )
        self.send_response(200)
        self.send_header("ETag", '"' + hashlib.md5(body).hexdigest() + '"')
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_PUT = do_POST = _answer


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2040, 1, 1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def captured_vectors() -> list[dict[str, Any]]:
    _Capture.requests = []
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _self_signed(Path(tmp))
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.server_address[1]
        client = boto3.client(
            "s3",
            endpoint_url=f"https://127.0.0.1:{port}",
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET,
            verify=False,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )
        runs: list[tuple[str, Callable[[], object]]] = [
            (
                "put_object-default-checksum",
                lambda: client.put_object(
                    Bucket="veil-bucket", Key="small file.txt", Body=b"veil captured body " * 1000
                ),
            ),
            (
                "upload_fileobj-multipart",
                lambda: client.upload_fileobj(
                    io.BytesIO(bytes(range(256)) * (6 * 4096 + 100)),
                    "veil-bucket",
                    "big.bin",
                    Config=TransferConfig(
                        multipart_threshold=5 * 2**20,
                        multipart_chunksize=5 * 2**20,
                        use_threads=False,
                    ),
                ),
            ),
        ]
        captured = []
        for name, run in runs:
            start = len(_Capture.requests)
            run()
            for index, request in enumerate(_Capture.requests[start:]):
                # boto3's signer reads its own clock: record the time it signed at
                amz_date = next(v for n, v in request["headers"] if n.lower() == "x-amz-date")
                signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
                now = signed_at.replace(tzinfo=datetime.UTC).isoformat()
                captured.append({"name": f"{name}-{index}", "now": now, **request})
        server.shutdown()
        server.server_close()
    return captured


def main() -> None:
    socket.setdefaulttimeout(30)
    header = header_vectors()
    presigned = presigned_vectors()
    v2 = presigned_v2_vectors()
    common = {"access_key": ACCESS_KEY, "secret": SECRET, "region": REGION, "now": NOW.isoformat()}
    sigv4 = {
        "note": "generated once by tests/vectors/s3_make_vectors.py with botocore; frozen",
        **common,
        "header": header,
        "presigned": presigned,
        "presigned_v2": v2,
        "invalid": invalid_vectors(header, presigned, v2),
    }
    (HERE / "sigv4.json").write_text(json.dumps(sigv4, indent=1, ensure_ascii=False) + "\n")
    chunked = {
        "note": "AWS S3 API reference examples + boto3 requests captured by "
        "tests/vectors/s3_make_vectors.py; frozen",
        **common,
        "aws_examples": AWS_EXAMPLES,
        "captured": captured_vectors(),
    }
    (HERE / "s3_chunked.json").write_text(json.dumps(chunked, indent=1) + "\n")


# The worked examples of the S3 API reference, "Signature Calculations for the Authorization
# Header: Transferring Payload in Multiple Chunks" and "... Including Trailing Headers".
AWS_EXAMPLES = [
    {
        "name": "aws-streaming-signed",
        "access_key": "AKIAIOSFODNN7EXAMPLE",
        "secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "now": "2013-05-24T00:00:00+00:00",
        "method": "PUT",
        "target": "/examplebucket/chunkObject.txt",
        "headers": [
            ["Host", "s3.amazonaws.com"],
            ["x-amz-date", "20130524T000000Z"],
            ["x-amz-storage-class", "REDUCED_REDUNDANCY"],
            [
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/"
                "us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;"
                "x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,"
                "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
            ],
            ["x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"],
            ["Content-Encoding", "aws-chunked"],
            ["x-amz-decoded-content-length", "66560"],
            ["Content-Length", "66824"],
        ],
        "chunk_sizes": [65536, 1024],
        "fill": "a",
        "seed_signature": "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
        "chunk_signatures": [
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
        ],
        "trailers": [],
        "trailer_signature": None,
        "encoded_length": 66824,
    },
    {
        "name": "aws-streaming-signed-trailer",
        "access_key": "AKIAIOSFODNN7EXAMPLE",
        "secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "now": "2013-05-24T00:00:00+00:00",
        "method": "PUT",
        "target": "/examplebucket/chunkObject.txt",
        "headers": [
            ["Host", "s3.amazonaws.com"],
            ["x-amz-date", "20130524T000000Z"],
            ["x-amz-storage-class", "REDUCED_REDUNDANCY"],
            [
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/"
                "us-east-1/s3/aws4_request,SignedHeaders=content-encoding;host;x-amz-content-sha256;"
                "x-amz-date;x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer,"
                "Signature=106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
            ],
            ["x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"],
            ["Content-Encoding", "aws-chunked"],
            ["x-amz-decoded-content-length", "66560"],
            ["x-amz-trailer", "x-amz-checksum-crc32c"],
            ["Content-Length", "66946"],
        ],
        "chunk_sizes": [65536, 1024],
        "fill": "a",
        "seed_signature": "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
        "chunk_signatures": [
            "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
            "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
            "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
        ],
        "trailers": [["x-amz-checksum-crc32c", "sOO8/Q=="]],
        "trailer_signature": "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435",
        "encoded_length": 66946,
    },
]


if __name__ == "__main__":
    main()
