"""The segmented object envelope: sizes, ranges, wraps, and every way to damage a body."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.crypto import meta
from proxy.crypto.objects import (
    MAX_SINGLE_PUT_PLAINTEXT,
    OBJECT_HEADER_LEN,
    S3_MAX_PUT,
    SEGMENT,
    STORED_SEGMENT,
    DataKey,
    Layout,
    PartEncryptor,
    RangeDecryptor,
    encrypt_part,
    open_upload_token,
    parse_object_header,
    plaintext_size,
    rewrap_data_key,
    seal_upload_token,
    stored_size,
    unwrap_data_key,
    wrap_data_key,
)
from proxy.errors import DecryptionFailed, KeyUnavailable, WrongKeyring
from tests.unit.test_envelope import KEYS, KID, M1, M2, Keys, vkey


def encrypt_object(dk: DataKey, layout: Layout, body: bytes) -> bytes:
    out, pos = [], 0
    for number, size in layout.parts:
        out.append(encrypt_part(dk, number, body[pos : pos + size]))
        pos += size
    return b"".join(out)


def read_range(
    dk: DataKey, layout: Layout, stored: bytes, first: int, last: int, chunk: int = 7919
) -> bytes:
    dec = RangeDecryptor(dk, layout.segments(first, last), first, last)
    lo, hi = dec.stored_range
    data = stored[lo : hi + 1]
    out = []
    for i in range(0, len(data), chunk):
        out.extend(dec.feed(data[i : i + chunk]))
    dec.finish()
    return b"".join(out)


# --- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("plain", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 10**7])
def test_size_functions_are_inverse(plain: int) -> None:
    assert plaintext_size(stored_size(plain)) == plain


@given(st.lists(st.integers(1, 4), min_size=1, max_size=5), st.integers(0, 3 * SEGMENT))
def test_multipart_sizes_from_stored_size_alone(segments: list[int], last: int) -> None:
    parts = [(i + 1, n * SEGMENT) for i, n in enumerate(segments)] + [(len(segments) + 1, last)]
    layout = Layout(tuple(parts))
    assert plaintext_size(layout.stored_size) == layout.plaintext_size


def test_max_single_put() -> None:
    assert stored_size(MAX_SINGLE_PUT_PLAINTEXT) <= S3_MAX_PUT
    assert stored_size(MAX_SINGLE_PUT_PLAINTEXT + 1) > S3_MAX_PUT
    assert MAX_SINGLE_PUT_PLAINTEXT == 5_367_398_704


@pytest.mark.parametrize("stored", [1, 15, STORED_SEGMENT + 3])
def test_impossible_stored_sizes(stored: int) -> None:
    with pytest.raises(DecryptionFailed):
        plaintext_size(stored)


# --- round trips and ranges ----------------------------------------------------------------

layouts = st.one_of(
    st.integers(0, 4 * SEGMENT + 17).map(Layout.single),
    st.tuples(st.sampled_from([SEGMENT, 2 * SEGMENT]), st.integers(1, 5 * SEGMENT)).map(
        lambda t: Layout.uniform(t[0], t[1])
    ),
)


@given(layouts, st.data())
@settings(max_examples=60, deadline=None)
def test_round_trip_and_random_ranges(layout: Layout, data: st.DataObject) -> None:
    body = os.urandom(layout.plaintext_size)
    dk = DataKey.generate()
    stored = encrypt_object(dk, layout, body)
    assert len(stored) == layout.stored_size
    size = len(body)
    if size == 0:
        assert read_range(dk, layout, stored, 0, 0) == b""
        return
    first = data.draw(st.integers(0, size - 1))
    last = data.draw(st.integers(first, size - 1))
    chunk = data.draw(st.sampled_from([1, 1000, 65552, 1 << 20]))
    if chunk == 1 and last - first > 70000:
        chunk = 4096
    assert read_range(dk, layout, stored, first, last, chunk) == body[first : last + 1]
    assert read_range(dk, layout, stored, 0, size - 1, 65536) == body


def test_streaming_encryptor_withholds_the_last_segment() -> None:
    dk = DataKey.generate()
    enc = PartEncryptor(dk, 0)
    assert enc.feed(b"a" * SEGMENT) == []  # might be the last: withheld
    out = enc.feed(b"b")
    assert len(out) == 1 and len(out[0]) == STORED_SEGMENT
    final = enc.finish()
    assert len(final) == 1 + 16


def test_empty_body_is_one_authenticated_segment() -> None:
    dk = DataKey.generate()
    stored = encrypt_part(dk, 0, b"")
    assert len(stored) == 16
    with pytest.raises(DecryptionFailed):
        read_range(dk, Layout.single(0), b"", 0, 0)


# --- damage --------------------------------------------------------------------------------

BODY = os.urandom(3 * SEGMENT + 100)
DK = DataKey.generate()
LAYOUT = Layout.single(len(BODY))
STORED = encrypt_object(DK, LAYOUT, BODY)


def segs(stored: bytes) -> list[bytes]:
    return [stored[i : i + STORED_SEGMENT] for i in range(0, len(stored), STORED_SEGMENT)]


@given(st.integers(0, len(STORED) * 8 - 1))
@settings(max_examples=100, deadline=None)
def test_any_bit_flip_in_the_body_fails(bit: int) -> None:
    damaged = bytearray(STORED)
    damaged[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DecryptionFailed):
        read_range(DK, LAYOUT, bytes(damaged), 0, len(BODY) - 1, 65552)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda s: b"".join([s[1], s[0], *s[2:]]), id="reordered"),
        pytest.param(lambda s: b"".join([s[0], s[0], *s[2:]]), id="duplicated"),
        pytest.param(lambda s: b"".join(s[:-1]), id="truncated-last-segment"),
        pytest.param(lambda s: b"".join(s)[:-1], id="truncated-byte"),
        pytest.param(lambda s: b"".join(s) + b"x", id="extended"),
    ],
)
def test_segment_reordering_truncation_and_extension_fail(mutate: object) -> None:
    damaged = mutate(segs(STORED))  # type: ignore[operator]
    with pytest.raises(DecryptionFailed):
        n = plaintext_size(len(damaged))
        read_range(DK, Layout.single(n), damaged, 0, max(0, n - 1), 65552)


def test_truncating_a_full_body_to_whole_segments_is_detected() -> None:
    """Dropping the final partial segment leaves a well-formed size; the last flag catches it."""
    damaged = b"".join(segs(STORED)[:3])
    n = plaintext_size(len(damaged))
    with pytest.raises(DecryptionFailed):
        read_range(DK, Layout.single(n), damaged, 0, n - 1)


def test_segments_swapped_between_parts_fail() -> None:
    layout = Layout.uniform(2 * SEGMENT, 5 * SEGMENT)
    body = os.urandom(layout.plaintext_size)
    stored = segs(encrypt_object(DK, layout, body))
    stored[0], stored[2] = stored[2], stored[0]  # part 1 seg 0 <-> part 2 seg 0
    with pytest.raises(DecryptionFailed):
        read_range(DK, layout, b"".join(stored), 0, len(body) - 1)


def test_another_objects_body_fails() -> None:
    with pytest.raises(DecryptionFailed):
        read_range(DataKey.generate(), LAYOUT, STORED, 0, 10)


# --- data key wraps ------------------------------------------------------------------------


def test_wrap_binds_bucket_key_and_version() -> None:
    header = wrap_data_key(M1, DK, "bucket", "a/b.txt")
    assert len(header) == OBJECT_HEADER_LEN == 92
    dk, head = unwrap_data_key(KEYS, header, "bucket", "a/b.txt")
    assert dk.raw == DK.raw and head.version == 1 and not head.multipart
    for bucket, key in (("other", "a/b.txt"), ("bucket", "a/c.txt")):
        with pytest.raises(DecryptionFailed):
            unwrap_data_key(KEYS, header, bucket, key)
    relabelled = bytearray(header)
    relabelled[9:11] = (2).to_bytes(2, "big")
    with pytest.raises(DecryptionFailed):
        unwrap_data_key(KEYS, bytes(relabelled), "bucket", "a/b.txt")
    with pytest.raises(KeyUnavailable):
        unwrap_data_key(Keys(KID, M2), header, "bucket", "a/b.txt")
    with pytest.raises(WrongKeyring):
        unwrap_data_key(Keys(bytes(16), vkey(1, keyring_id=bytes(16))), header, "bucket", "a/b.txt")


def test_commitment_is_checked() -> None:
    header = bytearray(wrap_data_key(M1, DK, "b", "k"))
    header[-1] ^= 1  # the commitment is also wrap AD, so this fails either way
    with pytest.raises(DecryptionFailed):
        unwrap_data_key(KEYS, bytes(header), "b", "k")


def test_rewrap_moves_the_data_key_only() -> None:
    header = wrap_data_key(M1, DK, "b", "k", flags=1)
    moved = rewrap_data_key(KEYS, header, ("b", "k"), M2, ("b2", "k2"))
    dk, head = unwrap_data_key(KEYS, moved, "b2", "k2")
    assert dk.raw == DK.raw and head.version == 2 and head.multipart
    assert read_range(dk, LAYOUT, STORED, 0, 99) == BODY[:100]


def test_upload_token_binds_the_upload() -> None:
    token = seal_upload_token(M1, DK, "b", "k", "upload-123")
    assert len(token) == 60
    assert open_upload_token(KEYS, token, "b", "k", "upload-123").raw == DK.raw
    with pytest.raises(DecryptionFailed):
        open_upload_token(KEYS, token, "b", "k", "upload-124")
    with pytest.raises(DecryptionFailed):
        parse_object_header(token)


# --- metadata ------------------------------------------------------------------------------


def test_metadata_round_trip_and_budget() -> None:
    header = wrap_data_key(M1, DK, "b", "k")
    full = {name: bytes(n) for name, (_, n) in meta.DIGESTS.items()}
    value = meta.encode(header, full)
    assert len(meta.META_KEY) + len(value) == meta.R
    assert meta.decode(value) == (header, full)
    assert meta.decode(meta.encode(header)) == (header, {})
    assert meta.R == 300 and meta.USER_METADATA_BUDGET == 1748


@pytest.mark.parametrize("bad", ["!!!", "AAAA", "x" * 130])
def test_malformed_metadata(bad: str) -> None:
    with pytest.raises(DecryptionFailed):
        meta.decode(bad)
