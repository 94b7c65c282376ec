"""What every S3 handler gets: the listener-wide dependencies and the per-request call.

``Deps`` is built once per listener from the composition root's ``Context``: the upstream
client, the layout cache, the decrypt-failure aggregator and the key helpers (active key of a
bucket's class, unwrapping with one keyring reload on an unknown version). ``Call`` is one
verified, classified client request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web

from protocols.s3.errors import S3Error
from protocols.s3.head import RequestHead
from protocols.s3.request import S3Request
from protocols.s3.sigv4 import Verified
from proxy.app import Context
from proxy.config import S3Settings
from proxy.crypto.keys import VersionKey
from proxy.crypto.objects import DataKey, Layout, ObjectHeader, open_upload_token, unwrap_data_key
from proxy.errors import (
    DecryptionFailed,
    KeyringStale,
    KeyUnavailable,
    UnsupportedFormat,
    VeilError,
    WrongKeyring,
)
from proxy.keys.keyset import UnknownKeyVersion
from proxy.s3.upstream import Upstream

log = logging.getLogger("veil.s3")
T = TypeVar("T")

LAYOUT_CACHE_SIZE = 4096
AUDIT_WINDOW = 60.0


class FailureLog:
    """Decrypt failures, counted per request in metrics and audited once per version and minute.

    ``note`` bumps ``veil_decrypt_failures_total`` at once; the audit log gets one aggregated
    ``decrypt.failed`` event per (key version, reason) and window (SPEC 11: never one per
    request), written by ``flush`` (the listener calls it every minute and at close).
    """

    def __init__(self, deps_ctx: Context) -> None:
        self._ctx = deps_ctx
        self._pending: dict[tuple[str, str], int] = {}
        self._since = time.time()

    def note(self, version: str, reason: str) -> None:
        self._ctx.metrics.decrypt_failures.labels("s3", version, reason).inc()
        key = (version, reason)
        self._pending[key] = self._pending.get(key, 0) + 1

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        since, self._since = self._since, time.time()
        for (version, reason), count in sorted(pending.items()):
            self._ctx.audit(
                {
                    "event": "decrypt.failed",
                    "store": "s3",
                    "key_version": version,
                    "reason": reason,
                    "count": count,
                    "window_start": since,
                    "window_seconds": round(time.time() - since, 1),
                }
            )


# crypto error -> the reason label of veil_decrypt_failures_total
FAILURE_REASONS: dict[type[VeilError], str] = {
    DecryptionFailed: "tampered",
    WrongKeyring: "wrong_keyring",
    UnsupportedFormat: "unknown_format",
    KeyUnavailable: "key_unavailable",
}


def failure_reason(error: VeilError) -> str:
    for kind, reason in FAILURE_REASONS.items():
        if isinstance(error, kind):
            return reason
    return "other"


class LayoutCache:
    """Learned part layouts by (bucket, key, version id, stored ETag); bounded LRU."""

    def __init__(self, size: int = LAYOUT_CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str, str, str], Layout] = OrderedDict()

    def get(self, key: tuple[str, str, str, str]) -> Layout | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple[str, str, str, str], layout: Layout) -> None:
        self._items[key] = layout
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


@dataclass
class Deps:
    """Listener-wide dependencies (one per S3 listener)."""

    ctx: Context
    upstream: Upstream
    layouts: LayoutCache = field(default_factory=LayoutCache)
    failures: FailureLog = field(init=False)

    def __post_init__(self) -> None:
        self.failures = FailureLog(self.ctx)

    @property
    def settings(self) -> S3Settings:
        return self.ctx.settings.s3

    def encryption_key(self, bucket: str) -> VersionKey:
        """The active master version of ``bucket``'s class; refuses when the keyring is stale.

        Raises:
            S3Error: ``ServiceUnavailable`` (keyring stale) or the key error's mapping.
        """
        runtime = self.ctx.runtime
        if runtime.is_stale():
            raise s3_error(KeyringStale())
        keyset = runtime.keyset
        name = self.ctx.settings.keys.class_for_bucket(bucket).name
        try:
            return keyset.active(keyset.class_id(name))
        except VeilError as e:
            raise s3_error(e) from None

    def count_encrypt(self, key: VersionKey) -> None:
        self.ctx.metrics.hot.encrypts[("s3", str(key.version))] += 1

    async def with_reload(self, fn: Callable[[], T]) -> T:
        """Run a keyring lookup; on an unknown version reload the keyring once and retry."""
        try:
            return fn()
        except UnknownKeyVersion:
            await self.ctx.runtime.reload()
            return fn()

    async def unwrap(self, header: bytes, bucket: str, key: str) -> tuple[DataKey, ObjectHeader]:
        """Unwrap an object's data key (bound to bucket and key); failures are counted.

        Raises:
            S3Error: ``AccessDenied`` for a revoked or unknown version, ``InternalError`` for
                a tampered or foreign envelope (with metric and audit).
        """
        try:
            return await self.with_reload(
                lambda: unwrap_data_key(self.ctx.runtime.keyset, header, bucket, key)
            )
        except VeilError as e:
            raise self.decrypt_failure(e, _version_of(header)) from None

    async def open_token(self, token: bytes, bucket: str, key: str, upload_id: str) -> DataKey:
        try:
            return await self.with_reload(
                lambda: open_upload_token(self.ctx.runtime.keyset, token, bucket, key, upload_id)
            )
        except DecryptionFailed:
            raise S3Error("NoSuchUpload") from None
        except VeilError as e:
            raise s3_error(e) from None

    def decrypt_failure(self, error: VeilError, version: str) -> S3Error:
        """Count a failure and build the client's error."""
        reason = failure_reason(error)
        self.failures.note(version, reason)
        if isinstance(error, KeyUnavailable):
            return S3Error("AccessDenied", f"veil: {error.message}")
        return S3Error(
            "InternalError",
            "veil: the stored object failed authentication (tampered, truncated or not "
            "encrypted for this keyring); no data was returned",
        )

    def count_decrypt(self, version: int) -> None:
        self.ctx.metrics.hot.decrypts[("s3", str(version))] += 1

    def note_read(
        self, bucket: str, key: str, parsed: ObjectHeader | None, version_id: str | None
    ) -> None:
        """Lazy re-encryption (SPEC 8): the current version of an object read under an old key
        version (or as legacy plaintext, ``parsed`` None) is queued; the reply never waits."""
        lazy = self.ctx.lazy.get("s3")
        if lazy is None or version_id is not None:  # noncurrent versions stay as they are
            return
        if parsed is not None:
            keyset = self.ctx.runtime.keyset
            try:
                class_id = keyset.class_id(self.ctx.settings.keys.class_for_bucket(bucket).name)
                active = keyset.active(class_id)
            except (VeilError, KeyError):
                return
            if parsed.class_id == class_id and parsed.version == active.version:
                return
        lazy.note((bucket, key))

    async def run_periodic(self, every: float = AUDIT_WINDOW) -> None:
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                self.failures.flush()


def _version_of(header: bytes) -> str:
    return str(int.from_bytes(header[9:11], "big")) if len(header) >= 11 else "unknown"


class HeaderedError(S3Error):
    """An S3 error whose answer carries extra headers (``Content-Range`` of a 416)."""

    def __init__(self, base: S3Error, headers: list[tuple[str, str]]) -> None:
        super().__init__(base.code, base.message, status=base.status, details=base.details)
        self.headers = headers


def s3_error(error: VeilError) -> S3Error:
    """A veil error as the S3 error a client sees (its own code and status)."""
    return S3Error(error.s3_code, f"veil: {error.message}", status=error.http_status)


def request_id() -> str:
    return os.urandom(8).hex().upper()


@dataclass
class Call:
    """One verified, classified client request."""

    deps: Deps
    request: web.BaseRequest
    head: RequestHead
    s3: S3Request
    verified: Verified
    request_id: str
    continued: bool = False

    @property
    def bucket(self) -> str:
        assert self.s3.bucket is not None
        return self.s3.bucket

    @property
    def key(self) -> str:
        assert self.s3.key is not None
        return self.s3.key

    async def expect_continue(self) -> None:
        """Answer ``Expect: 100-continue`` once the request is accepted (before its body)."""
        if self.continued:
            return
        self.continued = True
        if (self.head.header("expect") or "").lower() == "100-continue":
            await self.request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.request.writer.output_size = 0


Handler = Callable[[Call], Awaitable[web.StreamResponse]]
