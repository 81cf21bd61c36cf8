"""The chunk store: atomic content-addressed puts, verified reads, quota, pins and GC."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.storage.chunks import (
    MAX_RANGE_BYTES,
    ChunkCorrupted,
    ChunkHashMismatch,
    ChunkNotFound,
    ChunkSizeMismatch,
    ChunkStore,
    ChunkTooLarge,
    InvalidChunkId,
    InvalidOwner,
    InvalidRange,
    QuotaExceeded,
    chunk_id_of,
    validate_chunk_id,
)

GRACE = 100.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    with ChunkStore(tmp_path / "chunks", quota_bytes=1_000_000, max_chunk_bytes=200_000,
                    gc_grace_s=GRACE) as s:
        yield s


def visible_files(root: Path) -> list[Path]:
    """Every regular file a reader could find under the store, pins database aside."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("pins."))


def later() -> float:
    """A moment past the GC grace period of everything written so far."""
    return time.time() + GRACE + 10


def test_put_names_a_chunk_by_its_sha256_and_get_returns_it(store: ChunkStore) -> None:
    data = os.urandom(5_000)
    chunk_id = store.put(data)
    assert chunk_id == hashlib.sha256(data).hexdigest()
    assert store.has(chunk_id)
    assert store.get(chunk_id) == data
    assert store.size(chunk_id) == 5_000
    assert store.path_of(chunk_id) == store.root / chunk_id[:2] / chunk_id
    assert list(store.chunk_ids()) == [chunk_id]
    stats = store.stat()
    assert (stats.used_bytes, stats.chunks, stats.reserved_bytes) == (5_000, 1, 0)


def test_putting_a_chunk_twice_stores_it_once(store: ChunkStore) -> None:
    data = b"same bytes"
    assert store.put(data) == store.put(data)
    assert store.stat().chunks == 1
    assert store.stat().used_bytes == len(data)


def test_streamed_put_hashes_as_it_writes(store: ChunkStore) -> None:
    blocks = [os.urandom(n) for n in (1, 10_000, 0, 33_333)]
    data = b"".join(blocks)
    chunk_id = store.put_stream(iter(blocks), expected_id=chunk_id_of(data))
    assert store.get(chunk_id) == data
    assert b"".join(store.iter_chunk(chunk_id, block_size=4096)) == data


def test_put_refuses_data_that_does_not_match_the_expected_id(store: ChunkStore) -> None:
    wrong = chunk_id_of(b"something else")
    with pytest.raises(ChunkHashMismatch):
        store.put(b"payload", expected_id=wrong)
    with pytest.raises(ChunkHashMismatch):
        store.put_stream([b"pay", b"load"], expected_id=wrong)
    assert not store.has(wrong)
    assert visible_files(store.root) == []
    assert store.stat().reserved_bytes == 0 and store.stat().used_bytes == 0


def test_put_refuses_data_of_another_size_than_announced(store: ChunkStore) -> None:
    with pytest.raises(ChunkSizeMismatch):
        store.put_stream([b"12345"], expected_size=4)
    with pytest.raises(ChunkSizeMismatch):
        store.put_stream([b"123"], expected_size=4)
    assert visible_files(store.root) == []
    assert store.stat().reserved_bytes == 0


def test_an_interrupted_streamed_put_leaves_no_file_and_no_reservation(
        store: ChunkStore) -> None:
    data = os.urandom(30_000)

    def client_goes_away() -> Iterator[bytes]:
        yield data[:10_000]
        yield data[10_000:20_000]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put_stream(client_goes_away(), expected_id=chunk_id_of(data))
    assert not store.has(chunk_id_of(data))
    assert visible_files(store.root) == []
    assert store.stat().reserved_bytes == 0 and store.stat().used_bytes == 0
    # The same chunk can be stored afterwards.
    assert store.put(data) == chunk_id_of(data)


def test_a_put_killed_mid_write_is_cleaned_up_when_the_store_opens(tmp_path: Path) -> None:
    root = tmp_path / "chunks"
    with ChunkStore(root) as s:
        kept = s.put(b"complete chunk")
    # What `kill -9` during a put leaves: a temp file, never a file under a chunk id.
    (root / "tmp" / "put-abc123").write_bytes(b"half of a chu")
    with ChunkStore(root) as s:
        assert list((root / "tmp").iterdir()) == []
        assert s.get(kept) == b"complete chunk"
        assert s.stat().chunks == 1 and s.stat().used_bytes == len(b"complete chunk")


def test_reopening_counts_what_is_on_disk(tmp_path: Path) -> None:
    root = tmp_path / "chunks"
    with ChunkStore(root) as s:
        for i in range(5):
            s.put(bytes([i]) * (100 + i))
    (root / "ab" / "not-a-chunk").write_bytes(b"x" * 999)
    with ChunkStore(root) as s:
        assert s.stat().chunks == 5
        assert s.stat().used_bytes == sum(100 + i for i in range(5))


def test_a_corrupted_chunk_is_detected_on_read_and_removed(store: ChunkStore) -> None:
    data = os.urandom(8_000)
    chunk_id = store.put(data)
    store.pin(chunk_id, "object:a")
    path = store.path_of(chunk_id)
    damaged = bytearray(path.read_bytes())
    damaged[1234] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(ChunkCorrupted, match=chunk_id):
        store.get(chunk_id)
    assert not store.has(chunk_id)
    assert store.stat().chunks == 0 and store.stat().used_bytes == 0
    # Still wanted: repair sees it as missing and a fresh copy can be stored.
    assert store.missing_pinned() == [chunk_id]
    store.put(data, expected_id=chunk_id)
    assert store.get(chunk_id) == data
    assert store.missing_pinned() == []


def test_a_truncated_chunk_is_detected_when_streamed_and_by_check(store: ChunkStore) -> None:
    a = store.put(os.urandom(10_000))
    b = store.put(os.urandom(10_000))
    for chunk_id in (a, b):
        path = store.path_of(chunk_id)
        path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ChunkCorrupted):
        for _ in store.iter_chunk(a):
            pass
    assert not store.has(a)
    assert store.check(b) is False and not store.has(b)
    c = store.put(b"fine")
    assert store.check(c) is True


def test_reading_a_missing_chunk_is_a_specific_error(store: ChunkStore) -> None:
    absent = chunk_id_of(b"never stored")
    with pytest.raises(ChunkNotFound):
        store.get(absent)
    with pytest.raises(ChunkNotFound):
        store.size(absent)
    with pytest.raises(ChunkNotFound):
        store.read_range(absent, 0, 1)
    assert store.check(absent) is False


def test_a_full_store_refuses_puts_with_a_clear_error(tmp_path: Path) -> None:
    with ChunkStore(tmp_path / "c", quota_bytes=10_000) as s:
        s.put(os.urandom(6_000))
        with pytest.raises(QuotaExceeded, match="4000 of the 10000-byte quota free"):
            s.put(os.urandom(5_000))
        # Without an announced size the stream is refused once it passes the quota.
        with pytest.raises(QuotaExceeded):
            s.put_stream(iter([os.urandom(3_000), os.urandom(3_000)]))
        assert s.stat().used_bytes == 6_000 and s.stat().reserved_bytes == 0
        assert s.stat().chunks == 1
        s.put(os.urandom(4_000))  # exactly fills it
        assert s.stat().free_bytes == 0


def test_the_quota_counts_puts_in_progress(tmp_path: Path) -> None:
    with ChunkStore(tmp_path / "c", quota_bytes=10_000) as s:
        inner_error: list[Exception] = []

        def first_put_blocks() -> Iterator[bytes]:
            yield b"x" * 6_000
            # While this put is in flight its 6,000 bytes are reserved.
            assert s.stat().reserved_bytes == 6_000
            try:
                s.put(os.urandom(5_000))
            except QuotaExceeded as exc:
                inner_error.append(exc)
            yield b"y" * 1_000

        s.put_stream(first_put_blocks())
        assert len(inner_error) == 1 and "reserved by puts in progress" in str(inner_error[0])
        assert s.stat().used_bytes == 7_000 and s.stat().reserved_bytes == 0


def test_chunks_over_the_size_limit_are_refused(store: ChunkStore) -> None:
    with pytest.raises(ChunkTooLarge):
        store.put(b"\0" * 200_001)
    with pytest.raises(ChunkTooLarge):
        store.put_stream(iter([b"\0" * 150_000, b"\0" * 60_000]))
    assert visible_files(store.root) == []
    assert store.stat().reserved_bytes == 0


def test_range_reads_return_exact_bytes_and_refuse_bad_ranges(store: ChunkStore) -> None:
    data = os.urandom(10_000)
    chunk_id = store.put(data)
    assert store.read_range(chunk_id, 0, 10) == data[:10]
    assert store.read_range(chunk_id, 9_990, 10) == data[9_990:]
    assert store.read_range(chunk_id, 500, 0) == b""
    for offset, length in [(9_995, 10), (-1, 5), (0, -1), (10_001, 0)]:
        with pytest.raises(InvalidRange):
            store.read_range(chunk_id, offset, length)
    with pytest.raises(InvalidRange, match="at most"):
        store.read_range(chunk_id, 0, MAX_RANGE_BYTES + 1)


@pytest.mark.parametrize("bad", [
    "", "ab", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" + "0" * 61, "0" * 63 + "\n",
    "/etc/passwd", None, 123, b"0" * 64,
])
def test_chunk_ids_that_are_not_sha256_hex_are_rejected_everywhere(
        store: ChunkStore, bad: object) -> None:
    with pytest.raises(InvalidChunkId):
        validate_chunk_id(bad)
    calls = [
        lambda: store.has(bad),  # type: ignore[arg-type]
        lambda: store.get(bad),  # type: ignore[arg-type]
        lambda: store.size(bad),  # type: ignore[arg-type]
        lambda: store.read_range(bad, 0, 1),  # type: ignore[arg-type]
        lambda: store.pin(bad, "o"),  # type: ignore[arg-type]
        lambda: store.unpin(bad, "o"),  # type: ignore[arg-type]
        lambda: store.is_pinned(bad),  # type: ignore[arg-type]
        lambda: list(store.iter_chunk(bad)),  # type: ignore[arg-type]
    ]
    if bad is not None:  # None means "no expected id" to put
        calls.append(lambda: store.put(b"x", expected_id=bad))  # type: ignore[arg-type]
    for call in calls:
        with pytest.raises(InvalidChunkId):
            call()


def test_pins_are_per_owner_and_survive_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "chunks"
    with ChunkStore(root) as s:
        a, b = s.put(b"a"), s.put(b"b")
        s.pin(a, "object:1")
        s.pin(a, "object:1")  # idempotent
        s.pin(a, "object:2")
        s.pin_many([a, b], "audit")
        assert s.owners(a) == {"object:1", "object:2", "audit"}
        assert s.stat().pinned_chunks == 2
    with ChunkStore(root) as s:
        assert s.owners(a) == {"object:1", "object:2", "audit"}
        assert s.unpin(a, "object:1") is True
        assert s.unpin(a, "object:1") is False
        assert s.unpin_owner("audit") == 2
        assert s.is_pinned(a) and not s.is_pinned(b)
        assert s.owners(a) == {"object:2"}


@pytest.mark.parametrize("owner", ["", "has space", "x" * 201, "tab\t", "é", None])
def test_pin_owners_are_validated(store: ChunkStore, owner: object) -> None:
    chunk_id = store.put(b"x")
    with pytest.raises(InvalidOwner):
        store.pin(chunk_id, owner)  # type: ignore[arg-type]


def test_gc_removes_only_unpinned_chunks_past_the_grace_period(store: ChunkStore) -> None:
    pinned = store.put(b"pinned")
    store.pin(pinned, "object:1")
    loose = store.put(b"loose")
    # Within the grace period nothing goes (a put's shards are pinned after they are stored).
    assert store.gc(now=time.time()).removed == 0
    result = store.gc(now=later())
    assert (result.removed, result.freed_bytes) == (1, len(b"loose"))
    assert store.has(pinned) and not store.has(loose)
    assert store.stat().chunks == 1 and store.stat().used_bytes == len(b"pinned")
    store.unpin(pinned, "object:1")
    assert store.gc(now=later()).removed == 1
    assert store.stat().chunks == 0 and store.stat().used_bytes == 0


def test_an_interrupted_object_put_leaves_no_unreferenced_chunks_after_gc(
        store: ChunkStore) -> None:
    """Shards stored, then the put dies before pinning them: GC reclaims all of them."""
    shards = [store.put(os.urandom(1_000)) for _ in range(6)]
    assert store.stat().chunks == 6
    store.gc(now=later())
    assert store.stat().chunks == 0
    assert not any(store.has(s) for s in shards)
    assert visible_files(store.root) == []


def test_re_putting_a_held_chunk_restarts_its_grace_period(store: ChunkStore) -> None:
    chunk_id = store.put(b"old")
    old = time.time() - 2 * GRACE
    os.utime(store.path_of(chunk_id), (old, old))
    store.put(b"old")  # someone stores it again and is about to pin it
    assert store.gc(now=time.time()).removed == 0
    assert store.has(chunk_id)


def test_a_damaged_copy_of_another_size_is_replaced_by_a_good_put(store: ChunkStore) -> None:
    data = os.urandom(1_000)
    chunk_id = store.put(data)
    store.path_of(chunk_id).write_bytes(data[:500])
    store.put(data)
    assert store.get(chunk_id) == data
    store.gc(now=time.time())  # GC also recounts what a damaged file changed behind our back
    assert store.stat().used_bytes == 1_000 and store.stat().chunks == 1


def test_concurrent_puts_from_threads_keep_the_totals_right(store: ChunkStore) -> None:
    """Services put through worker threads: the same chunk raced by many threads is stored
    once, and the totals match what is on disk."""
    from concurrent.futures import ThreadPoolExecutor

    shared = os.urandom(20_000)
    distinct = [os.urandom(1_000 + i) for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(store.put, [shared] * 16 + distinct))
    assert set(ids[:16]) == {chunk_id_of(shared)}
    assert store.stat().chunks == 17
    on_disk = sum(p.stat().st_size for p in visible_files(store.root))
    assert store.stat().used_bytes == on_disk == len(shared) + sum(map(len, distinct))
    assert store.stat().reserved_bytes == 0
    assert list((store.root / "tmp").iterdir()) == []


def test_a_chunk_over_a_since_lowered_limit_is_streamed_not_deleted(tmp_path: Path) -> None:
    data = os.urandom(5_000)
    with ChunkStore(tmp_path / "c") as s:
        chunk_id = s.put(data)
    with ChunkStore(tmp_path / "c", max_chunk_bytes=1_000) as s:
        with pytest.raises(ChunkTooLarge, match="stream it"):
            s.get(chunk_id)
        assert s.has(chunk_id)
        assert b"".join(s.iter_chunk(chunk_id)) == data
