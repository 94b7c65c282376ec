"""Fixtures for the S3 proxy tests: veil in a background thread in front of moto, real clients.

* ``veil_s3`` (session): veil (``App`` with the S3 and admin listeners) on its own event loop in
  a thread, upstream = the session's moto server over HTTP; ``.url``, ``.run(coro)``.
* ``client`` / ``direct``: boto3 clients through veil and straight to moto (the upstream, to
  assert what is stored).
* ``bucket``: a fresh bucket per test (created upstream).

Every test module imports what it uses from here; the helpers assert ciphertext upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from botocore.config import Config

from proxy.app import App, Context
from proxy.config import Settings
from proxy.crypto.objects import plaintext_size, stored_size
from tests.servers import MotoServer, free_port, init_keyring, veil_settings

T = TypeVar("T")
ACCESS_KEY = "veil-client"
SECRET_KEY = "veil-client-secret"
REGION = "us-east-1"


@dataclass
class VeilThread:
    """veil running ``App(settings)`` on an event loop of its own, in a daemon thread."""

    settings: Settings
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    app: App | None = None
    ctx: Context | None = None
    thread: threading.Thread | None = None

    def start(self) -> VeilThread:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.app = App(self.settings)
            try:
                self.ctx = self.loop.run_until_complete(self.app.start())
            except BaseException as e:  # surfaced to the starting thread
                errors.append(e)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="veil", daemon=True)
        self.thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.app is not None:
            with contextlib.suppress(Exception):
                self.run(self.app.stop(2.0))
        with contextlib.suppress(Exception):
            self.run(_cancel_others())
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(10)

    def address(self, name: str = "s3") -> tuple[str, int]:
        assert self.ctx is not None
        return self.ctx.listeners[name].address

    @property
    def url(self) -> str:
        host, port = self.address()
        scheme = "https" if self.settings.s3.tls_cert else "http"
        return f"{scheme}://{host}:{port}"


async def _cancel_others() -> None:
    """Finish the connection tasks a stopped listener leaves (idle keep-alive clients)."""
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


def start_veil(tmp: Path, moto: MotoServer, **s3: object) -> VeilThread:
    settings = veil_settings(
        tmp,
        s3={
            "listen": f"127.0.0.1:{free_port()}",
            "upstream": moto.url,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "upstream_access_key": "testing",
            "upstream_secret_key": "testing",
            **s3,
        },
    )
    assert isinstance(settings, Settings)
    asyncio.run(init_keyring(settings))
    return VeilThread(settings).start()


def s3_client(url: str, **config: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(retries={"max_attempts": 1}, **config),
    )


def direct_client(moto: MotoServer) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name=REGION,
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="session")
def veil_s3(
    tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer
) -> Iterator[VeilThread]:
    veil = start_veil(tmp_path_factory.mktemp("veil-s3"), moto_server)
    yield veil
    veil.stop()


@pytest.fixture(scope="session")
def client(veil_s3: VeilThread) -> Any:
    return s3_client(veil_s3.url)


@pytest.fixture(scope="session")
def direct(moto_server: MotoServer) -> Any:
    return direct_client(moto_server)


# keys that tests write straight to the upstream as plaintext (legacy objects)
LEGACY_KEYS = frozenset({"old"})


@pytest.fixture
def bucket(direct: Any) -> Iterator[str]:
    """A fresh bucket; afterwards, every object in it must be veil ciphertext upstream."""
    name = "veil-" + uuid.uuid4().hex[:16]
    direct.create_bucket(Bucket=name)
    yield name
    for entry in direct.list_objects_v2(Bucket=name).get("Contents", []):
        if entry["Key"] in LEGACY_KEYS:
            continue
        head = direct.head_object(Bucket=name, Key=entry["Key"])
        assert "veil-env" in head["Metadata"], entry["Key"]
        plaintext_size(entry["Size"])  # a size only a veil object can have


# --- assertions on what the upstream holds ----------------------------------------------------


def stored(direct: Any, bucket: str, key: str) -> tuple[dict[str, Any], bytes]:
    """(HEAD answer, body) of the object as the upstream holds it."""
    head = direct.head_object(Bucket=bucket, Key=key)
    body = direct.get_object(Bucket=bucket, Key=key)["Body"].read()
    return head, body


def assert_ciphertext(
    direct: Any, bucket: str, key: str, plaintext: bytes, parts: list[int] | None = None
) -> dict[str, Any]:
    """The upstream holds veil ciphertext of ``plaintext`` (single PUT, or these part sizes)."""
    head, body = stored(direct, bucket, key)
    assert "veil-env" in head["Metadata"], head["Metadata"]
    expected = stored_size(len(plaintext)) if parts is None else sum(stored_size(p) for p in parts)
    assert len(body) == expected
    assert body != plaintext
    if len(plaintext) >= 32:
        assert plaintext[:32] not in body
    return head


def assert_nothing_stored(direct: Any, bucket: str, key: str) -> None:
    listed = direct.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
    assert [o["Key"] for o in listed if o["Key"] == key] == []
