"""Rotation as a non-event, end to end (issue 5): two `veil serve` sidecars sharing one
redis:// keyring store, clients reading and writing through both while keys rotate, an
emergency revocation under load, the lease holder killed mid-walk, a stale keyring."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from botocore.config import Config

from proxy.crypto import meta
from proxy.crypto.envelope import HEADER, MAGIC
from tests.servers import MotoServer, RedisServer, free_port, wait_port

ACCESS, SECRET = "e2e-client", "e2e-client-secret"


@dataclass
class Sidecar:
    name: str
    env: dict[str, str]
    resp: int
    s3: int
    admin: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> Sidecar:
        log = (cwd / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            ["veil", "serve", "--log-format", "text"], cwd=cwd, env=self.env, stdout=log, stderr=log
        )
        for port in (self.resp, self.s3, self.admin):
            wait_port(port, 30)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(30)

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis(port=self.resp, socket_timeout=10)

    def s3_client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.s3}",
            region_name="us-east-1",
            aws_access_key_id=ACCESS,
            aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": 1}),
        )


@dataclass
class Cluster:
    dir: Path
    upstream: RedisServer
    moto: MotoServer
    base_env: dict[str, str]
    sidecars: list[Sidecar] = field(default_factory=list)

    def sidecar(self, name: str, **extra: str) -> Sidecar:
        ports = [free_port() for _ in range(3)]
        env = {
            **self.base_env,
            "VEIL_REDIS_LISTEN": f"127.0.0.1:{ports[0]}",
            "VEIL_S3_LISTEN": f"127.0.0.1:{ports[1]}",
            "VEIL_ADMIN_LISTEN": f"127.0.0.1:{ports[2]}",
            "VEIL_KEYS_SIDECAR_ID": name,
            "VEIL_KEYS_LOCAL_COPY": str(self.dir / f"{name}.sealed"),
            "VEIL_AUDIT_PATH": str(self.dir / f"{name}.audit.jsonl"),
            **extra,
        }
        car = Sidecar(name, env, *ports).start(self.dir)
        self.sidecars.append(car)
        return car

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**self.base_env, "VEIL_AUDIT_PATH": str(self.dir / "cli.audit.jsonl")}
        r = subprocess.run(
            ["veil", *args], cwd=self.dir, env=env, capture_output=True, text=True, timeout=120
        )
        if check:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r

    def keys(self) -> dict[int, str]:
        body = json.loads(self.cli("keys", "list", "--json").stdout)
        return {v["version"]: v["state"] for v in body["versions"]}

    def stored_versions(self) -> dict[str, set[int]]:
        """Key versions of everything stored upstream, read directly (not through veil)."""
        direct = redis.Redis(port=self.upstream.port)
        found: dict[str, set[int]] = {"redis": set(), "s3": set()}
        for key in direct.scan_iter(count=1000):
            if key.startswith(b"__veil__") or direct.type(key) != b"string":
                continue
            value = direct.get(key)
            assert value is not None and value[:3] == MAGIC, key
            found["redis"].add(int(HEADER.unpack_from(value)[4]))
        raw = boto3.client(
            "s3",
            endpoint_url=self.moto.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        for obj in raw.list_objects_v2(Bucket="e2e").get("Contents", []):
            head = raw.head_object(Bucket="e2e", Key=obj["Key"])
            header, _ = meta.decode(head["Metadata"]["veil-env"])
            found["s3"].add(int.from_bytes(header[9:11], "big"))
        return found


@pytest.fixture
def cluster(tmp_path: Path, moto_server: MotoServer) -> Iterator[Cluster]:
    upstream = RedisServer().start()
    moto_server.reset()
    boto3.client(
        "s3",
        endpoint_url=moto_server.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env.update(
        {
            "VEIL_REDIS_UPSTREAM": upstream.url,
            "VEIL_S3_UPSTREAM": moto_server.url,
            "VEIL_S3_ACCESS_KEY": ACCESS,
            "VEIL_S3_SECRET_KEY": SECRET,
            "VEIL_S3_UPSTREAM_ACCESS_KEY": "testing",
            "VEIL_S3_UPSTREAM_SECRET_KEY": "testing",
            "VEIL_KEYS_STORE": upstream.url.replace("/0", "/15"),
            "VEIL_KEYS_ROOT_KEY_FILE": str(tmp_path / "root.key"),
            "VEIL_KEYS_HEARTBEAT_INTERVAL": "1s",
            "VEIL_KEYS_PROPAGATION_DELAY": "0s",
            "VEIL_KEYS_GRACE_PERIOD": "0s",
            "VEIL_KEYS_DESTROY_MIN_AGE": "0s",
            "VEIL_KEYS_PROMOTE_TIMEOUT": "20s",
            "VEIL_REENCRYPT_RATE": "5000",
            "VEIL_REENCRYPT_LEASE_TTL": "3s",
        }
    )
    c = Cluster(tmp_path, upstream, moto_server, env)
    c.cli("keys", "init")
    try:
        yield c
    finally:
        for car in c.sidecars:
            car.stop(signal.SIGKILL)
        upstream.cleanup()


class Load:
    """Clients writing and reading through every sidecar, keeping a ledger."""

    def __init__(self, sidecars: list[Sidecar]) -> None:
        self.sidecars = sidecars
        self.ledger: dict[str, bytes] = {}
        self.objects: dict[str, bytes] = {}
        self.failures: list[str] = []
        self.ops = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._redis, args=(i,)) for i in range(2)]
        self._threads.append(threading.Thread(target=self._s3))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _redis(self, worker: int) -> None:
        clients = [car.redis for car in self.sidecars]
        i = 0
        while not self._stop.is_set():
            key = f"w{worker}:{i % 200}"
            value = os.urandom(8).hex().encode()
            try:
                clients[i % 2].set(key, value)
                self.ledger[key] = value
                got = clients[(i + 1) % 2].get(key)  # read it back through the other one
                if got != value:
                    self.failures.append(f"{key}: read {got!r}, wrote {value!r}")
            except Exception as e:  # any error is a failed request
                self.failures.append(f"{key}: {type(e).__name__}: {e}")
            i += 1
            self.ops += 1

    def _s3(self) -> None:
        clients = [car.s3_client() for car in self.sidecars]
        i = 0
        while not self._stop.is_set():
            key = f"obj/{i % 20}"
            body = os.urandom(3000 + i % 5000)
            try:
                clients[i % 2].put_object(Bucket="e2e", Key=key, Body=body)
                self.objects[key] = body
                got = clients[(i + 1) % 2].get_object(Bucket="e2e", Key=key)["Body"].read()
                if got != body:
                    self.failures.append(f"{key}: object differs")
            except Exception as e:
                self.failures.append(f"{key}: {type(e).__name__}: {e}")
            i += 1
            self.ops += 1
            time.sleep(0.02)


def wait_complete(c: Cluster, timeout: float = 60) -> None:
    c.cli("reencrypt", "start")
    r = c.cli("reencrypt", "status", "--wait", "--timeout", str(timeout), check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)


def test_two_rotations_under_load_lose_nothing(cluster: Cluster) -> None:
    a, b = cluster.sidecar("sidecar-a"), cluster.sidecar("sidecar-b")
    with Load([a, b]) as load:
        time.sleep(1.5)
        for version in (2, 3):
            cluster.cli("keys", "rotate")
            cluster.cli("keys", "promote", str(version))  # waits for both sidecars' acks
            time.sleep(1.5)  # traffic under the new version
            wait_complete(cluster)
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    assert load.ops > 100
    # every write is readable, through either sidecar
    for key, value in load.ledger.items():
        assert a.redis.get(key) == value and b.redis.get(key) == value
    for key, body in load.objects.items():
        assert b.s3_client().get_object(Bucket="e2e", Key=key)["Body"].read() == body
    # a direct scan of the upstream finds nothing on the retired versions
    wait_complete(cluster)
    assert cluster.stored_versions() == {"redis": {3}, "s3": {3}}
    for version in (1, 2):
        cluster.cli("keys", "revoke", str(version))
        cluster.cli("keys", "destroy", str(version))
    assert cluster.keys() == {1: "destroyed", 2: "destroyed", 3: "active"}
    report = json.loads(
        cluster.cli(
            "audit", "report", "--json", "--path", str(cluster.dir / "cli.audit.jsonl")
        ).stdout
    )
    v1 = next(v for v in report["versions"] if v["kind"] == "master" and v["version"] == 1)
    assert v1["migration_complete"] is None or v1["state"] == "destroyed"
    steps = [e["event"] for v in report["versions"] if v["kind"] == "master" for e in v["events"]]
    for event in ("key.rotated", "key.promoted", "key.retired", "key.revoked", "key.destroyed"):
        assert event in steps


def test_emergency_revocation_under_load(cluster: Cluster) -> None:
    a, b = cluster.sidecar("sidecar-a"), cluster.sidecar("sidecar-b")
    with Load([a, b]) as load:
        time.sleep(1)
        started = time.monotonic()
        cluster.cli("keys", "revoke", "1", "--emergency")  # returns once both acknowledged
        acknowledged = time.monotonic() - started
        # within one heartbeat every sidecar encrypts with the fresh version only
        time.sleep(1.2)
        for car in (a, b):
            car.redis.set("after-emergency", b"x")
            stored = redis.Redis(port=cluster.upstream.port).get("after-emergency")
            assert stored is not None and int(HEADER.unpack_from(stored)[4]) == 2
        wait_complete(cluster)
    assert load.failures == [], load.failures[:5]
    assert acknowledged < 20
    assert cluster.keys()[1] == "revoked"  # its items were migrated first, then it was revoked
    assert cluster.stored_versions()["redis"] == {2}


def test_lease_holder_killed_mid_walk_the_other_resumes(cluster: Cluster) -> None:
    a = cluster.sidecar("sidecar-a", VEIL_REENCRYPT_RATE="3000")
    with a.redis.pipeline(transaction=False) as p:
        for i in range(20_000):
            p.set(f"k:{i}", b"value %d" % i)
        p.execute()
    b = cluster.sidecar("sidecar-b", VEIL_REENCRYPT_RATE="3000")
    cluster.cli("keys", "rotate")
    cluster.cli("keys", "promote", "2")
    cluster.cli("reencrypt", "start")
    holder = None
    for _ in range(100):
        raw = redis.Redis(port=cluster.upstream.port, db=15).get("__veil__:lease:reencrypt")
        status = json.loads(cluster.cli("reencrypt", "status", "--json").stdout)
        if raw and status["stores"]["redis"]["migrated"] > 2000:
            holder = raw.decode()
            break
        time.sleep(0.1)
    assert holder is not None, "no pass started"
    victim, survivor = (a, b) if holder.startswith("sidecar-a") else (b, a)
    pass_id = json.loads(cluster.cli("reencrypt", "status", "--json").stdout)["stores"]["redis"][
        "pass_id"
    ]
    victim.stop(signal.SIGKILL)  # dies mid-walk, lease and all
    r = cluster.cli("reencrypt", "status", "--wait", "--timeout", "90", "--json", check=False)
    body = json.loads(r.stdout)
    assert r.returncode == 0, body
    assert body["stores"]["redis"]["pass_id"] == pass_id  # resumed, not restarted
    assert cluster.stored_versions()["redis"] == {2}
    assert survivor.redis.get("k:19999") == b"value 19999"


def test_a_sidecar_with_a_stale_keyring_stops_encrypting(cluster: Cluster) -> None:
    # its keyring store is a Redis of its own that goes away
    store = RedisServer().start()
    try:
        env = {
            **cluster.base_env,
            "VEIL_KEYS_STORE": store.url,
            "VEIL_KEYS_ROOT_KEY_FILE": str(cluster.dir / "root2.key"),
        }
        subprocess.run(
            ["veil", "keys", "init"], cwd=cluster.dir, env=env, check=True, capture_output=True
        )
        car = cluster.sidecar(
            "lonely",
            VEIL_KEYS_STORE=store.url,
            VEIL_KEYS_ROOT_KEY_FILE=str(cluster.dir / "root2.key"),
            VEIL_KEYS_MAX_KEYRING_AGE="3s",
        )
        car.redis.set("before", b"fine")
        store.stop()
        time.sleep(4.5)
        with pytest.raises(redis.ResponseError, match="keyring stale"):
            car.redis.set("after", b"refused")
        assert car.redis.get("before") == b"fine"  # decrypting goes on
    finally:
        store.cleanup()
