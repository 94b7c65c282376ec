"""Admin API key endpoints (SPEC 9): tokens, actors, refusals, and the CLI's --admin form."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.app import App, Context
from proxy.config import Settings
from tests.servers import init_keyring, veil_settings

TOKEN = "ops-token-0123456789abcdef"


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[tuple[Context, str]]:
    settings = veil_settings(
        tmp_path, admin={"tokens": {"ops": TOKEN, "ci": "ci-token-0123456789"}}
    )
    assert isinstance(settings, Settings)
    await init_keyring(settings)
    app = App(settings)
    ctx = await app.start()
    host, port = ctx.listeners["admin"].address
    try:
        yield ctx, f"http://{host}:{port}"
    finally:
        await app.stop()


async def post(
    base: str, path: str, body: dict[str, Any] | None = None, token: str | None = TOKEN
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(base + path, json=body or {}, headers=headers) as r,
    ):
        return r.status, await r.json()


async def get(base: str, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(base + path) as r:
        return r.status, await r.json()


def states(body: dict[str, Any], key: str = "versions") -> dict[int, str]:
    return {v["version"]: v["state"] for v in body[key]}


async def test_tokens_are_required_and_named(sidecar: tuple[Context, str], tmp_path: Path) -> None:
    ctx, base = sidecar
    assert (await post(base, "/v1/keys/rotate", token=None))[0] == 401
    status, body = await post(base, "/v1/keys/rotate", token="wrong-token-000000000")
    assert status == 403 and body == {"error": "wrong token"}
    status, body = await post(base, "/v1/keys/rotate")
    assert status == 200 and states(body) == {1: "active", 2: "pending"}
    assert ctx.runtime.keyset.revision == body["revision"]  # this sidecar reloaded at once
    events = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    rotated = [e for e in events if e["event"] == "key.rotated"]
    assert rotated and rotated[0]["actor"] == "ops"
    assert any(e["event"] == "admin.call" and e["actor"] == "ops" for e in events)


async def test_lifecycle_and_refusals(sidecar: tuple[Context, str]) -> None:
    _, base = sidecar
    await post(base, "/v1/keys/rotate")
    status, body = await post(base, "/v1/keys/2/promote", {"wait": 1})
    assert status == 200 and states(body) == {1: "retired", 2: "active"}
    status, body = await post(base, "/v1/keys/1/revoke")
    assert status == 409 and "grace period" in body["error"]
    assert (await post(base, "/v1/keys/2/retire"))[0] == 409
    assert (await post(base, "/v1/keys/9/promote"))[0] == 409
    assert (await post(base, "/v1/keys/x/promote"))[0] == 400
    assert (await post(base, "/v1/keys/1/explode"))[0] == 404
    assert (await post(base, "/v1/keys/1/revoke", {"force": "yes"}))[0] == 400
    status, body = await post(base, "/v1/keys/1/revoke", {"force": True})
    assert status == 200 and states(body)[1] == "revoked"
    status, body = await post(base, "/v1/keys/rotate", {"if_revision": 1})
    assert status == 409 and "revision" in body["error"]
    status, body = await post(base, "/v1/index-keys/rotate")
    assert status == 200 and states(body, "index_versions") == {1: "active", 2: "pending"}
    status, body = await post(
        base, "/v1/keys/freeze", {"until": "2099-01-01T00:00:00Z", "reason": "incident"}
    )
    assert status == 200 and body["frozen_until"] == "2099-01-01T00:00:00Z"
    assert (await post(base, "/v1/keys/unfreeze"))[0] == 200
    status, body = await get(base, "/v1/keys")
    assert status == 200 and body["frozen_until"] is None


async def veil(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "veil",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_admin_form_matches_the_direct_form(
    sidecar: tuple[Context, str], tmp_path: Path
) -> None:
    _, base = sidecar
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env.update(
        {
            "VEIL_ADMIN_TOKEN": TOKEN,
            "VEIL_KEYS_STORE": f"file:{tmp_path / 'keyring.json'}",
            "VEIL_KEYS_ROOT_KEY_FILE": str(tmp_path / "root.key"),
            "VEIL_KEYS_PROPAGATION_DELAY": "0s",
        }
    )
    code, out, _ = await veil("keys", "rotate", "--admin", base, env=env, cwd=tmp_path)
    assert code == 0 and "pending" in out
    code, via_admin, _ = await veil(
        "keys", "list", "--json", "--admin", base, env=env, cwd=tmp_path
    )
    code2, direct, _ = await veil("keys", "list", "--json", env=env, cwd=tmp_path)
    assert code == code2 == 0 and json.loads(via_admin) == json.loads(direct)
    code, _, err = await veil("keys", "revoke", "2", "--admin", base, env=env, cwd=tmp_path)
    assert code == 3 and err.startswith("veil: ")
    code, _, _ = await veil(
        "keys",
        "promote",
        "2",
        "--admin",
        base,
        env={**env, "VEIL_ADMIN_TOKEN": "not-the-token-000000"},
        cwd=tmp_path,
    )
    assert code == 5
    code, _, _ = await veil(
        "keys", "promote", "2", "--admin", "http://127.0.0.1:9", env=env, cwd=tmp_path
    )
    assert code == 4
