"""``veil inspect s3 BUCKET/KEY``: SPEC 12's inspect schema, and ``--decrypt``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.integration.test_s3_support import *  # noqa: F403 (fixtures)
from tests.integration.test_s3_support import VeilThread
from tests.servers import MotoServer

MiB = 1024 * 1024


def veil_cli(
    veil: VeilThread, moto: MotoServer, tmp: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    keys = veil.settings.keys
    config = tmp / "veil.toml"
    config.write_text(
        f'[s3]\nupstream = "{moto.url}"\nupstream_access_key = "testing"\n'
        f'upstream_secret_key = "testing"\naccess_key = "x"\nsecret_key = "y"\n'
        f'[keys]\nstore = "file:{keys.store.path}"\nroot_key_file = "{keys.root_key_file}"\n'  # type: ignore[union-attr]
        f'[audit]\npath = "{tmp / "audit.jsonl"}"\n'
    )
    os.chmod(config, 0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    return subprocess.run(
        ["veil", "-c", str(config), *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_inspect_single_and_multipart(
    veil_s3: VeilThread, moto_server: MotoServer, client: Any, bucket: str, tmp_path: Path
) -> None:
    client.put_object(Bucket=bucket, Key="one", Body=b"x" * 100_000)
    out = veil_cli(veil_s3, moto_server, tmp_path, "inspect", "s3", f"{bucket}/one", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["store"] == "s3" and report["type"] == "object"
    [entry] = report["entries"]
    assert entry["format"] == "object-v1" and entry["key_version"] == 1
    assert entry["plaintext_size"] == 100_000 and entry["stored_size"] == 100_000 + 2 * 16
    parts = [os.urandom(5 * MiB), os.urandom(10)]
    upload = client.create_multipart_upload(Bucket=bucket, Key="mp")
    done = []
    for n, body in enumerate(parts, 1):
        r = client.upload_part(
            Bucket=bucket, Key="mp", UploadId=upload["UploadId"], PartNumber=n, Body=body
        )
        done.append({"PartNumber": n, "ETag": r["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )
    out = veil_cli(veil_s3, moto_server, tmp_path, "inspect", "s3", f"{bucket}/mp", "--json")
    report = json.loads(out.stdout)
    assert [(e["part"], e["plaintext_size"]) for e in report["entries"]] == [(1, 5 * MiB), (2, 10)]
    text = veil_cli(veil_s3, moto_server, tmp_path, "inspect", "s3", f"{bucket}/mp")
    assert "part 2: object-v1, key version v1" in text.stdout
    target = tmp_path / "plain.bin"
    out = veil_cli(
        veil_s3,
        moto_server,
        tmp_path,
        "inspect",
        "s3",
        f"{bucket}/mp",
        "--decrypt",
        "--output",
        str(target),
    )
    assert out.returncode == 0, out.stderr
    assert target.read_bytes() == b"".join(parts)
    missing = veil_cli(veil_s3, moto_server, tmp_path, "inspect", "s3", f"{bucket}/nope")
    assert missing.returncode == 3 and "no such object" in missing.stderr
