"""SigV4 / SigV2 verification against frozen botocore vectors, stage by stage.

The vectors (tests/vectors/sigv4.json) were generated once by tests/vectors/s3_make_vectors.py
with botocore's own signers; positive and negative vectors run through the same code path
(``authenticate``). A Hypothesis test signs random keys with live botocore as a cross-check.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.s3 import sigv2, sigv4
from protocols.s3.auth import SCHEMES, authenticate
from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from protocols.s3.request import classify
from protocols.s3.verify import verify_header

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "sigv4.json").read_text())
NOW = datetime.datetime.fromisoformat(VECTORS["now"])
KEYS = {VECTORS["access_key"]: VECTORS["secret"]}


def head_of(case: dict[str, Any]) -> RequestHead:
    return RequestHead.create(case["method"], case["target"], [tuple(h) for h in case["headers"]])


def ids(cases: list[dict[str, Any]]) -> list[str]:
    return [case["name"] for case in cases]


@pytest.mark.parametrize("case", VECTORS["header"], ids=ids(VECTORS["header"]))
def test_header_vectors_each_stage(case: dict[str, Any]) -> None:
    head = head_of(case)
    authorization = head.header("authorization") or ""
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    amz_date = head.header("x-amz-date") or sigv4.format_amz_date(NOW)
    scope = f"{amz_date[:8]}/{VECTORS['region']}/s3/aws4_request"
    request = sigv4.canonical_request(
        head.method,
        sigv4.canonical_uri(head.path),
        sigv4.canonical_query(head.params),
        sigv4.canonical_headers(head.headers, signed),
        signed,
        head.header("x-amz-content-sha256") or "",
    )
    assert request == case["canonical_request"]
    sts = sigv4.string_to_sign(amz_date, scope, request)
    assert sts == case["string_to_sign"]
    key = sigv4.signing_key(VECTORS["secret"], amz_date[:8], VECTORS["region"])
    assert sigv4.signature(key, sts) == case["signature"]
    verified = authenticate(head, KEYS.get, NOW)
    assert verified.access_key_id == VECTORS["access_key"]
    assert verified.region == VECTORS["region"]


@pytest.mark.parametrize("case", VECTORS["presigned"], ids=ids(VECTORS["presigned"]))
def test_presigned_vectors_each_stage(case: dict[str, Any]) -> None:
    head = head_of(case)
    signed = (head.param("X-Amz-SignedHeaders") or "").split(";")
    request = sigv4.canonical_request(
        head.method,
        sigv4.canonical_uri(head.path),
        sigv4.canonical_query(head.params, exclude="X-Amz-Signature"),
        sigv4.canonical_headers(head.headers, signed),
        signed,
        sigv4.UNSIGNED_PAYLOAD,
    )
    assert request == case["canonical_request"]
    verified = authenticate(head, KEYS.get, NOW + datetime.timedelta(seconds=case["expires"]))
    assert verified.payload is sigv4.PayloadMode.UNSIGNED
    assert verified.kind is sigv4.AuthKind.PRESIGNED


@pytest.mark.parametrize("case", VECTORS["presigned_v2"], ids=ids(VECTORS["presigned_v2"]))
def test_presigned_v2_vectors(case: dict[str, Any]) -> None:
    head = head_of(case)
    assert sigv2.string_to_sign(head, head.param("Expires") or "") == case["string_to_sign"]
    verified = authenticate(head, KEYS.get, NOW)
    assert verified.kind is sigv4.AuthKind.PRESIGNED_V2


def test_presigned_v2_virtual_host_signs_the_path_style_resource() -> None:
    case = VECTORS["presigned_v2"][0]
    path, _, query = case["target"].partition("?")
    virtual = path.removeprefix("/veil-bucket")
    head = RequestHead.create("GET", f"{virtual}?{query}", [("Host", "veil-bucket.s3.local")])
    request = classify(head, base_domains=("s3.local",))
    assert request.virtual_host and request.bucket == "veil-bucket"
    assert authenticate(head, KEYS.get, NOW, virtual_bucket=request.bucket).access_key_id
    with pytest.raises(S3Error) as error:
        authenticate(head, KEYS.get, NOW)
    assert error.value.code == "SignatureDoesNotMatch"


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=ids(VECTORS["invalid"]))
def test_invalid_vectors(case: dict[str, Any]) -> None:
    keys = {case.get("access_key", VECTORS["access_key"]): case.get("secret", VECTORS["secret"])}
    now = datetime.datetime.fromisoformat(case["now"])
    with pytest.raises(S3Error) as error:
        authenticate(head_of(case), keys.get, now)
    assert error.value.code == case["error"]
    assert error.value.status in (400, 403)


def test_payload_modes_follow_the_header() -> None:
    modes = {}
    for case in VECTORS["header"]:
        verified = authenticate(head_of(case), KEYS.get, NOW)
        modes[verified.payload] = verified
    assert set(modes) == {
        sigv4.PayloadMode.SIGNED,
        sigv4.PayloadMode.UNSIGNED,
        sigv4.PayloadMode.STREAMING_UNSIGNED_TRAILER,
    }
    signed = modes[sigv4.PayloadMode.SIGNED]
    assert signed.content_sha256 is not None and len(signed.content_sha256) == 64
    assert modes[sigv4.PayloadMode.UNSIGNED].content_sha256 is None


def test_header_vector_body_hashes_match_the_declared_payload() -> None:
    for case in VECTORS["header"]:
        declared = head_of(case).header("x-amz-content-sha256")
        if declared and len(declared) == 64:
            body = base64.b64decode(case["body_b64"])
            assert hashlib.sha256(body).hexdigest() == declared


def test_skew_boundary_is_inclusive() -> None:
    case = VECTORS["header"][0]
    authenticate(head_of(case), KEYS.get, NOW + sigv4.MAX_SKEW)
    with pytest.raises(S3Error, match="RequestTimeTooSkewed"):
        authenticate(head_of(case), KEYS.get, NOW + sigv4.MAX_SKEW + datetime.timedelta(seconds=1))


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        authenticate(head_of(VECTORS["header"][0]), KEYS.get, NOW.replace(tzinfo=None))


def test_every_authorization_scheme_row() -> None:
    case = VECTORS["header"][0]
    expected = {"AWS4-HMAC-SHA256": None, "AWS": "InvalidRequest"}
    expected["AWS4-ECDSA-P256-SHA256"] = "NotImplemented"
    assert set(SCHEMES) == set(expected)
    for scheme, code in expected.items():
        auth = next(v for n, v in case["headers"] if n.lower() == "authorization")
        headers = [
            (n, scheme + auth[len("AWS4-HMAC-SHA256") :] if n.lower() == "authorization" else v)
            for n, v in case["headers"]
        ]
        head = RequestHead.create(case["method"], case["target"], headers)
        if code is None:
            authenticate(head, KEYS.get, NOW)
        else:
            with pytest.raises(S3Error) as error:
                authenticate(head, KEYS.get, NOW)
            assert error.value.code == code


def test_sigv4a_streaming_payload_is_not_implemented() -> None:
    with pytest.raises(S3Error) as error:
        sign_and_verify("k", payload="STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD")
    assert error.value.code == "NotImplemented"


def test_bad_payload_hash_literal_is_invalid_argument() -> None:
    with pytest.raises(S3Error) as error:
        sign_and_verify("k", payload="not-a-hash")
    assert error.value.code == "InvalidArgument"


def test_missing_content_sha256_is_invalid_request() -> None:
    with pytest.raises(S3Error) as error:
        sign_and_verify("k", payload=None)
    assert error.value.code == "InvalidRequest"


def test_repeated_headers_are_joined_in_wire_order() -> None:
    head = RequestHead.create("GET", "/", [("X-A", " 1  2 "), ("x-a", "3"), ("host", "h")])
    assert sigv4.canonical_headers(head.headers, ["host", "x-a"]) == "host:h\nx-a:1 2,3\n"


def test_raw_path_candidate_accepts_a_client_that_signed_what_it_sent() -> None:
    """A path sent with a non-canonical escape (``!`` as ``%21``) and signed verbatim."""
    credentials = sigv4.Credentials(VECTORS["access_key"], VECTORS["secret"])
    for path in ("/b/a%21b", "/b/a!b"):
        headers = [("host", "h")]
        signed = sigv4.sign("GET", path, "", headers, sigv4.EMPTY_SHA256, credentials, "r", NOW)
        head = RequestHead.create("GET", path, [*headers, *signed.headers])
        assert verify_header(head, KEYS.get, NOW).access_key_id == VECTORS["access_key"]
    # a client signing the raw form of a non-canonical path still verifies:
    key = sigv4.signing_key(VECTORS["secret"], NOW.strftime("%Y%m%d"), "r")
    amz = sigv4.format_amz_date(NOW)
    scope = f"{amz[:8]}/r/s3/aws4_request"
    headers = [("host", "h"), ("x-amz-content-sha256", sigv4.EMPTY_SHA256), ("x-amz-date", amz)]
    names = ["host", "x-amz-content-sha256", "x-amz-date"]
    request = sigv4.canonical_request(
        "GET", "/b/a%21b", "", sigv4.canonical_headers(headers, names), names, sigv4.EMPTY_SHA256
    )
    sig = sigv4.signature(key, sigv4.string_to_sign(amz, scope, request))
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={VECTORS['access_key']}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={sig}"
    )
    head = RequestHead.create("GET", "/b/a%21b", [*headers, ("authorization", authorization)])
    assert verify_header(head, KEYS.get, NOW).access_key_id


def test_sign_matches_botocore() -> None:
    credentials = sigv4.Credentials(VECTORS["access_key"], VECTORS["secret"], "token")
    path = "/bucket/" + sigv4.uri_encode("a b/ü+c", keep_slash=True)
    headers = [("Host", "up.example:9000"), ("Content-Type", "x/y"), ("User-Agent", "veil")]
    signed = sigv4.sign("PUT", path, "tagging", headers, sigv4.EMPTY_SHA256, credentials, "r", NOW)
    request = AWSRequest("PUT", f"http://up.example:9000{path}?tagging", headers=dict(headers))
    boto = BotoCredentials(credentials.access_key_id, credentials.secret_access_key, "token")
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        S3SigV4Auth(boto, "s3", "r").add_auth(request)
    ours = dict(signed.headers)
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-security-token"] == "token"


def sign_and_verify(key: str, *, payload: str | None = sigv4.EMPTY_SHA256) -> sigv4.Verified:
    credentials = sigv4.Credentials(VECTORS["access_key"], VECTORS["secret"])
    path = "/b/" + sigv4.uri_encode(key, keep_slash=True)
    headers = [("host", "h")]
    signed = sigv4.sign("PUT", path, "", headers, payload or "x", credentials, "r", NOW)
    extra = [
        (n, v) for n, v in signed.headers if payload is not None or n != "x-amz-content-sha256"
    ]
    return verify_header(RequestHead.create("PUT", path, [*headers, *extra]), KEYS.get, NOW)


keys = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(key=keys, query_value=st.text(max_size=12), header_value=st.text(max_size=12))
def test_random_keys_signed_by_botocore_verify(
    key: str, query_value: str, header_value: str
) -> None:
    boto = BotoCredentials(VECTORS["access_key"], VECTORS["secret"])
    header_value = "".join(ch for ch in header_value if ch.isprintable() and ord(ch) < 256)
    url = (
        f"http://127.0.0.1:9000/bucket/{quote(key, safe='/~')}?prefix={quote(query_value, safe='')}"
    )
    request = AWSRequest("GET", url, headers={"X-Amz-Meta-V": header_value})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        S3SigV4Auth(boto, "s3", "us-east-1").add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    headers = [("Host", parts.netloc), *prepared.headers.items()]
    head = RequestHead.create("GET", f"{parts.path}?{parts.query}", headers)
    assert authenticate(head, KEYS.get, NOW).access_key_id == VECTORS["access_key"]
    parsed = classify(head)
    assert parsed.key == key and head.param("prefix") == query_value
    presigned = AWSRequest("GET", url)
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        S3SigV4QueryAuth(boto, "s3", "us-east-1", expires=60).add_auth(presigned)
    parts = urlsplit(presigned.prepare().url)
    head = RequestHead.create("GET", f"{parts.path}?{parts.query}", [("Host", parts.netloc)])
    assert authenticate(head, KEYS.get, NOW).kind is sigv4.AuthKind.PRESIGNED
