"""What veil's metrics cost on the hot path, beside what a request costs, in one run.

    python3 bench/metrics.py [--requests 100000]

The proxies never call prometheus_client per request: the RESP listener counts commands per
policy row in a plain list per connection and samples one batch in 64 for latency; the S3
listener adds one to a dict entry and one bisect into a fixed histogram; a one-second timer (or
a scrape) folds them into the registry. This script times exactly those statements, the
prometheus_client calls they replace, and one scrape of a populated registry, then starts
``redis-server`` and ``veil serve`` and measures veil's CPU per command with ``redis-benchmark``
(SET/GET, 50 clients, depth 16) so the metric cost is shown as a share of a real command's cost.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy.metrics import Metrics


def ns_per(stmt: str, setup: str, number: int = 1_000_000, **names: object) -> float:
    timer = timeit.Timer(stmt, setup, globals=names)
    return min(timer.repeat(5, number)) / number * 1e9


def micro() -> list[tuple[str, float]]:
    m = Metrics()
    hot = m.hot
    rows = []
    # RESP: per command, one list increment per policy row; per batch, a countdown for sampling
    rows.append(
        ("RESP: count a command (list index += 1)", ns_per("counts[7] += 1", "", counts=[0] * 300))
    )
    rows.append(
        (
            "RESP: per batch, sample countdown",
            ns_per(
                "c[0] -= 1\nif c[0] <= 0:\n    c[0] = 64",
                "",
                c=[64],
            ),
        )
    )
    key = ("s3", "GetObject", "ok")
    rows.append(
        (
            "S3: count + latency (dict += 1, bisect)",
            ns_per(
                "requests[key] += 1\nobserve(0.0021)",
                "",
                requests=hot.requests,
                key=key,
                observe=hot.durations["s3"].observe,
            ),
        )
    )
    from prometheus_client import CollectorRegistry, Counter, Histogram

    reg = CollectorRegistry()
    c = Counter("x_total", "x", ["protocol", "command", "outcome"], registry=reg)
    h = Histogram("x_seconds", "x", ["protocol"], registry=reg)
    rows.append(
        (
            "prometheus_client: Counter.labels().inc()",
            ns_per("c.labels('s3', 'GetObject', 'ok').inc()", "", number=200_000, c=c),
        )
    )
    rows.append(
        (
            "prometheus_client: Histogram.labels().observe()",
            ns_per("h.labels('s3').observe(0.0021)", "", number=200_000, h=h),
        )
    )
    # one scrape of a registry holding 60 commands x 3 outcomes x 2 protocols
    for proto in ("resp", "s3"):
        for i in range(60):
            for outcome in ("ok", "error", "refused"):
                hot.requests[(proto, f"cmd{i}", outcome)] += 1
    scrape_us = min(timeit.repeat(m.render, number=20, repeat=5)) / 20 * 1e6
    rows.append(("one /metrics scrape (360 request series)", scrape_us * 1000))
    return rows


def veil_cpu_per_command(requests: int) -> float | None:
    """veil's CPU per command (us) under redis-benchmark SET/GET -P 16, measured here."""
    if shutil.which("redis-benchmark") is None or shutil.which("redis-server") is None:
        return None
    from redis_proxy import cpu_seconds, free_port, start_redis, start_veil, stop_all

    work = Path(tempfile.mkdtemp(prefix="veil-bench-metrics-"))
    rport, vport = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(start_redis(work, rport))
        veil = start_veil(work, rport, vport)
        procs.append(veil)
        time.sleep(0.5)
        before = cpu_seconds(veil.pid)
        subprocess.run(
            ["redis-benchmark", "-p", str(vport), "-c", "50", "-n", str(requests), "-P", "16",
             "-d", "100", "-t", "set,get", "-q"],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        return (cpu_seconds(veil.pid) - before) / (2 * requests) * 1e6
    finally:
        stop_all(procs, work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    rows = micro()
    per_command = veil_cpu_per_command(args.requests)
    print(f"\n{'hot-path statement':<52}{'ns':>10}{'share of a command':>20}")
    for name, ns in rows:
        share = ""
        if per_command is not None and not name.startswith("one /metrics"):
            share = f"{ns / (per_command * 1000):>19.2%}"
        print(f"{name:<52}{ns:>10.0f}{share:>20}")
    if per_command is not None:
        print("\nshare: of veil's CPU per RESP command below (an S3 request costs far more: a "
              "1 MiB object ~1.2 ms)")  # fmt: skip
        print(f"veil CPU per command (redis-benchmark SET/GET -c 50 -P 16, 100 B): "
              f"{per_command:.2f} us (veil's utime+stime from /proc)")  # fmt: skip
    else:
        print("\n(redis-server/redis-benchmark missing: no per-command reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
