"""``veil serve`` in-process: the composition root and the admin listener's core endpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp

from proxy.app import App
from proxy.config import Settings
from tests.servers import free_port, init_keyring, veil_settings, wait_port


async def test_app_serves_health_ready_metrics_and_keys(tmp_path: Path) -> None:
    settings = veil_settings(tmp_path)
    assert isinstance(settings, Settings)
    await init_keyring(settings)
    app = App(settings)
    ctx = await app.start()
    try:
        host, port = ctx.listeners["admin"].address
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
                assert "veil_keyring_revision 1.0" in text
                assert 'veil_keyring_versions{state="active"} 2.0' in text
            async with http.get(f"{base}/v1/keys") as r:
                body = await r.json()
                assert body["versions"][0]["state"] == "active"
            async with http.get(f"{base}/v1/keys?class=nope") as r:
                assert r.status == 404
        events = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert events[0]["event"] == "sidecar.started" and events[0]["actor"] == "veil"
    finally:
        await app.stop()


def test_veil_serve_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    port = free_port()
    env.update(
        {
            "VEIL_REDIS_LISTEN": "off",
            "VEIL_S3_LISTEN": "off",
            "VEIL_ADMIN_LISTEN": f"127.0.0.1:{port}",
        }
    )
    subprocess.run(["veil", "keys", "init"], cwd=tmp_path, env=env, check=True, capture_output=True)
    proc = subprocess.Popen(["veil", "serve"], cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(x) for x in (tmp_path / "veil-audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events][-1] == "sidecar.stopping"
    time.sleep(0)
