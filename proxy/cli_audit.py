"""``veil audit verify`` and ``veil audit report`` (SPEC 11)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy import wiring
from proxy.audit import verify
from proxy.config import Settings
from proxy.errors import RefusedError, UsageError
from proxy.keys.model import Keyring, parse_time, rfc3339
from proxy.keys.runtime import unwrap_meta

ANCHOR_PREFIX = "audit-anchor:"


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify the audit log; a lifecycle report for auditors")
    a = audit.add_subparsers(dest="audit_command", required=True, parser_class=type(audit))
    p = a.add_parser(
        "verify",
        help="check every chain of an audit log (MACs, order, anchors)",
        description="Checks every chain in the log: each entry's MAC under its "
        "evolving key, sequence numbers and hash links; with --anchors, also that no "
        "chain ends before the head it published to the keyring store.",
    )
    p.add_argument("path", nargs="?", help="audit log (default: audit.path)")
    p.add_argument(
        "--anchors",
        action="store_true",
        help="compare chain heads with the anchors in the keyring store",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=audit_verify)
    p = a.add_parser(
        "report",
        help="when each key version was created, activated, retired, "
        "revoked and destroyed, with the migration-complete proof",
    )
    p.add_argument("--since", help="RFC 3339 time: only events from then on")
    p.add_argument("--path", help="audit log (default: audit.path)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=audit_report)


async def _keyring(settings: Settings) -> tuple[Keyring, bytes, Any]:
    store = wiring.build_store(settings.keys)
    provider = wiring.build_provider(settings.keys)
    try:
        doc = await store.load()
        if doc is None:
            raise RefusedError(f"no keyring in {store.url}")
        kr = Keyring.from_json(doc)
        provider.check(kr.provider)
        return kr, await unwrap_meta(provider, kr), store
    finally:
        await provider.close()


def _log_path(settings: Settings, path: str | None) -> Path:
    p = path or settings.audit.path
    if p == "stdout":
        raise UsageError("audit.path is stdout: pass the collected log file's path")
    return Path(p)


async def audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    _, meta, store = await _keyring(settings)
    try:
        anchors = None
        if args.anchors:
            raw = await store.list_state(ANCHOR_PREFIX)
            anchors = {k[len(ANCHOR_PREFIX) :]: v for k, v in raw.items()}
    finally:
        await store.close()
    path = _log_path(settings, args.path)
    with path.open("rb") as f:
        chains = verify(f, meta, anchors)
    bad = {sid: rep for sid, rep in chains.items() if rep.problems}
    if args.json:
        print(
            json.dumps(
                {
                    sid: {"entries": r.entries, "head_seq": r.head_seq, "problems": r.problems}
                    for sid, r in chains.items()
                },
                indent=2,
            )
        )
    else:
        entries = sum(r.entries for r in chains.values())
        print(
            f"{path}: {len(chains)} chains, {entries} entries, "
            f"{'anchors checked' if anchors is not None else 'anchors not checked'}"
        )
        for sid, rep in sorted(bad.items()):
            for problem in rep.problems:
                print(f"  {sid}: {problem}")
    if bad:
        raise RefusedError(f"audit log fails verification ({len(bad)} chains with problems)")
    return 0


def _events(path: Path, since: datetime | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        t = parse_time(e.get("time"))
        if since is None or (t is not None and t >= since):
            out.append(e)
    return out


async def audit_report(args: argparse.Namespace, settings: Settings) -> int:
    since = parse_time(args.since) if args.since else None
    kr, _, store = await _keyring(settings)
    await store.close()
    events = _events(_log_path(settings, args.path), since)
    versions: list[dict[str, Any]] = []
    for c, kind, v in kr.all_versions():
        steps = [
            e
            for e in events
            if e.get("class") == c.name
            and e.get("kind") == kind.value
            and e.get("version") == v.version
        ]
        versions.append(
            {
                "class": c.name,
                "kind": kind.value,
                "version": v.version,
                "state": v.state.value,
                "compromised": v.compromised,
                "created": rfc3339(v.created),
                "activated": rfc3339(v.activated),
                "retired": rfc3339(v.retired),
                "revoked": rfc3339(v.state_since) if v.state.value == "revoked" else None,
                "destroyed": rfc3339(v.state_since) if v.state.value == "destroyed" else None,
                "migration_complete": rfc3339(v.migration_complete),
                "events": [
                    {
                        "time": e.get("time"),
                        "event": e.get("event"),
                        "actor": e.get("actor"),
                        **{
                            k: e[k]
                            for k in ("forced", "items_abandoned", "pass_id", "by")
                            if k in e
                        },
                    }
                    for e in steps
                ],
            }
        )
    report = {
        "keyring_id": kr.keyring_id.hex(),
        "revision": kr.revision,
        "generated": rfc3339(datetime.now(UTC)),
        "since": rfc3339(since),
        "versions": versions,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"keyring {report['keyring_id']} (revision {kr.revision}), report of {report['generated']}"
    )
    for row in versions:
        print(
            f"\n{row['class']} {row['kind']} v{row['version']}: {row['state']}"
            f"{'  COMPROMISED' if row['compromised'] else ''}"
        )
        for label in (
            "created",
            "activated",
            "retired",
            "migration_complete",
            "revoked",
            "destroyed",
        ):
            if row[label]:
                print(f"  {label:<19} {row[label]}")
        for e in row["events"]:
            extra = ", ".join(
                f"{k}={e[k]}" for k in ("forced", "items_abandoned", "pass_id", "by") if k in e
            )
            print(
                f"    {e['time']}  {e['event']:<20} by {e['actor']}"
                f"{'  (' + extra + ')' if extra else ''}"
            )
    return 0
