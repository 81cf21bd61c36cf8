"""Streams as the rest of the node sees them: length-prefixed frames with hard size limits."""

from __future__ import annotations

import struct
from collections.abc import Awaitable
from typing import Any

import trio
from libp2p.stream_muxer.yamux.yamux import TYPE_DATA as YAMUX_TYPE_DATA
from libp2p.stream_muxer.yamux.yamux import YAMUX_HEADER_FORMAT

MAX_VARINT_BYTES = 10
# Writes go to yamux in pieces that fit one Noise transport message (65,519 bytes of
# plaintext, less yamux's 12-byte header), so that py-libp2p never splits a yamux frame over
# several Noise messages. Under load (several streams moving MiB-sized frames while others
# time out) peers failed to authenticate a Noise message and reset the connection; with
# small pieces that became rarer, not gone (docs/decisions.md).
WRITE_PIECE_BYTES = 65_000
# A long write goes out up to this many pieces (yamux frames, one Noise message each) per
# socket write (AtomicWriteYamux.write_data_frames); bounded so that one stream's bulk data
# does not hold back the other streams of its connection for long.
BATCH_PIECES = 8
# A frame at least this long is read on a receive window granted for the whole of it up
# front (see Stream._granted_reader): yamux's own window is 256 KiB, so below that there is
# nothing to gain.
GRANT_MIN_BYTES = 256 * 1024


class StreamError(Exception):
    """The stream broke or was reset."""


class FrameTooLarge(StreamError):
    """The peer announced a frame larger than the protocol's limit."""


class MalformedFrame(StreamError):
    """The peer sent bytes that are not a valid frame."""


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint must be >= 0")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


def peer_closed(raw: Any) -> bool:
    """Whether the peer closed (or reset) a libp2p stream's other end."""
    muxed = getattr(raw, "muxed_stream", None)
    return bool(getattr(muxed, "recv_closed", False) or getattr(muxed, "reset_received", False))


class Stream:
    """One libp2p stream to `peer_id` speaking `protocol`.

    Wraps a libp2p stream so that no caller outside node.p2p touches libp2p types.
    Every read is bounded: `read_frame` refuses frames above `max_frame_bytes`.
    """

    def __init__(self, raw: Any, peer_id: str, protocol: str, max_frame_bytes: int) -> None:
        self._raw = raw
        self.peer_id = peer_id
        self.protocol = protocol
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    async def _read_some(self, n: int) -> bytes:
        return await self._checked(self._raw.read(n))

    async def _checked(self, read: Awaitable[Any]) -> bytes:
        """The bytes of one read inside a frame: a broken stream or an end of stream there
        is a StreamError."""
        try:
            chunk = await read
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise StreamError(f"stream from {self.peer_id} broke: {exc!r}") from exc
        if not chunk:
            raise StreamError(f"stream from {self.peer_id} closed mid-frame")
        return bytes(chunk)

    async def read_exactly(self, n: int) -> bytes:
        return b"".join(await self._read_parts(n))  # one piece: that very object

    async def _read_parts(self, n: int) -> list[bytes]:
        """Exactly n bytes, as the pieces they arrived in (joining them is the caller's)."""
        if len(self._buffer) >= n:
            if len(self._buffer) == n:
                out = bytes(self._buffer)
                self._buffer.clear()
                return [out]
            with memoryview(self._buffer) as view:
                out = bytes(view[:n])
            del self._buffer[:n]
            return [out]
        # Ask the muxer for just what is missing (never more: nothing is left over); growing
        # a bytearray piece by piece copied a 1 MiB frame several times over (fan-in of 4
        # streams: 173 -> 260 MB/s without).
        parts = [bytes(self._buffer)] if self._buffer else []
        have = len(self._buffer)
        self._buffer.clear()
        read_some = self._read_some
        if n - have >= GRANT_MIN_BYTES:
            read_some = await self._granted_reader(n - have) or read_some
        while have < n:
            chunk = await read_some(n - have)
            parts.append(chunk)
            have += len(chunk)
        return parts

    async def _granted_reader(self, outstanding: int) -> Any:
        """Let the peer send the rest of a long frame without waiting on flow control: one
        yamux WINDOW_UPDATE granting all `outstanding` bytes now (we have already accepted
        the frame's length, so this buffers nothing we had not agreed to hold), and a reader
        that returns no credit per read. py-libp2p otherwise credits every read with its
        own update (one per ~64 KiB frame, each a Noise message and a syscall on both
        sides) and a sender whose 256 KiB window runs dry polls every 10 ms for more; on a
        get from 4 holders that was a tenth of the getter's event loop. The credit the
        reads would have returned is what the grant gave in advance, so the window ends
        where per-read credit would have left it. None (read as usual) on a stream that is
        not yamux."""
        muxed = getattr(self._raw, "muxed_stream", None)
        conn = getattr(muxed, "conn", None)
        if muxed is None or conn is None or not hasattr(conn, "read_stream") \
                or not hasattr(muxed, "recv_window"):
            return None
        try:
            muxed.recv_window += outstanding
            await muxed.send_window_update(outstanding)
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise StreamError(f"stream from {self.peer_id} broke: {exc!r}") from exc
        stream_id = muxed.stream_id
        return lambda n: self._checked(conn.read_stream(stream_id, n))

    async def read_frame(self, max_bytes: int | None = None) -> bytes | None:
        """The next frame, or None on a clean end of stream before a frame starts."""
        parts = await self.read_frame_parts(max_bytes)
        return None if parts is None else b"".join(parts)

    async def read_frame_parts(self, max_bytes: int | None = None) -> list[bytes] | None:
        """The next frame as the pieces it arrived in (bulk data joined once, elsewhere: a
        worker thread), or None on a clean end of stream before a frame starts."""
        limit = self.max_frame_bytes if max_bytes is None else min(max_bytes, self.max_frame_bytes)
        length = 0
        for i in range(MAX_VARINT_BYTES):
            if not self._buffer:
                try:
                    chunk = await self._raw.read(65536)
                except trio.Cancelled:
                    raise
                except Exception as exc:
                    if i == 0:
                        return None
                    raise StreamError(f"stream from {self.peer_id} broke: {exc!r}") from exc
                if not chunk:
                    if i == 0:
                        return None
                    raise MalformedFrame(f"stream from {self.peer_id} ended inside a length")
                self._buffer += chunk
            byte = self._buffer[0]
            del self._buffer[0]
            length |= (byte & 0x7F) << (7 * i)
            if length > limit:
                raise FrameTooLarge(
                    f"{self.peer_id} sent a frame of at least {length} bytes on "
                    f"{self.protocol} (limit {limit})"
                )
            if not byte & 0x80:
                break
        else:
            raise MalformedFrame(f"{self.peer_id} sent an overlong length prefix")
        return await self._read_parts(length)

    @property
    def peer_done(self) -> bool:
        """True once the peer closed its end or reset the stream: it reads no more, so bytes
        written now are lost (yamux lets us write on after the peer's FIN)."""
        return peer_closed(self._raw)

    async def write_frame(self, payload: bytes) -> None:
        await self.write(encode_frame(payload))

    async def write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            start = 0
            muxed = getattr(self._raw, "muxed_stream", None)
            batched = getattr(getattr(muxed, "conn", None), "write_data_frames", None)
            while start < len(data):
                if batched is not None and len(data) - start > WRITE_PIECE_BYTES:
                    frames, end = await self._data_frames(muxed, view, start)
                    if frames:
                        await batched(frames)
                        start = end
                        continue
                # One yamux frame per Noise message (see WRITE_PIECE_BYTES); py-libp2p's
                # own write also waits out an empty send window.
                await self._raw.write(bytes(view[start:start + WRITE_PIECE_BYTES]))
                start += WRITE_PIECE_BYTES
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise StreamError(f"write to {self.peer_id} failed: {exc!r}") from exc

    async def _data_frames(self, muxed: Any, view: memoryview,
                           start: int) -> tuple[list[bytes], int]:
        """Up to BATCH_PIECES yamux data frames of `view` from `start`, as much as the send
        window allows, taken from the window as YamuxStream.write takes it (and under its
        locks), and where they end; no frames when the window is empty."""
        frames: list[bytes] = []
        async with muxed.rw_lock.write_lock():
            if muxed.send_closed:
                raise StreamError(f"write to {self.peer_id} failed: closed for sending")
            async with muxed.window_lock:
                if muxed.closed:
                    raise StreamError(f"write to {self.peer_id} failed: stream closed")
                while len(frames) < BATCH_PIECES and start < len(view) and muxed.send_window > 0:
                    piece = view[start:start + min(WRITE_PIECE_BYTES, muxed.send_window)]
                    muxed.send_window -= len(piece)
                    frames.append(struct.pack(YAMUX_HEADER_FORMAT, 0, YAMUX_TYPE_DATA, 0,
                                              muxed.stream_id, len(piece)) + piece)
                    start += len(piece)
        return frames, start

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Raw bytes (for streaming bulk data); b"" at end of stream."""
        if self._buffer:
            out = bytes(self._buffer[:max_bytes])
            del self._buffer[:max_bytes]
            return out
        try:
            return bytes(await self._raw.read(max_bytes))
        except EOFError:  # libp2p's StreamEOF / MuxedStreamEOF: the peer finished writing
            return b""
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise StreamError(f"stream from {self.peer_id} broke: {exc!r}") from exc

    async def close(self) -> None:
        try:
            await self._raw.close()
        except Exception:  # closing a broken stream is not an error worth raising
            pass

    async def reset(self) -> None:
        try:
            await self._raw.reset()
        except Exception:
            pass
