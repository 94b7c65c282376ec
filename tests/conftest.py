"""Shared fixtures: real servers live in tests/servers.py; keyring helpers here."""

from __future__ import annotations

pytest_plugins = ["tests.servers", "tests.keyfixtures"]
