"""``veil inspect redis KEY``: the real CLI against a real redis-server (SPEC 2, 12).

Data goes in through veil (so the envelopes are the sidecar's own), the CLI reads the upstream
directly with the same config, and no plaintext value may appear without ``--decrypt``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from proxy.crypto.envelope import DET_OVERHEAD, SMALL_OVERHEAD
from tests.servers import RedisServer, VeilResp, free_port, start_veil_resp

SECRETS = [b"s3cr3t-string", b"s3cr3t-hval", b"s3cr3t-elem", b"s3cr3t-member", b"s3cr3t-stream"]
REDIS_TOML = """
plaintext = ["plain:*"]
namespaces = [{pattern = "t1:*", name = "t1"}]
deterministic_fields = ["df:*"]
deterministic_lists = ["dl:*"]
"""


@pytest.fixture(scope="module")
def veil(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[VeilResp]:
    redis_server.cli("FLUSHALL")
    v = start_veil_resp(
        tmp_path_factory.mktemp("veil"),
        redis_server,
        migrate=False,
        plaintext=["plain:*"],
        namespaces=[{"pattern": "t1:*", "name": "t1"}],
        deterministic_fields=["df:*"],
        deterministic_lists=["dl:*"],
    )
    c = v.client()
    c.set("str", SECRETS[0])
    c.hset("t1:h", mapping={"name": SECRETS[1], "other": b"x"})
    c.hset("df:h", mapping={"s3cr3t-field": SECRETS[1]})
    c.rpush("l", SECRETS[2], b"two")
    c.rpush("dl:l", SECRETS[2])
    c.sadd("set", SECRETS[3], b"m2")
    c.zadd("z", {SECRETS[3]: 1.5})
    c.xadd("st", {"f": SECRETS[4]}, id="1-1")
    c.pfadd("hll", SECRETS[3])
    c.set("plain:k", SECRETS[0])
    c.close()
    c2 = v.client(db=2)
    c2.set("in2", SECRETS[0])
    c2.close()
    yield v
    v.stop()


def write_config(veil: VeilResp, path: Path, upstream: str) -> Path:
    keys = veil.app.settings.keys  # type: ignore[attr-defined]
    path.write_text(
        f'[redis]\nupstream = "{upstream}"\n{REDIS_TOML}'
        f'[keys]\nstore = "file:{keys.store.path}"\nroot_key_file = "{keys.root_key_file}"\n'
        f'[audit]\npath = "{path.parent / "audit.jsonl"}"\n'
    )
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def cfg(veil: VeilResp, tmp_path: Path) -> Path:
    return write_config(veil, tmp_path / "veil.toml", veil.upstream.url)


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    return subprocess.run(
        ["veil", "-c", str(config), "inspect", "redis", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def run_all(config: Path, *calls: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Several CLI runs at once (each is a fresh interpreter: most of its time is start-up)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda args: run_cli(config, *args), calls))


def parsed(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The ``--json`` report of a successful run; no plaintext unless ``--decrypt``."""
    assert out.returncode == 0, out.stderr
    if "--decrypt" not in out.args:
        for secret in SECRETS:
            assert secret.decode() not in out.stdout, (secret, out.stdout)
    result: dict[str, Any] = json.loads(out.stdout)
    assert set(result) >= {"store", "key", "type", "entries"} and result["store"] == "redis"
    for entry in result["entries"]:
        assert {
            "role",
            "format",
            "key_version",
            "index_version",
            "stored_size",
            "plaintext_size",
        } <= set(entry)
    return result


def reports(config: Path, *calls: tuple[str, ...]) -> list[dict[str, Any]]:
    return [parsed(out) for out in run_all(config, *[(*c, "--json") for c in calls])]


def test_every_type_reports_its_envelopes(cfg: Path) -> None:
    r, h, dfhash, lists, dll, set_limited, zs, st, hl = reports(
        cfg,
        ("str",),
        ("t1:h",),
        ("df:h",),
        ("l",),
        ("dl:l",),
        ("set", "--limit", "1"),
        ("z",),
        ("st",),
        ("hll",),
    )
    assert (r["key"], r["type"], r["db"], r["encrypted"]) == ("str", "string", 0, True)
    assert (r["namespace"], r["class"]) == ("default", "default")
    [e] = r["entries"]
    assert (e["role"], e["format"], e["key_version"], e["index_version"]) == (
        "string",
        "small-v1",
        1,
        None,
    )
    assert e["plaintext_size"] == len(SECRETS[0])
    assert e["stored_size"] == len(SECRETS[0]) + SMALL_OVERHEAD
    assert (h["type"], h["namespace"]) == ("hash", "t1")
    fields = {e["field"]: e for e in h["entries"]}
    assert set(fields) == {"name", "other"} and fields["name"]["role"] == "hash_value"
    assert fields["name"]["plaintext_size"] == len(SECRETS[1])
    df = dfhash["entries"]
    assert [(e["role"], e["format"]) for e in df] == [
        ("hash_field", "deterministic-v1"),
        ("hash_value", "small-v1"),
    ]
    assert df[0]["index_version"] == 1 and df[0]["member_digest"] == df[1]["member_digest"]
    assert df[1]["field"] is None and df[0]["stored_size"] == len("s3cr3t-field") + DET_OVERHEAD
    assert [(e["index"], e["format"]) for e in lists["entries"]] == [
        (0, "small-v1"),
        (1, "small-v1"),
    ]
    [dl] = dll["entries"]
    assert (dl["format"], dl["index_version"], dl["key_version"]) == ("deterministic-v1", 1, None)
    [member] = set_limited["entries"]  # of two
    assert member["role"] == "set_member" and member["index_version"] == 1
    assert len(member["member_digest"]) == 16
    [z] = zs["entries"]
    assert (z["role"], z["score"], z["format"]) == ("zset_member", 1.5, "deterministic-v1")
    [s] = st["entries"]
    assert (s["role"], s["id"], s["field"], s["key_version"]) == ("stream_value", "1-1", "f", 1)
    [hll] = hl["entries"]
    assert (hll["format"], hll["plaintext_size"]) == ("hyperloglog", None)


def test_decrypt_shows_the_plaintexts(cfg: Path) -> None:
    calls = [("df:h",), ("st",), ("set",), ("in2", "--db", "2")]
    df, st, members, in2 = reports(cfg, *[(*c, "--decrypt") for c in calls])
    assert [e.get("plaintext") for e in df["entries"]] == ["s3cr3t-field", "s3cr3t-hval"]
    assert df["entries"][1]["field"] == "s3cr3t-field"
    assert st["entries"][0]["plaintext"] == "s3cr3t-stream"
    assert sorted(e["plaintext"] for e in members["entries"]) == ["m2", "s3cr3t-member"]
    assert in2["db"] == 2 and in2["entries"][0]["plaintext"] == "s3cr3t-string"
    text, plain = run_all(cfg, ("l", "--decrypt"), ("l",))
    assert text.returncode == 0 and "list_element [0]: small-v1, key version v1" in text.stdout
    assert "= 's3cr3t-elem'" in text.stdout
    assert plain.returncode == 0 and "s3cr3t" not in plain.stdout and "= " not in plain.stdout


def test_plaintext_pattern_and_legacy_values(veil: VeilResp, cfg: Path) -> None:
    d = veil.direct()
    d.set("legacy", b"s3cr3t-legacy")
    d.close()
    out, text = run_all(cfg, ("plain:k", "--json"), ("legacy",))
    r = parsed(out)
    assert r["encrypted"] is False
    [e] = r["entries"]
    assert (e["format"], e["key_version"]) == ("plaintext", None)
    assert e["stored_size"] == e["plaintext_size"] == len(SECRETS[0])
    assert text.returncode == 0 and "s3cr3t" not in text.stdout  # encrypt pattern, no envelope
    assert "redis legacy (string, db 0, namespace default, class default, encrypted)" in text.stdout
    assert "  string: plaintext, stored 13 B, plaintext 13 B" in text.stdout


def test_missing_tampered_unreachable_and_reserved(
    veil: VeilResp, cfg: Path, tmp_path: Path
) -> None:
    d = veil.direct()
    stored = d.get("str")
    d.set("tampered", stored[:-1] + bytes([stored[-1] ^ 1]))
    d.close()
    missing, headers, bad, reserved = run_all(
        cfg,
        ("in2",),  # it lives in database 2
        ("tampered",),
        ("tampered", "--decrypt", "--json"),
        ("__veil__:keyring",),
    )
    assert missing.returncode == 3 and "no such key in database 0" in missing.stderr
    assert headers.returncode == 0  # headers only: nothing to open
    assert bad.returncode == 3 and "1 entries failed to decrypt" in bad.stderr
    [e] = json.loads(bad.stdout)["entries"]
    assert "error" in e and "plaintext" not in e and "s3cr3t" not in bad.stdout
    assert reserved.returncode == 3 and "reserved for veil" in reserved.stderr
    down_cfg = write_config(veil, tmp_path / "down.toml", f"redis://127.0.0.1:{free_port()}")
    down = run_cli(down_cfg, "str")
    assert down.returncode == 4 and "unreachable" in down.stderr
