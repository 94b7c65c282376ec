"""``veil serve``: run the sidecar until SIGTERM/SIGINT (SIGHUP reloads config and keyring)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from proxy import logs
from proxy.app import App
from proxy.config import Settings, load_settings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the sidecar: RESP, S3 and admin listeners",
        description="Run the sidecar: the RESP listener, the S3 listener (each can "
        "be `off`) and the admin listener.",
    )
    p.add_argument(
        "--log-format",
        choices=("json", "text"),
        default="json",
        help="log lines as JSON objects (default) or plain text",
    )
    p.set_defaults(handler=serve, event_loop="uvloop")


async def serve(args: argparse.Namespace, settings: Settings) -> int:
    logs.configure(logging.DEBUG if args.verbose else logging.INFO, args.log_format == "json")
    await App(settings, load_settings=lambda: load_settings(args.config)).serve_forever()
    return 0
