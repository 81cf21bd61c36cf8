"""RS(k, m) segment coding: any k valid shards rebuild a segment; a corrupted shard counts as
missing; fewer than k valid shards is a clear error."""

from __future__ import annotations

import hashlib
import os
import random
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.storage.erasure import (
    MAX_K,
    MAX_M,
    CorruptSegment,
    ErasureError,
    InvalidCoding,
    NotEnoughShards,
    SegmentCoder,
)

CODINGS = [(1, 1), (2, 1), (3, 2), (4, 2), (6, 3), (10, 4)]


def flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize(("k", "m"), CODINGS)
def test_every_loss_of_up_to_m_shards_decodes_to_the_segment(k: int, m: int) -> None:
    coder = SegmentCoder(k, m)
    segment = os.urandom(10_007)  # not a multiple of k: padding must be stripped
    encoded = coder.encode(segment)
    assert len(encoded.shards) == k + m
    assert encoded.shard_hashes == tuple(hashlib.sha256(s).digest() for s in encoded.shards)
    digest = hashlib.sha256(segment).digest()
    for lost_count in range(m + 1):
        for lost in combinations(range(k + m), lost_count):
            shards = {i: s for i, s in enumerate(encoded.shards) if i not in lost}
            out = coder.decode(shards, encoded.shard_hashes, segment_size=len(segment),
                               segment_hash=digest)
            assert out == segment, f"lost {lost}"


@pytest.mark.parametrize(("k", "m"), CODINGS)
def test_every_loss_of_up_to_m_shards_is_rebuilt_exactly(k: int, m: int) -> None:
    coder = SegmentCoder(k, m)
    encoded = coder.encode(os.urandom(4_099))
    for lost_count in range(1, m + 1):
        for lost in combinations(range(k + m), lost_count):
            shards = {i: s for i, s in enumerate(encoded.shards) if i not in lost}
            rebuilt = coder.reconstruct(shards, encoded.shard_hashes, lost)
            assert rebuilt == {i: encoded.shards[i] for i in lost}, f"lost {lost}"


@pytest.mark.parametrize(("k", "m"), CODINGS)
def test_losing_more_than_m_shards_names_the_shortfall(k: int, m: int) -> None:
    coder = SegmentCoder(k, m)
    encoded = coder.encode(os.urandom(1_000))
    kept = dict(list(enumerate(encoded.shards))[: k - 1])
    with pytest.raises(NotEnoughShards) as err:
        coder.decode(kept, encoded.shard_hashes, segment_size=1_000)
    assert err.value.k == k
    assert err.value.valid == tuple(range(k - 1))
    assert f"need {k} valid shards" in str(err.value)
    with pytest.raises(NotEnoughShards):
        coder.reconstruct(kept, encoded.shard_hashes, [k + m - 1])


def test_a_corrupted_shard_is_detected_by_its_hash_and_treated_as_missing() -> None:
    coder = SegmentCoder(4, 2)
    segment = os.urandom(50_000)
    encoded = coder.encode(segment)
    shards = dict(enumerate(encoded.shards))
    # Two data shards damaged past their header: RS alone would decode garbage silently.
    shards[0] = flip(shards[0], len(shards[0]) - 1)
    shards[2] = flip(shards[2], 200)
    out = coder.decode(shards, encoded.shard_hashes, segment_size=len(segment))
    assert out == segment
    good, bad = coder.verified(shards, encoded.shard_hashes)
    assert bad == {0, 2} and sorted(good) == [1, 3, 4, 5]
    # A third damaged shard leaves three valid: the error says which failed their hash.
    shards[5] = flip(shards[5], 100)
    with pytest.raises(NotEnoughShards) as err:
        coder.decode(shards, encoded.shard_hashes, segment_size=len(segment))
    assert err.value.corrupted == (0, 2, 5)
    assert "failed their hash check" in str(err.value)


def test_a_corrupted_shard_is_rebuilt_from_the_others() -> None:
    coder = SegmentCoder(4, 2)
    encoded = coder.encode(os.urandom(20_000))
    shards = dict(enumerate(encoded.shards))
    shards[3] = flip(shards[3], 90)
    assert coder.reconstruct(shards, encoded.shard_hashes, [3]) == {3: encoded.shards[3]}


def test_decode_checks_the_segment_size_and_hash_from_the_manifest() -> None:
    coder = SegmentCoder(3, 2)
    segment = os.urandom(3_000)
    encoded = coder.encode(segment)
    shards = dict(enumerate(encoded.shards))
    with pytest.raises(CorruptSegment, match="manifest says 2999"):
        coder.decode(shards, encoded.shard_hashes, segment_size=2_999)
    with pytest.raises(CorruptSegment, match="does not match its hash"):
        coder.decode(shards, encoded.shard_hashes, segment_size=3_000,
                     segment_hash=hashlib.sha256(b"other").digest())


def test_a_shard_filed_under_another_slot_is_refused() -> None:
    """A manifest that swaps two shards (hashes included) must not decode to wrong bytes."""
    coder = SegmentCoder(2, 1)
    encoded = coder.encode(os.urandom(1_000))
    swapped = [encoded.shards[1], encoded.shards[0], encoded.shards[2]]
    hashes = [hashlib.sha256(s).digest() for s in swapped]
    with pytest.raises(CorruptSegment, match="header index"):
        coder.decode(dict(enumerate(swapped)), hashes, segment_size=1_000)


def test_shard_indexes_outside_the_coding_are_refused() -> None:
    coder = SegmentCoder(2, 1)
    encoded = coder.encode(b"abc")
    with pytest.raises(ErasureError, match="outside"):
        coder.decode({3: encoded.shards[0]}, encoded.shard_hashes, segment_size=3)
    with pytest.raises(ErasureError, match="outside"):
        coder.reconstruct(dict(enumerate(encoded.shards)), encoded.shard_hashes, [-1])
    with pytest.raises(ErasureError, match="shard hashes"):
        coder.decode(dict(enumerate(encoded.shards)), encoded.shard_hashes[:2], segment_size=3)


@pytest.mark.parametrize(("k", "m", "backend"), [
    (0, 2, "isa_l_rs_cauchy"), (MAX_K + 1, 2, "isa_l_rs_cauchy"), (4, 0, "isa_l_rs_cauchy"),
    (4, MAX_M + 1, "isa_l_rs_cauchy"), (True, 2, "isa_l_rs_cauchy"), (4, 2, "zfec"),
    (4, 2, "liberasurecode_rs_vand"),
])
def test_unsupported_codings_are_refused(k: int, m: int, backend: str) -> None:
    with pytest.raises(InvalidCoding):
        SegmentCoder(k, m, backend)


def test_the_largest_coding_round_trips() -> None:
    coder = SegmentCoder(MAX_K, MAX_M)
    segment = os.urandom(100_000)
    encoded = coder.encode(segment)
    lost = set(random.Random(7).sample(range(MAX_K + MAX_M), MAX_M))
    shards = {i: s for i, s in enumerate(encoded.shards) if i not in lost}
    assert coder.decode(shards, encoded.shard_hashes, segment_size=len(segment)) == segment


def test_empty_and_oversized_segments_are_refused() -> None:
    coder = SegmentCoder(2, 1)
    with pytest.raises(ErasureError, match="segment must be"):
        coder.encode(b"")
    with pytest.raises(ErasureError, match="segment must be"):
        coder.decode({}, [b"\0" * 32] * 3, segment_size=0)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=20_000),
       k=st.integers(1, 12), m=st.integers(1, 6), seed=st.integers(0, 2**32))
def test_any_k_valid_shards_decode_property(data: bytes, k: int, m: int, seed: int) -> None:
    coder = SegmentCoder(k, m)
    encoded = coder.encode(data)
    assert len({len(s) for s in encoded.shards}) == 1
    rng = random.Random(seed)
    kept = rng.sample(range(k + m), rng.randint(k, k + m))
    shards = {i: encoded.shards[i] for i in kept}
    assert coder.decode(shards, encoded.shard_hashes, segment_size=len(data),
                        segment_hash=hashlib.sha256(data).digest()) == data
    missing = [i for i in range(k + m) if i not in kept]
    assert coder.reconstruct(shards, encoded.shard_hashes, missing) == {
        i: encoded.shards[i] for i in missing}


def test_decode_hashes_only_as_many_shards_as_it_needs() -> None:
    """With all shards at hand, a damaged parity shard beyond the first k is never looked at;
    verification stops at k good shards, data shards first."""
    coder = SegmentCoder(4, 2)
    segment = os.urandom(9_000)
    encoded = coder.encode(segment)
    shards = dict(enumerate(encoded.shards))
    shards[5] = flip(shards[5], 100)
    good, bad = coder.verified(shards, encoded.shard_hashes, enough=4)
    assert sorted(good) == [0, 1, 2, 3] and bad == set()
    assert coder.decode(shards, encoded.shard_hashes, segment_size=len(segment)) == segment
    _, bad = coder.verified(shards, encoded.shard_hashes)
    assert bad == {5}


def test_shards_verified_by_the_caller_are_not_hashed_again() -> None:
    """The get path passes shards the exchange already checked: decode then trusts their
    hashes, and checks the segment hash only when parity arithmetic ran."""
    coder = SegmentCoder(4, 2)
    segment = os.urandom(9_000)
    encoded = coder.encode(segment)
    wrong = hashlib.sha256(b"other").digest()
    data_only = {i: encoded.shards[i] for i in range(4)}
    with_parity = {i: encoded.shards[i] for i in (0, 2, 4, 5)}
    for shards in (data_only, with_parity):
        assert coder.decode(shards, encoded.shard_hashes, segment_size=len(segment),
                            segment_hash=hashlib.sha256(segment).digest(),
                            shards_verified=True) == segment
    # Hashes are not looked at: a (verified) shard set decodes whatever the list says...
    assert coder.decode(data_only, [wrong] * 6, segment_size=len(segment),
                        shards_verified=True) == segment
    # ...but a decode through parity still checks the segment against the manifest.
    with pytest.raises(CorruptSegment, match="does not match its hash"):
        coder.decode(with_parity, encoded.shard_hashes, segment_size=len(segment),
                     segment_hash=wrong, shards_verified=True)
    with pytest.raises(NotEnoughShards):
        coder.decode({0: encoded.shards[0]}, encoded.shard_hashes, segment_size=len(segment),
                     shards_verified=True)
    with pytest.raises(ErasureError, match="shard indexes"):
        coder.decode({9: encoded.shards[0]}, encoded.shard_hashes, segment_size=len(segment),
                     shards_verified=True)


def test_the_node_can_tell_glibc_to_keep_freed_buffers() -> None:
    """keep_freed_memory applies every setting on Linux/glibc (where the node runs)."""
    from node.storage.erasure import keep_freed_memory

    assert keep_freed_memory() is True
