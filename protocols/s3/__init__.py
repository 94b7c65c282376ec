"""Sans-I/O S3: request model, SigV4/SigV2 verification and signing, aws-chunked, checksums, XML.

One request through the layer (the proxy does the I/O around it)::

    head = RequestHead.create(method, raw_target, raw_headers)
    request = classify(head, base_domains=...)             # S3Request(op, bucket, key, ...)
    verified = authenticate(head, lookup, now)             # who signed, what the body owes
    reader = BodyReader(head, verified)
    for data in body: pieces = reader.feed(data)           # verified payload, zero-copy views
    result = reader.finish()                               # digests settled: release the tail

Every refusal is an :class:`S3Error` carrying its code, HTTP status and XML body. Nothing here
reads a clock, a socket or a file.
"""

from protocols.s3.auth import authenticate
from protocols.s3.body import BodyReader, BodyResult, declared_length
from protocols.s3.checksums import Algorithm, Checksum
from protocols.s3.chunked import ChunkDecoder, ChunkEncoder, strip_aws_chunked
from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from protocols.s3.ranges import ByteRange, content_range, parse_range, resolve
from protocols.s3.request import CopySource, Operation, S3Request, Scope, classify
from protocols.s3.sigv4 import (
    AuthKind,
    Credentials,
    CredentialsLookup,
    PayloadMode,
    SignedRequest,
    SigningChain,
    Verified,
    sign,
)

__all__ = [
    "Algorithm",
    "AuthKind",
    "BodyReader",
    "BodyResult",
    "ByteRange",
    "Checksum",
    "ChunkDecoder",
    "ChunkEncoder",
    "CopySource",
    "Credentials",
    "CredentialsLookup",
    "Operation",
    "PayloadMode",
    "RequestHead",
    "S3Error",
    "S3Request",
    "Scope",
    "SignedRequest",
    "SigningChain",
    "Verified",
    "authenticate",
    "classify",
    "content_range",
    "declared_length",
    "parse_range",
    "resolve",
    "sign",
    "strip_aws_chunked",
]
