"""Bodies in motion: client body -> verified plaintext -> ciphertext segments, and back.

Theory of operation
-------------------
**Uploads** (:class:`SealedUpload`). The client's body goes through
:class:`protocols.s3.body.BodyReader` (aws-chunked decoding, chunk signatures, SHA-256,
Content-MD5, checksums; always MD5) and then :class:`proxy.crypto.objects.PartEncryptor`, whose
``feed`` releases only segments known not to be last. :meth:`SealedUpload.stream` is the async
iterator the upstream request sends: it yields every released segment, then -- only after
``BodyReader.finish()`` has verified every digest -- the last one. When anything fails (a
digest mismatch, a bad chunk signature, a short body, a client that went away) the iterator
raises instead, the upstream request is aborted mid-body, and the store keeps nothing; the
error the client gets is the one recorded in :attr:`SealedUpload.error`. At most one segment
plus one received chunk is held: memory does not grow with the body.

A re-upload check hook (``last_check``) sees the complete ciphertext MD5 before the last
segment is released (used to refuse a different body for a part number already stored).

**Downloads** (:func:`relay_plaintext`). Stored bytes of the needed segments go through
:class:`proxy.crypto.objects.RangeDecryptor`, which only ever returns authenticated plaintext.
The response head is sent only once the first segment has decrypted, so an object that is
tampered at its start gets a proper S3 error; a failure later, after the head went out, aborts
the client connection (its ``Content-Length`` then tells it the body is incomplete): never a
byte of garbage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from protocols.s3.body import BodyReader, BodyResult
from protocols.s3.errors import S3Error
from proxy.crypto.objects import DataKey, PartEncryptor, RangeDecryptor
from proxy.errors import VeilError
from proxy.s3.body_takeover import upstream_chunks
from proxy.s3.context import Call
from proxy.s3.headers import is_checksum_header

log = logging.getLogger("veil.s3")

LastCheck = Callable[[bytes], None]  # gets the ciphertext MD5; raises to refuse


async def client_chunks(request: web.BaseRequest) -> AsyncIterator[bytes]:
    """The raw request body as received; a broken connection ends it (the reader then
    reports ``IncompleteBody``)."""
    content = request.content
    while True:
        try:
            chunk, chunk_end = await content.readchunk()  # one received chunk, never joined
        except (aiohttp.ClientError, ConnectionError):
            return
        if chunk:
            yield chunk
        elif not chunk_end or content.at_eof():
            # (b"", True) mid-body only marks the end of an HTTP chunk; at the end of the body
            # aiohttp's empty reader answers (b"", True) forever after its first (b"", False)
            return


class SealedUpload:
    """One client body, verified and encrypted on the fly for one upstream PUT.

    Args:
        call: the client request (head, verification, body stream).
        dk: the object's (or upload's) data key.
        part: the part number in the nonces (0 for a single PUT).
        reader: the body reader, when the caller built it (to read the declared length).
        last_check: called with the ciphertext MD5 before the last segment is released.
    """

    def __init__(
        self,
        call: Call,
        dk: DataKey,
        part: int,
        *,
        reader: BodyReader | None = None,
        last_check: LastCheck | None = None,
    ) -> None:
        self._call = call
        self.reader = reader or BodyReader(call.head, call.verified)
        self._encryptor = PartEncryptor(dk, part)
        self._last_check = last_check
        self._md5 = hashlib.md5(usedforsecurity=False) if last_check is not None else None
        self.result: BodyResult | None = None
        self.error: S3Error | None = None

    async def stream(self) -> AsyncIterator[bytes]:
        """The ciphertext, last segment withheld until every digest verified."""
        try:
            async for chunk in client_chunks(self._call.request):
                for piece in self.reader.feed(chunk):
                    for segment in self._encryptor.feed(piece):
                        if self._md5 is not None:
                            self._md5.update(segment)
                        yield segment
            self.result = self.reader.finish()
            last = self._encryptor.finish()
            if self._md5 is not None and self._last_check is not None:
                self._md5.update(last)
                self._last_check(self._md5.digest())
        except S3Error as e:
            self.error = e
            raise
        except VeilError as e:  # pragma: no cover - defensive: crypto layer refusal
            self.error = S3Error("InternalError", f"veil: {e.message}")
            raise
        yield last

    async def drain(self) -> bytes:
        """Consume the whole body without uploading it; returns the ciphertext MD5."""
        md5 = hashlib.md5(usedforsecurity=False)
        hook, self._last_check = self._last_check, None
        self._md5 = None
        async for segment in self.stream():
            md5.update(segment)
        digest = md5.digest()
        if hook is not None:
            hook(digest)
        return digest


async def read_whole(call: Call, reader: BodyReader, limit: int) -> tuple[bytearray, BodyResult]:
    """Buffer a whole (small) body, verified. Raises S3Error (digests, length over ``limit``)."""
    data = bytearray()
    async for chunk in client_chunks(call.request):
        for piece in reader.feed(chunk):
            data += piece
        if len(data) > limit:
            raise S3Error("MaxMessageLengthExceeded", "veil: request body too large")
    return data, reader.finish()


async def read_small_body(
    call: Call, limit: int = 8 * 1024 * 1024, *, object_checksums: bool = False
) -> tuple[bytes, BodyResult]:
    """A verified small request body (XML documents), whatever the payload mode.

    Args:
        object_checksums: the request's ``x-amz-checksum-*`` headers describe the *object*
            (CompleteMultipartUpload), not this body, so they are not checked against it.
    """
    head = call.head
    if object_checksums:
        kept = tuple((n, v) for n, v in head.headers if not is_checksum_header(n))
        head = dataclasses.replace(head, headers=kept)
    data, result = await read_whole(call, BodyReader(head, call.verified), limit)
    return bytes(data), result


class DecryptFailure(Exception):
    """A segment failed authentication; carries the veil error for accounting."""

    def __init__(self, error: VeilError) -> None:
        super().__init__(error.message)
        self.error = error


async def decrypted_batches(
    upstream: aiohttp.ClientResponse, decryptor: RangeDecryptor
) -> AsyncIterator[list[bytes]]:
    """The plaintext segments of an upstream body, one non-empty list per received chunk;
    raises DecryptFailure, or S3Error when the upstream connection breaks."""
    try:
        async with contextlib.aclosing(upstream_chunks(upstream)) as chunks:
            async for chunk in chunks:
                out = decryptor.feed(chunk)  # keeps no reference to ``chunk``
                if out:
                    yield out
        decryptor.finish()
    except VeilError as e:
        raise DecryptFailure(e) from None


async def decrypted(
    upstream: aiohttp.ClientResponse, decryptor: RangeDecryptor
) -> AsyncIterator[bytes]:
    """Plaintext pieces of an upstream body; raises DecryptFailure, or S3Error when the
    upstream connection breaks."""
    async for batch in decrypted_batches(upstream, decryptor):
        for piece in batch:
            yield piece


async def relay_plaintext(
    call: Call,
    upstream: aiohttp.ClientResponse,
    decryptor: RangeDecryptor,
    response: web.StreamResponse,
    on_failure: Callable[[VeilError], S3Error],
) -> web.StreamResponse:
    """Stream an upstream body's plaintext to the client.

    The head is sent with the first authenticated plaintext (or at the end, for an empty
    range). A failure before that raises the S3 error ``on_failure`` builds; after it, the
    client connection is aborted.
    """
    batches = decrypted_batches(upstream, decryptor)
    first: list[bytes]
    try:
        first = await anext(batches, [])
    except DecryptFailure as e:
        upstream.close()
        raise on_failure(e.error) from None
    except S3Error:
        upstream.close()
        raise
    response.headers["x-amz-request-id"] = call.request_id
    await response.prepare(call.request)
    try:
        for piece in first:  # the first write also sends the head
            await response.write(piece)
        sink = _Sink(call.request, response)
        async for batch in batches:
            await sink.write(batch)
    except DecryptFailure as e:
        on_failure(e.error)
        _abort(call, upstream)
        return response
    except S3Error:
        _abort(call, upstream)
        return response
    except (ConnectionError, aiohttp.ClientError):  # the client went away
        upstream.close()
        return response
    upstream.release()
    await response.write_eof()
    return response


class _Sink:
    """Writes the segments decrypted from one received chunk with one ``writelines`` (a
    single ``writev`` on uvloop) instead of one ``StreamResponse.write`` each, and waits for
    the client once the transport holds more than 256 KiB.

    Only used after the head went out (with a first ``write``) and only on a plain
    ``Content-Length`` body: chunked framing or compression fall back to ``write``. The
    writer's ``length`` and ``output_size`` are kept as aiohttp keeps them, and plaintext past
    the declared length is refused (the connection is then aborted) instead of being sent.
    """

    LIMIT = 256 * 1024

    def __init__(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        self._response = response
        self._writer = request.writer
        self._transport = request.transport
        self._direct = not response.chunked and not response.compression

    async def write(self, pieces: list[bytes]) -> None:
        if len(pieces) == 1 or not self._direct:
            for piece in pieces:
                await self._response.write(piece)
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client connection closed")
        writer = self._writer
        size = sum(map(len, pieces))
        if writer.length is not None:
            if size > writer.length:
                raise S3Error("InternalError", "veil: plaintext longer than its Content-Length")
            writer.length -= size
        writer.output_size += size
        transport.writelines(pieces)
        if transport.get_write_buffer_size() > self.LIMIT:
            await writer.drain()  # aiohttp's flow control: resumes once the client read


def _abort(call: Call, upstream: aiohttp.ClientResponse) -> None:
    upstream.close()
    transport = call.request.transport
    if transport is not None:
        transport.abort()
