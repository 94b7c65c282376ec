"""The S3 migration walker: rewraps data keys with metadata-only copies (SPEC 8).

Theory of operation
-------------------
A pass lists every bucket the upstream credentials see, and each bucket with ListObjectsV2
(resuming from a checkpointed bucket and continuation token). For each object it HEADs the
store (veil's envelope lives in ``x-amz-meta-veil-env``): objects on their bucket class's
active version are counted and left alone. For any other object veil unwraps the data key for
(bucket, key), wraps it again under the active version and writes the new envelope with a
**metadata-only self-copy** (``CopyObject`` onto itself, ``x-amz-metadata-directive: REPLACE``,
every stored header sent again, tags copied by S3's default, a non-default ACL put back),
conditional on ``x-amz-copy-source-if-match: <the ETag read>`` so a concurrent client write
always wins. No body byte passes through veil.

Bodies are re-encrypted (GET, decrypt, encrypt under a fresh data key, PUT with ``If-Match``:
streaming, bounded memory) only when the data key itself must go: objects on a *compromised*
version (whoever held that version could unwrap their data keys), and legacy plaintext under
``s3.legacy_plaintext = allow``.

Not rewritable, counted as ``unmigratable{reason}`` and blocking their version's revocation:
archived objects (``GLACIER``/``DEEP_ARCHIVE``: a copy needs a restore), object-locked ones (a
copy makes a new version; the locked one keeps the old wrap), noncurrent versions in versioned
buckets (immutable), and objects over what one CopyObject can rewrite (5 GiB).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from protocols.s3 import xml as s3xml
from protocols.s3.errors import S3Error
from proxy.crypto import meta
from proxy.crypto.objects import (
    MAX_SINGLE_PUT_PLAINTEXT,
    DataKey,
    Layout,
    PartEncryptor,
    RangeDecryptor,
    stored_size,
    wrap_data_key,
)
from proxy.errors import VeilError
from proxy.rotation.redis_walk import Plan, Tally
from proxy.s3.context import Deps
from proxy.s3.headers import from_object_head
from proxy.s3.info import META_HEADER, StoredObject
from proxy.s3.layouts import layout_of
from proxy.s3.store import copy_source, head_object
from proxy.s3.upstream import Target

ARCHIVED = frozenset({"GLACIER", "DEEP_ARCHIVE"})
COPY_LIMIT = 5 * 1024**3
READ_CHUNK = 256 * 1024


def _texts(root: Any, name: str) -> list[str]:
    return [el.text or "" for el in root.iter() if s3xml.local_name(el.tag) == name]


GRANT_HEADERS = {
    "READ": "x-amz-grant-read",
    "WRITE": "x-amz-grant-write",
    "READ_ACP": "x-amz-grant-read-acp",
    "WRITE_ACP": "x-amz-grant-write-acp",
    "FULL_CONTROL": "x-amz-grant-full-control",
}
GRANTEE_FIELDS = (("ID", "id"), ("URI", "uri"), ("EmailAddress", "emailAddress"))


def grant_headers(acl_document: bytes) -> list[tuple[str, str]]:
    """An AccessControlPolicy as the grant headers that recreate it; [] for the default
    (a single FULL_CONTROL grant: the owner's)."""
    root = s3xml.parse(acl_document)
    grants: dict[str, list[str]] = {}
    count = 0
    for grant in (el for el in root.iter() if s3xml.local_name(el.tag) == "Grant"):
        count += 1
        permission = (_texts(grant, "Permission") or [""])[0]
        for tag, name in GRANTEE_FIELDS:
            found = _texts(grant, tag)
            if found and permission in GRANT_HEADERS:
                grants.setdefault(GRANT_HEADERS[permission], []).append(f'{name}="{found[0]}"')
                break
    if count <= 1:
        return []
    return [(header, ", ".join(values)) for header, values in grants.items()]


class S3Walker:
    """A full pass over every bucket, resumable from ``status.cursor``."""

    name = "s3"

    def __init__(self, deps: Deps, batch: int = 100, concurrency: int = 8) -> None:
        self.deps = deps
        self.batch = batch
        self.concurrency = concurrency
        self._acls: dict[str, bool] = {}  # bucket -> object ACLs in force

    # --- listing -------------------------------------------------------------------------

    async def buckets(self) -> list[str]:
        reply = await self.deps.upstream.call("GET", Target())
        return sorted(_texts(s3xml.parse(reply.body), "Name"))

    async def page(self, bucket: str, token: str | None) -> tuple[list[str], str | None]:
        query: list[tuple[str, str | None]] = [("list-type", "2"), ("max-keys", str(self.batch))]
        if token:
            query.append(("continuation-token", token))
        root = s3xml.parse(
            (await self.deps.upstream.call("GET", Target(bucket, None, tuple(query)))).body
        )
        keys = [_texts(c, "Key")[0] for c in root.iter() if s3xml.local_name(c.tag) == "Contents"]
        truncated = (_texts(root, "IsTruncated") or ["false"])[0] == "true"
        tokens = _texts(root, "NextContinuationToken")
        return keys, (tokens[0] if truncated and tokens else None)

    async def run_pass(self, plan: Plan, status: Any, step: Any) -> Tally:
        total = Tally()
        total.versions.update(status.versions)
        total.unmigratable.update(status.unmigratable)
        total.blocked.update(status.cursor.get("blocked", {}))
        done = set(status.cursor.get("done", []))
        for bucket in await self.buckets():
            if bucket in done:
                continue
            token = status.cursor.get("token") if status.cursor.get("bucket") == bucket else None
            while True:
                keys, token = await self.page(bucket, token)
                tally = Tally()
                await self.migrate_objects(bucket, keys, plan, tally)
                total.merge(tally)
                status.cursor.update(bucket=bucket, token=token, blocked=dict(total.blocked))
                status.versions = {k: v for k, v in total.versions.items() if v}
                status.unmigratable = dict(total.unmigratable)
                await step(tally, status)
                if token is None:
                    break
            await self.noncurrent(bucket, plan, total)
            done.add(bucket)
            status.cursor["done"] = sorted(done)
        return total

    async def noncurrent(self, bucket: str, plan: Plan, tally: Tally) -> None:
        """Noncurrent versions are immutable: those on old versions block revocation."""
        reply = await self.deps.upstream.call("GET", Target(bucket, None, (("versioning", None),)))
        if "Enabled" not in reply.body.decode(errors="replace") and "Suspended" not in (
            reply.body.decode(errors="replace")
        ):
            return
        marker: tuple[str, str] | None = None
        while True:
            query: list[tuple[str, str | None]] = [
                ("versions", None),
                ("max-keys", str(self.batch)),
            ]
            if marker:
                query += [("key-marker", marker[0]), ("version-id-marker", marker[1])]
            root = s3xml.parse(
                (await self.deps.upstream.call("GET", Target(bucket, None, tuple(query)))).body
            )
            for v in (el for el in root.iter() if s3xml.local_name(el.tag) == "Version"):
                if (_texts(v, "IsLatest") or ["true"])[0] == "true":
                    continue
                key, vid = _texts(v, "Key")[0], _texts(v, "VersionId")[0]
                try:
                    obj = await head_object(self.deps, bucket, key, vid)
                except S3Error:
                    continue
                label = self._label(bucket, obj)
                if label and not self._current(bucket, obj, plan):
                    tally.unmigratable["noncurrent"] += 1
                    tally.blocked[label] += 1
            if (_texts(root, "IsTruncated") or ["false"])[0] != "true":
                return
            marker = (_texts(root, "NextKeyMarker")[0], _texts(root, "NextVersionIdMarker")[0])

    # --- one object ----------------------------------------------------------------------

    def _target(self, bucket: str) -> int:
        keyset = self.deps.ctx.runtime.keyset
        return keyset.class_id(self.deps.ctx.settings.keys.class_for_bucket(bucket).name)

    def _label(self, bucket: str, obj: StoredObject) -> str:
        if obj.envelope is None:
            return "plaintext"
        return f"{obj.envelope.parsed.class_id}/{obj.envelope.version}"

    def _current(self, bucket: str, obj: StoredObject, plan: Plan) -> bool:
        env = obj.envelope
        target = self._target(bucket)
        return (
            env is not None
            and env.parsed.class_id == target
            and (env.version == plan.active.get(target))
        )

    async def migrate_objects(
        self, bucket: str, keys: Sequence[str], plan: Plan, tally: Tally
    ) -> None:
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(key: str) -> None:
            async with semaphore:
                try:
                    await self.migrate_object(bucket, key, plan, tally)
                except S3Error as e:
                    if e.code in ("NoSuchKey", "PreconditionFailed"):
                        tally.conflicts += 1  # deleted or rewritten meanwhile: the client wins
                    elif e.code in ("ServiceUnavailable", "SlowDown"):
                        tally.failures["upstream"] += 1
                    else:
                        tally.failures["s3:" + e.code] += 1
                except VeilError:
                    tally.failures["decrypt"] += 1

        await asyncio.gather(*(one(k) for k in keys))

    async def migrate_object(self, bucket: str, key: str, plan: Plan, tally: Tally) -> None:
        obj = await head_object(self.deps, bucket, key)
        tally.scanned += 1
        label = self._label(bucket, obj)
        tally.versions[label] += 1
        if self._current(bucket, obj, plan):
            return
        env = obj.envelope
        compromised = env is not None and (env.parsed.class_id, env.version) in (
            plan.compromised_only
        )
        if plan.compromised_only and not compromised:
            return
        reason = self._unmigratable(obj)
        if reason is not None:
            tally.unmigratable[reason] += 1
            tally.blocked[label] += 1
            return
        target = self._target(bucket)
        to_label = f"{target}/{plan.active.get(target)}"
        if env is None:
            if self.deps.settings.legacy_plaintext != "allow":
                return  # reported as "plaintext" remaining; served as an error meanwhile
            await self.reencrypt_body(bucket, key, obj)
        elif compromised:
            await self.reencrypt_body(bucket, key, obj)
        else:
            await self.rewrap(bucket, key, obj)
        tally.migrated += 1
        tally.versions[label] -= 1
        tally.versions[to_label] += 1
        tally.moved[(label, "ok")] += 1

    def _unmigratable(self, obj: StoredObject) -> str | None:
        if (obj.header("x-amz-storage-class") or "") in ARCHIVED:
            return "archived"
        if (
            obj.header("x-amz-object-lock-mode")
            or (obj.header("x-amz-object-lock-legal-hold") or "").upper() == "ON"
        ):
            return "object_lock"
        if obj.stored_size > COPY_LIMIT:
            return "too_large"
        return None

    async def _acl(self, bucket: str, key: str) -> list[tuple[str, str]]:
        """The object's ACL as ``x-amz-grant-*`` headers (none when it is the default, owner
        only): sent with the copy or PUT itself, so the ACL never lapses in between."""
        enabled = self._acls.get(bucket)
        if enabled is None:
            enabled = self._acls[bucket] = await self._acls_enabled(bucket)
        if not enabled:
            return []
        reply = await self.deps.upstream.call("GET", Target(bucket, key, (("acl", None),)))
        return grant_headers(reply.body)

    async def _acls_enabled(self, bucket: str) -> bool:
        """False for buckets with ``BucketOwnerEnforced`` (S3's default since 2023): object
        ACLs are off there, so a rewrap needs no GET ?acl per object."""
        try:
            reply = await self.deps.upstream.call(
                "GET", Target(bucket, None, (("ownershipControls", None),))
            )
        except S3Error:
            return True  # no ownership controls (or not supported): ACLs may be in force
        return b"BucketOwnerEnforced" not in reply.body

    async def rewrap(self, bucket: str, key: str, obj: StoredObject) -> None:
        """The metadata-only self-copy: a new wrap of the same data key, no body bytes."""
        assert obj.envelope is not None
        dk, head = await self.deps.unwrap(obj.envelope.header, bucket, key)
        version_key = self.deps.encryption_key(bucket)
        header = wrap_data_key(version_key, dk, bucket, key, head.flags)
        value = obj.envelope.encode(header=header)
        send = [(n, v) for n, v in from_object_head(obj.headers) if n != META_HEADER]
        send += await self._acl(bucket, key)
        send += [
            ("x-amz-copy-source", copy_source(bucket, key)),
            ("x-amz-copy-source-if-match", obj.etag),
            ("x-amz-metadata-directive", "REPLACE"),
            (META_HEADER, value),
        ]
        reply = await self.deps.upstream.call("PUT", Target(bucket, key), send)
        if b"<Error>" in reply.body[:512]:
            raise S3Error("InternalError", "veil: rewrap copy failed")
        self.deps.count_encrypt(version_key)

    async def reencrypt_body(self, bucket: str, key: str, obj: StoredObject) -> None:
        """GET, decrypt, encrypt under a fresh data key, PUT ``If-Match``: streaming."""
        size = obj.size
        if size > MAX_SINGLE_PUT_PLAINTEXT:
            raise S3Error("InvalidRequest", "veil: too large to re-encrypt in one PUT")
        version_key = self.deps.encryption_key(bucket)
        new = DataKey.generate()
        header = wrap_data_key(version_key, new, bucket, key)
        known: dict[str, bytes] = {}
        if obj.envelope is not None:
            known = {
                k: v
                for k, v in obj.envelope.digests.items()
                if k not in ("etag-mp", "layout", "checksum-type")
            }
            if obj.envelope.digests.get("checksum-type", b"\x01")[0] == 2:  # composite: gone
                known = {k: v for k, v in known.items() if k == "md5"}
        md5 = hashlib.md5()  # the plaintext's MD5 (an S3 ETag), not a security digest
        body = self._sealed(bucket, key, obj, size, new, md5)
        headers = [(n, v) for n, v in from_object_head(obj.headers) if n != META_HEADER]
        headers += await self._acl(bucket, key)
        headers += [("if-match", obj.etag), (META_HEADER, meta.encode(header, known))]
        resp = await self.deps.upstream.send(
            "PUT", Target(bucket, key), headers, body, length=stored_size(size)
        )
        async with resp:
            data = await resp.read()
        if resp.status == 412:
            raise S3Error("PreconditionFailed")
        if resp.status >= 300:
            from proxy.s3.upstream import error_of

            raise error_of(resp.status, data, "PUT")
        self.deps.count_encrypt(version_key)

    async def _sealed(
        self, bucket: str, key: str, obj: StoredObject, size: int, dk: DataKey, md5: Any
    ) -> AsyncIterator[bytes]:
        enc = PartEncryptor(dk, 0)
        async for plain in self._plaintext(bucket, key, obj, size):
            md5.update(plain)
            for seg in enc.feed(plain):
                yield seg
        yield enc.finish()

    async def _plaintext(
        self, bucket: str, key: str, obj: StoredObject, size: int
    ) -> AsyncIterator[bytes]:
        dec: RangeDecryptor | None = None
        if obj.envelope is not None:
            dk, _ = await self.deps.unwrap(obj.envelope.header, bucket, key)
            layout = (
                await layout_of(self.deps, bucket, key, obj, [])
                if obj.multipart
                else Layout.single(size)
            )
            last = max(0, size - 1)
            dec = RangeDecryptor(dk, layout.segments(0, last), 0, last)
        resp = await self.deps.upstream.send("GET", Target(bucket, key), [("if-match", obj.etag)])
        async with resp:
            if resp.status == 412:
                raise S3Error("PreconditionFailed")
            if resp.status >= 300:
                from proxy.s3.upstream import error_of

                raise error_of(resp.status, await resp.read(), "GET")
            async for chunk in resp.content.iter_chunked(READ_CHUNK):
                if dec is None:
                    yield chunk
                else:
                    for plain in dec.feed(chunk):
                        yield plain
        if dec is not None:
            dec.finish()
