"""Envelope crypto throughput beside raw AES-256-GCM from the same library, in one run.

    python3 bench/crypto.py [--quick]

Targets (issue 2): small-value seal+open >= 50% of raw AES-GCM's rate at 100 B; segmented
>= 80% of raw AES-GCM throughput at 1 MiB. Each figure is the best of several rounds.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.crypto import (
    DataKey,
    KeyKind,
    Layout,
    Opener,
    PartEncryptor,
    RangeDecryptor,
    Role,
    SmallSealer,
    VersionKey,
    value_context,
)


class _Keys:
    def __init__(self, key: VersionKey) -> None:
        self._key = key

    @property
    def keyring_id(self) -> bytes:
        return self._key.keyring_id

    def decrypt_key(self, kind: KeyKind, class_id: int, version: int) -> VersionKey:
        return self._key


def best_rate(fn: Callable[[], None], n: int, rounds: int) -> float:
    """Operations per second, best of ``rounds`` runs of ``n`` calls."""
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = max(best, n / (time.perf_counter() - t))
    return best


def small(size: int, n: int, rounds: int) -> tuple[float, float]:
    key = VersionKey(os.urandom(16), 0, 1, os.urandom(32))
    sealer, opener = SmallSealer(key), Opener(_Keys(key))
    ctx = value_context("default", Role.STRING)
    pt = os.urandom(size)
    raw = AESGCM(os.urandom(32))
    nonce = os.urandom(12)

    def veil() -> None:
        opener.open_small(sealer.seal(pt, ctx), ctx)

    def aes() -> None:
        raw.decrypt(nonce, raw.encrypt(nonce, pt, None), None)

    return best_rate(veil, n, rounds), best_rate(aes, n, rounds)


def segmented(size: int, n: int, rounds: int) -> tuple[float, float, float]:
    dk = DataKey.generate()
    body = os.urandom(size)
    layout = Layout.single(size)
    segs = layout.segments(0, size - 1)
    chunk = 65536

    # the proxies hand veil 64 KiB chunks as they arrive from the network; slicing the test
    # buffers with memoryviews keeps the bench's own copies out of the figures
    body_view = memoryview(body)

    # like the proxy, each sealed segment goes on to the network at once (here: dropped)
    def seal() -> None:
        enc = PartEncryptor(dk, 0)
        for i in range(0, size, chunk):
            enc.feed(body_view[i : i + chunk])
        enc.finish()

    def open_() -> None:
        dec = RangeDecryptor(dk, segs, 0, size - 1)
        view = memoryview(stored_bytes)
        for i in range(0, len(view), chunk):
            dec.feed(view[i : i + chunk])
        dec.finish()

    raw = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    ct = raw.encrypt(nonce, body, None)

    def raw_seal() -> None:
        raw.encrypt(nonce, body, None)

    def raw_open() -> None:
        raw.decrypt(nonce, ct, None)

    enc = PartEncryptor(dk, 0)
    stored_bytes = b"".join([*enc.feed(body), enc.finish()])
    mb = size / 1e6
    return (
        best_rate(seal, n, rounds) * mb,
        best_rate(open_, n, rounds) * mb,
        2 / (1 / (best_rate(raw_seal, n, rounds) * mb) + 1 / (best_rate(raw_open, n, rounds) * mb)),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    args = ap.parse_args()
    scale = 0.05 if args.quick else 1.0
    rounds = 2 if args.quick else 5
    print("small values: seal+open per second (one message sealed then opened)")
    print(f"{'size':>8} {'veil':>12} {'raw AES-GCM':>12} {'ratio':>7}  target")
    for size, n in ((100, 100_000), (4096, 40_000)):
        v, r = small(size, max(100, int(n * scale)), rounds)
        target = ">= 0.50" if size == 100 else ""
        print(f"{size:>7}B {v:>12,.0f} {r:>12,.0f} {v / r:>7.2f}  {target}")
    print()
    print(
        "segmented objects: MB/s (raw = one AES-GCM call over the whole buffer, harmonic "
        "mean of seal and open)"
    )
    print(
        f"{'size':>8} {'veil seal':>10} {'veil open':>10} {'veil avg':>9} {'raw':>9} "
        f"{'ratio':>7}  target"
    )
    for size, n in ((65536, 4000), (1 << 20, 300)):
        s, o, r = segmented(size, max(5, int(n * scale)), rounds)
        avg = 2 / (1 / s + 1 / o)
        label = "64KiB" if size == 65536 else "1MiB"
        target = ">= 0.80" if size == 1 << 20 else ""
        print(
            f"{label:>8} {s:>10,.0f} {o:>10,.0f} {avg:>9,.0f} {r:>9,.0f} {avg / r:>7.2f}  {target}"
        )


if __name__ == "__main__":
    main()
