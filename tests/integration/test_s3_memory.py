"""Bounded memory: veil (``veil serve``, its own process) streams large objects both ways.

The bench (bench/s3_proxy.py) measures a 1 GiB multipart object; here a smaller one keeps the
suite fast: 96 MiB of multipart parts and a 24 MiB single PUT go up and come back while veil's
resident set is sampled from /proc; it must stay far below what buffering would take.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

from tests.integration.test_s3_support import ACCESS_KEY, REGION, SECRET_KEY
from tests.servers import MotoServer, free_port, wait_port

MiB = 1024 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture
def veil_process(tmp_path: Path, moto_server: MotoServer) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env.update(
        {
            "VEIL_REDIS_LISTEN": "off",
            "VEIL_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
            "VEIL_S3_LISTEN": f"127.0.0.1:{port}",
            "VEIL_S3_UPSTREAM": moto_server.url,
            "VEIL_S3_ACCESS_KEY": ACCESS_KEY,
            "VEIL_S3_SECRET_KEY": SECRET_KEY,
            "VEIL_S3_UPSTREAM_ACCESS_KEY": "testing",
            "VEIL_S3_UPSTREAM_SECRET_KEY": "testing",
        }
    )
    subprocess.run(["veil", "keys", "init"], cwd=tmp_path, env=env, check=True, capture_output=True)
    proc = subprocess.Popen(["veil", "serve"], cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(20)


def test_large_objects_stream_with_bounded_memory(
    veil_process: tuple[str, int], moto_server: MotoServer
) -> None:
    url, pid = veil_process
    client = boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    direct = boto3.client(
        "s3",
        endpoint_url=moto_server.url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    direct.create_bucket(Bucket="veil-memory")
    idle = rss_kib(pid)
    peak = [idle]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    block = os.urandom(MiB)
    data = block * 96
    config = TransferConfig(
        multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4
    )
    try:
        client.upload_fileobj(io.BytesIO(data), "veil-memory", "mp", Config=config)
        client.put_object(Bucket="veil-memory", Key="single", Body=data[: 24 * MiB])
        out = io.BytesIO()
        client.download_fileobj("veil-memory", "mp", out, Config=config)
        assert out.getvalue() == data
        got = client.get_object(Bucket="veil-memory", Key="single")["Body"].read()
        assert got == data[: 24 * MiB]
    finally:
        stop.set()
        sampler.join()
    grown = (peak[0] - idle) / 1024
    print(f"veil RSS: idle {idle / 1024:.0f} MiB, peak {peak[0] / 1024:.0f} MiB")
    # 4 parts of 8 MiB in flight would take > 32 MiB if they were buffered; each is streamed
    assert grown < 48, f"veil grew by {grown:.0f} MiB (idle {idle / 1024:.0f} MiB)"
    assert peak[0] / 1024 < 150
