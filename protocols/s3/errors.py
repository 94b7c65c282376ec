"""S3 errors: one exception type that carries its own wire mapping.

Theory of operation
-------------------
Everything in ``protocols.s3`` that refuses a request raises :class:`S3Error`. The error knows the
S3 error *code* (``SignatureDoesNotMatch``), the HTTP *status* (403) and a human message, and it
renders S3's XML error document itself::

    <?xml version="1.0" encoding="UTF-8"?>
    <Error><Code>..</Code><Message>..</Message>[extra elements]<Resource>..</Resource>
    <RequestId>..</RequestId>[<HostId>..</HostId>]</Error>

The status is never chosen at the raise site: it comes from :data:`ERROR_STATUS`, the table of S3
error codes (from the S3 API reference, "Error responses"), so two places cannot disagree on the
status of one code. A code missing from the table is a programming error (``ValueError``), unless
the caller passes ``status=`` explicitly, which is meant for relaying an upstream error verbatim.

S3 answers an expired presigned URL and an expired session token with ``AccessDenied`` /
``Request has expired`` (403) rather than ``ExpiredToken`` (400); :data:`REQUEST_EXPIRED` is that
message so callers use the same words.

Messages never contain secrets: they may name an access key id, a header name or the canonical
request (which is a function of the request the client sent), never a secret key or a derived key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from xml.sax.saxutils import escape

REQUEST_EXPIRED = "Request has expired"

# code -> (HTTP status, S3's default message)
ERROR_STATUS: dict[str, tuple[int, str]] = {
    "AccessDenied": (403, "Access Denied"),
    "AccountProblem": (403, "There is a problem with your AWS account."),
    "AuthorizationHeaderMalformed": (400, "The authorization header is malformed."),
    "AuthorizationQueryParametersError": (
        400,
        "Error parsing the X-Amz-Credential parameter or a required query parameter is missing.",
    ),
    "BadDigest": (
        400,
        "The Content-MD5 or checksum value that you specified did not match what the server "
        "received.",
    ),
    "BucketAlreadyExists": (409, "The requested bucket name is not available."),
    "BucketAlreadyOwnedByYou": (409, "The bucket that you tried to create already exists."),
    "BucketNotEmpty": (409, "The bucket that you tried to delete is not empty."),
    "ConditionalRequestConflict": (
        409,
        "A conflicting conditional operation is currently in progress against this resource.",
    ),
    "CredentialsNotSupported": (400, "This request does not support credentials."),
    "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed object size."),
    "EntityTooSmall": (400, "Your proposed upload is smaller than the minimum allowed size."),
    "ExpiredToken": (400, "The provided token has expired."),
    "IllegalLocationConstraintException": (400, "The location constraint is not valid."),
    "IncompleteBody": (
        400,
        "You did not provide the number of bytes specified by the Content-Length HTTP header.",
    ),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "InvalidAccessKeyId": (
        403,
        "The AWS access key Id you provided does not exist in our records.",
    ),
    "InvalidArgument": (400, "Invalid Argument"),
    "InvalidBucketName": (400, "The specified bucket is not valid."),
    "InvalidBucketState": (409, "The request is not valid for the current state of the bucket."),
    "InvalidChunkSizeError": (403, "Only the last chunk is allowed to have a size less than 8192."),
    "InvalidDigest": (400, "The Content-MD5 or checksum value that you specified is not valid."),
    "InvalidObjectState": (403, "The operation is not valid for the current state of the object."),
    "InvalidPart": (
        400,
        "One or more of the specified parts could not be found. The part may not have been "
        "uploaded, or the specified entity tag may not match the part's entity tag.",
    ),
    "InvalidPartOrder": (
        400,
        "The list of parts was not in ascending order. The parts list must be specified in "
        "order by part number.",
    ),
    "InvalidRange": (416, "The requested range is not satisfiable"),
    "InvalidRequest": (400, "Invalid Request"),
    "InvalidStorageClass": (400, "The storage class you specified is not valid."),
    "InvalidTag": (400, "The tag provided was not a valid tag."),
    "InvalidToken": (400, "The provided token is malformed or otherwise invalid."),
    "InvalidURI": (400, "Couldn't parse the specified URI."),
    "KeyTooLongError": (400, "Your key is too long"),
    "MalformedXML": (
        400,
        "The XML you provided was not well-formed or did not validate against our published schema",
    ),
    "MaxMessageLengthExceeded": (400, "Your request was too big."),
    "MetadataTooLarge": (400, "Your metadata headers exceed the maximum allowed metadata size."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "MissingContentLength": (411, "You must provide the Content-Length HTTP header."),
    "MissingRequestBodyError": (400, "Request Body is empty"),
    "MissingSecurityHeader": (400, "Your request is missing a required header."),
    "NoSuchBucket": (404, "The specified bucket does not exist"),
    "NoSuchBucketPolicy": (404, "The bucket policy does not exist"),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NoSuchLifecycleConfiguration": (404, "The lifecycle configuration does not exist."),
    "NoSuchTagSet": (404, "The TagSet does not exist"),
    "NoSuchUpload": (
        404,
        "The specified upload does not exist. The upload ID may be invalid, or the upload may "
        "have been aborted or completed.",
    ),
    "NoSuchVersion": (404, "The specified version does not exist."),
    "NotImplemented": (
        501,
        "A header you provided implies functionality that is not implemented",
    ),
    "NotModified": (304, "Not Modified"),
    "OperationAborted": (
        409,
        "A conflicting conditional operation is currently in progress against this resource.",
    ),
    "PreconditionFailed": (412, "At least one of the pre-conditions you specified did not hold"),
    "RequestTimeout": (
        400,
        "Your socket connection to the server was not read from or written to within the "
        "timeout period.",
    ),
    "RequestTimeTooSkewed": (
        403,
        "The difference between the request time and the current time is too large.",
    ),
    "ServiceUnavailable": (503, "Please reduce your request rate."),
    "SignatureDoesNotMatch": (
        403,
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
    ),
    "SlowDown": (503, "Please reduce your request rate."),
    "TooManyParts": (400, "You have attempted to upload more than 10000 parts."),
    "UnexpectedContent": (400, "This request does not support content."),
    "XAmzContentSHA256Mismatch": (
        400,
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    ),
}


class S3Error(Exception):
    """An S3 error response: code, HTTP status, message and optional extra XML elements.

    Args:
        code: the S3 error code, a key of :data:`ERROR_STATUS` unless ``status`` is given.
        message: the human message; S3's default message for the code when omitted.
        status: overrides the table (only for relaying an upstream error as it came).
        details: extra ``(element, text)`` pairs rendered after ``<Message>``, as S3 does for
            e.g. ``RequestTimeTooSkewed`` (``RequestTime``, ``ServerTime``) or
            ``SignatureDoesNotMatch`` (``AWSAccessKeyId``, ``StringToSign``).

    Raises:
        ValueError: ``code`` is not in the table and no ``status`` was given.
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        status: int | None = None,
        details: Iterable[tuple[str, str]] = (),
    ) -> None:
        row = ERROR_STATUS.get(code)
        if row is None and status is None:
            raise ValueError(f"unknown S3 error code {code!r} and no status given")
        default_status, default_message = row if row is not None else (500, code)
        self.code = code
        self.status = status if status is not None else default_status
        self.message = message if message is not None else default_message
        self.details = tuple(details)
        super().__init__(f"{code}: {self.message}")

    def to_xml(self, resource: str, request_id: str, host_id: str | None = None) -> bytes:
        """Render S3's XML error document.

        Args:
            resource: the bucket or object the request addressed (``/bucket/key``).
            request_id: the request id also sent as ``x-amz-request-id``.
            host_id: optional ``x-amz-id-2`` value.

        Returns:
            The UTF-8 document, with an XML declaration, ready to be the response body.
        """
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>',
            _element("Code", self.code),
            _element("Message", self.message),
        ]
        parts.extend(_element(name, text) for name, text in self.details)
        parts.append(_element("Resource", resource))
        parts.append(_element("RequestId", request_id))
        if host_id is not None:
            parts.append(_element("HostId", host_id))
        parts.append("</Error>")
        return "".join(parts).encode("utf-8")


# characters XML 1.0 cannot carry at all, even escaped (a key may contain them)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _element(name: str, text: str) -> str:
    return f"<{name}>{escape(_NOT_XML.sub(chr(0xFFFD), text))}</{name}>"
