"""Cutting a stream of arbitrary blocks into fixed-size segments."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.storage.segmenter import ObjectTooLarge, iter_segments, read_blocks


@given(blocks=st.lists(st.binary(max_size=300), max_size=30), segment_size=st.integers(1, 257))
def test_segments_are_full_size_except_the_last_and_concatenate_to_the_stream(
        blocks: list[bytes], segment_size: int) -> None:
    segments = list(iter_segments(iter(blocks), segment_size))
    assert b"".join(segments) == b"".join(blocks)
    assert all(len(s) == segment_size for s in segments[:-1])
    if segments:
        assert 0 < len(segments[-1]) <= segment_size


def test_an_empty_stream_has_no_segments() -> None:
    assert list(iter_segments([], 10)) == []
    assert list(iter_segments([b"", b""], 10)) == []


def test_the_stream_is_consumed_lazily() -> None:
    """Only as many blocks are read as the next segment needs: nothing buffers the object."""
    pulled: list[int] = []

    def source():  # type: ignore[no-untyped-def]
        for i in range(100):
            pulled.append(i)
            yield b"x" * 10

    segments = iter_segments(source(), 25)
    assert next(segments) == b"x" * 25
    assert len(pulled) == 3


def test_an_object_over_the_limit_is_refused_before_its_last_segment() -> None:
    segments = iter_segments([b"a" * 10, b"b" * 10, b"c" * 10], 10, max_object_bytes=25)
    assert next(segments) == b"a" * 10
    assert next(segments) == b"b" * 10
    with pytest.raises(ObjectTooLarge, match="25 bytes"):
        next(segments)


def test_bad_segment_sizes_are_refused() -> None:
    for size in (0, -1, 2**40):
        with pytest.raises(ValueError):
            list(iter_segments([b"x"], size))


def test_read_blocks_reads_a_file_to_the_end() -> None:
    data = os.urandom(10_000)
    assert b"".join(read_blocks(io.BytesIO(data), 3_000)) == data
    assert [len(b) for b in read_blocks(io.BytesIO(data), 3_000)] == [3_000] * 3 + [1_000]
