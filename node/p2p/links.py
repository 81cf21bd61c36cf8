"""Long-lived streams for datagram-like protocols (SWIM): one outbound stream per peer,
reused for every message, instead of a new stream per message.

A new libp2p stream costs both ends a yamux SYN/ACK, window updates and a multistream
negotiation; SWIM sent every probe, ack and gossip message on its own stream (3-4 new streams
a second per node on an idle 6-node testnet, the largest share of the streams opened).

`FrameLinks.send` writes one frame on the peer's stream, opening it on first use. A stream
the receiver closed (it timed out, or restarted) or that sat idle for `idle_s` is replaced
by a new one (keep `idle_s` well below the receiver's idle timeout), and a write that fails
on a reused stream is retried once on a new stream. A write cut short (an error, a timeout,
a cancel) leaves the stream unusable, so it is reset and forgotten: frames never interleave
(one writer at a time per stream) and never follow half a frame.

`serve_frames` is the other end: it reads frames from one stream until the peer closes it,
it stays idle for `idle_s`, or it breaks; a frame that is not a frame (bad length, too large)
is the peer's fault and is reported to `on_bad`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from node.p2p.stream import FrameTooLarge, MalformedFrame, Stream, StreamError

if TYPE_CHECKING:
    from node.p2p.host import P2PNetwork

log = logging.getLogger("dcloud.p2p")

MAX_LINKS = 4096


class _Link:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.lock = trio.Lock()
        self.used = trio.current_time()


class FrameLinks:
    def __init__(self, network: P2PNetwork, protocol: str, idle_s: float = 20.0) -> None:
        self.network = network
        self.protocol = protocol
        self.idle_s = idle_s
        self._links: dict[str, _Link] = {}

    async def send(self, peer: str, frame: bytes) -> None:
        """Write `frame` to `peer` (StreamError or DialError if that failed twice)."""
        link = self._links.get(peer)
        if link is not None and (link.stream.peer_done or
                                 trio.current_time() - link.used > self.idle_s):
            # Closed by the receiver (its frames would be lost), or idle long enough that the
            # receiver may be closing it now.
            del self._links[peer]
            await link.stream.close()
            link = None
        if link is not None:
            try:
                await self._write(peer, link, frame)
                return
            except StreamError:
                pass  # a stale stream: once more on a new one
        await self._expire()
        link = _Link(await self.network.open_stream(peer, self.protocol))
        current = self._links.get(peer)
        if current is not None and not current.stream.peer_done:
            # A concurrent send opened one meanwhile (a failed or stale link is no longer in
            # the table): use that one, never reset it under its writer.
            await link.stream.close()
            await self._write(peer, current, frame)
            return
        if len(self._links) < MAX_LINKS:
            self._links[peer] = link
            await self._write(peer, link, frame)
        else:  # too many peers to keep a stream each: a stream for this frame alone
            try:
                await self._write(peer, link, frame)
            finally:
                await link.stream.close()

    async def _write(self, peer: str, link: _Link, frame: bytes) -> None:
        async with link.lock:
            try:
                await link.stream.write_frame(frame)
            except BaseException:
                if self._links.get(peer) is link:
                    del self._links[peer]
                with trio.CancelScope(shield=True):
                    await _reset(link)
                raise
            link.used = trio.current_time()

    async def _expire(self) -> None:
        now = trio.current_time()
        for peer, link in list(self._links.items()):
            if now - link.used > self.idle_s and not link.lock.locked():
                del self._links[peer]
                await link.stream.close()

    async def close(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.stream.close()


async def _reset(link: _Link) -> None:
    with trio.move_on_after(2):
        await link.stream.reset()


async def serve_frames(stream: Stream, max_bytes: int, idle_s: float,
                       on_frame: Callable[[bytes], Awaitable[None] | None],
                       on_bad: Callable[[Exception], None]) -> None:
    """Read frames from `stream` and hand each to `on_frame`, until the peer is done."""
    try:
        while True:
            frame = None
            with trio.move_on_after(idle_s):
                frame = await stream.read_frame(max_bytes)
            if frame is None:
                return  # closed by the peer, or idle
            result = on_frame(frame)
            if result is not None:
                await result
    except (MalformedFrame, FrameTooLarge) as exc:
        on_bad(exc)
        await stream.reset()
    except StreamError as exc:  # the peer went away mid-frame: nothing to blame
        log.debug("%s stream from %s broke: %r", stream.protocol, stream.peer_id, exc)
    finally:
        await stream.close()
