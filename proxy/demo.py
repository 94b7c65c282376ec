"""``veil demo``: veil on its embedded default, with nothing to install.

Starts a real ``redis-server`` when one is on PATH (else fakeredis's TCP server), an in-process
moto S3 server, a local keyring under ``./.veil-demo/``, and veil in front of both; prints the
endpoints and copy-paste commands that show a value going in as plaintext and lying upstream as
ciphertext, and a rotation happening live. Ctrl-C stops everything.

The demo extra (``pip install -e '.[demo]'``) brings fakeredis and moto; the production image
leaves them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.app import App
from proxy.config import Settings, load_settings
from proxy.errors import ConfigError

DEMO_ACCESS_KEY = "veil-demo"
DEMO_SECRET_KEY = "veil-demo-secret-key"
BUCKET = "demo"


def port_or_free(preferred: int) -> int:
    """``preferred`` if it is free on loopback, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port")


@contextlib.contextmanager
def redis_upstream(workdir: Path) -> Iterator[tuple[int, str]]:
    """A real redis-server if installed, else fakeredis's TCP server: (port, description)."""
    port = port_or_free(6379)
    exe = shutil.which("redis-server")
    if exe is not None:
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield port, f"redis-server {exe}"
        finally:
            proc.terminate()
            proc.wait(10)
        return
    try:
        from fakeredis import TcpFakeServer
    except ImportError:
        raise ConfigError(
            "veil demo needs redis-server on PATH or the demo extra (pip install -e '.[demo]')"
        ) from None
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port, "fakeredis (no redis-server on PATH)"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def s3_upstream() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise ConfigError("veil demo needs the demo extra (pip install -e '.[demo]')") from None
    from proxy import _moto_conditions

    _moto_conditions.install()  # the rewrap's pinned self-copy, as S3 answers it
    port = port_or_free(5000)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def write_config(workdir: Path, redis_port: int, s3_url: str) -> Path:
    ports = {"resp": port_or_free(6380), "s3": port_or_free(9000), "admin": port_or_free(9090)}
    config = workdir / "veil.toml"
    config.write_text(f"""# written by `veil demo`; use it with: VEIL_CONFIG={config} veil ...
[redis]
listen = "127.0.0.1:{ports["resp"]}"
upstream = "redis://127.0.0.1:{redis_port}/0"
plaintext = ["counter:*"]

[s3]
listen = "127.0.0.1:{ports["s3"]}"
upstream = "{s3_url}"
access_key = "{DEMO_ACCESS_KEY}"
secret_key = "{DEMO_SECRET_KEY}"
upstream_access_key = "testing"
upstream_secret_key = "testing"

[admin]
listen = "127.0.0.1:{ports["admin"]}"

[keys]
store = "file:{workdir / "keyring.json"}"
root_key_file = "{workdir / "root.key"}"
local_copy = "{workdir / "keyring.sealed"}"
propagation_delay = "0s"
grace_period = "0s"
destroy_min_age = "0s"

[reencrypt]
rate = 1000

[audit]
path = "{workdir / "audit.jsonl"}"
""")
    os.chmod(config, 0o600)
    return config


def banner(s: Settings, config: Path, redis_port: int, redis_kind: str, s3_url: str) -> str:
    assert s.redis.listen and s.s3.listen and s.admin.listen
    rp, sp, ap = s.redis.listen.port, s.s3.listen.port, s.admin.listen.port
    env = f"VEIL_CONFIG={config}"
    aws = (
        f"AWS_ACCESS_KEY_ID={DEMO_ACCESS_KEY} AWS_SECRET_ACCESS_KEY={DEMO_SECRET_KEY} "
        f"aws --endpoint-url http://127.0.0.1:{sp}"
    )
    raw = "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing aws --endpoint-url " + s3_url
    return f"""
veil demo is running (Ctrl-C stops everything)

  RESP (your Redis client)  127.0.0.1:{rp}   -> {redis_kind} on 127.0.0.1:{redis_port}
  S3 (endpoint_url)         http://127.0.0.1:{sp}   -> moto on {s3_url}
  admin / metrics           http://127.0.0.1:{ap}/metrics
  keyring, audit log        {config.parent}/

A value goes in as plaintext ... and lies in Redis as ciphertext:
  redis-cli -p {rp} SET greeting "hello, veil"
  redis-cli -p {rp} GET greeting
  redis-cli -p {redis_port} GET greeting          # the real Redis: an envelope, not your text

An object goes up as plaintext ... and lies in S3 as ciphertext:
  echo "hello, veil" > hello.txt
  {aws} s3 cp hello.txt s3://{BUCKET}/hello.txt
  {aws} s3 cp s3://{BUCKET}/hello.txt -
  {raw} s3 cp s3://{BUCKET}/hello.txt - | head -c 64 | od -c | head -3

A rotation, live (clients notice nothing):
  {env} veil keys rotate
  {env} veil keys promote 2
  {env} veil reencrypt status --wait
  {env} veil keys list
  redis-cli -p {rp} GET greeting                  # still "hello, veil", now under version 2
"""


async def _create_bucket(s: Settings, s3_url: str) -> None:
    """The demo bucket, created upstream (bucket operations pass through veil anyway)."""
    import aiohttp

    from protocols.s3.sigv4 import Credentials, sign

    host = s3_url.split("//", 1)[1]
    signed = sign(
        "PUT",
        f"/{BUCKET}",
        "",
        [("host", host)],
        "UNSIGNED-PAYLOAD",
        Credentials("testing", "testing"),
        s.s3.region,
        datetime.now(UTC),
    )
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{s3_url}/{BUCKET}", headers={"host": host, **dict(signed.headers)}) as r,
    ):
        await r.read()


async def run(workdir: Path) -> int:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log
    workdir.mkdir(parents=True, exist_ok=True)
    with redis_upstream(workdir) as (redis_port, redis_kind), s3_upstream() as s3_url:
        config = write_config(workdir, redis_port, s3_url)
        settings = load_settings(str(config), {})
        from proxy import wiring

        store = wiring.build_store(settings.keys)
        provider = wiring.build_provider(settings.keys, create_root=True)
        await wiring.build_ops(settings, store, provider).init([])
        await store.close()
        await _create_bucket(settings, s3_url)
        app = App(settings)
        await app.start()
        print(banner(settings, config, redis_port, redis_kind, s3_url), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("\nstopping veil demo ...", file=sys.stderr)
        await app.stop(grace=5)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="veil in front of an embedded Redis and S3: try it now", description=__doc__
    )
    p.add_argument("--dir", default=".veil-demo", help="where the demo keeps its keyring")
    p.set_defaults(handler=handle)


async def handle(args: Any, settings: Settings) -> int:
    return await run(Path(args.dir).resolve())
