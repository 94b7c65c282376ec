"""`veil demo` as a newcomer runs it: one command, both endpoints work, ciphertext upstream,
and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import boto3
import pytest
import redis

from proxy.crypto.envelope import MAGIC


def wait_for(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if re.search(pattern, text):
            return text
        if proc.poll() is not None:
            pytest.fail(f"veil demo exited early ({proc.returncode}): {text}")
        time.sleep(0.2)
    pytest.fail(f"veil demo did not print {pattern!r}")


def test_demo_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VEIL_", "AWS_"))}
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            ["veil", "demo", "--dir", str(tmp_path / "d")],
            cwd=tmp_path,
            env=env,
            stdout=o,
            stderr=e,
        )
    try:
        text = wait_for(out, r"veil demo is running", proc)
        resp = int(
            re.search(r"RESP .*127\.0\.0\.1:(\d+)\s+-> .* on 127\.0\.0\.1:(\d+)", text).group(1)
        )  # type: ignore[union-attr]
        upstream = int(re.search(r"on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        s3 = re.search(r"S3 \(endpoint_url\)\s+(http://\S+)\s+-> moto on (http://\S+)", text)
        assert s3 is not None
        veil_s3, moto = s3.group(1), s3.group(2)

        client = redis.Redis(port=resp)
        client.set("greeting", "hello, veil")
        assert client.get("greeting") == b"hello, veil"
        stored = redis.Redis(port=upstream).get("greeting")
        assert stored is not None and stored[:3] == MAGIC and b"hello" not in stored

        s3c = boto3.client(
            "s3",
            endpoint_url=veil_s3,
            region_name="us-east-1",
            aws_access_key_id="veil-demo",
            aws_secret_access_key="veil-demo-secret-key",
        )
        s3c.put_object(Bucket="demo", Key="hello.txt", Body=b"hello, veil\n")
        assert s3c.get_object(Bucket="demo", Key="hello.txt")["Body"].read() == b"hello, veil\n"
        raw = boto3.client(
            "s3",
            endpoint_url=moto,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        body = raw.get_object(Bucket="demo", Key="hello.txt")["Body"].read()
        assert b"hello" not in body and len(body) == len(b"hello, veil\n") + 16

        # the printed rotation commands work against the demo's config
        config = re.search(r"VEIL_CONFIG=(\S+) veil keys rotate", text)
        assert config is not None
        cli_env = {**env, "VEIL_CONFIG": config.group(1)}
        subprocess.run(["veil", "keys", "rotate"], env=cli_env, check=True, capture_output=True)
        subprocess.run(
            ["veil", "keys", "promote", "2"], env=cli_env, check=True, capture_output=True
        )
        time.sleep(1)
        assert client.get("greeting") == b"hello, veil"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0, err.read_text()
