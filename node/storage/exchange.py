"""Chunk exchange between nodes: `/dcloud/chunks/0.1.0`.

Requests one after another on a stream. The requester writes one msgpack frame
`[1, op, ...]`; the server answers with one frame `[1, "ok", ...]` or
`[1, "err", code, message]`, and for `get` the chunk's bytes follow as raw frames of at most
`DATA_FRAME_BYTES`. Once an answer is complete the requester may send its next request on the
same stream (it keeps up to `PER_PEER_STREAMS` idle streams per peer for `POOL_IDLE_S`); the
server waits `STREAM_IDLE_S` for one, then closes. A server that cannot finish an answer (a
chunk found corrupt while being sent) resets the stream.

- `[1, "have", [id, ...]]` (1-1024 ids) -> `[1, "ok", [bool, ...]]`
- `[1, "get", id]` -> `[1, "ok", size]`, then `size` bytes in data frames
- `[1, "put", id, size]` -> `[1, "ok", "send"]` (or `"have"`: nothing to send); the requester
  sends the data frames, and the server answers `[1, "ok"]` once the chunk is on its disk
- `[1, "prove", id, offset, length, nonce]` -> `[1, "ok", sha256(nonce + the range's bytes)]`

Everything a peer sends is checked: ids are 64 lowercase hex digits, sizes and ranges are
bounded, a pushed chunk is hashed as it is written and discarded unless it matches its id
(`ChunkStore.put_stream`), and a fetched chunk is hashed before the caller sees it. A peer that
serves bytes that do not match the id it was asked for loses `BAD_DATA_PENALTY` points of
score (three strikes: disconnected and banned, node.p2p.peers). Calls to a peer go through its
circuit breaker; at most `PER_PEER_STREAMS` requests to one peer run at once (pipelining
without flooding it), across any number of peers in parallel.

Blocking disk work (hashing, fsync) runs in worker threads.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from node.codec import DecodeError, pack, unpack
from node.p2p import P2PNetwork, Stream, StreamError
from node.p2p.breaker import BreakerRegistry
from node.p2p.breaker import call as breaker_call
from node.storage.chunks import (
    MAX_RANGE_BYTES,
    ChunkNotFound,
    ChunkStore,
    ChunkStoreError,
    InvalidChunkId,
    QuotaExceeded,
    validate_chunk_id,
)

log = logging.getLogger("dcloud.storage.exchange")

PROTOCOL = "/dcloud/chunks/0.1.0"
VERSION = 1
DATA_FRAME_BYTES = 1024 * 1024
MAX_CONTROL_FRAME_BYTES = 128 * 1024
MAX_HAVE_IDS = 1024
MIN_NONCE_BYTES, MAX_NONCE_BYTES = 16, 64
REQUEST_TIMEOUT_S = 30.0
PER_PEER_STREAMS = 4
STREAM_IDLE_S = 30.0  # a server waits this long for the next request on a stream
POOL_IDLE_S = 10.0  # a requester reuses a stream idle at most this long (< STREAM_IDLE_S)
BAD_DATA_PENALTY = 40
BAD_REQUEST_PENALTY = 10
PROVIDE_TIMEOUT_S = 60.0  # a batch; each peer's part has its own 10 s


class ExchangeError(Exception):
    """A chunk request failed: the peer refused it, broke the stream, or sent bad data."""


class PeerRefused(ExchangeError):
    def __init__(self, peer: str, code: str, message: str) -> None:
        self.peer, self.code = peer, code
        super().__init__(f"peer {peer} refused: {code}: {message}")


class BadData(ExchangeError):
    """The peer's bytes do not hash to the chunk id asked for."""


class ProtocolViolation(ValueError):
    """A request or answer that does not follow the protocol."""


@dataclass(frozen=True)
class Proof:
    chunk_id: str
    offset: int
    length: int
    nonce: bytes
    digest: bytes


def proof_digest(nonce: bytes, data: bytes) -> bytes:
    """The answer to a possession challenge: sha256(nonce + the challenged bytes)."""
    return hashlib.sha256(nonce + data).digest()


def _ok(*fields: Any) -> bytes:
    return pack([VERSION, "ok", *fields])


def _err(code: str, message: str) -> bytes:
    return pack([VERSION, "err", code, message[:500]])


def _uint(value: Any, name: str, hi: int) -> int:
    if type(value) is not int or not 0 <= value <= hi:
        raise ProtocolViolation(f"{name} must be an integer in [0, {hi}]")
    return value


def _parse(frame: bytes | None, what: str) -> list[Any]:
    if frame is None:
        raise ProtocolViolation(f"no {what} frame")
    try:
        msg = unpack(frame, max_bytes=MAX_CONTROL_FRAME_BYTES, max_items=MAX_HAVE_IDS + 8)
    except DecodeError as exc:
        raise ProtocolViolation(f"malformed {what}: {exc}") from exc
    if not isinstance(msg, list) or len(msg) < 2 or msg[0] != VERSION or \
            not isinstance(msg[1], str):
        raise ProtocolViolation(f"malformed {what}: expected [1, op, ...]")
    return msg


class ChunkExchange:
    """Serves this node's chunks to peers and fetches, pushes and audits chunks on peers."""

    def __init__(self, network: P2PNetwork, store: ChunkStore, *,
                 metrics: Any | None = None) -> None:
        self.network = network
        self.store = store
        self.metrics = metrics
        self._breakers = BreakerRegistry(failure_threshold=5, cool_down_ms=5_000)
        self._per_peer: dict[str, trio.Semaphore] = {}
        self._idle: dict[str, list[tuple[Stream, float]]] = {}  # reusable streams per peer

    def install(self) -> None:
        self.network.set_handler(PROTOCOL, self._serve)

    # ---- serving ----------------------------------------------------------------------------

    async def _serve(self, stream: Stream) -> None:
        peer = stream.peer_id
        try:
            while True:
                frame = None
                with trio.move_on_after(STREAM_IDLE_S):  # only the wait for a request
                    frame = await stream.read_frame(MAX_CONTROL_FRAME_BYTES)
                if frame is None:
                    return  # idle too long, or closed: a requester done with the stream
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    await self._answer(stream, _parse(frame, "request"))
        except ProtocolViolation as exc:
            log.info("bad chunk request from %s: %s", peer, exc)
            self.network.book.penalise(peer, BAD_REQUEST_PENALTY, f"bad chunk request: {exc}")
            await _send_quietly(stream, _err("bad_request", str(exc)))
        except Exception as exc:  # a broken stream, a timeout: the peer's problem
            log.debug("chunk stream from %s failed: %r", peer, exc)
        finally:
            await _close_quietly(stream)

    async def _answer(self, stream: Stream, msg: list[Any]) -> None:
        op = msg[1]
        if op == "have":
            if len(msg) != 3 or not isinstance(msg[2], list) or \
                    not 1 <= len(msg[2]) <= MAX_HAVE_IDS:
                raise ProtocolViolation(f"have takes a list of 1-{MAX_HAVE_IDS} ids")
            ids = [self._chunk_id(x) for x in msg[2]]
            await stream.write_frame(_ok([self.store.has(i) for i in ids]))
        elif op == "get":
            if len(msg) != 3:
                raise ProtocolViolation("get takes one id")
            await self._serve_get(stream, self._chunk_id(msg[2]))
        elif op == "put":
            if len(msg) != 4:
                raise ProtocolViolation("put takes an id and a size")
            await self._serve_put(stream, self._chunk_id(msg[2]),
                                  _uint(msg[3], "size", self.store.max_chunk_bytes))
        elif op == "prove":
            if len(msg) != 6 or not isinstance(msg[5], bytes) or \
                    not MIN_NONCE_BYTES <= len(msg[5]) <= MAX_NONCE_BYTES:
                raise ProtocolViolation("prove takes id, offset, length and a 16-64 byte nonce")
            chunk_id = self._chunk_id(msg[2])
            offset = _uint(msg[3], "offset", self.store.max_chunk_bytes)
            length = _uint(msg[4], "length", MAX_RANGE_BYTES)
            try:
                data = await trio.to_thread.run_sync(self.store.read_range, chunk_id, offset,
                                                     length)
            except ChunkNotFound:
                await stream.write_frame(_err("not_found", f"no chunk {chunk_id} here"))
                return
            except ChunkStoreError as exc:
                await stream.write_frame(_err("bad_range", str(exc)))
                return
            await stream.write_frame(_ok(proof_digest(msg[5], data)))
        else:
            raise ProtocolViolation(f"unknown op {op!r}")

    @staticmethod
    def _chunk_id(value: Any) -> str:
        try:
            return validate_chunk_id(value)
        except InvalidChunkId as exc:
            raise ProtocolViolation(str(exc)) from exc

    async def _serve_get(self, stream: Stream, chunk_id: str) -> None:
        try:
            size = self.store.size(chunk_id)
        except ChunkNotFound:
            await stream.write_frame(_err("not_found", f"no chunk {chunk_id} here"))
            return
        await stream.write_frame(_ok(size))
        # Read in a worker thread, block by block; a corrupted chunk is found (and dropped
        # from the store) by the hash check at the end, and the stream is reset so the
        # requester never takes the bytes for good ones.
        blocks = self.store.iter_chunk(chunk_id, DATA_FRAME_BYTES)
        sent = 0
        try:
            while True:
                block = await trio.to_thread.run_sync(next, blocks, None)
                if block is None:
                    break
                await stream.write_frame(block)
                sent += len(block)
        except ChunkStoreError as exc:
            log.warning("not serving chunk %s: %s", chunk_id, exc)
            await stream.reset()
            return
        if self.metrics is not None:
            self.metrics.served_bytes.inc(sent)

    async def _serve_put(self, stream: Stream, chunk_id: str, size: int) -> None:
        if self.store.has(chunk_id):
            await stream.write_frame(_ok("have"))
            return
        if size > self.store.stat().free_bytes:
            await stream.write_frame(_err("quota", f"{size} bytes do not fit: "
                                                   f"{self.store.stat().free_bytes} free"))
            return
        await stream.write_frame(_ok("send"))
        # The bytes go to disk as they arrive (ChunkStore.put_stream in a worker thread,
        # fed through a small channel): a chunk is never held whole in memory.
        send, recv = trio.open_memory_channel[bytes](4)
        outcome: list[BaseException | None] = []

        def blocks() -> Iterator[bytes]:
            while True:
                try:
                    yield trio.from_thread.run(recv.receive)
                except trio.EndOfChannel:
                    return

        def write() -> None:
            try:
                self.store.put_stream(blocks(), expected_id=chunk_id, expected_size=size)
                outcome.append(None)
            except ChunkStoreError as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, write)
            async with send:  # closed on any exit: the writer then stops and cleans up
                got = 0
                while got < size:
                    frame = await stream.read_frame(DATA_FRAME_BYTES)
                    if frame is None:
                        raise ProtocolViolation(f"stream ended after {got} of {size} bytes")
                    got += len(frame)
                    if got > size:
                        raise ProtocolViolation(f"more than the {size} bytes announced")
                    await send.send(frame)
        error = outcome[0] if outcome else None
        if isinstance(error, QuotaExceeded):
            await stream.write_frame(_err("quota", str(error)))
            return
        if error is not None:
            self.network.book.penalise(stream.peer_id, BAD_DATA_PENALTY,
                                       f"pushed chunk {chunk_id[:16]} does not match: {error}")
            await stream.write_frame(_err("bad_data", str(error)))
            return
        if self.metrics is not None:
            self.metrics.received_bytes.inc(size)
        await stream.write_frame(_ok())

    # ---- requesting -------------------------------------------------------------------------

    def _slots(self, peer: str) -> trio.Semaphore:
        sem = self._per_peer.get(peer)
        if sem is None:
            if len(self._per_peer) > 4096:
                self._per_peer.clear()
            sem = self._per_peer[peer] = trio.Semaphore(PER_PEER_STREAMS)
        return sem

    async def _request(self, peer: str, request: bytes, handle: Any) -> Any:
        async def one() -> Any:
            async with self._slots(peer):
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    stream = await self._take_idle(peer)
                    if stream is not None:
                        try:
                            return await self._exchange(peer, stream, request, handle)
                        except (PeerRefused, BadData):
                            raise
                        except (ExchangeError, StreamError) as exc:
                            # The server may have closed it meanwhile: once more, on a new one.
                            log.debug("reused stream to %s failed (%r); opening another",
                                      peer, exc)
                    stream = await self.network.open_stream(peer, PROTOCOL)
                    return await self._exchange(peer, stream, request, handle)

        return await breaker_call(self._breakers, peer, one)

    async def _exchange(self, peer: str, stream: Stream, request: bytes, handle: Any) -> Any:
        """One request and its whole answer; the stream is kept for reuse only if the
        answer was read to its end, and reset otherwise (bytes may still be in flight)."""
        clean = False
        try:
            await stream.write_frame(request)
            try:
                result = await handle(stream)
            except PeerRefused:
                clean = True  # a complete error answer
                raise
            clean = True
            return result
        finally:
            with trio.CancelScope(shield=True):
                if not clean:
                    with trio.move_on_after(2):
                        await stream.reset()
                elif not self._keep_idle(peer, stream):
                    await _close_quietly(stream)

    async def _take_idle(self, peer: str) -> Stream | None:
        pool = self._idle.get(peer)
        now = trio.current_time()
        while pool:
            stream, since = pool.pop()
            if now - since < POOL_IDLE_S:
                return stream
            await _close_quietly(stream)
        return None

    def _keep_idle(self, peer: str, stream: Stream) -> bool:
        pool = self._idle.setdefault(peer, [])
        if len(pool) >= PER_PEER_STREAMS or len(self._idle) > 4096:
            return False
        pool.append((stream, trio.current_time()))
        return True

    async def _answer_of(self, stream: Stream) -> list[Any]:
        try:
            msg = _parse(await stream.read_frame(MAX_CONTROL_FRAME_BYTES), "answer")
        except ProtocolViolation as exc:
            raise ExchangeError(f"peer {stream.peer_id}: {exc}") from exc
        if msg[1] == "err":
            code = msg[2] if len(msg) > 2 and isinstance(msg[2], str) else "error"
            text = msg[3] if len(msg) > 3 and isinstance(msg[3], str) else ""
            raise PeerRefused(stream.peer_id, code, text)
        if msg[1] != "ok":
            raise ExchangeError(f"peer {stream.peer_id} answered {msg[1]!r}")
        return msg

    async def have(self, peer: str, chunk_ids: Sequence[str]) -> list[bool]:
        """Which of `chunk_ids` (at most MAX_HAVE_IDS) `peer` holds."""
        ids = [validate_chunk_id(i) for i in chunk_ids]

        async def handle(stream: Stream) -> list[bool]:
            msg = await self._answer_of(stream)
            answer = msg[2] if len(msg) == 3 else None
            if not isinstance(answer, list) or len(answer) != len(ids) or \
                    not all(isinstance(x, bool) for x in answer):
                raise ExchangeError(f"peer {peer}: malformed have answer")
            return answer

        return await self._request(peer, pack([VERSION, "have", ids]), handle)  # type: ignore[no-any-return]

    async def fetch(self, peer: str, chunk_id: str, max_bytes: int) -> bytes:
        """The chunk from `peer`, checked against its id; BadData (and a penalty) if not."""
        chunk_id = validate_chunk_id(chunk_id)

        async def handle(stream: Stream) -> bytes:
            msg = await self._answer_of(stream)
            size = msg[2] if len(msg) == 3 else None
            if type(size) is not int or not 0 <= size <= max_bytes:
                raise ExchangeError(f"peer {peer}: chunk size {size!r} is not in "
                                    f"[0, {max_bytes}]")
            parts: list[bytes] = []
            got = 0
            while got < size:
                pieces = await stream.read_frame_parts(DATA_FRAME_BYTES)
                if pieces is None:
                    raise ExchangeError(f"peer {peer}: stream ended after {got} of {size}")
                got += sum(map(len, pieces))
                if got > size:
                    break
                parts += pieces
            # Joined and hashed in a worker thread (hashlib lets go of the GIL): the event
            # loop goes on reading the other streams meanwhile.
            data, digest = await trio.to_thread.run_sync(_joined_and_hashed, parts)
            if got != size or digest != chunk_id:
                self.network.book.penalise(peer, BAD_DATA_PENALTY,
                                           f"served bytes that are not chunk {chunk_id[:16]}")
                if self.metrics is not None:
                    self.metrics.bad_chunks.inc()
                raise BadData(f"peer {peer} served bytes that are not chunk {chunk_id}")
            if self.metrics is not None:
                self.metrics.fetched_bytes.inc(size)
            return data

        return await self._request(peer, pack([VERSION, "get", chunk_id]), handle)  # type: ignore[no-any-return]

    async def fetch_any(self, peers: Iterable[str], chunk_id: str, max_bytes: int) -> bytes:
        """The chunk from the first of `peers` (in order, but this node first if it is one of
        them) that serves it correctly."""
        errors = []
        me = self.network.peer_id
        peers = list(peers)
        for peer in ([me] if me in peers else []) + [p for p in peers if p != me]:
            if peer == self.network.peer_id:
                try:
                    return await trio.to_thread.run_sync(self.store.get, chunk_id)
                except ChunkStoreError as exc:
                    errors.append(f"here: {exc}")
                    continue
            try:
                return await self.fetch(peer, chunk_id, max_bytes)
            except trio.Cancelled:
                raise
            except Exception as exc:
                errors.append(str(exc))
        raise ExchangeError(f"chunk {chunk_id[:16]} from nobody: {'; '.join(errors) or 'no peers'}")

    # ---- DHT provider records --------------------------------------------------------------

    async def announce(self, chunk_ids: Sequence[str]) -> list[str]:
        """Publish DHT provider records for chunks we hold; the ids that went out. Peers take
        only so many records a window (node.p2p.providers): the rest wait for a later call."""
        ids = [validate_chunk_id(c) for c in chunk_ids]
        try:
            with trio.fail_after(PROVIDE_TIMEOUT_S):
                return await self.network.provide(ids)
        except trio.Cancelled:
            raise
        except Exception as exc:
            log.debug("provide of %d chunks failed: %r", len(ids), exc)
            return []

    async def providers(self, chunk_id: str) -> list[str]:
        """Peers that announced `chunk_id` in the DHT (never us), bounded in time."""
        try:
            with trio.fail_after(PROVIDE_TIMEOUT_S):
                found = await self.network.find_providers(validate_chunk_id(chunk_id), 8)
        except trio.Cancelled:
            raise
        except Exception as exc:
            log.debug("find providers of %s failed: %r", chunk_id[:16], exc)
            return []
        return [p for p in found if p != self.network.peer_id]

    async def fetch_found(self, chunk_id: str, max_bytes: int,
                          tried: Iterable[str] = ()) -> bytes:
        """The chunk from a provider the DHT names, other than those already `tried`."""
        skip = set(tried)
        peers = [p for p in await self.providers(chunk_id) if p not in skip]
        return await self.fetch_any(peers, chunk_id, max_bytes)

    async def push(self, peer: str, chunk_id: str, data: bytes) -> None:
        """Store `data` (whose id is `chunk_id`) on `peer`; returns once it is on its disk."""
        if peer == self.network.peer_id:
            await trio.to_thread.run_sync(lambda: self.store.put(data, expected_id=chunk_id))
            return

        async def handle(stream: Stream) -> None:
            msg = await self._answer_of(stream)
            if len(msg) == 3 and msg[2] == "have":
                return
            view = memoryview(data)
            for start in range(0, len(data), DATA_FRAME_BYTES):
                await stream.write_frame(bytes(view[start:start + DATA_FRAME_BYTES]))
            await self._answer_of(stream)

        await self._request(peer, pack([VERSION, "put", chunk_id, len(data)]), handle)
        if self.metrics is not None:
            self.metrics.pushed_bytes.inc(len(data))

    async def prove(self, peer: str, chunk_id: str, offset: int, length: int,
                    nonce: bytes) -> bytes:
        """Ask `peer` to prove it holds bytes [offset, offset+length) of a chunk."""
        async def handle(stream: Stream) -> bytes:
            msg = await self._answer_of(stream)
            if len(msg) != 3 or not isinstance(msg[2], bytes) or len(msg[2]) != 32:
                raise ExchangeError(f"peer {peer}: malformed proof")
            return msg[2]  # type: ignore[no-any-return]

        return await self._request(  # type: ignore[no-any-return]
            peer, pack([VERSION, "prove", validate_chunk_id(chunk_id), offset, length, nonce]),
            handle)


def _joined_and_hashed(parts: list[bytes]) -> tuple[bytes, str]:
    data = b"".join(parts)  # one part: that very object, no copy
    return data, hashlib.sha256(data).hexdigest()


async def _send_quietly(stream: Stream, frame: bytes) -> None:
    try:
        with trio.move_on_after(2):
            await stream.write_frame(frame)
    except Exception:
        pass


async def _close_quietly(stream: Stream) -> None:
    try:
        with trio.move_on_after(2):
            await stream.close()
    except Exception:
        pass
