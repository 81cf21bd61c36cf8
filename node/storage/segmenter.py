"""Cutting an object that arrives as a stream of blocks into fixed-size segments.

Blocks come in whatever sizes the transport delivers (an HTTP body, a file read); segments
go out exactly `segment_size` bytes long except the last. At most one segment plus one block
is held at a time, so an object of any size streams through bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

from node.storage.erasure import MAX_SEGMENT_BYTES

DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
READ_BLOCK_BYTES = 1024 * 1024


class ObjectTooLarge(Exception):
    """The stream is longer than the object size limit."""


class SegmentCutter:
    """Re-cuts blocks pushed in one by one into segments: the state machine behind
    `iter_segments`, for sources that cannot be iterated synchronously (an HTTP body)."""

    def __init__(self, segment_size: int = DEFAULT_SEGMENT_BYTES, *,
                 max_object_bytes: int | None = None) -> None:
        if type(segment_size) is not int or not 1 <= segment_size <= MAX_SEGMENT_BYTES:
            raise ValueError(f"segment size must be 1-{MAX_SEGMENT_BYTES} bytes")
        self.segment_size = segment_size
        self.max_object_bytes = max_object_bytes
        self.total = 0
        self._buf = bytearray()

    def push(self, block: bytes | bytearray | memoryview) -> list[bytes]:
        """The segments that `block` completes (ObjectTooLarge once past the limit)."""
        self.total += len(block)
        if self.max_object_bytes is not None and self.total > self.max_object_bytes:
            raise ObjectTooLarge(f"object is larger than the limit of {self.max_object_bytes} "
                                 "bytes")
        out = []
        buf, size = self._buf, self.segment_size
        view = memoryview(block).cast("B")
        while view:
            take = min(size - len(buf), len(view))
            if not buf and take == size:
                out.append(bytes(view[:take]))  # a whole segment inside one block: one copy
            else:
                buf += view[:take]
                if len(buf) == size:
                    out.append(bytes(buf))
                    buf.clear()
            view = view[take:]
        return out

    def finish(self) -> bytes | None:
        """The last, shorter segment, if any bytes are left."""
        if not self._buf:
            return None
        last = bytes(self._buf)
        self._buf.clear()
        return last


def iter_segments(blocks: Iterable[bytes | bytearray | memoryview],
                  segment_size: int = DEFAULT_SEGMENT_BYTES, *,
                  max_object_bytes: int | None = None) -> Iterator[bytes]:
    """Re-cut `blocks` into segments of `segment_size` bytes (the last one shorter).

    An empty stream yields no segments. With `max_object_bytes`, ObjectTooLarge is raised as
    soon as the stream passes the limit, before the offending segment is yielded.
    """
    cutter = SegmentCutter(segment_size, max_object_bytes=max_object_bytes)
    for block in blocks:
        yield from cutter.push(block)
    last = cutter.finish()
    if last is not None:
        yield last


def read_blocks(stream: BinaryIO, block_size: int = READ_BLOCK_BYTES) -> Iterator[bytes]:
    """Blocks of a binary file object until EOF."""
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    while block := stream.read(block_size):
        yield block
