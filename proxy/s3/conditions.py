"""Conditional requests, evaluated against what the *client* sees.

A client's ``If-Match`` carries the ETag it saw: the plaintext ETag (HEAD, GET, PUT answers)
or the store's ETag (listings). The store knows only its own, so veil evaluates read
conditions itself on the object's HEAD/GET answer (:func:`check_read`), in S3's order
(RFC 9110 section 13.2.2): ``If-Match`` then ``If-Unmodified-Since`` (412), ``If-None-Match``
then ``If-Modified-Since`` (304 for GET/HEAD). For writes, ``If-Match`` is checked the same
way and then *pinned*: the upstream write carries ``If-Match: <the store's ETag just read>``,
so the check and the write are one atomic condition upstream (:func:`pin_if_match`).
``If-None-Match: *`` needs no translation and is forwarded as is.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime

from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from proxy.s3.info import StoredObject

# (etag header, unmodified-since header, none-match header, modified-since header)
READ_HEADERS = ("if-match", "if-unmodified-since", "if-none-match", "if-modified-since")
COPY_SOURCE_HEADERS = (
    "x-amz-copy-source-if-match",
    "x-amz-copy-source-if-unmodified-since",
    "x-amz-copy-source-if-none-match",
    "x-amz-copy-source-if-modified-since",
)


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None


def _failed(condition: str) -> S3Error:
    return S3Error("PreconditionFailed", details=(("Condition", condition),))


def check_read(
    head: RequestHead,
    obj: StoredObject,
    names: tuple[str, str, str, str] = READ_HEADERS,
    *,
    not_modified: bool = True,
) -> None:
    """Evaluate the conditional headers ``names`` of a read (or a copy source).

    Args:
        head: the client request.
        obj: the object as stored now.
        names: the four header names (GET/HEAD, or the ``x-amz-copy-source-if-*`` ones).
        not_modified: whether a failed ``If-None-Match``/``If-Modified-Since`` is 304 (reads)
            or 412 (copy sources).

    Raises:
        S3Error: ``PreconditionFailed`` (412) or ``NotModified`` (304).
    """
    match, unmodified, none_match, modified = (head.header(name) for name in names)
    modified_at = _date(obj.last_modified)
    if match is not None:
        if not obj.etag_matches(match):
            raise _failed(names[0])
    elif (since := _date(unmodified)) is not None and modified_at is not None:
        if modified_at > since:
            raise _failed(names[1])
    if none_match is not None:
        if obj.etag_matches(none_match):
            raise S3Error("NotModified") if not_modified else _failed(names[2])
    elif (since := _date(modified)) is not None and modified_at is not None:
        if modified_at <= since:
            raise S3Error("NotModified") if not_modified else _failed(names[3])


def write_conditions(head: RequestHead) -> list[tuple[str, str]]:
    """``If-None-Match`` as forwarded on a write (S3 accepts only ``*``)."""
    value = head.header("if-none-match")
    return [] if value is None else [("if-none-match", value)]
