"""``veil inspect STORE ...``: an item's envelope headers, plaintext only with ``--decrypt``.

``inspect`` has one subcommand per store, each registered by a function of
:data:`STORE_COMMANDS` (``s3`` here, ``redis`` in ``cli_inspect_redis``). The ``--json``
output is SPEC 12's ``inspect`` schema.

``veil inspect s3 BUCKET/KEY`` reads the object's metadata from the upstream with the
sidecar's upstream credentials (one HEAD, plus one ``HEAD ?partNumber=N`` per part for a
multipart object without a recorded layout): one entry for a single PUT, one per part for a
multipart object. ``--decrypt`` also loads the keyring and writes the plaintext to stdout (or
``--output FILE``); the report then goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, BinaryIO

from protocols.s3.errors import S3Error
from proxy.cli_inspect_redis import register_redis
from proxy.config import Settings
from proxy.crypto.envelope import FORMAT_OBJECT, FORMATS
from proxy.crypto.objects import Layout, RangeDecryptor, stored_size, unwrap_data_key
from proxy.errors import RefusedError, UnavailableError, UsageError, VeilError

StoreCommand = Callable[[Any], None]


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "inspect",
        help="an item's envelope headers: format, key version, sizes",
        description="Show an item's envelope headers (format, key version, sizes); the "
        "plaintext only with --decrypt.",
    )
    stores = parser.add_subparsers(dest="inspect_store", required=True, parser_class=type(parser))
    for command in STORE_COMMANDS:
        command(stores)


def register_s3(stores: Any) -> None:
    p: argparse.ArgumentParser = stores.add_parser(
        "s3",
        help="an S3 object through the configured upstream",
        description="Show an S3 object's envelope: format, key version, stored and plaintext "
        "sizes (one entry per part of a multipart object).",
    )
    p.add_argument("target", metavar="BUCKET/KEY", help="the object, e.g. my-bucket/path/file")
    p.add_argument("--version-id", help="a specific object version")
    p.add_argument("--json", action="store_true", help="machine-readable output (SPEC 12)")
    p.add_argument("--limit", type=int, default=1000, help="at most N entries (default 1000)")
    p.add_argument("--decrypt", action="store_true", help="also write the plaintext")
    p.add_argument("--output", metavar="FILE", help="with --decrypt: write it here, not stdout")
    p.set_defaults(handler=inspect_s3)


# one registration function per store
STORE_COMMANDS: list[StoreCommand] = [register_redis, register_s3]


def _split(target: str) -> tuple[str, str]:
    bucket, _, key = target.strip().lstrip("/").partition("/")
    if not bucket or not key:
        raise UsageError(f"expected BUCKET/KEY, got {target!r}")
    return bucket, key


async def inspect_s3(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.s3.layouts import layout_of
    from proxy.s3.store import head_object
    from proxy.s3.upstream import Upstream, botocore_credentials, static_credentials

    bucket, key = _split(args.target)
    s = settings.s3
    if s.upstream is None:
        raise UsageError("s3.upstream is not configured")
    if s.upstream_access_key and s.upstream_secret_key:
        credentials = static_credentials(s.upstream_access_key, s.upstream_secret_key.reveal())
    else:
        credentials = botocore_credentials()
    upstream = Upstream(s.upstream, s.region, credentials, lambda: datetime.now(UTC))
    deps = _Deps(upstream)
    try:
        obj = await head_object(deps, bucket, key, args.version_id)  # type: ignore[arg-type]
        layout = None
        if obj.envelope is not None:
            layout = await layout_of(deps, bucket, key, obj, [])  # type: ignore[arg-type]
        report = inspect_json(f"{bucket}/{key}", obj, layout, args.limit)
        out = sys.stderr if args.decrypt and not args.output else sys.stdout
        print(json.dumps(report, indent=2) if args.json else _text(report), file=out)
        if args.decrypt:
            await _decrypt(args, settings, upstream, bucket, key, obj, layout)
    except S3Error as e:
        raise _cli_error(e) from None
    finally:
        await upstream.close()
    return 0


class _Deps:
    """The slice of ``proxy.s3.context.Deps`` that HEAD and layout learning use."""

    def __init__(self, upstream: Any) -> None:
        from proxy.s3.context import LayoutCache

        self.upstream = upstream
        self.layouts = LayoutCache(16)

    def decrypt_failure(self, error: VeilError, version: str) -> S3Error:
        return S3Error("InternalError", f"veil: {error.message}")


def _cli_error(error: S3Error) -> VeilError:
    if error.code == "ServiceUnavailable":
        return UnavailableError(error.message)
    if error.status == 404 or error.code == "NoSuchKey":
        return RefusedError("no such object (or bucket)")
    return RefusedError(f"{error.code}: {error.message}")


def inspect_json(name: str, obj: Any, layout: Layout | None, limit: int) -> dict[str, Any]:
    """SPEC 12's ``inspect`` body for an S3 object."""
    entries: list[dict[str, Any]] = []
    if obj.envelope is None:
        entries.append(_entry("object", None, "plaintext", None, obj.stored_size, obj.stored_size))
    elif layout is not None and obj.multipart:
        version = obj.envelope.version
        for number, size in layout.parts[:limit]:
            entries.append(
                _entry("part", number, FORMATS[FORMAT_OBJECT][0], version, stored_size(size), size)
            )
    else:
        plain = layout.plaintext_size if layout is not None else None
        entries.append(
            _entry(
                "object",
                None,
                FORMATS[FORMAT_OBJECT][0],
                obj.envelope.version,
                obj.stored_size,
                plain,
            )
        )
    return {"store": "s3", "key": name, "type": "object", "entries": entries[:limit]}


def _entry(
    role: str, part: int | None, fmt: str, version: int | None, stored: int, plain: int | None
) -> dict[str, Any]:
    return {
        "role": role,
        "part": part,
        "format": fmt,
        "key_version": version,
        "index_version": None,
        "stored_size": stored,
        "plaintext_size": plain,
    }


def _text(report: dict[str, Any]) -> str:
    lines = [f"s3 {report['key']} ({report['type']})"]
    for e in report["entries"]:
        where = e["role"] if e["part"] is None else f"part {e['part']}"
        version = "-" if e["key_version"] is None else f"v{e['key_version']}"
        lines.append(
            f"  {where}: {e['format']}, key version {version}, stored {e['stored_size']} B, "
            f"plaintext {e['plaintext_size'] if e['plaintext_size'] is not None else '?'} B"
        )
    return "\n".join(lines)


async def _decrypt(
    args: argparse.Namespace,
    settings: Settings,
    upstream: Any,
    bucket: str,
    key: str,
    obj: Any,
    layout: Layout | None,
) -> None:
    from proxy import wiring
    from proxy.s3.upstream import Target, read_error

    query = [("versionId", args.version_id)] if args.version_id else []
    sink: BinaryIO = open(args.output, "wb") if args.output else sys.stdout.buffer
    try:
        resp = await upstream.send("GET", Target(bucket, key, query), [("if-match", obj.etag)])
        if resp.status != 200:
            raise await read_error(resp, "GET")
        if obj.envelope is None:
            async for chunk in resp.content.iter_any():
                sink.write(chunk)
            return
        assert layout is not None
        store = wiring.build_store(settings.keys)
        provider = wiring.build_provider(settings.keys)
        runtime = wiring.build_runtime(settings, store, provider)
        runtime.local_copy = None
        try:
            keyset = await runtime.start()
        finally:
            await provider.close()
            await store.close()
        try:
            dk, _ = unwrap_data_key(keyset, obj.envelope.header, bucket, key)
        except VeilError as e:
            raise RefusedError(f"cannot decrypt: {e.message}") from None
        size = layout.plaintext_size
        decryptor = RangeDecryptor(dk, layout.segments(0, max(0, size - 1)), 0, size - 1)
        try:
            async for chunk in resp.content.iter_any():
                for piece in decryptor.feed(chunk):
                    sink.write(piece)
            decryptor.finish()
        except VeilError:
            raise RefusedError("the stored object failed authentication (tampered)") from None
    finally:
        if args.output:
            sink.close()
        else:
            sink.flush()
