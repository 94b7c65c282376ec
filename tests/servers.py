"""THE fixture module: real servers on free loopback ports (STYLE habit 8).

* ``redis_server`` -- a real ``redis-server`` (session-scoped, no persistence);
  ``durable_redis`` -- one with ``--appendonly yes --appendfsync always`` for tests that restart it.
* ``moto_server`` -- moto's threaded server over HTTP (S3 and KMS), session-scoped.

A missing ``redis-server`` FAILS with the install step (``.ci/run`` installs it): a skip would
hide a missing feature.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REDIS_INSTALL_HINT = "redis-server not found: apt-get install -y redis-server (see .ci/run)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class RedisServer:
    """A real redis-server process; ``restart()`` keeps the port (and the AOF, if durable)."""

    durable: bool = False
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="veil-redis-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(REDIS_INSTALL_HINT, pytrace=False)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.dir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                *persistence,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return out.stdout.strip()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class MotoServer:
    port: int
    server: object

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        import urllib.request

        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).read()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    server = RedisServer(durable=True).start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A flushed database on the session's redis-server."""
    redis_server.cli("FLUSHALL")
    return redis_server.url


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    from moto.server import ThreadedMotoServer

    from proxy import _moto_conditions

    _moto_conditions.install()  # conditional copies as S3 answers them
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_port(port)
    yield MotoServer(port, server)
    server.stop()


# --- veil itself ----------------------------------------------------------------------------


def veil_settings(tmp: Path, **sections: dict[str, object]) -> object:
    """Settings for an in-process veil in ``tmp``: local keyring there, every listener on a
    free port (``off`` unless a test asks for it), audit log in ``tmp``."""
    from proxy.config import parse_settings

    data: dict[str, dict[str, object]] = {
        "redis": {"listen": "off"},
        "s3": {"listen": "off"},
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "keys": {
            "store": f"file:{tmp / 'keyring.json'}",
            "root_key_file": str(tmp / "root.key"),
            "local_copy": str(tmp / "keyring.sealed"),
            "propagation_delay": "0s",
        },
        "audit": {"path": str(tmp / "audit.jsonl")},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_settings(data, {})


async def init_keyring(settings: object) -> None:
    """``veil keys init`` for these settings, in-process."""
    from proxy import wiring

    s = settings  # Settings
    store = wiring.build_store(s.keys)  # type: ignore[attr-defined]
    provider = wiring.build_provider(s.keys, create_root=True)  # type: ignore[attr-defined]
    ops = wiring.build_ops(s, store, provider)  # type: ignore[arg-type]
    await ops.init([c.name for c in s.keys.classes])  # type: ignore[attr-defined]
    await store.close()


# --- veil's RESP listener in a thread of its own (sync and asyncio clients alike) -------------


@dataclass
class VeilResp:
    """An in-process veil (``App``) with its RESP listener, on an event loop in a thread.

    ``client()`` is a redis-py client through veil, ``direct()`` one to the upstream itself
    (to assert what Redis really holds).
    """

    upstream: RedisServer
    port: int
    app: object
    loop: object
    thread: object

    def client(self, **kw: object) -> object:
        import redis

        return redis.Redis(port=self.port, socket_timeout=10, **kw)  # type: ignore[arg-type]

    def direct(self, **kw: object) -> object:
        import redis

        return redis.Redis(port=self.upstream.port, socket_timeout=10, **kw)  # type: ignore[arg-type]

    def call(self, coro: object, timeout: float = 30) -> object:
        import asyncio

        future = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def stop(self) -> None:
        self.call(self.app.stop(grace=1.0))  # type: ignore[attr-defined]
        self.loop.call_soon_threadsafe(self.loop.stop)  # type: ignore[attr-defined]
        self.thread.join(10)  # type: ignore[attr-defined]


def start_veil_resp(
    tmp: Path, upstream: RedisServer, migrate: bool = True, **redis: object
) -> VeilResp:
    """veil in a thread, fronting ``upstream``; ``redis`` overrides ``[redis]`` settings.
    ``migrate=False``: no background walk (lazy re-encryption still runs)."""
    import asyncio
    import threading

    from proxy.app import App

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="veil-resp", daemon=True)
    thread.start()
    section: dict[str, object] = {"listen": "127.0.0.1:0", "upstream": upstream.url}
    section.update(redis)
    settings = veil_settings(tmp, redis=section, admin={"listen": "off"})

    async def boot() -> tuple[object, int]:
        await init_keyring(settings)
        app = App(settings, migrate=migrate)  # type: ignore[arg-type]
        ctx = await app.start()
        return app, ctx.listeners["resp"].address[1]

    app, port = asyncio.run_coroutine_threadsafe(boot(), loop).result(60)
    return VeilResp(upstream, port, app, loop, thread)


@pytest.fixture
def veil_resp(tmp_path: Path, redis_server: RedisServer) -> Iterator[VeilResp]:
    """veil (default settings: every key encrypted) in front of the flushed session Redis."""
    redis_server.cli("FLUSHALL")
    veil = start_veil_resp(tmp_path, redis_server)
    yield veil
    veil.stop()
