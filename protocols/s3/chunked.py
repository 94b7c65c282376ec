"""Sans-I/O aws-chunked codec with chained chunk-signature verification.

Theory of operation
-------------------
An aws-chunked body (``x-amz-content-sha256: STREAMING-*``) is HTTP/1.1 chunked framing inside
the HTTP body::

    <hex size>[;chunk-signature=<64 hex>]\\r\\n <size bytes> \\r\\n      (repeated)
    0[;chunk-signature=<64 hex>]\\r\\n                                    (final, empty chunk)
    [<trailer name>:<value>\\r\\n ...]                                  (trailer modes only)
    [x-amz-trailer-signature:<64 hex>\\r\\n]                            (signed trailer mode)
    \\r\\n

In the signed modes every chunk carries the HMAC (see
:meth:`protocols.s3.sigv4.SigningChain.chunk_string_to_sign`) of the date, the scope, the
*previous* signature and the chunk's SHA-256, chained from the request's seed signature, so
chunks cannot be altered, dropped, reordered or truncated; the trailer signature chains from
the final (empty) chunk's signature over ``sha256("name:value\\n" ...)``. In
``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` nothing is signed and only the trailing checksum protects
the data.

:class:`ChunkDecoder` is a state machine driven by :data:`ChunkDecoder._STEPS` (one reader per
state: size line, data, CRLF after data, trailer section, done). ``feed(bytes)`` returns the
payload bytes it can release, as ``memoryview`` slices of the input (no copy); a signed chunk
is held back (up to ``max_chunk_size``) until its signature has verified, so no byte of a
tampered chunk is ever returned. ``finish()`` checks the body is complete and returns the
trailers.

**Withholding.** Released bytes are authentic chunk by chunk, but the trailing checksum (and,
for the unsigned mode, everything) is only known at the end: the caller must keep the last
segment it derives from the payload until ``finish()`` returns, and abort the upload when
``feed()`` or ``finish()`` raises. Errors: a wrong chunk or trailer signature is
``SignatureDoesNotMatch``; a body that ends early is ``IncompleteBody``; broken framing,
oversized lines or chunks and undeclared trailers are ``InvalidRequest``.

:class:`ChunkEncoder` is the inverse, for tests and for veil's own upstream uploads.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence

from protocols.s3.errors import S3Error
from protocols.s3.sigv4 import SigningChain

TRAILER_SIGNATURE = "x-amz-trailer-signature"
MAX_CHUNK_SIZE = 8 * 1024 * 1024  # largest signed chunk held back for verification
MAX_LINE = 4096  # size line (with extensions) or trailer line, without CRLF
MAX_TRAILER_BYTES = 16 * 1024

_SIGNED_SIZE = re.compile(rb"([0-9a-fA-F]{1,16});chunk-signature=([0-9a-f]{64})")
_UNSIGNED_SIZE = re.compile(rb"([0-9a-fA-F]{1,16})(?:;[^\r\n]*)?")
_TRAILER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n]*?)[ \t]*")


class _State(enum.Enum):
    SIZE = "chunk size line"
    DATA = "chunk data"
    DATA_END = "CRLF after chunk data"
    TRAILER = "trailer section"
    DONE = "end of body"


def _malformed(what: str) -> S3Error:
    return S3Error("InvalidRequest", f"Malformed aws-chunked body: {what}")


def _signature_mismatch() -> S3Error:
    return S3Error(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided "
        "for a chunk of the aws-chunked body.",
    )


class ChunkDecoder:
    """Incremental aws-chunked decoder.

    Args:
        chain: the seed from :class:`protocols.s3.sigv4.Verified` for the signed modes;
            ``None`` for ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``.
        trailer: whether trailing headers are expected (the ``-TRAILER`` modes).
        expected_trailers: the names declared in ``x-amz-trailer`` (lower case); when given,
            the trailer section must carry exactly these. ``None`` accepts any.
        max_chunk_size: the largest signed chunk accepted (it is buffered until verified).
        max_line: the longest size or trailer line accepted.
        max_trailer_bytes: the largest trailer section accepted.
    """

    def __init__(
        self,
        chain: SigningChain | None = None,
        *,
        trailer: bool = False,
        expected_trailers: Iterable[str] | None = None,
        max_chunk_size: int = MAX_CHUNK_SIZE,
        max_line: int = MAX_LINE,
        max_trailer_bytes: int = MAX_TRAILER_BYTES,
    ) -> None:
        self._chain = chain
        self._previous = chain.seed_signature if chain is not None else ""
        self._trailer = trailer
        self._expected = None if expected_trailers is None else frozenset(expected_trailers)
        self._max_chunk = max_chunk_size
        self._max_line = max_line
        self._max_trailer = max_trailer_bytes
        self._state = _State.SIZE
        self._line = bytearray()
        self._remaining = 0
        self._chunk_signature = ""
        self._hash = hashlib.sha256()
        self._held: list[memoryview] = []
        self._trailer_lines: list[tuple[str, str]] = []
        self._trailer_signature: str | None = None
        self._trailer_size = 0
        self.trailers: dict[str, str] = {}
        """The trailing headers (lower-case names), complete once :meth:`finish` returned."""
        self.decoded_length = 0
        """Payload bytes decoded so far (released or held)."""

    @property
    def done(self) -> bool:
        """Whether the whole body, final CRLF included, has been decoded."""
        return self._state is _State.DONE

    def feed(self, data: bytes) -> list[memoryview]:
        """Decode the next bytes of the body.

        Args:
            data: the next bytes as received (any split); must not be mutated afterwards, as
                the returned views and held chunks point into it.

        Returns:
            Payload pieces now released, in order (possibly empty). In the signed modes each
            piece belongs to a chunk whose signature has verified.

        Raises:
            S3Error: ``SignatureDoesNotMatch``, ``InvalidRequest`` (framing, limits, bytes after
                the end). After an error the decoder is unusable.
        """
        out: list[memoryview] = []
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            pos = self._STEPS[self._state](self, data, view, pos, out)
        return out

    def finish(self) -> dict[str, str]:
        """Declare the end of the body.

        Returns:
            The trailing headers (empty outside the trailer modes).

        Raises:
            S3Error: ``IncompleteBody`` when the body stopped before its end; the trailer errors
                of :meth:`feed` when the final empty line is missing (it is optional here).
        """
        if self._state is _State.TRAILER and not self._line:
            self._close_trailers()
        if self._state is not _State.DONE:
            raise S3Error("IncompleteBody", "The request body terminated unexpectedly")
        return self.trailers

    # -- line handling ------------------------------------------------------------------------

    def _take_line(self, data: bytes, pos: int) -> tuple[bytes | None, int]:
        """The next CRLF-terminated line without its CRLF, or ``None`` (kept for later)."""
        limit = self._max_line + 2 - len(self._line)
        newline = data.find(b"\n", pos, pos + limit)
        if newline < 0:
            if len(data) - pos >= limit:
                raise _malformed(f"{self._state.value} longer than {self._max_line} bytes")
            self._line += data[pos:]
            return None, len(data)
        line = data[pos : newline + 1]
        if self._line:
            line = bytes(self._line) + line
            self._line.clear()
        if not line.endswith(b"\r\n"):
            raise _malformed(f"{self._state.value} not terminated by CRLF")
        return line[:-2], newline + 1

    # -- states -------------------------------------------------------------------------------

    def _size_line(self, data: bytes, view: memoryview, pos: int, out: list[memoryview]) -> int:
        line, pos = self._take_line(data, pos)
        if line is None:
            return pos
        pattern = _UNSIGNED_SIZE if self._chain is None else _SIGNED_SIZE
        match = pattern.fullmatch(line)
        if match is None:
            if self._chain is not None and _UNSIGNED_SIZE.fullmatch(line):
                raise _signature_mismatch()
            raise _malformed("bad chunk size line")
        size = int(match.group(1), 16)
        if self._chain is not None:
            if size > self._max_chunk:
                raise _malformed(f"chunk of {size} bytes exceeds {self._max_chunk}")
            self._chunk_signature = match.group(2).decode("ascii")
            self._hash = hashlib.sha256()
        self._remaining = size
        if size == 0:
            self._verify_chunk()
            self._state = _State.TRAILER
        else:
            self._state = _State.DATA
        return pos

    def _data(self, data: bytes, view: memoryview, pos: int, out: list[memoryview]) -> int:
        take = min(self._remaining, len(data) - pos)
        piece = view[pos : pos + take]
        self._remaining -= take
        self.decoded_length += take
        if self._chain is None:
            out.append(piece)
        else:
            self._hash.update(piece)
            self._held.append(piece)
            if self._remaining == 0:
                self._verify_chunk()
                out.extend(self._held)
                self._held = []
        if self._remaining == 0:
            self._state = _State.DATA_END
        return pos + take

    def _data_end(self, data: bytes, view: memoryview, pos: int, out: list[memoryview]) -> int:
        line, pos = self._take_line(data, pos)
        if line is None:
            return pos
        if line:
            raise _malformed("chunk data longer than its declared size")
        self._state = _State.SIZE
        return pos

    def _trailer_line(self, data: bytes, view: memoryview, pos: int, out: list[memoryview]) -> int:
        line, pos = self._take_line(data, pos)
        if line is None:
            return pos
        if not line:
            self._close_trailers()
            return pos
        self._trailer_size += len(line) + 2
        match = _TRAILER.fullmatch(line)
        if match is None or self._trailer_size > self._max_trailer:
            raise _malformed("bad or oversized trailer")
        name = match.group(1).decode("ascii").lower()
        value = match.group(2).decode("latin-1")
        if self._trailer_signature is not None:
            raise _malformed("trailer after x-amz-trailer-signature")
        if name == TRAILER_SIGNATURE:
            self._trailer_signature = value
        elif any(name == seen for seen, _ in self._trailer_lines):
            raise _malformed(f"repeated trailer {name}")
        else:
            self._trailer_lines.append((name, value))
        return pos

    def _done(self, data: bytes, view: memoryview, pos: int, out: list[memoryview]) -> int:
        raise _malformed("data after the end of the body")

    _STEPS: dict[_State, Callable[[ChunkDecoder, bytes, memoryview, int, list[memoryview]], int]]
    _STEPS = {
        _State.SIZE: _size_line,
        _State.DATA: _data,
        _State.DATA_END: _data_end,
        _State.TRAILER: _trailer_line,
        _State.DONE: _done,
    }

    # -- verification -------------------------------------------------------------------------

    def _verify_chunk(self) -> None:
        chain = self._chain
        if chain is None:
            return
        sts = chain.chunk_string_to_sign(self._previous, self._hash.hexdigest())
        expected = chain.sign(sts)
        if not hmac.compare_digest(expected.encode(), self._chunk_signature.encode()):
            raise _signature_mismatch()
        self._previous = expected

    def _close_trailers(self) -> None:
        names = {name for name, _ in self._trailer_lines}
        if not self._trailer and (names or self._trailer_signature is not None):
            raise _malformed("trailers sent without a -TRAILER payload mode")
        if self._expected is not None and names != self._expected:
            raise S3Error(
                "InvalidRequest",
                "The trailing headers do not match the x-amz-trailer header: expected "
                f"{sorted(self._expected)}, received {sorted(names)}",
            )
        if self._chain is not None and self._trailer:
            canonical = "".join(f"{name}:{value}\n" for name, value in self._trailer_lines)
            digest = hashlib.sha256(canonical.encode("latin-1")).hexdigest()
            expected = self._chain.sign(self._chain.trailer_string_to_sign(self._previous, digest))
            given = (self._trailer_signature or "").encode("ascii", "replace")
            if not hmac.compare_digest(expected.encode(), given):
                raise _signature_mismatch()
        elif self._trailer_signature is not None:
            raise _malformed("x-amz-trailer-signature in an unsigned payload")
        self.trailers = dict(self._trailer_lines)
        self._state = _State.DONE


class ChunkEncoder:
    """Frame a payload as aws-chunked, signing each chunk when given a chain.

    Args:
        chain: the seed from :func:`protocols.s3.sigv4.sign` (payload hash
            ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]``), or ``None`` for
            ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``.
    """

    def __init__(self, chain: SigningChain | None = None) -> None:
        self._chain = chain
        self._previous = chain.seed_signature if chain is not None else ""

    def chunk(self, data: bytes | memoryview) -> bytes:
        """One non-empty data chunk, framed (and signed)."""
        if not data:
            raise ValueError("an empty chunk ends the body: use finish()")
        return self._frame(data) + bytes(data) + b"\r\n"

    def finish(self, trailers: Sequence[tuple[str, str]] = ()) -> bytes:
        """The final empty chunk, the trailers (signed when chained) and the closing CRLF."""
        parts = [self._frame(b"")]
        lines = [f"{name.lower()}:{value}" for name, value in trailers]
        parts.extend(f"{line}\r\n".encode("latin-1") for line in lines)
        if self._chain is not None and lines:
            canonical = "".join(f"{line}\n" for line in lines).encode("latin-1")
            sts = self._chain.trailer_string_to_sign(
                self._previous, hashlib.sha256(canonical).hexdigest()
            )
            parts.append(f"{TRAILER_SIGNATURE}:{self._chain.sign(sts)}\r\n".encode("ascii"))
        parts.append(b"\r\n")
        return b"".join(parts)

    def _frame(self, data: bytes | memoryview) -> bytes:
        size = f"{len(data):x}"
        if self._chain is None:
            return f"{size}\r\n".encode("ascii")
        sts = self._chain.chunk_string_to_sign(self._previous, hashlib.sha256(data).hexdigest())
        self._previous = self._chain.sign(sts)
        return f"{size};chunk-signature={self._previous}\r\n".encode("ascii")


def encoded_length(
    decoded_length: int,
    chunk_size: int,
    *,
    signed: bool,
    trailers: Sequence[tuple[str, str]] = (),
) -> int:
    """The ``Content-Length`` of what :class:`ChunkEncoder` produces for fixed-size chunks.

    Args:
        decoded_length: the payload length.
        chunk_size: the size of every chunk but the last.
        signed: whether chunks carry signatures.
        trailers: the trailers that :meth:`ChunkEncoder.finish` will write (values included).
    """
    signature = len(";chunk-signature=") + 64 if signed else 0
    full, rest = divmod(decoded_length, chunk_size)
    sizes = [chunk_size] * full + ([rest] if rest else [])
    total = sum(len(f"{size:x}") + signature + 2 + size + 2 for size in sizes)
    total += 1 + signature + 2  # final chunk
    total += sum(len(name) + 1 + len(value) + 2 for name, value in trailers)
    if signed and trailers:
        total += len(TRAILER_SIGNATURE) + 1 + 64 + 2
    return total + 2


def strip_aws_chunked(content_encoding: str | None) -> str | None:
    """``Content-Encoding`` without the ``aws-chunked`` token (what the stored object keeps).

    Returns:
        The remaining encodings joined by ``,``, or ``None`` when nothing remains.
    """
    if content_encoding is None:
        return None
    tokens = [token.strip() for token in content_encoding.split(",")]
    kept = [token for token in tokens if token and token.lower() != "aws-chunked"]
    return ",".join(kept) or None
