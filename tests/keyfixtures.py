"""Keyring fixtures: a local-provider keyring in a temp dir, with a controllable clock."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proxy.keys.lifecycle import Policy
from proxy.keys.ops import KeyOps
from proxy.keys.providers import LocalProvider
from proxy.keys.stores import FileStore, KeyringStore


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def root_key() -> bytes:
    return os.urandom(32)


def make_ops(store: KeyringStore, root_key: bytes, clock: Clock, **policy: float) -> KeyOps:
    return KeyOps(
        store=store,
        provider=LocalProvider(root_key),
        policy=Policy(**policy),  # type: ignore[arg-type]
        heartbeat_interval=0.1,
        propagation_delay=0.0,
        clock=clock,
    )


@pytest.fixture
def file_ops(tmp_path: Path, root_key: bytes, clock: Clock) -> KeyOps:
    return make_ops(FileStore(str(tmp_path / "keyring.json")), root_key, clock)
