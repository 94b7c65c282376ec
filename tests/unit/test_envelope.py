"""Value envelopes: round trips, every tampering fails opaquely, contexts and keyrings bind."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.crypto import (
    SMALL_OVERHEAD,
    KeyKind,
    Opener,
    Role,
    SmallSealer,
    VersionKey,
    field_context,
    is_envelope,
    seal_deterministic,
    value_context,
)
from proxy.crypto.envelope import (
    COUNTER_LIMIT,
    DET_OVERHEAD,
    MAGIC,
    parse_header,
    seal_small_at,
)
from proxy.errors import (
    DecryptionFailed,
    KeyUnavailable,
    NotAnEnvelope,
    UnsupportedFormat,
    WrongKeyring,
)

KID = bytes(range(16))


class Keys:
    """A minimal KeyLookup: the versions it holds, nothing else."""

    def __init__(self, keyring_id: bytes = KID, *keys: VersionKey) -> None:
        self._id = keyring_id
        self.keys = {(k.kind, k.class_id, k.version): k for k in keys}

    @property
    def keyring_id(self) -> bytes:
        return self._id

    def decrypt_key(self, kind: KeyKind, class_id: int, version: int) -> VersionKey:
        try:
            return self.keys[(kind, class_id, version)]
        except KeyError:
            raise KeyUnavailable(f"key version {version} unknown") from None


def vkey(
    version: int = 1, kind: KeyKind = KeyKind.MASTER, class_id: int = 0, keyring_id: bytes = KID
) -> VersionKey:
    return VersionKey(keyring_id, class_id, version, os.urandom(32), kind)


M1 = vkey(1)
M2 = vkey(2)
I1 = vkey(1, KeyKind.INDEX)
KEYS = Keys(KID, M1, M2, I1)
CTX = value_context("default", Role.STRING)


def test_small_overhead_is_47_bytes() -> None:
    env = SmallSealer(M1).seal(b"hello", CTX)
    assert len(env) == 5 + SMALL_OVERHEAD == 5 + 47
    assert env.startswith(MAGIC) and is_envelope(env)
    assert parse_header(env) == (0x01, KID[:4], 0, 1)


def test_sealer_matches_explicit_seal_at() -> None:
    salt = os.urandom(16)
    sealer = SmallSealer(M1, random=lambda n: salt)
    for counter in range(3):
        assert sealer.seal(b"v", CTX) == seal_small_at(M1, salt, counter, b"v", CTX)
    assert sealer.sealed == 3


def test_counter_exhaustion_draws_a_new_salt() -> None:
    salts = iter([b"a" * 16, b"b" * 16])
    sealer = SmallSealer(M1, random=lambda n: next(salts))
    sealer._counter = iter([COUNTER_LIMIT - 1, COUNTER_LIMIT])  # type: ignore[assignment]
    first = sealer.seal(b"x", CTX)
    second = sealer.seal(b"x", CTX)
    assert first[11:27] == b"a" * 16 and second[11:27] == b"b" * 16
    assert second[27:31] == bytes(4)  # the counter restarted under the new salt
    opener = Opener(KEYS)
    assert opener.open(first, CTX)[0] == opener.open(second, CTX)[0] == b"x"


@given(st.binary(max_size=5000), st.sampled_from(list(Role)), st.text(max_size=20))
@settings(max_examples=200, deadline=None)
def test_small_round_trip(plaintext: bytes, role: Role, ns: str) -> None:
    ctx = value_context(ns, role)
    env = SmallSealer(M2).seal(plaintext, ctx)
    assert Opener(KEYS).open(env, ctx) == (plaintext, 2)


@given(st.binary(max_size=300), st.data())
@settings(max_examples=300, deadline=None)
def test_any_bit_flip_fails_opaquely(plaintext: bytes, data: st.DataObject) -> None:
    env = bytearray(SmallSealer(M1).seal(plaintext, CTX))
    bit = data.draw(st.integers(0, len(env) * 8 - 1))
    env[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(
        (DecryptionFailed, NotAnEnvelope, UnsupportedFormat, WrongKeyring, KeyUnavailable)
    ) as info:
        Opener(KEYS).open(bytes(env), CTX)
    # outside the header, every flip is the one opaque error
    if bit // 8 >= 11:
        assert type(info.value) is DecryptionFailed
        assert str(info.value) == "decryption failed"


@given(st.binary(min_size=1, max_size=300), st.data())
@settings(max_examples=200, deadline=None)
def test_truncation_fails(plaintext: bytes, data: st.DataObject) -> None:
    env = SmallSealer(M1).seal(plaintext, CTX)
    cut = data.draw(st.integers(4, len(env) - 1))
    with pytest.raises(DecryptionFailed):
        Opener(KEYS).open(env[:cut], CTX)


@pytest.mark.parametrize(
    "other",
    [
        value_context("default", Role.HASH_VALUE),
        value_context("tenant-2", Role.STRING),
        field_context(value_context("default", Role.STRING), b"f"),
    ],
)
def test_context_transplant_fails(other: bytes) -> None:
    env = SmallSealer(M1).seal(b"secret", CTX)
    with pytest.raises(DecryptionFailed):
        Opener(KEYS).open(env, other)


def test_hash_field_binding() -> None:
    base = value_context("default", Role.HASH_VALUE)
    env = SmallSealer(M1).seal(b"v", field_context(base, b"email"))
    assert Opener(KEYS).open(env, field_context(base, b"email"))[0] == b"v"
    with pytest.raises(DecryptionFailed):
        Opener(KEYS).open(env, field_context(base, b"name"))


def test_wrong_keyring_is_named_and_same_ref_other_keyring_fails() -> None:
    env = SmallSealer(M1).seal(b"v", CTX)
    with pytest.raises(WrongKeyring):
        Opener(Keys(bytes(16), vkey(1, keyring_id=bytes(16)))).open(env, CTX)
    # a keyring whose id shares the 4-byte ref: the full id is bound by key derivation
    twin = KID[:4] + bytes(12)
    with pytest.raises(DecryptionFailed):
        Opener(Keys(twin, VersionKey(twin, 0, 1, M1.material))).open(env, CTX)


def test_unknown_version_and_format() -> None:
    env = bytearray(SmallSealer(M1).seal(b"v", CTX))
    env[9:11] = (7).to_bytes(2, "big")
    with pytest.raises(KeyUnavailable):
        Opener(KEYS).open(bytes(env), CTX)
    env[3] = 0x7F
    with pytest.raises(UnsupportedFormat):
        Opener(KEYS).open(bytes(env), CTX)


def test_downgraded_version_fails() -> None:
    """An envelope of version 2 relabelled as version 1 (a downgrade) does not open."""
    env = bytearray(SmallSealer(M2).seal(b"v", CTX))
    env[9:11] = (1).to_bytes(2, "big")
    with pytest.raises(DecryptionFailed):
        Opener(KEYS).open(bytes(env), CTX)


def test_not_an_envelope() -> None:
    for legacy in (b"", b"plain", b'{"json": 1}', b"\x80\x04pickle", b"\x1f\x8bgzip"):
        with pytest.raises(NotAnEnvelope):
            Opener(KEYS).open(legacy, CTX)


def test_revoked_version_refuses() -> None:
    env = SmallSealer(M1).seal(b"v", CTX)
    with pytest.raises(KeyUnavailable):
        Opener(Keys(KID, M2)).open(env, CTX)


# --- deterministic ------------------------------------------------------------------------


@given(st.binary(max_size=2000))
@settings(max_examples=100, deadline=None)
def test_deterministic_round_trip_and_equality(plaintext: bytes) -> None:
    ctx = value_context("default", Role.SET_MEMBER)
    a = seal_deterministic(I1, plaintext, ctx)
    assert a == seal_deterministic(I1, plaintext, ctx)
    assert len(a) == len(plaintext) + DET_OVERHEAD
    assert Opener(KEYS).open(a, ctx) == (plaintext, 1)


def test_deterministic_binds_context_and_kind() -> None:
    ctx = value_context("default", Role.SET_MEMBER)
    env = seal_deterministic(I1, b"m", ctx)
    assert env != seal_deterministic(I1, b"m", value_context("default", Role.ZSET_MEMBER))
    with pytest.raises(DecryptionFailed):
        Opener(KEYS).open(env, value_context("other", Role.SET_MEMBER))
    flipped = bytearray(env)
    flipped[-1] ^= 1
    with pytest.raises(DecryptionFailed):
        Opener(KEYS).open(bytes(flipped), ctx)
    with pytest.raises(ValueError):
        seal_deterministic(M1, b"m", ctx)  # master versions never seal deterministically
    with pytest.raises(ValueError):
        SmallSealer(I1)


def test_version_key_never_prints_or_pickles_material() -> None:
    import pickle

    assert M1.material.hex() not in repr(M1) and "material" not in str(M1)
    with pytest.raises(TypeError):
        pickle.dumps(M1)
