"""HTTP byte ranges as S3 applies them (``Range`` and ``x-amz-copy-source-range``).

Theory of operation
-------------------
A ``Range`` header goes through two steps, because the object's size is only known later:

1. :func:`parse_range` reads the header into a :class:`ByteRange` (``bytes=a-b``, ``bytes=a-``,
   ``bytes=-n``) or ``None``. S3, as RFC 9110 allows, *ignores* a header it does not support and
   answers 200 with the whole object: a syntax error, another unit, ``b < a``, or several ranges
   (``bytes=0-1,4-5``; S3 serves no ``multipart/byteranges``). So does this function.
2. :func:`resolve` applies the range to the size: ``a-b`` is clamped to the last byte, ``a-``
   runs to the end, ``-n`` is the last ``n`` bytes (the whole object if shorter). A range is
   *unsatisfiable* (416 ``InvalidRange``) when it starts at or past the end, when it is the
   suffix ``-0``, and always for an empty object: S3 refuses every range on a 0-byte object,
   even ``bytes=-5``.

The results are inclusive ``(first, last)`` offsets, as in ``Content-Range: bytes 0-9/100``.

``x-amz-copy-source-range`` (UploadPartCopy) is stricter: S3 accepts only ``bytes=first-last``
and answers ``InvalidArgument`` otherwise, and ``InvalidRange`` when it passes the source's end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocols.s3.errors import S3Error

_RANGE = re.compile(r"bytes=(?:(\d+)-(\d*)|-(\d+))")
_COPY_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A parsed single byte range; ``first is None`` means a suffix of ``suffix`` bytes."""

    first: int | None
    last: int | None
    suffix: int | None = None
    text: str = ""


def parse_range(header: str | None) -> ByteRange | None:
    """Parse a ``Range`` header as S3 does.

    Args:
        header: the header value, or ``None`` when absent.

    Returns:
        The range, or ``None`` when there is no header or S3 would ignore it (malformed, another
        unit, several ranges, last < first).
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last, suffix = match.groups()
    text = header.strip()
    if suffix is not None:
        return ByteRange(None, None, int(suffix), text)
    if last:
        if int(last) < int(first):
            return None
        return ByteRange(int(first), int(last), None, text)
    return ByteRange(int(first), None, None, text)


def resolve(byte_range: ByteRange, size: int) -> tuple[int, int]:
    """Apply a parsed range to an object of ``size`` bytes.

    Args:
        byte_range: from :func:`parse_range`.
        size: the (plaintext) object size.

    Returns:
        Inclusive ``(first, last)`` offsets, ``0 <= first <= last < size``.

    Raises:
        S3Error: ``InvalidRange`` (416) when the range is unsatisfiable, including every range
            on an empty object.
    """
    if byte_range.first is None:
        suffix = byte_range.suffix or 0
        if suffix == 0 or size == 0:
            raise _unsatisfiable(byte_range, size)
        return max(0, size - suffix), size - 1
    if byte_range.first >= size:
        raise _unsatisfiable(byte_range, size)
    last = size - 1 if byte_range.last is None else min(byte_range.last, size - 1)
    return byte_range.first, last


def content_range(first: int, last: int, size: int) -> str:
    """The ``Content-Range`` value of a 206 answer: ``bytes first-last/size``."""
    return f"bytes {first}-{last}/{size}"


def unsatisfied_content_range(size: int) -> str:
    """The ``Content-Range`` value of a 416 answer: ``bytes */size``."""
    return f"bytes */{size}"


def parse_copy_source_range(header: str, source_size: int | None = None) -> tuple[int, int]:
    """Parse ``x-amz-copy-source-range`` (UploadPartCopy).

    Args:
        header: the value, which must be exactly ``bytes=first-last``.
        source_size: the source object's size when known, to check the range against it.

    Returns:
        Inclusive ``(first, last)``.

    Raises:
        S3Error: ``InvalidArgument`` for any other form or ``last < first``; ``InvalidRange``
            when ``last`` is at or past ``source_size``.
    """
    match = _COPY_RANGE.fullmatch(header.strip())
    if match is None or int(match.group(2)) < int(match.group(1)):
        raise S3Error(
            "InvalidArgument",
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first "
            "and last are the zero-based offsets of the first and last bytes to copy",
        )
    first, last = int(match.group(1)), int(match.group(2))
    if source_size is not None and last >= source_size:
        raise S3Error(
            "InvalidRange",
            f"Range specified is not valid for source object of size: {source_size}",
        )
    return first, last


def _unsatisfiable(byte_range: ByteRange, size: int) -> S3Error:
    return S3Error(
        "InvalidRange",
        details=(("RangeRequested", byte_range.text), ("ActualObjectSize", str(size))),
    )
