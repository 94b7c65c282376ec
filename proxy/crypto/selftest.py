"""Known-answer self-test: three frozen v1 vectors, decrypted with today's code.

``veil keys import --verify`` runs it beside the bundle's own canaries, so a restore is proven
both ways: the bundle's keys open envelopes made with them, and this build still reads the
published format. ``tests/unit/test_selftest.py`` pins these entries to tests/vectors.
"""

from __future__ import annotations

from proxy.crypto.envelope import Opener, open_deterministic
from proxy.crypto.keys import KeyKind, VersionKey
from proxy.crypto.objects import Layout, RangeDecryptor, unwrap_data_key
from proxy.errors import CryptoError, KeyUnavailable

KEYRING_ID = bytes.fromhex("f0fdfe39e8e48d5da0733257b5c03ac7")
KEYS = {
    (KeyKind.MASTER, 0, 1): "2d5ad2026c002f97b7d1a055d1e03beaaedb23a32313254ad4a45b4ed29add79",
    (KeyKind.MASTER, 0, 2): "732feb74b4b0124d314f9587c78dc8e9c8db7621e5d62a9f9809ef99172cff01",
    (KeyKind.INDEX, 0, 1): "30c025cfd5bb831a536ba9805968c337eccd93c3224a1d0bcbf8b71a44d4a9ae",
}
SMALL = (  # small-hello: (context, envelope, plaintext)
    "01000764656661756c74",
    "c1f55601f0fdfe39000001caa12838d26ad523c53348cb121089a900000001548c7fbb04e128043b886f"
    "b0b18dd78bd626b01871",
    b"hello",
)
DETERMINISTIC = (  # det-member
    "04000764656661756c74",
    "c1f55602f0fdfe39000001553c46c3ac7deb6cd6d8c391a5d5db6efac702f3888974c8",
    b"member-1",
)
OBJECT = (  # object-small: (bucket, key, header, stored, plaintext)
    "bucket",
    "dir/small.txt",
    "c1f55603f0fdfe39000002009554b9e005c8da45b2aae5587599ec0a896f8d01c109f8a3b46e06aeeab772c7"
    "a38e2d68fa150027d87ca34210bac8b3b3da4c89f7a02ba7ed3ba63bdcc605966f46ab104e4cb3b15c26e89b"
    "07ac1667",
    "1bee114a729ce16860ab66dd674ea58a77d682bd2ad78c66d9a244267b",
    b"hello, world\n",
)


class _Keys:
    keys = {
        ref: VersionKey(KEYRING_ID, ref[1], ref[2], bytes.fromhex(m), ref[0])
        for ref, m in KEYS.items()
    }

    @property
    def keyring_id(self) -> bytes:
        return KEYRING_ID

    def decrypt_key(self, kind: KeyKind, class_id: int, version: int) -> VersionKey:
        try:
            return self.keys[(kind, class_id, version)]
        except KeyError:
            raise KeyUnavailable("not a self-test key") from None


def run() -> list[str]:
    """Problems found (empty when this build reads the v1 formats correctly)."""
    keys = _Keys()
    problems = []
    try:
        ctx, env, plain = SMALL
        if Opener(keys).open(bytes.fromhex(env), bytes.fromhex(ctx))[0] != plain:
            problems.append("self-test: small envelope decrypts wrongly")
        ctx, env, plain = DETERMINISTIC
        if open_deterministic(keys, bytes.fromhex(env), bytes.fromhex(ctx))[0] != plain:
            problems.append("self-test: deterministic envelope decrypts wrongly")
        bucket, key, header, stored, plain = OBJECT
        dk, _ = unwrap_data_key(keys, bytes.fromhex(header), bucket, key)
        dec = RangeDecryptor(
            dk, Layout.single(len(plain)).segments(0, len(plain) - 1), 0, len(plain) - 1
        )
        out = b"".join(dec.feed(bytes.fromhex(stored)))
        dec.finish()
        if out != plain:
            problems.append("self-test: object envelope decrypts wrongly")
    except CryptoError as e:
        problems.append(f"self-test: {e.message}")
    return problems
