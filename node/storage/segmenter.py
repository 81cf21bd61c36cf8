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


def iter_segments(blocks: Iterable[bytes | bytearray | memoryview],
                  segment_size: int = DEFAULT_SEGMENT_BYTES, *,
                  max_object_bytes: int | None = None) -> Iterator[bytes]:
    """Re-cut `blocks` into segments of `segment_size` bytes (the last one shorter).

    An empty stream yields no segments. With `max_object_bytes`, ObjectTooLarge is raised as
    soon as the stream passes the limit, before the offending segment is yielded.
    """
    if type(segment_size) is not int or not 1 <= segment_size <= MAX_SEGMENT_BYTES:
        raise ValueError(f"segment size must be 1-{MAX_SEGMENT_BYTES} bytes")
    buf = bytearray()
    total = 0
    for block in blocks:
        total += len(block)
        if max_object_bytes is not None and total > max_object_bytes:
            raise ObjectTooLarge(f"object is larger than the limit of {max_object_bytes} bytes")
        view = memoryview(block).cast("B")
        while view:
            take = min(segment_size - len(buf), len(view))
            if not buf and take == segment_size:
                yield bytes(view[:take])  # a whole segment inside one block: one copy
            else:
                buf += view[:take]
                if len(buf) == segment_size:
                    yield bytes(buf)
                    buf.clear()
            view = view[take:]
    if buf:
        yield bytes(buf)


def read_blocks(stream: BinaryIO, block_size: int = READ_BLOCK_BYTES) -> Iterator[bytes]:
    """Blocks of a binary file object until EOF."""
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    while block := stream.read(block_size):
        yield block
