"""The node's content-addressed chunk store: files named by the sha256 of their bytes.

Layout under the store's root (the node passes `<home>/chunks`):

    <root>/<first two hex digits>/<64-hex chunk id>   one file per chunk, 256 fan-out dirs
    <root>/tmp/                                        puts in progress (same filesystem)
    <root>/pins.sqlite3                                who holds each chunk (SQLite, WAL)

A put streams into a temp file while hashing, fsyncs it, renames it into place and fsyncs the
directory: a chunk is either absent or complete and durable, never partial. A crash mid-put
leaves only a temp file, removed when the store next opens. Reads hash what they read; a chunk
whose bytes no longer match its id is deleted and reported (ChunkCorrupted), so `has()` turns
false and repair fetches it again (its pins stay, see `missing_pinned`).

Pins are (chunk id, owner) pairs, e.g. owner "object:<manifest id>": a chunk is kept while any
owner holds it. Unpinned chunks older than a grace period are removed by `gc()`: the grace
covers the gap between storing an object's shards and pinning them, so a put interrupted in
that gap leaves nothing behind after the next GC.

All methods block on disk I/O; a trio service calls them through `trio.to_thread.run_sync`.
They are thread-safe: counters, commits and removals are serialised by one lock, the slow
parts (writing, hashing) run outside it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn

DEFAULT_QUOTA_BYTES = 10 * 1024**3
DEFAULT_MAX_CHUNK_BYTES = 1024**3
DEFAULT_GC_GRACE_S = 3600.0
READ_BLOCK_BYTES = 1024 * 1024
MAX_RANGE_BYTES = 16 * 1024 * 1024
MAX_OWNER_CHARS = 200
PINS_DB = "pins.sqlite3"
TMP_DIR = "tmp"

_CHUNK_ID = re.compile(r"[0-9a-f]{64}")
_FANOUT = re.compile(r"[0-9a-f]{2}")
_OWNER = re.compile(rf"[\x21-\x7e]{{1,{MAX_OWNER_CHARS}}}")


class ChunkStoreError(Exception):
    """Base of the chunk store's errors."""


class InvalidChunkId(ChunkStoreError, ValueError):
    """A chunk id that is not 64 lowercase hex digits (a sha256)."""


class InvalidOwner(ChunkStoreError, ValueError):
    """A pin owner that is not 1-200 printable ASCII characters without spaces."""


class ChunkNotFound(ChunkStoreError):
    """The store does not hold this chunk."""


class ChunkCorrupted(ChunkStoreError):
    """A stored chunk's bytes no longer hash to its id; it has been removed from the store."""


class ChunkHashMismatch(ChunkStoreError):
    """Data offered for a chunk does not hash to the id it was offered as (nothing stored)."""


class ChunkSizeMismatch(ChunkStoreError):
    """Data offered for a chunk is not the size it was announced with (nothing stored)."""


class ChunkTooLarge(ChunkStoreError):
    """A chunk larger than the store's per-chunk limit."""


class QuotaExceeded(ChunkStoreError):
    """Storing this chunk would take the store past its byte quota."""


class InvalidRange(ChunkStoreError, ValueError):
    """A byte range outside the chunk or longer than MAX_RANGE_BYTES."""


def validate_chunk_id(value: object) -> str:
    """Return `value` if it is a chunk id (64 lowercase hex digits); raise InvalidChunkId."""
    if not isinstance(value, str) or _CHUNK_ID.fullmatch(value) is None:
        shown = value[:80] if isinstance(value, str | bytes) else type(value).__name__
        raise InvalidChunkId(f"chunk id must be 64 lowercase hex digits (sha256), got {shown!r}")
    return value


def validate_owner(value: object) -> str:
    if not isinstance(value, str) or _OWNER.fullmatch(value) is None:
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidOwner(f"pin owner must be 1-{MAX_OWNER_CHARS} printable ASCII characters "
                           f"without spaces, got {shown!r}")
    return value


def chunk_id_of(data: bytes) -> str:
    """The id a chunk of these bytes is stored under."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class StoreStats:
    """What the store holds and may still take."""

    used_bytes: int
    reserved_bytes: int  # puts in progress
    quota_bytes: int
    chunks: int
    pinned_chunks: int

    @property
    def free_bytes(self) -> int:
        return max(0, self.quota_bytes - self.used_bytes - self.reserved_bytes)


@dataclass(frozen=True)
class GcResult:
    removed: int
    freed_bytes: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkStore:
    """Content-addressed chunks on disk with atomic puts, verified reads, quota, pins and GC."""

    def __init__(self, root: Path, *, quota_bytes: int = DEFAULT_QUOTA_BYTES,
                 max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
                 gc_grace_s: float = DEFAULT_GC_GRACE_S) -> None:
        if quota_bytes < 0 or max_chunk_bytes < 1 or gc_grace_s < 0:
            raise ValueError("quota_bytes >= 0, max_chunk_bytes >= 1 and gc_grace_s >= 0")
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.gc_grace_s = gc_grace_s
        self._lock = threading.Lock()
        self._tmp = self.root / TMP_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        # A previous process may have died mid-put: its temp files are garbage.
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir()
        for i in range(256):
            (self.root / f"{i:02x}").mkdir(exist_ok=True)
        _fsync_dir(self.root)
        self._used, self._count = self._scan()
        self._reserved = 0
        self._db = sqlite3.connect(self.root / PINS_DB, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS pins (chunk_id TEXT NOT NULL, "
                         "owner TEXT NOT NULL, PRIMARY KEY (chunk_id, owner)) WITHOUT ROWID")
        self._db.execute("CREATE INDEX IF NOT EXISTS pins_by_owner ON pins (owner)")

    # ---- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _scan(self) -> tuple[int, int]:
        used = count = 0
        for _, path in self._files():
            try:
                used += path.stat().st_size
                count += 1
            except FileNotFoundError:
                continue
        return used, count

    def _files(self) -> Iterator[tuple[str, Path]]:
        """Every chunk file, skipping anything whose name or place is not a chunk's."""
        for sub in sorted(self.root.iterdir()):
            if not _FANOUT.fullmatch(sub.name) or not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                name = entry.name
                if _CHUNK_ID.fullmatch(name) and name[:2] == sub.name and entry.is_file(
                        follow_symlinks=False):
                    yield name, Path(entry.path)

    def path_of(self, chunk_id: str) -> Path:
        validate_chunk_id(chunk_id)
        return self.root / chunk_id[:2] / chunk_id

    # ---- queries --------------------------------------------------------------------------

    def has(self, chunk_id: str) -> bool:
        return self.path_of(chunk_id).is_file()

    def size(self, chunk_id: str) -> int:
        try:
            return self.path_of(chunk_id).stat().st_size
        except FileNotFoundError:
            raise ChunkNotFound(f"chunk {chunk_id} is not stored here") from None

    def stat(self) -> StoreStats:
        with self._lock:
            pinned = self._db.execute("SELECT COUNT(DISTINCT chunk_id) FROM pins").fetchone()[0]
            return StoreStats(self._used, self._reserved, self.quota_bytes, self._count, pinned)

    def chunk_ids(self) -> Iterator[str]:
        for chunk_id, _ in self._files():
            yield chunk_id

    # ---- quota ----------------------------------------------------------------------------

    def _reserve(self, nbytes: int) -> None:
        with self._lock:
            if self._used + self._reserved + nbytes > self.quota_bytes:
                free = max(0, self.quota_bytes - self._used - self._reserved)
                raise QuotaExceeded(
                    f"chunk store is full: {nbytes} more bytes needed, {free} of the "
                    f"{self.quota_bytes}-byte quota free ({self._used} used, "
                    f"{self._reserved} reserved by puts in progress)")
            self._reserved += nbytes

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= nbytes

    # ---- put ------------------------------------------------------------------------------

    def put(self, data: bytes, expected_id: str | None = None) -> str:
        """Store `data`; return its chunk id. With `expected_id`, refuse data of another hash."""
        return self.put_stream((data,), expected_id=expected_id, expected_size=len(data))

    def put_stream(self, blocks: Iterable[bytes | bytearray | memoryview], *,
                   expected_id: str | None = None, expected_size: int | None = None) -> str:
        """Store a chunk arriving as blocks, hashing as it is written; return its id.

        Nothing is visible under the chunk's id until every byte is written, fsynced and
        checked (`expected_id`, `expected_size`); on any failure, including an exception from
        `blocks`, the temp file is removed and the quota reservation released. With
        `expected_size` the whole size is reserved up front, otherwise block by block.
        """
        if expected_id is not None:
            validate_chunk_id(expected_id)
        if expected_size is not None:
            if type(expected_size) is not int or expected_size < 0:
                raise ChunkSizeMismatch(f"expected size must be an integer >= 0, "
                                        f"got {expected_size!r}")
            if expected_size > self.max_chunk_bytes:
                raise ChunkTooLarge(f"a chunk of {expected_size} bytes exceeds the limit of "
                                    f"{self.max_chunk_bytes}")
            self._reserve(expected_size)
            reserved = expected_size
        else:
            reserved = 0
        tmp: Path | None = None
        committed = False
        try:
            fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
            tmp = Path(tmp_name)
            hasher = hashlib.sha256()
            written = 0
            with os.fdopen(fd, "wb") as f:
                for block in blocks:
                    n = len(block)
                    if written + n > self.max_chunk_bytes:
                        raise ChunkTooLarge(f"chunk exceeds the limit of {self.max_chunk_bytes} "
                                            "bytes")
                    if expected_size is not None and written + n > expected_size:
                        raise ChunkSizeMismatch(f"chunk is longer than its announced "
                                                f"{expected_size} bytes")
                    if expected_size is None:
                        self._reserve(n)
                        reserved += n
                    hasher.update(block)
                    f.write(block)
                    written += n
                if expected_size is not None and written != expected_size:
                    raise ChunkSizeMismatch(f"chunk is {written} bytes, announced as "
                                            f"{expected_size}")
                chunk_id = hasher.hexdigest()
                if expected_id is not None and chunk_id != expected_id:
                    raise ChunkHashMismatch(f"data hashes to {chunk_id}, not the expected "
                                            f"{expected_id}")
                f.flush()
                os.fsync(f.fileno())
            fresh = self._commit(tmp, chunk_id, written, reserved)
            committed = True
            if fresh:
                _fsync_dir(self.path_of(chunk_id).parent)
            return chunk_id
        finally:
            if not committed:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                self._release(reserved)

    def _commit(self, tmp: Path, chunk_id: str, size: int, reserved: int) -> bool:
        """Move a finished temp file into place; False if the chunk was already held."""
        target = self.path_of(chunk_id)
        with self._lock:
            try:
                old = target.stat().st_size
            except FileNotFoundError:
                old = None
            if old == size:
                # Already held (content addressing makes it the same bytes): keep the stored
                # copy, and refresh its age so GC leaves it alone until the caller pins it.
                os.utime(target)
                tmp.unlink()
                self._reserved -= reserved
                return False
            os.replace(tmp, target)
            self._reserved -= reserved
            if old is None:
                self._count += 1
                self._used += size
            else:  # a damaged copy of another size is replaced by the good one
                self._used += size - old
            return True

    # ---- read -----------------------------------------------------------------------------

    def _open(self, chunk_id: str) -> tuple[int, os.stat_result]:
        path = self.path_of(chunk_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ChunkNotFound(f"chunk {chunk_id} is not stored here") from None
        return fd, os.fstat(fd)

    def get(self, chunk_id: str) -> bytes:
        """The chunk's bytes, verified against its id (ChunkCorrupted if they do not match)."""
        fd, st = self._open(chunk_id)
        with os.fdopen(fd, "rb") as f:
            if st.st_size > self.max_chunk_bytes:
                # Stored under a larger limit than today's: not read into memory here.
                raise ChunkTooLarge(f"chunk {chunk_id} is {st.st_size} bytes, over the "
                                    f"{self.max_chunk_bytes}-byte limit; stream it instead")
            data = f.read(st.st_size + 1)
        if chunk_id_of(data) != chunk_id:
            self._drop_corrupt(chunk_id, st)
        return data

    def iter_chunk(self, chunk_id: str, block_size: int = READ_BLOCK_BYTES) -> Iterator[bytes]:
        """Stream a chunk in blocks. The hash is checked at the end: a consumer must not trust
        the data before the iterator finishes (ChunkCorrupted is raised then if it is bad)."""
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        fd, st = self._open(chunk_id)
        hasher = hashlib.sha256()
        with os.fdopen(fd, "rb") as f:
            while block := f.read(block_size):
                hasher.update(block)
                yield block
        if hasher.hexdigest() != chunk_id:
            self._drop_corrupt(chunk_id, st)

    def check(self, chunk_id: str) -> bool:
        """Scrub one chunk: True if present and intact; a corrupted one is removed (False)."""
        try:
            for _ in self.iter_chunk(chunk_id):
                pass
        except (ChunkNotFound, ChunkCorrupted):
            return False
        return True

    def read_range(self, chunk_id: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of a chunk, for possession audits. Not verified
        against the chunk's hash (that needs the whole chunk): an audit compares the range
        against what the challenger expects."""
        if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
            raise InvalidRange("offset and length must be integers >= 0")
        if length > MAX_RANGE_BYTES:
            raise InvalidRange(f"a range read is at most {MAX_RANGE_BYTES} bytes, "
                               f"asked for {length}")
        fd, st = self._open(chunk_id)
        with os.fdopen(fd, "rb") as f:
            if offset + length > st.st_size:
                raise InvalidRange(f"range [{offset}, {offset + length}) is outside chunk "
                                   f"{chunk_id} of {st.st_size} bytes")
            data = os.pread(f.fileno(), length, offset)
        if len(data) != length:
            raise InvalidRange(f"chunk {chunk_id} shrank while being read")
        return data

    def _drop_corrupt(self, chunk_id: str, seen: os.stat_result) -> NoReturn:
        """Remove the damaged file we read (unless a good copy replaced it meanwhile)."""
        path = self.path_of(chunk_id)
        with self._lock:
            try:
                now = path.stat()
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_ino, now.st_dev) == (seen.st_ino, seen.st_dev):
                path.unlink()
                self._count -= 1
                self._used -= now.st_size
        raise ChunkCorrupted(f"chunk {chunk_id} on disk does not match its hash; removed it "
                             "so it can be fetched again")

    # ---- pins -----------------------------------------------------------------------------

    def pin(self, chunk_id: str, owner: str) -> None:
        """Keep `chunk_id` while `owner` holds it (idempotent; the chunk may arrive later)."""
        validate_chunk_id(chunk_id)
        validate_owner(owner)
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO pins (chunk_id, owner) VALUES (?, ?)",
                             (chunk_id, owner))

    def pin_many(self, chunk_ids: Iterable[str], owner: str) -> None:
        """Pin several chunks for one owner in one transaction."""
        rows = [(validate_chunk_id(c), validate_owner(owner)) for c in chunk_ids]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO pins (chunk_id, owner) VALUES (?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def unpin(self, chunk_id: str, owner: str) -> bool:
        """Release `owner`'s hold on a chunk; True if it held it."""
        validate_chunk_id(chunk_id)
        validate_owner(owner)
        with self._lock:
            cur = self._db.execute("DELETE FROM pins WHERE chunk_id = ? AND owner = ?",
                                   (chunk_id, owner))
            return cur.rowcount > 0

    def unpin_owner(self, owner: str) -> int:
        """Release every chunk `owner` holds (e.g. an object being deleted); return how many."""
        validate_owner(owner)
        with self._lock:
            return self._db.execute("DELETE FROM pins WHERE owner = ?", (owner,)).rowcount

    def owners(self, chunk_id: str) -> set[str]:
        validate_chunk_id(chunk_id)
        with self._lock:
            rows = self._db.execute("SELECT owner FROM pins WHERE chunk_id = ?", (chunk_id,))
            return {r[0] for r in rows}

    def is_pinned(self, chunk_id: str) -> bool:
        validate_chunk_id(chunk_id)
        with self._lock:
            return self._db.execute("SELECT 1 FROM pins WHERE chunk_id = ? LIMIT 1",
                                    (chunk_id,)).fetchone() is not None

    def pinned_ids(self) -> list[str]:
        """Every pinned chunk id, in order (whether or not its file is here)."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT DISTINCT chunk_id FROM pins ORDER BY chunk_id")]

    def missing_pinned(self) -> list[str]:
        """Pinned chunk ids with no intact file here: what repair has to fetch."""
        return [c for c in self.pinned_ids() if not self.has(c)]

    # ---- garbage collection ---------------------------------------------------------------

    def gc(self, now: float | None = None) -> GcResult:
        """Remove unpinned chunks last written (or re-put) more than `gc_grace_s` before `now`
        (seconds since the epoch, default: the current time)."""
        cutoff = (time.time() if now is None else now) - self.gc_grace_s
        removed = freed = 0
        for chunk_id, path in list(self._files()):
            with self._lock:
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if st.st_mtime >= cutoff:
                    continue
                if self._db.execute("SELECT 1 FROM pins WHERE chunk_id = ? LIMIT 1",
                                    (chunk_id,)).fetchone() is not None:
                    continue
                path.unlink()
                self._count -= 1
                self._used -= st.st_size
            removed += 1
            freed += st.st_size
        with self._lock:
            # A file damaged behind the store's back (truncated, replaced) leaves the running
            # totals off by its change in size; a recount under the lock puts them right.
            self._used, self._count = self._scan()
        return GcResult(removed, freed)
