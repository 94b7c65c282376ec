"""``veil serve`` and its signals (SPEC 9, issue 6), as an operator's supervisor sends them.

SIGTERM mid-load: stop accepting, finish what is in flight, exit 0 -- every request that got a
reply (Redis pipelines and S3 PUTs, kept in a ledger by the clients) is in the upstream as
ciphertext and reads back through a fresh sidecar. SIGHUP: a keyring changed by another process
is loaded at once, and the config file's live settings (admin tokens, migration rate) apply while
everything else is named as "takes effect on restart"; a broken file changes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import redis
from botocore.config import Config

from proxy.crypto.envelope import MAGIC
from tests.servers import MotoServer, RedisServer, free_port, wait_port

ACCESS, SECRET = "sig-client", "sig-client-secret"
FREEZE = {"until": "2099-01-01T00:00:00Z", "reason": "signal test"}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}


def serve(cwd: Path, env: dict[str, str], *ports: int) -> subprocess.Popen[bytes]:
    log = (cwd / "veil.log").open("ab")
    proc = subprocess.Popen(
        ["veil", "serve", "--log-format", "text"], cwd=cwd, env=env, stdout=log, stderr=log
    )
    for port in ports:
        wait_port(port, 30)
    return proc


class Ledger:
    """Writers through veil; an entry is added only once its reply came back."""

    def __init__(self, resp: int, s3: int) -> None:
        self.resp, self.s3 = resp, s3
        self.values: dict[str, bytes] = {}
        self.objects: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._redis, args=(w,)) for w in range(3)]
        self.threads.append(threading.Thread(target=self._s3))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(60)

    def _redis(self, worker: int) -> None:
        client = redis.Redis(port=self.resp, socket_timeout=10)
        i = 0
        while True:
            batch = {f"sig:{worker}:{i + j}": os.urandom(12).hex().encode() for j in range(20)}
            i += 20
            pipe = client.pipeline(transaction=False)
            for key, value in batch.items():
                pipe.set(key, value)
            try:
                replies = pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                self.errors.append(type(e).__name__)
                return  # the sidecar went away: what got no reply may be lost
            assert replies == [True] * len(batch)
            with self.lock:
                self.values.update(batch)

    def _s3(self) -> None:
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.s3}",
            region_name="us-east-1",
            aws_access_key_id=ACCESS,
            aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": 1}),
        )
        i = 0
        while True:
            key, body = f"obj-{i}", os.urandom(70_000 + i)
            i += 1
            try:
                s3.put_object(Bucket="sig", Key=key, Body=body)
            except Exception as e:  # connection refused/reset once the sidecar stops
                self.errors.append(type(e).__name__)
                return
            with self.lock:
                self.objects[key] = body


def test_sigterm_mid_load_loses_no_request_that_got_a_reply(
    tmp_path: Path, moto_server: MotoServer
) -> None:
    upstream = RedisServer().start()
    moto_server.reset()
    raw = boto3.client(
        "s3",
        endpoint_url=moto_server.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    raw.create_bucket(Bucket="sig")
    resp, s3, admin = free_port(), free_port(), free_port()
    env = clean_env()
    env.update(
        {
            "VEIL_REDIS_LISTEN": f"127.0.0.1:{resp}",
            "VEIL_REDIS_UPSTREAM": upstream.url,
            "VEIL_S3_LISTEN": f"127.0.0.1:{s3}",
            "VEIL_S3_UPSTREAM": moto_server.url,
            "VEIL_S3_ACCESS_KEY": ACCESS,
            "VEIL_S3_SECRET_KEY": SECRET,
            "VEIL_S3_UPSTREAM_ACCESS_KEY": "testing",
            "VEIL_S3_UPSTREAM_SECRET_KEY": "testing",
            "VEIL_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        }
    )
    subprocess.run(["veil", "keys", "init"], cwd=tmp_path, env=env, check=True, capture_output=True)
    proc = serve(tmp_path, env, resp, s3, admin)
    try:
        ledger = Ledger(resp, s3)
        ledger.start()
        time.sleep(1.5)  # load is running: pipelines and PUTs in flight
        assert ledger.values and ledger.objects
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        took = time.monotonic() - started
        ledger.join()
        # the sidecar is gone: the listener no longer accepts
        try:
            redis.Redis(port=resp, socket_timeout=2).ping()
            raise AssertionError("the RESP port still answers after SIGTERM")
        except redis.ConnectionError:
            pass
        assert took < 15, took  # within the grace period, not a kill
        assert len(ledger.errors) == 4, ledger.errors  # every writer saw the sidecar go away
        # every acknowledged write is upstream, sealed ...
        direct = redis.Redis(port=upstream.port)
        stored = direct.mget(list(ledger.values))
        assert all(v is not None and v[:3] == MAGIC for v in stored)
        for key in ledger.objects:
            body = raw.get_object(Bucket="sig", Key=key)["Body"].read()
            assert body != ledger.objects[key] and ledger.objects[key][:64] not in body
        # ... and reads back, byte for byte, through a fresh sidecar on the same keyring
        proc = serve(tmp_path, env, resp, s3, admin)
        client = redis.Redis(port=resp, socket_timeout=10)
        keys = list(ledger.values)
        assert client.mget(keys) == [ledger.values[k] for k in keys]
        through = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{s3}",
            region_name="us-east-1",
            aws_access_key_id=ACCESS,
            aws_secret_access_key=SECRET,
        )
        for key, body in ledger.objects.items():
            assert through.get_object(Bucket="sig", Key=key)["Body"].read() == body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        upstream.cleanup()
    events = [
        json.loads(x)["event"] for x in (tmp_path / "veil-audit.jsonl").read_text().splitlines()
    ]
    assert events.count("sidecar.stopping") == 2


def admin_call(port: int, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_sighup_reloads_the_keyring_and_the_live_settings(tmp_path: Path) -> None:
    admin = free_port()
    config = tmp_path / "veil.toml"

    def write(token: str, rate: int, extra: str = "") -> None:
        config.write_text(
            '[redis]\nlisten = "off"\n[s3]\nlisten = "off"\n'
            f'[admin]\nlisten = "127.0.0.1:{admin}"\ntokens = {{ ops = "{token}" }}\n'
            '[keys]\nheartbeat_interval = "1h"\nmax_keyring_age = "2h"\n'
            'propagation_delay = "0s"\n'
            f"[reencrypt]\nrate = {rate}\n{extra}"
        )
        config.chmod(0o600)

    old_token, new_token = "old-token-0123456789", "new-token-0123456789"
    write(old_token, 1000)
    env = clean_env()
    subprocess.run(["veil", "keys", "init"], cwd=tmp_path, env=env, check=True, capture_output=True)
    proc = serve(tmp_path, env, admin)
    try:
        assert len(admin_call(admin, "/v1/keys")[1]["versions"]) == 1
        revision = metric(admin, "veil_keyring_revision")
        # another process changes the keyring; this sidecar polls only hourly here
        subprocess.run(["veil", "keys", "rotate"], cwd=tmp_path, env=env, check=True)
        time.sleep(0.5)
        assert len(admin_call(admin, "/v1/keys")[1]["versions"]) == 1
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while len(admin_call(admin, "/v1/keys")[1]["versions"]) != 2:
            assert time.monotonic() < deadline, "SIGHUP did not reload the keyring"
            time.sleep(0.05)
        assert metric(admin, "veil_keyring_revision") > revision
        assert proc.poll() is None  # SIGHUP never stops the sidecar

        # a new token in the file: live after SIGHUP, the old one refused; a changed listener
        # address is reported as needing a restart and not applied
        assert admin_call(admin, "/v1/keys/freeze", old_token, FREEZE)[0] == 200
        assert admin_call(admin, "/v1/keys/unfreeze", old_token, {})[0] == 200
        write(new_token, 50, '[audit]\npath = "elsewhere.jsonl"\n')
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while admin_call(admin, "/v1/keys/freeze", new_token, FREEZE)[0] != 200:
            assert time.monotonic() < deadline, "SIGHUP did not apply the new admin token"
            time.sleep(0.05)
        assert admin_call(admin, "/v1/keys/unfreeze", old_token, {})[0] == 403
        assert admin_call(admin, "/v1/keys/unfreeze", new_token, {})[0] == 200

        # a file that no longer parses changes nothing
        config.write_text("[admin\nthis is not toml")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None
        assert admin_call(admin, "/v1/keys/freeze", new_token, FREEZE)[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "veil.log").read_text()
    assert "admin.tokens changed" in log and "reencrypt.rate changed" in log
    assert "takes effect on restart: audit.path" in log
    assert "config reload failed, the running configuration stays" in log
    assert old_token not in log and new_token not in log
    events = [json.loads(x) for x in (tmp_path / "veil-audit.jsonl").read_text().splitlines()]
    reloads = [e for e in events if e["event"].startswith("config.")]
    assert [e["event"] for e in reloads] == ["config.reloaded", "config.reload_failed"]
    assert reloads[0]["applied"] == ["reencrypt.rate", "admin.tokens"]
    assert reloads[0]["restart_required"] == ["audit.path"]
    assert not (tmp_path / "elsewhere.jsonl").exists()
