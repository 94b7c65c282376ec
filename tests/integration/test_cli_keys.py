"""``veil keys`` as operators run it: a subprocess, real stores, exit codes of SPEC 2."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.servers import RedisServer, free_port


class Veil:
    def __init__(self, cwd: Path, **env: str) -> None:
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
        self.env.update({"VEIL_KEYS_PROPAGATION_DELAY": "0s", **env})

    def __call__(
        self, *args: str, code: int = 0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["veil", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            input=stdin,
        )
        assert r.returncode == code, (args, r.returncode, r.stdout, r.stderr)
        if code:
            lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("veil: WARNING")]
            assert len(lines) == 1 and lines[0].startswith("veil: "), r.stderr
        return r

    def json(self, *args: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self(*args, "--json").stdout)
        return body


@pytest.fixture
def veil(tmp_path: Path) -> Veil:
    return Veil(tmp_path)


def states(body: dict[str, Any]) -> dict[int, str]:
    return {v["version"]: v["state"] for v in body["versions"]}


def test_help_for_every_command(veil: Veil) -> None:
    out = veil("keys", "--help").stdout
    for cmd in (
        "init",
        "list",
        "rotate",
        "promote",
        "retire",
        "revoke",
        "destroy",
        "freeze",
        "unfreeze",
        "export",
        "import",
        "rewrap-root",
    ):
        assert cmd in out
        veil("keys", cmd, "--help")


def test_lifecycle_on_the_default_file_store(veil: Veil, tmp_path: Path) -> None:
    veil("keys", "list", code=2)  # no root key yet: a configuration error
    assert "ready" in veil("keys", "init").stdout
    assert (tmp_path / "veil-root.key").stat().st_mode & 0o777 == 0o600
    body = veil.json("keys", "list")
    assert set(body) == {
        "keyring_id",
        "revision",
        "class",
        "classes",
        "frozen_until",
        "versions",
        "index_versions",
    }
    assert states(body) == {1: "active"} and body["classes"] == ["default"]
    assert "already initialized" in veil("keys", "init").stdout
    veil("keys", "rotate", "--dry-run")
    assert states(veil.json("keys", "rotate")) == {1: "active", 2: "pending"}
    veil("keys", "rotate", code=3)
    assert states(veil.json("keys", "promote", "2")) == {1: "retired", 2: "active"}
    veil("keys", "retire", "2", code=3)  # active retires only by promotion
    veil("keys", "revoke", "1", code=3)  # grace period
    veil("keys", "destroy", "1", code=3)  # retired: revoke first
    body = veil.json("keys", "revoke", "1", "--force")
    assert states(body)[1] == "revoked"
    assert states(veil.json("keys", "retire", "1"))[1] == "retired"  # undo
    veil("keys", "revoke", "1", "--force")
    assert states(veil.json("keys", "destroy", "1", "--force"))[1] == "destroyed"
    veil("keys", "promote", "1", code=3)
    body = veil.json("keys", "freeze", "--until", "2h", "--reason", "incident 7")
    assert body["frozen_until"] is not None
    assert veil.json("keys", "unfreeze")["frozen_until"] is None
    veil("keys", "unfreeze", code=3)
    # every action is in the audit log, with the OS user as actor
    events = [json.loads(ln) for ln in (tmp_path / "veil-audit.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    for expected in (
        "keyring.initialized",
        "key.rotated",
        "key.promoted",
        "key.revoked",
        "key.unrevoked",
        "key.destroyed",
        "keyring.frozen",
        "keyring.unfrozen",
    ):
        assert expected in names
    assert all(e["actor"] and "mac" in e for e in events)


def test_classes_and_index_keys(veil: Veil, tmp_path: Path) -> None:
    (tmp_path / "veil.toml").write_text('[[keys.classes]]\nname = "pii"\nrotation_period = "30d"\n')
    veil("keys", "init", "--class", "payments")
    assert veil.json("keys", "list")["classes"] == ["default", "payments", "pii"]
    body = veil.json("keys", "rotate", "--class", "pii", "--index")
    assert body["class"] == "pii" and states(body) == {1: "active"}
    assert {v["version"]: v["state"] for v in body["index_versions"]} == {1: "active", 2: "pending"}
    veil("keys", "list", "--class", "nope", code=2)


def test_redis_store_and_exit_codes(veil: Veil, redis_url: str) -> None:
    veil.env["VEIL_KEYS_STORE"] = redis_url
    veil("keys", "init")
    assert states(veil.json("keys", "rotate")) == {1: "active", 2: "pending"}
    assert states(veil.json("keys", "promote", "2", "--wait", "1")) == {1: "retired", 2: "active"}
    veil.env["VEIL_KEYS_STORE"] = f"redis://127.0.0.1:{free_port()}/0"
    veil("keys", "list", code=4)  # store unreachable


def test_wrong_root_key_is_an_authentication_error(veil: Veil, tmp_path: Path) -> None:
    veil("keys", "init")
    import base64

    veil.env["VEIL_KEYS_ROOT_KEY"] = base64.b64encode(os.urandom(32)).decode()
    veil("keys", "rotate", code=5)


def test_config_errors_exit_2(veil: Veil, tmp_path: Path) -> None:
    (tmp_path / "veil.toml").write_text("[keys]\nrotation_periodd = '90d'\n")
    r = veil("keys", "list", code=2)
    assert "rotation_periodd" in r.stderr
    (tmp_path / "veil.toml").unlink()
    veil.env["VEIL_KEYS_GRACE_PERIOD"] = "7x"
    veil("keys", "list", code=2)
    veil("keys", "bogus", code=2)


@pytest.mark.parametrize("method", ["x25519", "passphrase"])
def test_escrow_export_import_and_restore(
    veil: Veil, tmp_path: Path, method: str, redis_server: RedisServer
) -> None:
    veil("keys", "init", "--class", "pii")
    veil("keys", "rotate")
    before = veil.json("keys", "list")
    if method == "x25519":
        veil("keys", "escrow-keygen", "--out", "ops")
        assert (tmp_path / "ops.key").stat().st_mode & 0o777 == 0o600
        veil("keys", "export", "--recipient", "ops.pub", "--out", "bundle.json")
        who = ["--identity", "ops.key"]
    else:
        (tmp_path / "phrase").write_text("correct horse battery staple\n")
        veil("keys", "export", "--passphrase-file", "phrase", "--out", "bundle.json")
        who = ["--passphrase-file", "phrase"]
    bundle = (tmp_path / "bundle.json").read_text()
    root = (tmp_path / "veil-root.key").read_text().strip()
    assert root not in bundle and "material" not in json.loads(bundle)
    assert "verified" in veil("keys", "import", "bundle.json", *who, "--verify").stdout
    # total loss: keyring, root key and local state gone; restore under a NEW root key
    for name in ("veil-keyring.json", "veil-root.key"):
        (tmp_path / name).unlink()
    veil("keys", "import", "bundle.json", *who)
    after = veil.json("keys", "list")
    assert after["keyring_id"] == before["keyring_id"]
    assert states(after) == states(before)
    assert after["classes"] == ["default", "pii"]
    veil("keys", "rotate", code=3)  # the restored pending version is still there


def test_tampered_bundle_is_refused(veil: Veil, tmp_path: Path) -> None:
    veil("keys", "init")
    veil("keys", "escrow-keygen", "--out", "ops")
    veil("keys", "export", "--recipient", "ops.pub", "--out", "b.json")
    doc = json.loads((tmp_path / "b.json").read_text())
    doc["revision"] += 1  # header is associated data
    (tmp_path / "b.json").write_text(json.dumps(doc))
    veil("keys", "import", "b.json", "--identity", "ops.key", "--verify", code=5)


def test_rewrap_root(veil: Veil, tmp_path: Path) -> None:
    veil("keys", "init")
    veil("keys", "rewrap-root", "--new-root-key-file", "new-root.key")
    veil("keys", "list", code=5)  # the old root no longer opens the keyring
    veil.env["VEIL_KEYS_ROOT_KEY_FILE"] = "new-root.key"
    assert states(veil.json("keys", "rotate")) == {1: "active", 2: "pending"}
