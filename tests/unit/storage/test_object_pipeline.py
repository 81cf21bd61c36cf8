"""The storage parts together, in one process: an object streamed in, sealed, coded, stored as
chunks and described by a manifest comes back byte-identical after losing m shards per segment,
one of them to on-disk corruption."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.storage.chunks import ChunkCorrupted, ChunkNotFound, ChunkStore
from node.storage.erasure import NotEnoughShards, SegmentCoder
from node.storage.manifest import Coding, Manifest, Sealing, segment_ref
from node.storage.placement import Candidate, place
from node.storage.sealing import SCHEME, SegmentSealer, new_salt
from node.storage.segmenter import iter_segments

K, M = 4, 2
SEGMENT = 64 * 1024
NODES = [Candidate(f"node{i}", f"region{i % 3}") for i in range(6)]


def put_object(store: ChunkStore, blocks: list[bytes], key: bytes) -> Manifest:
    coder = SegmentCoder(K, M)
    sealing = Sealing(SCHEME, new_salt())
    sealer = SegmentSealer(key, sealing.salt)
    segments = []
    size = 0
    for index, plain in enumerate(iter_segments(iter(blocks), SEGMENT)):
        size += len(plain)
        stored = sealer.seal(index, plain)
        encoded = coder.encode(stored)
        for shard, digest in zip(encoded.shards, encoded.shard_hashes, strict=True):
            store.put(shard, expected_id=digest.hex())
        holders = place(encoded.shard_hashes[0], NODES, K + M)
        segments.append(segment_ref(stored, encoded, [[h] for h in holders]))
    manifest = Manifest(size, SEGMENT, Coding(K, M, "isa_l_rs_cauchy"), tuple(segments), sealing)
    store.pin_many(manifest.chunk_ids(), f"object:{manifest.id}")
    return manifest


def get_object(store: ChunkStore, manifest_bytes: bytes, manifest_id: str, key: bytes) -> bytes:
    manifest = Manifest.decode(manifest_bytes, expected_id=manifest_id)
    coder = SegmentCoder(manifest.coding.k, manifest.coding.m, manifest.coding.backend)
    assert manifest.sealing is not None
    sealer = SegmentSealer(key, manifest.sealing.salt)
    out = []
    for index, segment in enumerate(manifest.segments):
        shards = {}
        for i, ref in enumerate(segment.shards):
            try:
                shards[i] = store.get(ref.chunk_id)
            except (ChunkNotFound, ChunkCorrupted):
                continue
        stored = coder.decode(shards, segment.shard_hashes, segment_size=segment.size,
                              segment_hash=segment.hash)
        out.append(sealer.open(index, stored))
    return b"".join(out)


def test_an_object_survives_losing_m_shards_per_segment(tmp_path: Path) -> None:
    key = os.urandom(32)
    data = os.urandom(5 * SEGMENT + 12_345)
    with ChunkStore(tmp_path / "chunks") as store:
        manifest = put_object(store, [data[i:i + 50_000] for i in range(0, len(data), 50_000)],
                              key)
        assert manifest.size == len(data) and len(manifest.segments) == 6
        assert all(len(set(s.placement)) == K + M for s in manifest.segments)
        for n, segment in enumerate(manifest.segments):
            # One shard gone, one rotted on disk: m = 2 losses, data shards among them.
            gone, rotten = segment.shards[n % K], segment.shards[(n + 1) % (K + M)]
            store.path_of(gone.chunk_id).unlink()
            path = store.path_of(rotten.chunk_id)
            damaged = bytearray(path.read_bytes())
            damaged[-1] ^= 0xFF
            path.write_bytes(bytes(damaged))
        assert get_object(store, manifest.encode(), manifest.id, key) == data
        # The rotten shards were found and dropped; repair sees every lost one as missing.
        assert len(store.missing_pinned()) == 2 * len(manifest.segments)
        # A third loss in a segment is beyond m.
        store.path_of(manifest.segments[0].shards[5].chunk_id).unlink(missing_ok=True)
        store.path_of(manifest.segments[0].shards[4].chunk_id).unlink(missing_ok=True)
        store.path_of(manifest.segments[0].shards[3].chunk_id).unlink(missing_ok=True)
        with pytest.raises(NotEnoughShards):
            get_object(store, manifest.encode(), manifest.id, key)


def test_deleting_an_object_unpins_its_shards_for_gc(tmp_path: Path) -> None:
    with ChunkStore(tmp_path / "chunks", gc_grace_s=0) as store:
        manifest = put_object(store, [os.urandom(3 * SEGMENT)], os.urandom(32))
        assert store.gc().removed == 0
        assert store.unpin_owner(f"object:{manifest.id}") == 3 * (K + M)
        assert store.gc().removed == 3 * (K + M)
        assert store.stat().chunks == 0
