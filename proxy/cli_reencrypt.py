"""``veil reencrypt status|start|pause|resume`` (SPEC 2, 8, 12)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

from proxy import wiring
from proxy.config import Settings
from proxy.errors import RefusedError, UsageError
from proxy.keys.model import Keyring
from proxy.rotation import commands


def register(sub: Any) -> None:
    re = sub.add_parser("reencrypt", help="the migration off old key versions")
    rs = re.add_subparsers(dest="reencrypt_command", required=True, parser_class=type(re))

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = rs.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="machine-readable output (SPEC 12)")
        p.add_argument(
            "--admin",
            metavar="URL",
            help="through a running sidecar's admin API (token: VEIL_ADMIN_TOKEN)",
        )
        p.set_defaults(handler=run, action=name)
        return p

    p = cmd("status", "progress per store, with an ETA")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until every store is complete (exit 0), or --timeout (exit 3)",
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    p = cmd("start", "start a migration pass now")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="what would happen: versions, item counts, estimated duration",
    )
    cmd("pause", "pause the migration (it resumes where it stopped)")
    cmd("resume", "resume a paused migration, or one stopped by its circuit breaker")


def _line(name: str, st: dict[str, Any]) -> str:
    remaining = ", ".join(f"v{k}: {n}" for k, n in sorted(st["remaining"].items())) or "none"
    eta = "" if st["eta_seconds"] in (None, 0) else f"  eta {st['eta_seconds']}s"
    blocked = ", ".join(f"{k} {n}" for k, n in st["unmigratable"].items())
    return (
        f"{name:<6} {st['state']:<12} scanned {st['scanned']:>10,}  migrated "
        f"{st['migrated']:>10,}  left on old versions: {remaining}"
        f"{'  unmigratable: ' + blocked if blocked else ''}"
        f"{'  COMPLETE' if st['complete'] else ''}{eta}"
    )


def _print(body: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(body, indent=2))
        return
    print(f"migration: {body['state']}")
    for name, st in body["stores"].items():
        print("  " + _line(name, st))


async def _call(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """One status read or control action, directly on the store or via --admin."""
    if args.admin:
        from proxy.admin import client

        token = settings.admin.tokens.get("default")
        method, path = (
            ("GET", "/v1/reencrypt")
            if args.action == "status"
            else ("POST", f"/v1/reencrypt/{args.action}")
        )
        return await client.call(
            args.admin,
            method,
            path,
            token.reveal() if token else None,
            None if method == "GET" else {},
        )
    store = wiring.build_store(settings.keys)
    names = commands.stores_of(settings)
    try:
        action = {
            "status": lambda: commands.status(store, names),
            "start": lambda: commands.start(store, names, datetime.now(UTC)),
            "pause": lambda: commands.pause(store, names, datetime.now(UTC)),
            "resume": lambda: commands.resume(store, names, datetime.now(UTC)),
        }
        return await action[args.action]()
    finally:
        await store.close()


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "dry_run", False):
        if args.admin:
            raise UsageError("--dry-run reads the keyring store directly, not with --admin")
        store = wiring.build_store(settings.keys)
        try:
            doc = await store.load()
        finally:
            await store.close()
        if doc is None:
            raise RefusedError("no keyring: run `veil keys init` first")
        plan = commands.dry_run(
            Keyring.from_json(doc), commands.stores_of(settings), settings.reencrypt.rate
        )
        if args.json:
            print(json.dumps(plan, indent=2))
        else:
            for v in plan["versions"]:
                items = ", ".join(f"{k} {'?' if n is None else n}" for k, n in v["items"].items())
                print(
                    f"{v['class']} v{v['version']} ({v['state']}"
                    f"{', compromised' if v['compromised'] else ''}): {items}"
                    f"{'  complete' if v['complete'] else ''}"
                )
            eta = plan["estimated_seconds"]
            print(
                f"{plan['items']} items to move at {plan['rate']:g}/s"
                f"{f': about {eta}s' if eta is not None else ''}; nothing was changed"
            )
        return 0
    body = await _call(args, settings)
    if args.action != "status" or not args.wait:
        _print(body, args.json)
        return 0
    loop = asyncio.get_running_loop()
    deadline = None if args.timeout is None else loop.time() + args.timeout
    tty = sys.stdout.isatty() and not args.json
    while not (body["stores"] and all(s["complete"] for s in body["stores"].values())):
        if deadline is not None and loop.time() >= deadline:
            _print(body, args.json)
            raise RefusedError("migration not complete before --timeout")
        if tty:
            lines = " | ".join(_line(n, s) for n, s in body["stores"].items())
            print("\r" + lines[:200], end="", flush=True)
        await asyncio.sleep(1.0)
        body = await _call(args, settings)
    if tty:
        print()
    _print(body, args.json)
    return 0
