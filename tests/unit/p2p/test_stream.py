"""node.p2p.stream: length-prefixed frames with hard size limits.

The raw libp2p stream is replaced by an in-memory byte pipe: what is under test is the
framing done by Stream, not libp2p.
"""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.network.stream.exceptions import StreamEOF

from node.p2p.stream import (
    FrameTooLarge,
    MalformedFrame,
    Stream,
    StreamError,
    encode_frame,
    encode_uvarint,
)

LIMIT = 1 << 20
GIB = 1 << 30


class FakeRawStream:
    """Bytes in, bytes out. `chunk` caps every read (1 = one byte per read).

    At the end of `data`: returns b"" (clean EOF) if `eof`, else blocks like an open stream
    whose peer is silent. `eof_exc` makes the end of data raise instead (libp2p raises
    StreamEOF there).
    """

    def __init__(self, data: bytes = b"", *, chunk: int | None = None, eof: bool = True,
                 eof_exc: BaseException | None = None) -> None:
        self.data = bytearray(data)
        self.chunk = chunk
        self.eof = eof
        self.eof_exc = eof_exc
        self.written = bytearray()
        self.reads = 0
        self.closed = False
        self.was_reset = False

    async def read(self, n: int | None = None) -> bytes:
        self.reads += 1
        await trio.lowlevel.checkpoint()
        if not self.data:
            if self.eof_exc is not None:
                raise self.eof_exc
            if not self.eof:
                await trio.sleep_forever()
            return b""
        take = len(self.data) if n is None or n < 0 else n
        if self.chunk is not None:
            take = min(take, self.chunk)
        out = bytes(self.data[:take])
        del self.data[:take]
        return out

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.written += data

    async def close(self) -> None:
        self.closed = True

    async def reset(self) -> None:
        self.was_reset = True


class BrokenRawStream(FakeRawStream):
    async def read(self, n: int | None = None) -> bytes:
        raise OSError("connection reset by peer")

    async def write(self, data: bytes) -> None:
        raise OSError("broken pipe")

    async def close(self) -> None:
        raise OSError("already gone")

    async def reset(self) -> None:
        raise OSError("already gone")


def make_stream(data: bytes = b"", *, limit: int = LIMIT, **kwargs) -> Stream:
    return Stream(FakeRawStream(data, **kwargs), "peer-x", "/dcloud/test/1", limit)


def decode_uvarint(data: bytes) -> tuple[int, int]:
    """Reference decoder: (value, bytes used)."""
    value = 0
    for i, byte in enumerate(data):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise ValueError("truncated")


# ---- encode_uvarint -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (16384, "808001"),
     (2**64 - 1, "ffffffffffffffffff01")],
)
def test_encode_uvarint_known_vectors(value, encoded):
    assert encode_uvarint(value).hex() == encoded


def test_encode_uvarint_rejects_negative():
    with pytest.raises(ValueError):
        encode_uvarint(-1)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_encode_uvarint_round_trip_and_minimal(value):
    encoded = encode_uvarint(value)
    assert decode_uvarint(encoded) == (value, len(encoded))
    assert len(encoded) == max(1, (value.bit_length() + 6) // 7)
    assert all(b & 0x80 for b in encoded[:-1]) and not encoded[-1] & 0x80


def test_encode_frame_is_length_then_payload():
    assert encode_frame(b"") == b"\x00"
    assert encode_frame(b"abc") == b"\x03abc"
    assert encode_frame(b"x" * 300) == b"\xac\x02" + b"x" * 300


# ---- round trips --------------------------------------------------------------------------------


SIZES = [0, 1, 127, 128, 300, 65535, 65536, 65537, 200_000]


@pytest.mark.parametrize("chunk", [None, 1, 7, 65536])
async def test_frames_round_trip_across_chunk_boundaries(chunk):
    payloads = [bytes([i % 251]) * size for i, size in enumerate(SIZES)]
    writer = make_stream()
    for p in payloads:
        await writer.write_frame(p)
    wire = bytes(writer._raw.written)
    assert wire == b"".join(encode_frame(p) for p in payloads)

    # one byte per read is slow for 200 KB frames; use the small ones there
    if chunk == 1:
        payloads = [p for p in payloads if len(p) <= 300]
        wire = b"".join(encode_frame(p) for p in payloads)
    reader = make_stream(wire, chunk=chunk)
    got = [await reader.read_frame() for _ in payloads]
    assert got == payloads
    assert await reader.read_frame() is None


async def test_empty_frame_is_not_end_of_stream():
    reader = make_stream(encode_frame(b"") + encode_frame(b"z"))
    assert await reader.read_frame() == b""
    assert await reader.read_frame() == b"z"
    assert await reader.read_frame() is None


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=2000), max_size=6), st.integers(min_value=1, max_value=50))
async def test_any_frames_round_trip(payloads, chunk):
    reader = make_stream(b"".join(encode_frame(p) for p in payloads), chunk=chunk)
    assert [await reader.read_frame() for _ in payloads] == payloads
    assert await reader.read_frame() is None


# ---- end of stream and errors -------------------------------------------------------------------


async def test_clean_eof_before_a_frame_is_none():
    assert await make_stream(b"").read_frame() is None


async def test_libp2p_eof_exception_before_a_frame_is_none():
    # py-libp2p signals the end of a stream by raising StreamEOF from read()
    assert await make_stream(b"", eof_exc=StreamEOF()).read_frame() is None
    reader = make_stream(encode_frame(b"last"), eof_exc=StreamEOF())
    assert await reader.read_frame() == b"last"
    assert await reader.read_frame() is None


async def test_frame_at_the_limit_is_accepted_one_above_is_not():
    assert await make_stream(encode_frame(b"a" * 1024), limit=1024).read_frame() == b"a" * 1024
    with pytest.raises(FrameTooLarge):
        await make_stream(encode_frame(b"a" * 1025), limit=1024).read_frame()


async def test_per_call_max_bytes_tightens_but_never_loosens_the_limit():
    frame = encode_frame(b"a" * 100)
    with pytest.raises(FrameTooLarge):
        await make_stream(frame).read_frame(max_bytes=99)
    assert await make_stream(frame).read_frame(max_bytes=100) == b"a" * 100
    big = encode_frame(b"a" * 2000)
    with pytest.raises(FrameTooLarge):
        await make_stream(big, limit=1024).read_frame(max_bytes=10 * LIMIT)


async def test_huge_announced_length_is_refused_before_any_payload_is_read():
    prefix = encode_uvarint(GIB)
    raw = FakeRawStream(prefix, chunk=1, eof=False)  # peer then goes silent, stream open
    stream = Stream(raw, "peer-x", "/dcloud/test/1", LIMIT)
    with trio.fail_after(2):  # waiting for the payload would block forever
        with pytest.raises(FrameTooLarge) as excinfo:
            await stream.read_frame()
    assert raw.reads == len(prefix)
    assert "peer-x" in str(excinfo.value) and "/dcloud/test/1" in str(excinfo.value)


async def test_too_large_is_detected_as_soon_as_the_prefix_exceeds_the_limit():
    # 0xff bytes: after the third byte the length already exceeds 1 MiB, the rest is unread
    raw = FakeRawStream(b"\xff" * 9 + b"\x01", chunk=1, eof=False)
    with trio.fail_after(2), pytest.raises(FrameTooLarge):
        await Stream(raw, "p", "proto", LIMIT).read_frame()
    assert raw.reads == 3


async def test_overlong_varint_is_malformed():
    # 11 continuation bytes that add nothing to the length: never terminates within 10 bytes
    raw = FakeRawStream(b"\x80" * 11 + b"\x00", eof=False)
    with trio.fail_after(2), pytest.raises(MalformedFrame):
        await Stream(raw, "p", "proto", LIMIT).read_frame()


async def test_ten_byte_varint_is_still_a_valid_length():
    # a non-minimal but 10-byte encoding of 3
    frame = b"\x83" + b"\x80" * 8 + b"\x00" + b"abc"
    assert await make_stream(frame).read_frame() == b"abc"


@pytest.mark.parametrize("chunk", [None, 1])
async def test_eof_inside_the_length_is_malformed(chunk):
    with pytest.raises(MalformedFrame):
        await make_stream(b"\x80\x80", chunk=chunk).read_frame()


async def test_eof_mid_payload_is_a_stream_error():
    with pytest.raises(StreamError, match="closed mid-frame") as excinfo:
        await make_stream(b"\x05abc", chunk=1).read_frame()
    assert not isinstance(excinfo.value, (FrameTooLarge, MalformedFrame))


async def test_libp2p_eof_mid_payload_is_a_stream_error():
    with pytest.raises(StreamError):
        await make_stream(b"\x05abc", eof_exc=StreamEOF()).read_frame()


async def test_broken_raw_stream_surfaces_as_stream_error():
    stream = Stream(BrokenRawStream(), "peer-x", "proto", LIMIT)
    with pytest.raises(StreamError, match="peer-x"):
        await stream.write_frame(b"x")
    with pytest.raises(StreamError):
        await stream.read_exactly(1)
    with pytest.raises(StreamError):
        await stream.read()
    await stream.close()  # closing or resetting a broken stream does not raise
    await stream.reset()


async def test_close_and_reset_reach_the_raw_stream():
    stream = make_stream()
    await stream.close()
    await stream.reset()
    assert stream._raw.closed and stream._raw.was_reset


async def test_cancellation_is_not_turned_into_stream_error():
    stream = make_stream(b"", eof=False)
    with trio.move_on_after(0.01) as scope:
        await stream.read_frame()
    assert scope.cancelled_caught


# ---- raw reads ----------------------------------------------------------------------------------


async def test_raw_read_returns_buffered_bytes_first():
    stream = make_stream(b"\x02ab" + b"tail-bytes", chunk=None)
    assert await stream.read_frame() == b"ab"  # the whole input was buffered by that read
    assert await stream.read(4) == b"tail"
    assert await stream.read() == b"-bytes"
    assert await stream.read() == b""


async def test_read_exactly_spans_chunks():
    stream = make_stream(b"0123456789", chunk=3)
    assert await stream.read_exactly(7) == b"0123456"
    assert await stream.read_exactly(3) == b"789"


async def test_raw_read_at_libp2p_eof_is_empty_bytes():
    stream = make_stream(b"", eof_exc=StreamEOF())
    assert await stream.read() == b""
