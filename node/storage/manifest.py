"""The object manifest: everything needed to find, check and rebuild a stored object.

An object is cut into segments of `segment_size` bytes (the last one shorter), each segment
optionally sealed (node.storage.sealing), then coded RS(k, m) into k+m shards
(node.storage.erasure). Each shard is a chunk named by its sha256 and held by the nodes listed
in its placement. The manifest records all of it and is itself named by the sha256 of its
canonical CBOR encoding (its id), so a manifest fetched from anyone is checked by its id, and
every shard fetched from anyone is checked by the hash the manifest gives.

Encoding: canonical CBOR (node.codec.to_cbor) of the list

    ["dcloud/manifest", 1, size, segment_size, [k, m, backend], sealing, [segment, ...]]
    sealing = null | [scheme, salt(16 bytes)]
    segment = [stored_size, sha256(stored segment)(32), [shard, ...]]     k+m shards
    shard   = [sha256(shard)(32), shard_size, [node_id, ...]]             0-8 holders

`size` is the object's plaintext size; a segment's `stored_size` and hash are those of the
bytes that were coded: the plaintext segment, or its sealed form (16 bytes longer) when the
object is encrypted, so storage nodes never learn a hash of the plaintext. Decoding bounds the
size and depth, re-encodes and insists on byte equality (one manifest, one id), and checks every
field and every size against the others.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from node.codec import DecodeError, from_cbor, to_cbor
from node.gossip.swim_messages import MAX_ID_LEN, is_node_id
from node.storage.erasure import (
    MAX_SEGMENT_BYTES,
    EncodedSegment,
    InvalidCoding,
    check_coding,
)
from node.storage.sealing import SALT_BYTES, SCHEME, SEAL_OVERHEAD_BYTES

MANIFEST_DOMAIN = "dcloud/manifest"
MANIFEST_VERSION = 1
HASH_BYTES = 32
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_HOLDERS = 8
# A shard carries ceil(stored_size / k) bytes of the segment plus the backend's fragment header
# and alignment padding (80 bytes and < 64 bytes for isa_l_rs_cauchy); allow a little more.
MAX_SHARD_OVERHEAD_BYTES = 1024
MAX_OBJECT_BYTES = 2**53  # far beyond what MAX_MANIFEST_BYTES can describe; an int bound
# manifest > segments > segment > shards > shard > holders
MAX_DEPTH = 6
_HEX_ID = re.compile(r"[0-9a-f]{64}")


class InvalidManifest(DecodeError):
    """A manifest whose bytes or fields are not valid."""


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise InvalidManifest(f"{name} must be an integer in [{lo}, {hi}], got {value!r:.40}")
    return value


def _hash(value: Any, name: str) -> bytes:
    if type(value) is not bytes or len(value) != HASH_BYTES:
        raise InvalidManifest(f"{name} must be {HASH_BYTES} bytes (sha256)")
    return value


def _list(value: Any, name: str, length: int | None = None) -> list[Any]:
    if type(value) is not list:
        raise InvalidManifest(f"{name} must be a list")
    if length is not None and len(value) != length:
        raise InvalidManifest(f"{name} must have {length} items, got {len(value)}")
    return value


def _as_tuple(value: Any) -> Any:
    """A sequence field given as a list becomes a tuple; anything else is left to be refused."""
    return tuple(value) if type(value) is list else value


def plain_segment_sizes(size: int, segment_size: int) -> Iterator[int]:
    """Plaintext length of each segment of an object of `size` bytes (none for an empty one)."""
    full, rest = divmod(size, segment_size)
    for _ in range(full):
        yield segment_size
    if rest:
        yield rest


@dataclass(frozen=True)
class Coding:
    """How each segment is coded: RS(k, m) with a named backend."""

    k: int
    m: int
    backend: str

    def __post_init__(self) -> None:
        try:
            check_coding(self.k, self.m, self.backend)
        except InvalidCoding as exc:
            raise InvalidManifest(str(exc)) from exc

    @property
    def n(self) -> int:
        return self.k + self.m

    def to_list(self) -> list[Any]:
        return [self.k, self.m, self.backend]

    @classmethod
    def from_list(cls, raw: Any) -> Coding:
        k, m, backend = _list(raw, "coding", 3)
        return cls(k, m, backend)


@dataclass(frozen=True)
class Sealing:
    """Client-side encryption of every segment (the key is never in the manifest)."""

    scheme: str
    salt: bytes

    def __post_init__(self) -> None:
        if self.scheme != SCHEME:
            raise InvalidManifest(f"sealing scheme {str(self.scheme)[:64]!r} is not supported "
                                  f"(supported: {SCHEME!r})")
        if type(self.salt) is not bytes or len(self.salt) != SALT_BYTES:
            raise InvalidManifest(f"sealing salt must be {SALT_BYTES} bytes")

    def to_list(self) -> list[Any]:
        return [self.scheme, self.salt]

    @classmethod
    def from_list(cls, raw: Any) -> Sealing:
        scheme, salt = _list(raw, "sealing", 2)
        return cls(scheme, salt)


@dataclass(frozen=True)
class ShardRef:
    """One shard of a segment: its hash (= chunk id), size, and the nodes holding it."""

    hash: bytes
    size: int
    holders: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "holders", _as_tuple(self.holders))
        _hash(self.hash, "shard hash")
        _int(self.size, "shard size", 1, MAX_SEGMENT_BYTES + MAX_SHARD_OVERHEAD_BYTES)
        if type(self.holders) is not tuple or len(self.holders) > MAX_HOLDERS:
            raise InvalidManifest(f"a shard lists at most {MAX_HOLDERS} holders")
        for holder in self.holders:
            if not is_node_id(holder):
                raise InvalidManifest(f"shard holder {str(holder)[:64]!r} is not a node id "
                                      f"(1-{MAX_ID_LEN} of [A-Za-z0-9._:-])")
        if len(set(self.holders)) != len(self.holders):
            raise InvalidManifest("a shard lists the same holder twice")

    @property
    def chunk_id(self) -> str:
        return self.hash.hex()

    def to_list(self) -> list[Any]:
        return [self.hash, self.size, list(self.holders)]

    @classmethod
    def from_list(cls, raw: Any) -> ShardRef:
        digest, size, holders = _list(raw, "shard", 3)
        return cls(digest, size, tuple(_list(holders, "shard holders")))


@dataclass(frozen=True)
class SegmentRef:
    """One coded segment: the size and hash of the bytes that were coded, and its shards."""

    size: int
    hash: bytes
    shards: tuple[ShardRef, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", _as_tuple(self.shards))
        _int(self.size, "segment size", 1, MAX_SEGMENT_BYTES + SEAL_OVERHEAD_BYTES)
        _hash(self.hash, "segment hash")
        if type(self.shards) is not tuple or not all(type(s) is ShardRef for s in self.shards):
            raise InvalidManifest("segment shards must be ShardRefs")

    @property
    def shard_hashes(self) -> tuple[bytes, ...]:
        return tuple(s.hash for s in self.shards)

    @property
    def placement(self) -> tuple[tuple[str, ...], ...]:
        return tuple(s.holders for s in self.shards)

    def to_list(self) -> list[Any]:
        return [self.size, self.hash, [s.to_list() for s in self.shards]]

    @classmethod
    def from_list(cls, raw: Any, n: int) -> SegmentRef:
        size, digest, shards = _list(raw, "segment", 3)
        return cls(size, digest, tuple(ShardRef.from_list(s)
                                       for s in _list(shards, "segment shards", n)))


def segment_ref(stored: bytes, encoded: EncodedSegment,
                placement: Sequence[Sequence[str]] | None = None) -> SegmentRef:
    """The manifest entry of a segment just coded: `stored` is what was coded (sealed or not),
    `placement` the holders of each shard (none yet when omitted)."""
    holders = placement if placement is not None else [()] * len(encoded.shards)
    if len(holders) != len(encoded.shards):
        raise InvalidManifest(f"placement lists {len(holders)} slots for "
                              f"{len(encoded.shards)} shards")
    return SegmentRef(len(stored), hashlib.sha256(stored).digest(), tuple(
        ShardRef(h, len(shard), tuple(nodes))
        for shard, h, nodes in zip(encoded.shards, encoded.shard_hashes, holders, strict=True)))


@dataclass(frozen=True)
class Manifest:
    """A stored object: sizes, coding, optional sealing, and every segment's shards."""

    size: int
    segment_size: int
    coding: Coding
    segments: tuple[SegmentRef, ...]
    sealing: Sealing | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", _as_tuple(self.segments))
        _int(self.size, "object size", 0, MAX_OBJECT_BYTES)
        _int(self.segment_size, "segment size", 1, MAX_SEGMENT_BYTES)
        if type(self.coding) is not Coding:
            raise InvalidManifest("coding must be a Coding")
        if self.sealing is not None and type(self.sealing) is not Sealing:
            raise InvalidManifest("sealing must be a Sealing or None")
        if type(self.segments) is not tuple:
            raise InvalidManifest("segments must be a sequence of SegmentRefs")
        plain = list(plain_segment_sizes(self.size, self.segment_size))
        if len(self.segments) != len(plain):
            raise InvalidManifest(f"an object of {self.size} bytes in {self.segment_size}-byte "
                                  f"segments has {len(plain)} segments, the manifest lists "
                                  f"{len(self.segments)}")
        overhead = SEAL_OVERHEAD_BYTES if self.sealing is not None else 0
        k, n = self.coding.k, self.coding.n
        for i, (segment, plain_size) in enumerate(zip(self.segments, plain, strict=True)):
            if type(segment) is not SegmentRef:
                raise InvalidManifest("segments must be SegmentRefs")
            if segment.size != plain_size + overhead:
                raise InvalidManifest(f"segment {i} is {segment.size} bytes stored, expected "
                                      f"{plain_size + overhead}")
            if len(segment.shards) != n:
                raise InvalidManifest(f"segment {i} has {len(segment.shards)} shards, "
                                      f"k+m is {n}")
            low = -(-segment.size // k)
            sizes = {s.size for s in segment.shards}
            if len(sizes) != 1 or not low <= sizes.pop() <= low + MAX_SHARD_OVERHEAD_BYTES:
                raise InvalidManifest(f"segment {i}: shards must all be the same size, between "
                                      f"{low} and {low + MAX_SHARD_OVERHEAD_BYTES} bytes")

    # ---- identity -------------------------------------------------------------------------

    @cached_property
    def encoded(self) -> bytes:
        return to_cbor(self.to_list())

    def encode(self) -> bytes:
        return self.encoded

    @property
    def id(self) -> str:
        """The manifest's name: sha256 of its canonical encoding, lowercase hex."""
        return hashlib.sha256(self.encoded).hexdigest()

    # ---- queries --------------------------------------------------------------------------

    def chunk_ids(self) -> Iterator[str]:
        """The chunk id of every shard of every segment, in order (repeats possible)."""
        for segment in self.segments:
            for shard in segment.shards:
                yield shard.chunk_id

    def plain_size_of(self, index: int) -> int:
        """Plaintext length of segment `index` (what it decodes to, after unsealing)."""
        if not 0 <= index < len(self.segments):
            raise IndexError(f"segment {index} of {len(self.segments)}")
        return min(self.segment_size, self.size - index * self.segment_size)

    def segment_at(self, offset: int) -> tuple[int, int]:
        """(segment index, offset inside its plaintext) of byte `offset` of the object."""
        if not 0 <= offset < self.size:
            raise IndexError(f"offset {offset} outside an object of {self.size} bytes")
        return divmod(offset, self.segment_size)

    def with_holders(self, segment: int, shard: int, holders: tuple[str, ...]) -> Manifest:
        """A copy with one shard's holders replaced (repair moved it): a new manifest id."""
        seg = self.segments[segment]
        shards = list(seg.shards)
        shards[shard] = replace(shards[shard], holders=tuple(holders))
        segments = list(self.segments)
        segments[segment] = replace(seg, shards=tuple(shards))
        return replace(self, segments=tuple(segments))

    def content(self) -> list[Any]:
        """Everything but the holders: what the object's bytes and coding are."""
        raw = self.to_list()
        raw[6] = [[size, digest, [shard[:2] for shard in shards]]
                  for size, digest, shards in raw[6]]
        return raw

    def same_content(self, other: Manifest) -> bool:
        """Does `other` describe the same bytes, coded the same way (holders may differ)? A
        repair may move shards, nothing else."""
        return self.content() == other.content()

    # ---- CBOR -----------------------------------------------------------------------------

    def to_list(self) -> list[Any]:
        return [MANIFEST_DOMAIN, MANIFEST_VERSION, self.size, self.segment_size,
                self.coding.to_list(),
                None if self.sealing is None else self.sealing.to_list(),
                [s.to_list() for s in self.segments]]

    @classmethod
    def from_list(cls, raw: Any) -> Manifest:
        items = _list(raw, "manifest", 7)
        domain, version, size, segment_size, coding, sealing, segments = items
        if domain != MANIFEST_DOMAIN:
            raise InvalidManifest(f"not a manifest (tag {str(domain)[:32]!r})")
        if version != MANIFEST_VERSION or type(version) is not int:
            raise InvalidManifest(f"manifest version {str(version)[:16]} is not supported "
                                  f"(this node reads version {MANIFEST_VERSION})")
        parsed_coding = Coding.from_list(coding)
        parsed_segments = tuple(SegmentRef.from_list(s, parsed_coding.n)
                                for s in _list(segments, "segments"))
        return cls(size, segment_size, parsed_coding, parsed_segments,
                   None if sealing is None else Sealing.from_list(sealing))

    @classmethod
    def decode(cls, data: bytes, *, max_bytes: int = MAX_MANIFEST_BYTES,
               expected_id: str | None = None) -> Manifest:
        """Decode an untrusted manifest; with `expected_id`, it must be the manifest of that id.

        Raises InvalidManifest (a DecodeError) naming what is wrong.
        """
        if type(data) is not bytes:
            raise InvalidManifest("a manifest must be bytes")
        if expected_id is not None:
            if not isinstance(expected_id, str) or _HEX_ID.fullmatch(expected_id) is None:
                raise InvalidManifest("a manifest id is 64 lowercase hex digits")
            if len(data) <= max_bytes and hashlib.sha256(data).hexdigest() != expected_id:
                raise InvalidManifest(f"manifest bytes do not hash to {expected_id}")
        try:
            raw = from_cbor(data, max_bytes=max_bytes, max_depth=MAX_DEPTH)
        except InvalidManifest:
            raise
        except DecodeError as exc:
            raise InvalidManifest(f"manifest: {exc}") from exc
        manifest = cls.from_list(raw)
        if manifest.encoded != data:
            raise InvalidManifest("manifest is not in canonical CBOR encoding")
        return manifest
