"""moto answering conditional copies as S3 does (``veil demo`` and the test fixtures install it).

veil's metadata-only rewrap is a self-copy pinned to the ETag it read
(``x-amz-copy-source-if-match``): S3 refuses the copy with 412 when the object changed since,
so a client write racing the migration always wins. moto 5 ignores that header (and ``If-Match``
on a copy's destination) and copies whatever the key holds by then -- with a concurrent client
PUT, it would store the client's new body under the old object's metadata, which no real S3
does. This module makes moto's copy check both conditions, and its PUTs and copies of one
server mutually atomic, so that the demo and the tests race veil against clients on S3's terms.
It changes nothing else in moto, and nothing when moto is not what veil talks to.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

_LOCK = threading.RLock()


def _same(etag: str | None, wanted: str) -> bool:
    return etag is not None and etag.strip('"') == wanted.strip().strip('"')


def install() -> None:
    from moto.s3.exceptions import PreconditionFailed
    from moto.s3.responses import S3Response

    if getattr(S3Response, "_veil_conditions", False):
        return
    copy, put = S3Response.copy_object, S3Response.put_object

    def copy_object(self: Any) -> Any:
        with _LOCK:
            wanted = self.headers.get("x-amz-copy-source-if-match")
            if wanted is not None:
                source = self.headers.get("x-amz-copy-source")
                if isinstance(source, bytes):
                    source = source.decode()
                parsed = urlparse(source)
                bucket, key = unquote(parsed.path).lstrip("/").split("/", 1)
                version = parse_qs(parsed.query).get("versionId", [None])[0]
                obj = self.backend.get_object(bucket, key, version_id=version)
                if obj is None or not _same(obj.etag, wanted):
                    raise PreconditionFailed("x-amz-copy-source-If-Match")
            wanted = self.headers.get("If-Match")
            if wanted is not None:
                obj = self.backend.get_object(self.bucket_name, self.parse_key_name())
                if obj is None or not _same(obj.etag, wanted):
                    raise PreconditionFailed("If-Match")
            return copy(self)

    def put_object(self: Any) -> Any:
        with _LOCK:
            return put(self)

    S3Response.copy_object = copy_object  # type: ignore[method-assign]
    S3Response.put_object = put_object  # type: ignore[method-assign]
    S3Response._veil_conditions = True  # type: ignore[attr-defined]
