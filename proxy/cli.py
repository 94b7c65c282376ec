"""``veil``: the command line (SPEC 2).

Exit codes: 0 ok, 1 internal error, 2 usage or config error, 3 refused by state or
precondition, 4 store/upstream/KMS unreachable, 5 authentication. Errors are one line on stderr
naming what is wrong; key material never appears in any output.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from proxy.config import Settings, load_settings
from proxy.errors import VeilError

Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (SPEC 2)
        self.exit(2, f"veil: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from proxy import cli_audit, cli_inspect, cli_keys, cli_reencrypt, cli_serve, demo

    parser = _Parser(prog="veil", description="Transparent encrypting sidecar for Redis and S3.")
    parser.add_argument("-c", "--config", help="config file (default: $VEIL_CONFIG or ./veil.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    cli_keys.register(sub)
    cli_serve.register(sub)
    cli_audit.register(sub)
    cli_reencrypt.register(sub)
    demo.register(sub)
    cli_inspect.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="veil: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Handler = args.handler
    try:
        settings = load_settings(args.config)  # `veil serve` reports settings.warnings
        if getattr(args, "event_loop", None) == "uvloop":
            return _run_uvloop(handler(args, settings))
        return asyncio.run(handler(args, settings))
    except VeilError as e:
        print(f"veil: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `veil ... | head`: the reader left; not an error worth a line
        return 0
    except Exception as e:  # internal: name the type, never a value
        logging.getLogger("veil").debug("internal error", exc_info=True)
        print(
            f"veil: internal error ({type(e).__name__}); rerun with -v for details", file=sys.stderr
        )
        return 1


def _run_uvloop(coro: Coroutine[Any, Any, int]) -> int:
    """uvloop when installed (10-30% less CPU per command, PERF-NOTES), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    sys.exit(main())
