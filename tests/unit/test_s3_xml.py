"""S3 XML: safe parsing of request bodies, namespace-preserving rewrites botocore still parses."""

from __future__ import annotations

import dataclasses

import pytest
from botocore.model import ServiceModel
from botocore.parsers import RestXMLParser
from botocore.session import get_session

from protocols.s3 import xml
from protocols.s3.checksums import Algorithm
from protocols.s3.errors import ERROR_STATUS, S3Error

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
MODEL: ServiceModel = get_session().get_service_model("s3")


def botocore_parse(operation: str, body: bytes, status: int = 200) -> dict[str, object]:
    shape = MODEL.operation_model(operation).output_shape
    response = {"body": body, "headers": {}, "status_code": status}
    parsed: dict[str, object] = RestXMLParser().parse(response, shape)
    return parsed


LIST_V2 = f"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult {NS}><Name>b</Name><Prefix></Prefix><KeyCount>2</KeyCount>
<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>
<Contents><Key>a &amp; b</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>
<ETag>&quot;c1&quot;</ETag><ChecksumAlgorithm>CRC32</ChecksumAlgorithm><Size>1000</Size>
<StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>ü</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>
<ETag>&quot;c2&quot;</ETag><Size>70</Size><StorageClass>STANDARD</StorageClass></Contents>
</ListBucketResult>""".encode()


def test_listing_sizes_and_etags_are_rewritten_and_botocore_parses_them() -> None:
    seen = []

    def plaintext(entry: xml.ListEntry) -> xml.ListEntry:
        seen.append(entry)
        return dataclasses.replace(entry, size=entry.size - 50, etag='"p"')

    out = xml.rewrite_listing(LIST_V2, plaintext)
    assert [entry.key for entry in seen] == ["a & b", "ü"]
    assert b"ns0" not in out and NS.encode() in out
    parsed = botocore_parse("ListObjectsV2", out)
    contents = parsed["Contents"]
    assert isinstance(contents, list)
    assert [(c["Key"], c["Size"], c["ETag"]) for c in contents] == [
        ("a & b", 950, '"p"'),
        ("ü", 20, '"p"'),
    ]


def test_list_parts_checksums_of_ciphertext_are_dropped() -> None:
    body = f"""<ListPartsResult {NS}><Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId>
<Part><PartNumber>1</PartNumber><ETag>"e"</ETag><ChecksumCRC32>AAAAAA==</ChecksumCRC32>
<Size>5000</Size></Part></ListPartsResult>""".encode()
    entries = []

    def keep(entry: xml.ListEntry) -> xml.ListEntry:
        entries.append(entry)
        return dataclasses.replace(entry, checksums={Algorithm.CRC32: "BBBBBB=="})

    out = xml.rewrite_listing(body, keep)
    assert entries[0].key == "k" and entries[0].part_number == 1
    parsed = botocore_parse("ListParts", out)
    parts = parsed["Parts"]
    assert isinstance(parts, list) and parts[0]["ChecksumCRC32"] == "BBBBBB=="
    assert b"AAAAAA==" not in out


def test_versions_and_url_encoded_keys() -> None:
    body = f"""<ListVersionsResult {NS}><Name>b</Name><EncodingType>url</EncodingType>
<Version><Key>a+b%2Fc</Key><VersionId>v1</VersionId><IsLatest>true</IsLatest>
<ETag>"e"</ETag><Size>10</Size></Version>
<DeleteMarker><Key>gone</Key><VersionId>v2</VersionId></DeleteMarker></ListVersionsResult>""".encode()
    keys = []
    xml.rewrite_listing(body, lambda e: keys.append((e.key, e.version_id)) or e)
    assert keys == [("a b/c", "v1")]


@pytest.mark.parametrize(
    ("root", "operation"),
    [
        ("CopyObjectResult", "CopyObject"),
        ("CompleteMultipartUploadResult", "CompleteMultipartUpload"),
    ],
)
def test_result_etag_rewrite(root: str, operation: str) -> None:
    body = f"""<?xml version="1.0" encoding="UTF-8"?><{root} {NS}><ETag>"cipher"</ETag>
<ChecksumCRC32>AAAAAA==</ChecksumCRC32></{root}>""".encode()
    out = xml.rewrite_result(body, etag='"plain"', checksums={Algorithm.CRC32C: "sOO8/Q=="})
    parsed = botocore_parse(operation, out)
    result = parsed.get("CopyObjectResult", parsed)
    assert isinstance(result, dict)
    assert result["ETag"] == '"plain"' and result["ChecksumCRC32C"] == "sOO8/Q=="
    assert "ChecksumCRC32" not in result


def test_initiate_upload_id_rewrite() -> None:
    body = f"""<InitiateMultipartUploadResult {NS}><Bucket>b</Bucket><Key>k</Key>
<UploadId>upstream</UploadId></InitiateMultipartUploadResult>""".encode()
    parsed = botocore_parse("CreateMultipartUpload", xml.rewrite_result(body, upload_id="veil.x"))
    assert parsed["UploadId"] == "veil.x"


def test_complete_multipart_parse() -> None:
    body = f"""<CompleteMultipartUpload {NS}>
<Part><PartNumber>1</PartNumber><ETag>"a"</ETag><ChecksumCRC32C>x==</ChecksumCRC32C></Part>
<Part><ETag>"b"</ETag><PartNumber>3</PartNumber></Part></CompleteMultipartUpload>""".encode()
    parts = xml.parse_complete_multipart(body)
    assert [(p.part_number, p.etag) for p in parts] == [(1, '"a"'), (3, '"b"')]
    assert parts[0].checksums == {Algorithm.CRC32C: "x=="}
    unnamespaced = (
        b"<CompleteMultipartUpload><Part><PartNumber>2</PartNumber><ETag>e</ETag></Part>"
        b"</CompleteMultipartUpload>"
    )
    assert xml.parse_complete_multipart(unnamespaced)[0].part_number == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"<CompleteMultipartUpload/>", "MalformedXML"),
        (b"<CompleteMultipartUpload><Part><PartNumber>2</PartNumber><ETag>a</ETag></Part>"
         b"<Part><PartNumber>1</PartNumber><ETag>b</ETag></Part></CompleteMultipartUpload>",
         "InvalidPartOrder"),
        (b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>a</ETag></Part>"
         b"</CompleteMultipartUpload>", "MalformedXML"),
        (b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part>"
         b"</CompleteMultipartUpload>", "MalformedXML"),
        (b"<Delete/>", "MalformedXML"),
        (b"<nope", "MalformedXML"),
        (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
         b"<CompleteMultipartUpload>&b;</CompleteMultipartUpload>", "MalformedXML"),
        (b'<!DOCTYPE x SYSTEM "file:///etc/passwd"><Delete><Object><Key>&xxe;</Key></Object>'
         b"</Delete>", "MalformedXML"),
        (b"<CompleteMultipartUpload>" + b" " * (3 << 20) + b"</CompleteMultipartUpload>",
         "MaxMessageLengthExceeded"),
    ],
)  # fmt: skip
def test_bad_bodies(body: bytes, code: str) -> None:
    with pytest.raises(S3Error) as error:
        if body.lstrip().startswith((b"<Delete", b"<!DOCTYPE x")):
            xml.parse_delete_objects(body)
        else:
            xml.parse_complete_multipart(body)
    assert error.value.code == code


def test_delete_objects_parse() -> None:
    body = f"""<Delete {NS}><Quiet>true</Quiet><Object><Key>a b</Key></Object>
<Object><Key>c</Key><VersionId>v</VersionId></Object></Delete>""".encode()
    request = xml.parse_delete_objects(body)
    assert request.quiet and request.objects == [("a b", None), ("c", "v")]
    too_many = b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>"
    with pytest.raises(S3Error, match="MalformedXML"):
        xml.parse_delete_objects(too_many)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(ERROR_STATUS))
def test_every_error_row_renders_and_botocore_reads_it(code: str) -> None:
    error = S3Error(code, details=(("Extra", "<x>"),))
    status, message = ERROR_STATUS[code]
    assert (error.status, error.message) == (status, message)
    body = error.to_xml("/b/k\x01<", "REQ1", "HOST1")
    root = xml.parse(body)
    assert [child.tag for child in root] == [
        "Code", "Message", "Extra", "Resource", "RequestId", "HostId",
    ]  # fmt: skip
    parsed = RestXMLParser().parse(
        {"body": body, "headers": {}, "status_code": status},
        MODEL.operation_model("GetObject").output_shape,
    )
    assert parsed["Error"]["Code"] == code


def test_brief_error_codes_have_s3_statuses() -> None:
    expected = {
        "AccessDenied": 403, "SignatureDoesNotMatch": 403, "InvalidAccessKeyId": 403,
        "RequestTimeTooSkewed": 403, "AuthorizationHeaderMalformed": 400,
        "AuthorizationQueryParametersError": 400, "XAmzContentSHA256Mismatch": 400,
        "BadDigest": 400, "InvalidDigest": 400, "InvalidRequest": 400, "InvalidArgument": 400,
        "InvalidPart": 400, "InvalidPartOrder": 400, "NoSuchUpload": 404, "NoSuchKey": 404,
        "NoSuchBucket": 404, "InvalidRange": 416, "MetadataTooLarge": 400,
        "EntityTooLarge": 400, "EntityTooSmall": 400, "NotImplemented": 501,
        "MethodNotAllowed": 405, "PreconditionFailed": 412, "NotModified": 304,
        "MissingContentLength": 411, "IncompleteBody": 400, "ServiceUnavailable": 503,
        "SlowDown": 503, "InternalError": 500, "MalformedXML": 400, "ExpiredToken": 400,
    }  # fmt: skip
    assert {code: S3Error(code).status for code in expected} == expected


def test_unknown_code_needs_a_status() -> None:
    with pytest.raises(ValueError):
        S3Error("NoSuchThing")
    assert S3Error("NoSuchThing", "relayed", status=409).status == 409
