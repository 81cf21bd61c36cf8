"""The object manifest: one canonical CBOR encoding per value, named by its hash; decoding
untrusted bytes checks every field and every size against the others."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.codec import DecodeError, to_cbor
from node.storage.erasure import SegmentCoder
from node.storage.manifest import (
    MANIFEST_DOMAIN,
    MAX_HOLDERS,
    Coding,
    InvalidManifest,
    Manifest,
    Sealing,
    ShardRef,
    segment_ref,
)
from node.storage.sealing import SCHEME, SegmentSealer, new_salt
from node.storage.segmenter import iter_segments

NODES = ["12D3KooWnodeA", "12D3KooWnodeB", "12D3KooWnodeC", "12D3KooWnodeD", "12D3KooWnodeE",
         "12D3KooWnodeF"]


def build(data: bytes, k: int = 4, m: int = 2, segment_size: int = 1000,
          key: bytes | None = None) -> Manifest:
    """A manifest made the way a put makes one: segment, (seal,) encode, place."""
    coder = SegmentCoder(k, m)
    sealing = Sealing(SCHEME, new_salt()) if key is not None else None
    sealer = SegmentSealer(key, sealing.salt) if key is not None and sealing else None
    segments = []
    for i, plain in enumerate(iter_segments([data], segment_size)):
        stored = sealer.seal(i, plain) if sealer else plain
        placement = [[NODES[(i + j) % len(NODES)]] for j in range(k + m)]
        segments.append(segment_ref(stored, coder.encode(stored), placement))
    return Manifest(len(data), segment_size, Coding(k, m, "isa_l_rs_cauchy"), tuple(segments),
                    sealing)


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return build(os.urandom(3_500))


def raw_of(m: Manifest) -> list[Any]:
    return cbor2.loads(m.encode())  # type: ignore[no-any-return]


def test_round_trip_and_id(manifest: Manifest) -> None:
    data = manifest.encode()
    assert Manifest.decode(data) == manifest
    assert manifest.id == hashlib.sha256(data).hexdigest()
    assert Manifest.decode(data, expected_id=manifest.id) == manifest
    assert len(manifest.segments) == 4  # 3 x 1000 + 500
    assert [manifest.plain_size_of(i) for i in range(4)] == [1000, 1000, 1000, 500]
    assert manifest.segment_at(2_999) == (2, 999)
    assert len(list(manifest.chunk_ids())) == 4 * 6


def test_the_same_value_always_encodes_to_the_same_bytes(manifest: Manifest) -> None:
    rebuilt = Manifest(manifest.size, manifest.segment_size, manifest.coding,
                       tuple(replace(s) for s in manifest.segments), manifest.sealing)
    assert rebuilt is not manifest
    assert rebuilt.encode() == manifest.encode() and rebuilt.id == manifest.id
    assert manifest.encode() == to_cbor(raw_of(manifest))
    assert raw_of(manifest)[:2] == [MANIFEST_DOMAIN, 1]


def test_an_empty_object_has_no_segments() -> None:
    empty = build(b"")
    assert empty.segments == ()
    assert Manifest.decode(empty.encode()) == empty


def test_an_encrypted_object_records_its_salt_and_sealed_sizes() -> None:
    key = os.urandom(32)
    m = build(os.urandom(1_500), key=key)
    assert m.sealing is not None and len(m.sealing.salt) == 16
    assert [s.size for s in m.segments] == [1_016, 516]
    assert Manifest.decode(m.encode()) == m
    # The key is not in the manifest.
    assert key not in m.encode()


def test_the_expected_id_must_match(manifest: Manifest) -> None:
    with pytest.raises(InvalidManifest, match="do not hash"):
        Manifest.decode(manifest.encode(), expected_id="0" * 64)
    with pytest.raises(InvalidManifest, match="64 lowercase hex"):
        Manifest.decode(manifest.encode(), expected_id="../etc")


def test_repair_moving_a_shard_gives_a_new_manifest(manifest: Manifest) -> None:
    moved = manifest.with_holders(1, 3, ("12D3KooWnodeZ",))
    assert moved.segments[1].shards[3].holders == ("12D3KooWnodeZ",)
    assert moved.segments[0] == manifest.segments[0]
    assert moved.id != manifest.id
    assert Manifest.decode(moved.encode()) == moved


@pytest.mark.parametrize("garbage", [
    b"", b"\x00", b"\xff" * 10, b"\x9f\x01\x02\xff", cbor2.dumps("manifest"),
    cbor2.dumps([MANIFEST_DOMAIN, 1]), cbor2.dumps({"size": 1}),
    cbor2.dumps(cbor2.CBORTag(24, b"x")),
])
def test_garbage_is_refused(garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        Manifest.decode(garbage)


def test_oversize_and_overdeep_input_is_refused(manifest: Manifest) -> None:
    data = manifest.encode()
    with pytest.raises(InvalidManifest, match="exceeds the limit"):
        Manifest.decode(data, max_bytes=len(data) - 1)
    deep: Any = []
    for _ in range(50):
        deep = [deep]
    with pytest.raises(InvalidManifest):
        Manifest.decode(cbor2.dumps(deep))


def test_non_canonical_encoding_is_refused(manifest: Manifest) -> None:
    raw = raw_of(manifest)
    # Same value, non-minimal integer head: a second byte string for one manifest.
    loose = cbor2.dumps(raw)
    assert loose == manifest.encode()
    head = b"\x87"  # list of 7
    assert loose.startswith(head)
    body = cbor2.dumps(raw[0]) + cbor2.dumps(raw[1])
    assert loose.startswith(head + body)
    tampered = head + body + b"\x1a" + manifest.size.to_bytes(4, "big") + \
        loose[len(head + body) + len(cbor2.dumps(manifest.size)):]
    assert cbor2.loads(tampered) == raw
    with pytest.raises(InvalidManifest, match="canonical"):
        Manifest.decode(tampered)


def mutate(manifest: Manifest, path: tuple[int, ...], value: Any) -> bytes:
    raw = raw_of(manifest)
    target = raw
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return to_cbor(raw)


# Paths into the CBOR list: [tag, version, size, segment_size, coding, sealing, segments]
# segment = [size, hash, shards]; shard = [hash, size, holders]
BAD_FIELDS = [
    ((0,), "dcloud/other", "not a manifest"),
    ((1,), 2, "version"),
    ((1,), True, "version"),
    ((2,), -1, "object size"),
    ((2,), 3_501, "expected 501"),
    ((2,), 2_999, "segments"),
    ((2,), "3500", "object size"),
    ((3,), 0, "segment size"),
    ((3,), 2**40, "segment size"),
    ((4,), [4, 2], "coding"),
    ((4, 0), 0, "k"),
    ((4, 1), 99, "m"),
    ((4, 2), "jerasure_rs_vand", "not supported"),
    ((5,), ["aes", b"\0" * 16], "sealing scheme"),
    ((5,), [SCHEME, b"\0" * 15], "salt"),
    ((6,), {}, "segments must be a list"),
    ((6, 0, 0), 999, "stored"),
    ((6, 0, 1), b"\0" * 31, "segment hash"),
    ((6, 0, 2), [], "shards"),
    ((6, 0, 2, 0, 0), "ab" * 32, "shard hash"),
    ((6, 0, 2, 0, 1), 10, "same size"),
    ((6, 0, 2, 0, 1), 0, "shard size"),
    ((6, 0, 2, 0, 2), ["bad id!"], "not a node id"),
    ((6, 0, 2, 0, 2), [NODES[0], NODES[0]], "same holder twice"),
    ((6, 0, 2, 0, 2), [f"n{i}" for i in range(MAX_HOLDERS + 1)], "at most"),
    ((6, 0, 2, 0, 2), "12D3KooWnodeA", "holders must be a list"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_FIELDS)
def test_bad_fields_are_refused_with_a_reason(manifest: Manifest, path: tuple[int, ...],
                                              value: Any, message: str) -> None:
    with pytest.raises(InvalidManifest, match=message):
        Manifest.decode(mutate(manifest, path, value))


def test_a_segment_with_too_few_shards_is_refused(manifest: Manifest) -> None:
    raw = raw_of(manifest)
    raw[6][1][2] = raw[6][1][2][:5]
    with pytest.raises(InvalidManifest, match="must have 6 items"):
        Manifest.decode(to_cbor(raw))


def test_invalid_manifests_cannot_be_constructed(manifest: Manifest) -> None:
    with pytest.raises(InvalidManifest):
        replace(manifest, size=manifest.size + 1)
    with pytest.raises(InvalidManifest):
        ShardRef(b"\0" * 32, 10, ("ok", "no spaces allowed"))
    with pytest.raises(InvalidManifest):
        Coding(0, 2, "isa_l_rs_cauchy")


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 5_000), segment_size=st.integers(1, 2_000),
       k=st.integers(1, 5), m=st.integers(1, 3), sealed=st.booleans())
def test_round_trip_property(size: int, segment_size: int, k: int, m: int,
                             sealed: bool) -> None:
    manifest = build(os.urandom(size), k, m, segment_size, os.urandom(32) if sealed else None)
    data = manifest.encode()
    decoded = Manifest.decode(data, expected_id=manifest.id)
    assert decoded == manifest and decoded.encode() == data
