"""Request bodies: one reader for every payload mode, checking every digest the client declared.

Theory of operation
-------------------
After :func:`protocols.s3.auth.authenticate`, the body still has to prove what the head
promised. :class:`BodyReader` takes the head and the :class:`~protocols.s3.sigv4.Verified`
result and, whatever the payload mode, offers ``feed(bytes) -> [payload pieces]`` and
``finish() -> BodyResult``:

=====================================  ==============================================
payload mode                           framing, and what is checked
=====================================  ==============================================
SIGNED (hex ``x-amz-content-sha256``)   identity; SHA-256 of the body at the end
UNSIGNED-PAYLOAD                        identity; nothing but declared digests
STREAMING-AWS4-HMAC-SHA256-PAYLOAD     aws-chunked, each chunk signature on arrival
...-PAYLOAD-TRAILER                    aws-chunked, chunk and trailer signatures
STREAMING-UNSIGNED-PAYLOAD-TRAILER     aws-chunked, trailing checksum at the end
=====================================  ==============================================

On top of the mode, in every mode: ``Content-MD5`` (``BadDigest`` on mismatch,
``InvalidDigest`` when malformed), one ``x-amz-checksum-<algorithm>`` header or the trailer
named by ``x-amz-trailer`` (``BadDigest``; more than one checksum is ``InvalidRequest``), and the
declared length (``Content-Length`` or ``x-amz-decoded-content-length``; short is
``IncompleteBody``). The MD5 of the payload is always computed, since veil answers with the
plaintext MD5 ETag.

Only the end of the body settles the whole-body digests, so, as for the chunk decoder, the
caller must withhold the last segment of what it derives until :meth:`BodyReader.finish`
returns, and abort the upstream write when anything raises.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field

from protocols.s3 import checksums
from protocols.s3.checksums import Algorithm, Checksum
from protocols.s3.chunked import MAX_CHUNK_SIZE, ChunkDecoder
from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from protocols.s3.sigv4 import PayloadMode, Verified


@dataclass(frozen=True, slots=True)
class BodyResult:
    """What a completely received, verified body was.

    Attributes:
        length: payload bytes (after aws-chunked decoding).
        md5: binary MD5 of the payload (the plaintext ETag is its hex, quoted).
        checksums: binary digests of the checksums the client declared, all verified.
        trailers: the aws-chunked trailing headers (lower-case names).
    """

    length: int
    md5: bytes
    checksums: dict[Algorithm, bytes] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)


def declared_length(head: RequestHead, verified: Verified) -> int | None:
    """The payload length the client announced, before any byte arrived.

    ``x-amz-decoded-content-length`` for aws-chunked bodies, ``Content-Length`` otherwise;
    ``None`` when the client did not say (chunked transfer without a decoded length).

    Raises:
        S3Error: ``InvalidArgument`` when the header is not a non-negative integer.
    """
    name = "x-amz-decoded-content-length" if verified.payload.streaming else "content-length"
    value = head.header(name)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise S3Error("InvalidArgument", f"Invalid {name}: {value!r}")
    return int(value)


class BodyReader:
    """Decode and verify one request body.

    Args:
        head: the request head (for the digest and length headers).
        verified: the result of authentication.
        max_chunk_size: the largest signed aws-chunked chunk held back for verification.

    Raises:
        S3Error: at construction, for malformed digest headers (``InvalidDigest``,
            ``InvalidRequest``) or an unsupported trailer.
    """

    def __init__(
        self, head: RequestHead, verified: Verified, *, max_chunk_size: int = MAX_CHUNK_SIZE
    ) -> None:
        mode = verified.payload
        self._declared = declared_length(head, verified)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256() if mode is PayloadMode.SIGNED else None
        self._expected_sha256 = verified.content_sha256
        self._content_md5 = _content_md5(head)
        self._expected: dict[Algorithm, bytes] = {}
        self._checksums: dict[Algorithm, Checksum] = {}
        self._from_trailer: dict[str, Algorithm] = {}
        self._length = 0
        for name, value in head.headers:
            algorithm = checksums.BY_HEADER.get(name)
            if algorithm is not None:
                self._expected[algorithm] = checksums.decode_b64(algorithm, value)
        trailer_names = _trailer_names(head) if mode.trailer else frozenset()
        for name in trailer_names:
            self._from_trailer[name] = checksums.BY_HEADER[name]
        algorithms = [*self._expected, *self._from_trailer.values()]
        if len(algorithms) > 1:
            raise S3Error(
                "InvalidRequest",
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not "
                "allowed.",
            )
        self._checksums = {algorithm: checksums.new(algorithm) for algorithm in algorithms}
        self._decoder = (
            ChunkDecoder(
                verified.chain,
                trailer=mode.trailer,
                expected_trailers=trailer_names,
                max_chunk_size=max_chunk_size,
            )
            if mode.streaming
            else None
        )

    @property
    def declared_length(self) -> int | None:
        """The announced payload length (see :func:`declared_length`)."""
        return self._declared

    def feed(self, data: bytes) -> list[memoryview]:
        """Take the next received bytes; return the payload pieces now released.

        Raises:
            S3Error: chunk errors (``SignatureDoesNotMatch``, ``InvalidRequest``) and
                ``IncompleteBody`` when more payload arrives than was declared.
        """
        pieces = self._decoder.feed(data) if self._decoder is not None else [memoryview(data)]
        for piece in pieces:
            self._length += len(piece)
            self._md5.update(piece)
            if self._sha256 is not None:
                self._sha256.update(piece)
            for checksum in self._checksums.values():
                checksum.update(piece)
        if self._declared is not None and self._length > self._declared:
            raise S3Error(
                "IncompleteBody", "The request body is longer than the declared content length"
            )
        return pieces

    def finish(self) -> BodyResult:
        """Declare the end of the body and check every digest.

        Returns:
            The length, MD5, verified checksums and trailers.

        Raises:
            S3Error: ``IncompleteBody``, ``XAmzContentSHA256Mismatch``, ``BadDigest``, or the
                trailer errors of :class:`~protocols.s3.chunked.ChunkDecoder`.
        """
        trailers = self._decoder.finish() if self._decoder is not None else {}
        if self._declared is not None and self._length != self._declared:
            raise S3Error("IncompleteBody")
        if self._sha256 is not None:
            computed = self._sha256.hexdigest()
            if not hmac.compare_digest(computed, self._expected_sha256 or ""):
                raise S3Error(
                    "XAmzContentSHA256Mismatch",
                    details=(
                        ("ClientComputedContentSHA256", self._expected_sha256 or ""),
                        ("S3ComputedContentSHA256", computed),
                    ),
                )
        md5 = self._md5.digest()
        if self._content_md5 is not None and not hmac.compare_digest(md5, self._content_md5):
            raise S3Error(
                "BadDigest", "The Content-MD5 you specified did not match what we received."
            )
        expected = dict(self._expected)
        for name, algorithm in self._from_trailer.items():
            expected[algorithm] = checksums.decode_b64(algorithm, trailers[name])
        digests = {algorithm: checksum.digest() for algorithm, checksum in self._checksums.items()}
        for algorithm, digest in digests.items():
            if not hmac.compare_digest(digest, expected[algorithm]):
                raise S3Error(
                    "BadDigest",
                    f"The {algorithm.value} you specified did not match the calculated checksum.",
                )
        return BodyResult(self._length, md5, digests, trailers)


def _content_md5(head: RequestHead) -> bytes | None:
    value = head.header("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
    return digest


def _trailer_names(head: RequestHead) -> frozenset[str]:
    value = head.header("x-amz-trailer") or ""
    names = frozenset(name.strip().lower() for name in value.split(",") if name.strip())
    unknown = sorted(name for name in names if name not in checksums.BY_HEADER)
    if unknown:
        raise S3Error("InvalidRequest", f"Unsupported trailing header: {', '.join(unknown)}")
    return names
