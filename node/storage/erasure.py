"""Reed-Solomon RS(k, m) coding of object segments into k data + m parity shards.

Systematic Reed-Solomon over a Cauchy matrix through pyeclib's `isa_l_rs_cauchy` backend
(liberasurecode + ISA-L, bundled in pyeclib's wheel): any k of the k+m shards rebuild the
segment, and a Cauchy matrix makes every pattern of up to m losses recoverable. A shard is a
liberasurecode fragment: an 80-byte self-describing header (index, sizes, backend) followed by
ceil(segment_size / k) bytes (padded to the backend's alignment).

No erasure code notices a corrupted shard: it decodes garbage. So every caller-facing entry
point here takes the sha256 of each shard (recorded in the manifest when the segment was
encoded) and treats a shard whose hash does not match as missing, before the coder sees it.

Everything here is blocking CPU work on buffers of a few MiB: a trio service calls it through
`trio.to_thread.run_sync`. A `SegmentCoder` holds no mutable Python state after construction;
liberasurecode's encode/decode calls are reentrant, so one coder may serve several threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pyeclib.ec_iface import ECDriver, ECDriverError

BACKEND_ISA_L_RS_CAUCHY = "isa_l_rs_cauchy"
BACKENDS = frozenset({BACKEND_ISA_L_RS_CAUCHY})
MIN_K, MAX_K = 1, 32
MIN_M, MAX_M = 1, 16
DEFAULT_K = 4
DEFAULT_M = 2
# Segments are coded whole in memory: a few MiB keeps page-fault cost low and memory bounded.
MAX_SEGMENT_BYTES = 64 * 1024 * 1024
# liberasurecode's fragment header (fragment_header_t) precedes each shard's payload.
SHARD_HEADER_BYTES = 80
HASH_BYTES = 32

log = logging.getLogger(__name__)

# glibc malloc settings for coding (keep_freed_memory). mallopt's parameter numbers:
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_SETTINGS = {
    M_MMAP_THRESHOLD: 32 * 1024 * 1024,  # glibc's ceiling on 64-bit; shards/segments fit
    M_TRIM_THRESHOLD: 256 * 1024 * 1024,  # freed heap kept before it is returned to the OS
    M_TOP_PAD: 64 * 1024 * 1024,  # the heap grows 64 MiB at a time
}


def keep_freed_memory() -> bool:
    """Tell glibc to reuse freed multi-MiB buffers instead of returning them to the OS.

    With glibc's defaults every shard and segment buffer above 128 KiB is a fresh mmap, and
    touching its pages for the first time costs more than the Reed-Solomon arithmetic:
    encode ran at ~1.1 GB/s instead of ~6 (docs/benchmarks.md). The cost is up to
    M_TRIM_THRESHOLD of freed heap staying resident. Returns False (and changes nothing)
    off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.items())
    if not ok:
        log.warning("glibc refused some malloc settings; erasure coding runs slower")
    return ok


class ErasureError(Exception):
    """A segment could not be encoded or decoded."""


class InvalidCoding(ErasureError, ValueError):
    """Coding parameters outside what the node supports (k, m, backend)."""


class NotEnoughShards(ErasureError):
    """Fewer than k shards with a matching hash: the segment cannot be rebuilt from them."""

    def __init__(self, k: int, valid: Iterable[int], corrupted: Iterable[int]) -> None:
        self.k = k
        self.valid = tuple(sorted(valid))
        self.corrupted = tuple(sorted(corrupted))
        detail = (f"; shards {list(self.corrupted)} failed their hash check"
                  if self.corrupted else "")
        super().__init__(f"need {k} valid shards to decode, have {len(self.valid)} "
                         f"(indexes {list(self.valid)}){detail}")


class CorruptSegment(ErasureError):
    """Shards passed their hash checks but the decoded segment has the wrong size or hash."""


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def check_coding(k: int, m: int, backend: str = BACKEND_ISA_L_RS_CAUCHY) -> None:
    """Raise InvalidCoding unless (k, m, backend) is a coding this node supports."""
    if type(k) is not int or not MIN_K <= k <= MAX_K:
        raise InvalidCoding(f"k (data shards) must be an integer in [{MIN_K}, {MAX_K}], got {k!r}")
    if type(m) is not int or not MIN_M <= m <= MAX_M:
        raise InvalidCoding(f"m (parity shards) must be an integer in [{MIN_M}, {MAX_M}], "
                            f"got {m!r}")
    if backend not in BACKENDS:
        raise InvalidCoding(f"erasure coding backend {str(backend)[:64]!r} is not supported "
                            f"(supported: {sorted(BACKENDS)})")


def check_segment_size(size: int) -> None:
    if type(size) is not int or not 1 <= size <= MAX_SEGMENT_BYTES:
        raise ErasureError(f"a segment must be 1-{MAX_SEGMENT_BYTES} bytes, got {size!r}")


@dataclass(frozen=True)
class EncodedSegment:
    """The k+m shards of one segment, in index order (0..k-1 data, k..k+m-1 parity)."""

    shards: tuple[bytes, ...]
    shard_hashes: tuple[bytes, ...]

    @property
    def shard_size(self) -> int:
        return len(self.shards[0])


class SegmentCoder:
    """RS(k, m) encoder/decoder of segments; shard hashes guard every decode."""

    def __init__(self, k: int = DEFAULT_K, m: int = DEFAULT_M,
                 backend: str = BACKEND_ISA_L_RS_CAUCHY) -> None:
        check_coding(k, m, backend)
        self.k = k
        self.m = m
        self.backend = backend
        try:
            self._driver = ECDriver(k=k, m=m, ec_type=backend)
        except ECDriverError as exc:
            raise InvalidCoding(f"cannot start erasure backend {backend} with k={k}, m={m}: "
                                f"{exc}") from exc

    @property
    def n(self) -> int:
        """Shards per segment: k + m."""
        return self.k + self.m

    def __repr__(self) -> str:
        return f"SegmentCoder(k={self.k}, m={self.m}, backend={self.backend!r})"

    # ---- encode ---------------------------------------------------------------------------

    def encode(self, segment: bytes) -> EncodedSegment:
        """Code one segment into k+m shards and their sha256 hashes."""
        check_segment_size(len(segment))
        try:
            shards = tuple(self._driver.encode(bytes(segment)))
        except ECDriverError as exc:
            raise ErasureError(f"encoding a {len(segment)}-byte segment failed: {exc}") from exc
        if len(shards) != self.n:
            raise ErasureError(f"backend returned {len(shards)} shards, expected {self.n}")
        return EncodedSegment(shards, tuple(sha256(s) for s in shards))

    # ---- verify ---------------------------------------------------------------------------

    def verified(self, shards: Mapping[int, bytes], shard_hashes: Sequence[bytes], *,
                 enough: int | None = None) -> tuple[dict[int, bytes], set[int]]:
        """Split shards into (those whose sha256 matches the manifest, indexes that did not).

        Shards are checked in index order (data shards first); with `enough`, checking stops
        once that many are good, so a fetcher that got more than k shards hashes only k.
        """
        if len(shard_hashes) != self.n:
            raise ErasureError(f"expected {self.n} shard hashes, got {len(shard_hashes)}")
        for index in shards:
            if type(index) is not int or not 0 <= index < self.n:
                raise ErasureError(f"shard index {index!r} outside [0, {self.n - 1}]")
        good: dict[int, bytes] = {}
        bad: set[int] = set()
        for index in sorted(shards):
            if enough is not None and len(good) >= enough:
                break
            shard = shards[index]
            if sha256(shard) == shard_hashes[index]:
                good[index] = shard
            else:
                bad.add(index)
        return good, bad

    # ---- decode ---------------------------------------------------------------------------

    def decode(self, shards: Mapping[int, bytes], shard_hashes: Sequence[bytes],
               *, segment_size: int, segment_hash: bytes | None = None,
               shards_verified: bool = False) -> bytes:
        """Rebuild a segment from any k shards (index -> bytes) whose hashes match.

        Shards failing their hash are ignored (as if missing); with fewer than k left this
        raises NotEnoughShards naming them. When all data shards are present, no parity
        arithmetic runs. The result is checked against `segment_size` and, when given,
        `segment_hash`.

        `shards_verified`: the caller already checked every shard against its hash (the
        chunk exchange and the chunk store do, shard ids being their sha256), so they are
        not hashed again, and `segment_hash` is checked only when parity arithmetic ran
        (from the k data shards the segment is their concatenation, which the shard hashes
        already pin down).
        """
        check_segment_size(segment_size)
        if shards_verified:
            if len(shard_hashes) != self.n or not all(
                    type(i) is int and 0 <= i < self.n for i in shards):
                raise ErasureError(f"expected shard indexes in [0, {self.n - 1}] and {self.n} "
                                   f"shard hashes")
            good = {i: shards[i] for i in sorted(shards)[: self.k]}
            bad: set[int] = set()
        else:
            good, bad = self.verified(shards, shard_hashes, enough=self.k)
        if len(good) < self.k:
            raise NotEnoughShards(self.k, good, bad)
        # Prefer data shards: with all k of them, liberasurecode only strips headers.
        chosen = sorted(good)[: self.k]
        if shards_verified and chosen == list(range(self.k)):
            segment_hash = None
        self._check_headers(good, chosen)
        try:
            data = self._driver.decode([good[i] for i in chosen])
        except ECDriverError as exc:
            raise CorruptSegment(f"decoding from shards {chosen} failed: {exc}") from exc
        if len(data) != segment_size:
            raise CorruptSegment(f"decoded segment is {len(data)} bytes, "
                                 f"the manifest says {segment_size}")
        if segment_hash is not None and sha256(data) != segment_hash:
            raise CorruptSegment("decoded segment does not match its hash in the manifest")
        return bytes(data)

    def reconstruct(self, shards: Mapping[int, bytes],
                    shard_hashes: Sequence[bytes],
                    missing: Iterable[int]) -> dict[int, bytes]:
        """Rebuild only the shards at `missing` indexes from any k valid others.

        Every rebuilt shard is checked against its hash in the manifest before it is returned,
        so what repair stores is exactly what the object was encoded with.
        """
        wanted = sorted(set(missing))
        for index in wanted:
            if type(index) is not int or not 0 <= index < self.n:
                raise ErasureError(f"shard index {index!r} outside [0, {self.n - 1}]")
        good, bad = self.verified(shards, shard_hashes)
        if len(good) < self.k:
            raise NotEnoughShards(self.k, good, bad)
        out = {i: good[i] for i in wanted if i in good}
        todo = [i for i in wanted if i not in good]
        if not todo:
            return out
        chosen = sorted(good)[: self.k]
        self._check_headers(good, chosen)
        try:
            rebuilt = self._driver.reconstruct([good[i] for i in chosen], todo)
        except ECDriverError as exc:
            raise CorruptSegment(f"rebuilding shards {todo} from {chosen} failed: {exc}") from exc
        for index, shard in zip(todo, rebuilt, strict=True):
            if sha256(shard) != shard_hashes[index]:
                raise CorruptSegment(f"rebuilt shard {index} does not match its manifest hash")
            out[index] = bytes(shard)
        return out

    def _check_headers(self, good: Mapping[int, bytes], chosen: list[int]) -> None:
        """The backend trusts each fragment's own header for its index: make it agree with
        the slot the manifest put it in, so a mislabelled manifest fails clearly."""
        for index in chosen:
            shard = good[index]
            if len(shard) <= SHARD_HEADER_BYTES:
                raise CorruptSegment(f"shard {index} is {len(shard)} bytes, shorter than a "
                                     "fragment header")
            try:
                meta = self._driver.get_metadata(shard, formatted=1)
                if not isinstance(meta, dict):
                    raise CorruptSegment(f"shard {index}: unreadable fragment header")
            except ECDriverError as exc:
                raise CorruptSegment(f"shard {index} has an invalid fragment header: {exc}") \
                    from exc
            if meta.get("index") != index or meta.get("backend_id") != self.backend:
                raise CorruptSegment(f"shard in slot {index} carries header index "
                                     f"{meta.get('index')} of backend {meta.get('backend_id')}")
