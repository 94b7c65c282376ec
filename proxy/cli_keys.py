"""``veil keys ...``: the key lifecycle on the keyring store (SPEC 2, 4, 12)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy import harden, wiring
from proxy.config import Settings, parse_duration
from proxy.errors import RefusedError, UsageError
from proxy.keys import escrow
from proxy.keys.lifecycle import Change
from proxy.keys.model import Keyring, parse_time, rfc3339
from proxy.keys.ops import KeyOps
from proxy.keys.providers import (
    AwsKmsProvider,
    LocalProvider,
    Provider,
    encode_root_key,
    load_root_key,
    write_secret_file,
)
from proxy.keys.runtime import unwrap_meta
from proxy.keys.stores import KeyringStore


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="key lifecycle: init, list, rotate, promote, revoke ...")
    ks = keys.add_subparsers(dest="keys_command", required=True, parser_class=type(keys))

    def cmd(
        name: str,
        fn: Any,
        help: str,
        *,
        cls: bool = True,
        index: bool = False,
        json_out: bool = False,
        version: bool = False,
        admin: bool = True,
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = ks.add_parser(name, help=help, description=help)
        if version:
            p.add_argument("version", type=int, help="key version")
        if cls:
            p.add_argument(
                "--class", dest="key_class", default="default", help="key class (default: default)"
            )
        if index:
            p.add_argument(
                "--index",
                action="store_true",
                help="the deterministic index keyring instead of the master keys",
            )
        if json_out:
            p.add_argument("--json", action="store_true", help="machine-readable output (SPEC 12)")
        if admin:
            p.add_argument(
                "--admin",
                metavar="URL",
                help="through a running sidecar's admin API (token: VEIL_ADMIN_TOKEN)",
            )
        p.set_defaults(handler=fn, admin=None)
        return p

    p = cmd(
        "init",
        keys_init,
        "create the keyring (and the root key, for the local provider); "
        "adds configured classes to an existing keyring",
        cls=False,
        json_out=True,
        admin=False,
    )
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        help="also create this class (repeatable)",
    )
    cmd("list", keys_list, "versions and states of a class", json_out=True)
    p = cmd(
        "rotate",
        keys_rotate,
        "add a pending version (promote it once sidecars have it)",
        index=True,
        json_out=True,
    )
    p.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    p.add_argument("--if-revision", type=int, help="only if the keyring is at this revision")
    p = cmd(
        "promote",
        keys_promote,
        "make a pending version active once every live sidecar has acknowledged it",
        index=True,
        json_out=True,
        version=True,
    )
    p.add_argument(
        "--wait",
        type=float,
        help="seconds to wait for acknowledgements (default: keys.promote_timeout)",
    )
    cmd(
        "retire",
        keys_retire,
        "undo a revocation (revoked -> retired)",
        index=True,
        json_out=True,
        version=True,
    )
    p = cmd(
        "revoke",
        keys_revoke,
        "stop a retired version from decrypting",
        index=True,
        json_out=True,
        version=True,
    )
    p.add_argument(
        "--emergency",
        action="store_true",
        help="compromised: stop encrypting with it now, migrate its items first",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="revoke now even if items remain (audited with the count abandoned)",
    )
    p = cmd(
        "destroy",
        keys_destroy,
        "erase a version's material (pending or revoked)",
        index=True,
        json_out=True,
        version=True,
    )
    p.add_argument("--force", action="store_true", help="even if incomplete or too young")
    p = cmd(
        "freeze",
        keys_freeze,
        "postpone scheduled rotation and migration (incident)",
        cls=False,
        json_out=True,
    )
    p.add_argument("--until", required=True, help="RFC 3339 time or a duration (e.g. 12h)")
    p.add_argument("--reason", required=True)
    cmd(
        "unfreeze",
        keys_unfreeze,
        "resume scheduled rotation and migration",
        cls=False,
        json_out=True,
    )
    p = cmd(
        "export",
        keys_export,
        "write an escrow bundle of every non-destroyed version",
        cls=False,
        admin=False,
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--recipient", help="file with an X25519 public key (veil keys escrow-keygen)")
    who.add_argument("--passphrase-file", help="file holding a passphrase (scrypt)")
    p.add_argument("--out", help="bundle path (default: ./veil-escrow-<id>-r<revision>.json)")
    p = cmd(
        "import", keys_import, "restore the keyring from an escrow bundle", cls=False, admin=False
    )
    p.add_argument("bundle")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--identity", help="file with the X25519 private key")
    who.add_argument("--passphrase-file", help="file holding the passphrase")
    p.add_argument(
        "--verify",
        action="store_true",
        help="only prove the bundle restores (key checks, canaries); write nothing",
    )
    p = cmd(
        "rewrap-root",
        keys_rewrap_root,
        "re-wrap every version under a new root key or KMS key",
        cls=False,
        admin=False,
    )
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--new-root-key-file", help="new local root key file (created if missing)")
    to.add_argument("--to-kms", metavar="KEY_ID", help="move to the aws-kms provider")
    p = cmd(
        "escrow-keygen",
        keys_escrow_keygen,
        "create an X25519 key pair for escrow bundles",
        cls=False,
        admin=False,
    )
    p.add_argument("--out", required=True, help="writes OUT.key (private, 0600) and OUT.pub")


# --- plumbing -----------------------------------------------------------------------------


@dataclass
class Session:
    settings: Settings
    store: KeyringStore
    provider: Provider
    ops: KeyOps
    anchors: list[dict[str, Any]] = field(default_factory=list)


@asynccontextmanager
async def session(
    settings: Settings, class_name: str = "default", create_root: bool = False, audit: bool = True
) -> AsyncIterator[Session]:
    harden.disable_core_dumps()
    store = wiring.build_store(settings.keys)
    provider = wiring.build_provider(settings.keys, create_root=create_root)
    ops = wiring.build_ops(settings, store, provider, class_name)
    s = Session(settings, store, provider, ops)
    try:
        if audit:
            await _attach_audit(s)
        yield s
        for anchor in s.anchors:
            await store.put_state(f"audit-anchor:{anchor['sidecar_id']}", anchor)
    finally:
        await provider.close()
        await store.close()


async def _attach_audit(s: Session) -> None:
    doc = await s.store.load()
    if doc is None:
        return  # init attaches once the keyring (and its meta key) exists
    kr = Keyring.from_json(doc)
    s.provider.check(kr.provider)
    meta = await unwrap_meta(s.provider, kr)
    s.ops.audit = wiring.cli_audit(s.settings, meta, s.store, s.anchors)


async def _after(s: Session, change: Change) -> None:
    path = await wiring.write_escrow(s.settings, s.provider, change.keyring)
    if path is not None:
        print(f"escrow bundle written to {path}", file=sys.stderr)


def _print_list(kr: Keyring | dict[str, Any], class_name: str, as_json: bool) -> None:
    body = kr.public_json(class_name) if isinstance(kr, Keyring) else kr
    if as_json:
        print(json.dumps(body, indent=2))
        return
    frozen = f", frozen until {body['frozen_until']}" if body["frozen_until"] else ""
    print(
        f"keyring {body['keyring_id']}  revision {body['revision']}  class {body['class']} "
        f"(classes: {', '.join(body['classes'])}){frozen}"
    )
    for title, rows in (("versions", body["versions"]), ("index versions", body["index_versions"])):
        print(f"  {title}:")
        for v in rows:
            items = ", ".join(f"{k} {'?' if n is None else n}" for k, n in v["items"].items())
            flag = "  COMPROMISED" if v["compromised"] else ""
            print(
                f"    v{v['version']:<4} {v['state']:<9} created {v['created']}  "
                f"since {v['state_since']}  items: {items}{flag}"
            )


async def _report(s: Session, change: Change, args: argparse.Namespace, summary: str) -> int:
    await _after(s, change)
    if getattr(args, "json", False):
        _print_list(change.keyring, getattr(args, "key_class", "default"), True)
    else:
        print(summary)
    return 0


# --- commands -----------------------------------------------------------------------------


async def keys_init(args: argparse.Namespace, settings: Settings) -> int:
    classes = [c.name for c in settings.keys.classes] + list(args.classes)
    async with session(settings, create_root=True, audit=False) as s:
        kr, changed = await s.ops.init(classes)
        await _attach_audit(s)
        if changed and s.ops.audit:
            s.ops.audit(
                {
                    "event": "keyring.initialized",
                    "classes": sorted(kr.classes),
                    "revision": kr.revision,
                }
            )
        if args.json:
            _print_list(kr, "default", True)
        elif changed:
            print(
                f"keyring {kr.keyring_id.hex()} ready in {s.store.url} "
                f"(classes: {', '.join(sorted(kr.classes))})"
            )
        else:
            print(f"keyring {kr.keyring_id.hex()} already initialized in {s.store.url}")
    return 0


async def _admin(
    args: argparse.Namespace,
    settings: Settings,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    summary: str | None = None,
) -> int:
    """The ``--admin URL`` form: the same command through a sidecar's admin API."""
    from proxy.admin import client

    token = settings.admin.tokens.get("default")
    if body is not None:
        body = {"class": getattr(args, "key_class", "default"), **body}
    result = await client.call(args.admin, method, path, token.reveal() if token else None, body)
    if summary is None or getattr(args, "json", False):
        _print_list(result, getattr(args, "key_class", "default"), getattr(args, "json", False))
    else:
        print(summary)
    return 0


def _series(args: argparse.Namespace) -> str:
    return "index-keys" if getattr(args, "index", False) else "keys"


async def keys_list(args: argparse.Namespace, settings: Settings) -> int:
    if args.admin:
        return await _admin(args, settings, "GET", f"/v1/keys?class={args.key_class}")
    async with session(settings, audit=False) as s:
        _print_list(await s.ops.load(), args.key_class, args.json)
    return 0


async def keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    kind = wiring.kind_of(args.index)
    if args.admin:
        if args.dry_run:
            raise UsageError("--dry-run works on the keyring store directly, not with --admin")
        body: dict[str, Any] = {} if args.if_revision is None else {"if_revision": args.if_revision}
        return await _admin(
            args,
            settings,
            "POST",
            f"/v1/{_series(args)}/rotate",
            body,
            "rotated: a new version is pending",
        )
    async with session(settings, args.key_class, audit=not args.dry_run) as s:
        if args.dry_run:
            plan = await s.ops.rotate_plan(args.key_class, kind)
            if args.json:
                print(json.dumps(plan, indent=2))
            else:
                verdict = f"refused: {plan['refused']}" if plan["refused"] else "would succeed"
                print(
                    f"rotate {plan['class']} ({plan['kind']}): v{plan['next_version']} would be "
                    f"added as pending; {plan['live_versions']}/{plan['max_live_versions']} "
                    f"live versions; {verdict}"
                )
            return 3 if plan["refused"] else 0
        change = await s.ops.rotate(args.key_class, kind, args.if_revision)
        v = change.events[0]["version"]
        return await _report(
            s,
            change,
            args,
            f"version {v} added as pending to "
            f"{args.key_class}; promote it with `veil keys promote {v}`",
        )


async def keys_promote(args: argparse.Namespace, settings: Settings) -> int:
    wait = settings.keys.promote_timeout if args.wait is None else args.wait
    if args.admin:
        return await _admin(
            args,
            settings,
            "POST",
            f"/v1/{_series(args)}/{args.version}/promote",
            {"wait": wait},
            f"version {args.version} is active",
        )
    async with session(settings, args.key_class) as s:
        change = await s.ops.promote(
            args.key_class, args.version, wiring.kind_of(args.index), wait=wait
        )
        return await _report(s, change, args, f"version {args.version} is active")


async def keys_retire(args: argparse.Namespace, settings: Settings) -> int:
    if args.admin:
        return await _admin(
            args,
            settings,
            "POST",
            f"/v1/{_series(args)}/{args.version}/retire",
            {},
            f"version {args.version} is retired again",
        )
    async with session(settings, args.key_class) as s:
        change = await s.ops.retire(args.key_class, args.version, wiring.kind_of(args.index))
        return await _report(s, change, args, f"version {args.version} is retired again")


async def keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    if args.admin:
        return await _admin(
            args,
            settings,
            "POST",
            f"/v1/{_series(args)}/{args.version}/revoke",
            {"emergency": args.emergency, "force": args.force},
            f"version {args.version}: revocation recorded",
        )
    async with session(settings, args.key_class) as s:
        change = await s.ops.revoke(
            args.key_class,
            args.version,
            wiring.kind_of(args.index),
            emergency=args.emergency,
            force=args.force,
        )
        v = change.keyring.cls(args.key_class).find(wiring.kind_of(args.index), args.version)
        state = v.state.value if v else "?"
        more = (
            " (compromised: migrated first, revoked once no item is left on it)"
            if args.emergency and state != "revoked"
            else ""
        )
        lagging = await s.ops.wait_acknowledged(
            change.keyring.revision, settings.keys.promote_timeout
        )
        if lagging:
            print(f"veil: warning: not yet acknowledged by {', '.join(lagging)}", file=sys.stderr)
        return await _report(s, change, args, f"version {args.version} is {state}{more}")


async def keys_destroy(args: argparse.Namespace, settings: Settings) -> int:
    if args.admin:
        return await _admin(
            args,
            settings,
            "POST",
            f"/v1/{_series(args)}/{args.version}/destroy",
            {"force": args.force},
            f"version {args.version} destroyed",
        )
    async with session(settings, args.key_class) as s:
        change = await s.ops.destroy(
            args.key_class, args.version, wiring.kind_of(args.index), force=args.force
        )
        return await _report(s, change, args, f"version {args.version} destroyed")


def _until(text: str, now: datetime) -> datetime:
    try:
        return now + timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        t = parse_time(text)
    except ValueError:
        t = None
    if t is None:
        raise UsageError(f"--until {text!r} is neither RFC 3339 nor a duration like 12h")
    return t


async def keys_freeze(args: argparse.Namespace, settings: Settings) -> int:
    if args.admin:
        until = rfc3339(_until(args.until, datetime.now(UTC)))
        return await _admin(
            args,
            settings,
            "POST",
            "/v1/keys/freeze",
            {"until": until, "reason": args.reason},
            f"keyring frozen until {until}",
        )
    async with session(settings) as s:
        change = await s.ops.freeze(_until(args.until, datetime.now(UTC)), args.reason)
        return await _report(
            s, change, args, f"keyring frozen until {change.keyring.public_json()['frozen_until']}"
        )


async def keys_unfreeze(args: argparse.Namespace, settings: Settings) -> int:
    if args.admin:
        return await _admin(args, settings, "POST", "/v1/keys/unfreeze", {}, "keyring unfrozen")
    async with session(settings) as s:
        return await _report(s, await s.ops.unfreeze(), args, "keyring unfrozen")


def _passphrase(path: str) -> bytes:
    phrase = Path(path).read_bytes().rstrip(b"\r\n")
    if len(phrase) < 12:
        raise UsageError("the escrow passphrase must be at least 12 characters")
    return phrase


async def keys_export(args: argparse.Namespace, settings: Settings) -> int:
    async with session(settings) as s:
        kr = await s.ops.load()
        meta, materials = await wiring.unwrap_everything(s.provider, kr)
        if args.recipient:
            rcpt = escrow.Recipient(
                public_key=escrow.load_public_key(Path(args.recipient).read_text())
            )
        else:
            rcpt = escrow.Recipient(passphrase=_passphrase(args.passphrase_file))
        bundle = escrow.export_bundle(kr, meta, materials, rcpt, datetime.now(UTC))
        out = Path(args.out or f"veil-escrow-{kr.keyring_id.hex()[:8]}-r{kr.revision}.json")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(bundle, f, indent=1)
            f.write("\n")
        if s.ops.audit:
            s.ops.audit(
                {
                    "event": "keyring.exported",
                    "revision": kr.revision,
                    "versions": len(materials),
                    "recipient": bundle["recipient"]["type"],
                }
            )
        print(f"escrow bundle of {len(materials)} versions written to {out}")
    return 0


async def keys_import(args: argparse.Namespace, settings: Settings) -> int:
    bundle = json.loads(Path(args.bundle).read_text())
    identity = escrow.load_private_key(Path(args.identity).read_text()) if args.identity else None
    phrase = _passphrase(args.passphrase_file) if args.passphrase_file else None
    contents = escrow.open_bundle(bundle, identity, phrase)
    problems = escrow.verify_contents(contents) + _self_test()
    if problems:
        for p in problems:
            print(f"veil: {p}", file=sys.stderr)
        raise RefusedError(f"bundle does not restore ({len(problems)} problems)")
    n = len(contents.materials)
    if args.verify:
        print(
            f"bundle verified: keyring {contents.keyring.keyring_id.hex()} revision "
            f"{contents.keyring.revision}, {n} versions, every canary decrypts"
        )
        return 0
    async with session(settings, create_root=True, audit=False) as s:
        kr = await escrow.restore(contents, s.provider, s.store, datetime.now(UTC))
        await _attach_audit(s)
        if s.ops.audit:
            s.ops.audit({"event": "keyring.imported", "revision": kr.revision, "versions": n})
        print(
            f"keyring {kr.keyring_id.hex()} restored into {s.store.url} (revision "
            f"{kr.revision}, {n} versions)"
        )
    return 0


def _self_test() -> list[str]:
    from proxy.crypto import selftest

    return selftest.run()


async def keys_rewrap_root(args: argparse.Namespace, settings: Settings) -> int:
    async with session(settings) as s:
        kr = await s.ops.load()
        meta, materials = await wiring.unwrap_everything(s.provider, kr)
        if args.to_kms:
            new: Provider = AwsKmsProvider(
                args.to_kms, settings.keys.kms_region, settings.keys.kms_endpoint
            )
        else:
            path = Path(args.new_root_key_file)
            if not path.exists():
                write_secret_file(path, encode_root_key(os.urandom(32)))
            new = LocalProvider(load_root_key(str(path), None))
        try:
            rewrapped = dataclasses.replace(
                await escrow.rewrap(kr, meta, materials, new),
                revision=kr.revision + 1,
                updated=datetime.now(UTC),
            )
            if not await s.store.save(rewrapped.to_json(), kr.revision):
                raise RefusedError("the keyring changed meanwhile; nothing was re-wrapped, retry")
        finally:
            await new.close()
        if s.ops.audit:
            s.ops.audit(
                {
                    "event": "keyring.root_rewrapped",
                    "revision": kr.revision + 1,
                    "provider": new.describe()["type"],
                }
            )
        target = args.to_kms or args.new_root_key_file
        print(
            f"every version is now wrapped by {target}; point keys.root_key_file (or "
            "keys.provider/kms_key_id) at it on every sidecar and restart them one by one"
        )
    return 0


async def keys_escrow_keygen(args: argparse.Namespace, settings: Settings) -> int:
    priv, pub = escrow.generate_identity()
    write_secret_file(Path(args.out + ".key"), priv)
    Path(args.out + ".pub").write_text(pub)
    print(
        f"wrote {args.out}.key (keep it offline) and {args.out}.pub (configure it as "
        "keys.escrow_recipient or pass it to `veil keys export --recipient`)"
    )
    return 0
