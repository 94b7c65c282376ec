"""Part layouts of multipart objects: recorded, or learned with ``HEAD ?partNumber=N``.

Theory of operation
-------------------
Decrypting any byte of a multipart object needs its segment's (part number, index within the
part, last flag): the *layout*. Sizes never need it (aligned layouts: every segment but the last
is full), ranges do. veil records the layout in the object's metadata (``layout`` record: the
uniform part size and the part count, which is what every SDK produces) with the metadata-only
self-copy that follows CompleteMultipartUpload; copies carry it on.

When the record is absent -- the object is over 5 GiB (CopyObject cannot rewrite it), its parts
are not uniform, or the self-copy lost a race -- the layout is learned from the store: one
``HEAD ?partNumber=N`` per part (run 16 at a time) gives each part's stored size, hence its
plaintext size. Parts are numbered 1..N (CompleteMultipartUpload refuses gaps), so the part
number in the nonces is the part's position. Learned layouts are cached in memory by
(bucket, key, version id, stored ETag), so a later read of the same object costs nothing,
and a changed object (new ETag) is learned again. The part HEADs are not pinned with
``If-Match`` (moto compares it with the part's own ETag); an object replaced meanwhile is caught
by the total size check, and at worst by authentication: a wrong layout never yields plaintext.
"""

from __future__ import annotations

import asyncio

from protocols.s3.errors import S3Error
from proxy.crypto.objects import Layout
from proxy.errors import DecryptionFailed
from proxy.s3.context import Deps
from proxy.s3.info import StoredObject, part_plaintext_size
from proxy.s3.upstream import Target

CONCURRENCY = 16


async def layout_of(
    deps: Deps, bucket: str, key: str, obj: StoredObject, headers: list[tuple[str, str]]
) -> Layout:
    """The object's layout, from its metadata or the cache or by asking the store.

    Args:
        headers: request arguments every HEAD must carry (SSE-C keys, bucket owner).

    Raises:
        DecryptionFailed: the store's part sizes are not a veil layout of this object.
        S3Error: upstream errors.
    """
    recorded = obj.recorded_layout()
    if recorded is not None:
        return recorded
    cache_key = (bucket, key, obj.version_id or "", obj.etag)
    cached = deps.layouts.get(cache_key)
    if cached is not None:
        return cached
    query: list[tuple[str, str | None]] = []
    if obj.version_id:
        query.append(("versionId", obj.version_id))
    count = obj.part_count
    if not count:  # no record, no "-N" ETag: the store may still know its parts
        first = await deps.upstream.call(
            "HEAD", Target(bucket, key, (*query, ("partNumber", "1"))), headers
        )
        found = first.header("x-amz-mp-parts-count") or ""
        if not found.isdigit():
            raise DecryptionFailed("multipart object without a part count")
        count = int(found)
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def part_size(number: int) -> int:
        async with semaphore:
            target = Target(bucket, key, (*query, ("partNumber", str(number))))
            reply = await deps.upstream.call("HEAD", target, headers)
        length = reply.header("content-length") or ""
        if not length.isdigit():
            raise S3Error("InternalError", "veil: upstream part without a length")
        return part_plaintext_size(int(length))

    sizes = await asyncio.gather(*(part_size(n) for n in range(1, count + 1)))
    layout = Layout(tuple((n, s) for n, s in zip(range(1, count + 1), sizes, strict=True)))
    if layout.stored_size != obj.stored_size:
        raise DecryptionFailed("part sizes disagree with the stored size")
    deps.layouts.put(cache_key, layout)
    return layout
