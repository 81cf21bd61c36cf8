"""The libp2p host of a node: TCP + Noise + yamux, identify, ping, Kademlia DHT, gossipsub.

`P2PNetwork` is the small interface the rest of the node uses (open a protocol stream, set a
handler, publish/subscribe a topic, find peers/providers). Nothing outside node.p2p sees a
libp2p type.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import env_to_send_in_RPC as _own_record
from libp2p.pubsub import gossipsub as _gossipsub_module
from libp2p.pubsub import pubsub as _pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB_PROTOCOL_ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.utils import maybe_consume_signed_record as _consume_signed_record
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer import muxer_multistream as _muxer_multistream
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE as YAMUX_HEADER_SIZE
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.tcp.tcp import TCP

from node.config import P2PSection
from node.crypto import Ed25519Key
from node.metrics import P2PMetrics
from node.p2p.addrs import PeerAddr, parse_listen_addr, probe_tcp_listen
from node.p2p.peers import PeerBook
from node.p2p.providers import Announcer
from node.p2p.stream import Stream, peer_closed

log = logging.getLogger("dcloud.p2p")

StreamHandler = Callable[[Stream], Awaitable[None]]

# A subscription's own buffer; libp2p's holds only 32 messages (notes/libp2p.md trap 5),
# so a task drains it into this larger one at once.
SUBSCRIPTION_BUFFER = 1024


@dataclass(frozen=True)
class Message:
    """A gossip message as delivered to a subscriber."""

    topic: str
    data: bytes
    from_peer: str


def _expand_wildcards(listen: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """Dialable addresses for a wildcard listen address (0.0.0.0 means every interface).

    Peers learn our addresses through identify and the DHT; 0.0.0.0 is useless to them.
    Returns [] when nothing needs expanding (libp2p then advertises the listen addresses).
    """
    if not any(str(a).startswith("/ip4/0.0.0.0/") for a in listen):
        return []
    import ifaddr

    ips = sorted({ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
                  if isinstance(ip.ip, str)})
    out: list[multiaddr.Multiaddr] = []
    for addr in listen:
        text = str(addr)
        if text.startswith("/ip4/0.0.0.0/") and addr.value_for_protocol("tcp") != "0":
            out += [multiaddr.Multiaddr(text.replace("/ip4/0.0.0.0/", f"/ip4/{ip}/", 1))
                    for ip in ips]
        elif not text.startswith("/ip4/0.0.0.0/"):
            out.append(addr)
    return out


FRAME_WRITE_TIMEOUT_S = 60.0
STREAM_WINDOW_BYTES = 1024 * 1024  # per-stream receive window granted at open (yamux: 256 KiB)
BAD_PUBSUB_RPC_PENALTY = 20
PING_REUSE_S = 8.0  # a ping stream idle longer is closed (py-libp2p's handler gives up at 10 s)
MAX_PING_STREAMS = 4096


# Every gossipsub RPC py-libp2p sends carries the sender's signed peer record, and every
# one received was parsed, its Ed25519 signature checked and the peer store updated: about
# half of what an idle node spent on gossip (profiled). A peer resends the same record
# bytes until its addresses change, so bytes already verified for that peer are accepted
# again without the work, re-checked at most every RECORD_RECHECK_S (which also keeps the
# peer store's copy, kept for 2 h, fresh).
RECORD_RECHECK_S = 600.0
_MAX_RECORDS_CACHED = 4096


def _consume_signed_record_once(msg: Any, host: Any, peer_id: ID) -> bool:
    if not msg.HasField("senderRecord"):
        return True
    cache: dict[bytes, tuple[bytes, float]] | None = getattr(host, "_dcloud_records", None)
    if cache is None:
        cache = {}
        host._dcloud_records = cache
    key, raw, now = peer_id.to_bytes(), msg.senderRecord, trio.current_time()
    seen = cache.get(key)
    if seen is not None and seen[0] == raw and now - seen[1] < RECORD_RECHECK_S:
        return True
    ok = bool(_consume_signed_record(msg, host, peer_id))
    if ok:
        if len(cache) >= _MAX_RECORDS_CACHED:
            cache.clear()
        cache[key] = (raw, now)
    return ok


# And every RPC sent rebuilt the host's address list to see whether our own record was
# still current (a fifth of an idle node's gossip sending, profiled): asked at most every
# OWN_RECORD_TTL_S, a new listen address reaches peers' records that much later.
OWN_RECORD_TTL_S = 5.0


def _own_record_cached(host: Any) -> tuple[bytes, bool]:
    now = trio.current_time()
    cached: tuple[bytes, float] | None = getattr(host, "_dcloud_own_record", None)
    if cached is not None and now - cached[1] < OWN_RECORD_TTL_S:
        return cached[0], False
    record, fresh = _own_record(host)
    host._dcloud_own_record = (record, now)
    return record, fresh


_pubsub_module.maybe_consume_signed_record = _consume_signed_record_once
_gossipsub_module.maybe_consume_signed_record = _consume_signed_record_once
_pubsub_module.env_to_send_in_RPC = _own_record_cached
_gossipsub_module.env_to_send_in_RPC = _own_record_cached


def _check_port_free(addr: multiaddr.Multiaddr) -> None:
    """Fail early and clearly if a TCP listen address is taken (see probe_tcp_listen)."""
    ip = addr.value_for_protocol(addr.protocols()[0].code)
    try:
        probe_tcp_listen(ip, int(addr.value_for_protocol("tcp")))
    except OSError as exc:
        raise P2PStartError(f"cannot listen on {addr}: {exc.strerror or exc}") from exc


def peer_id_of(key: Ed25519Key) -> str:
    """The libp2p peer id (base58) of a node key: the node's id everywhere."""
    return str(ID.from_pubkey(create_new_key_pair(key.seed).public_key).to_base58())


def _batchable(secured_conn: Any) -> bool:
    """A Noise transport session whose messages _write_batch can seal and send itself."""
    noise = getattr(secured_conn, "conn", None)
    return isinstance(noise, NoiseTransportReadWriter) and hasattr(
        getattr(noise, "read_writer", None), "read_write_closer")


class AtomicWriteYamux(Yamux):
    """Yamux with one writer task per connection, so that writing never deadlocks the
    reader and no frame is ever cut in half.

    py-libp2p's Yamux writes every frame to the Noise connection under one lock, from the
    caller's task, and its reader task (handle_incoming) writes too: the ACK of a new stream,
    RSTs, ping answers. When both ends push bulk data, each side's socket fills, a writer
    blocks holding the lock, the reader blocks on the lock behind it and stops reading, and
    so does the peer's: a deadlock that only a timeout ends. That timeout then cancels a
    write half-way (Noise encrypts, advancing its nonce, then sends each 64 KiB piece), the
    peer fails to authenticate the next message and resets the connection, killing every
    stream on it. Reproduced in one process with six 1 MiB pushes each way plus small
    requests with short deadlines; seen on testnets as connection resets during puts.

    Here frames go, in order, into a queue that a single writer task drains: a header-only
    control frame (window update, ACK, RST, ping) is queued without waiting, so the reader
    never blocks; a data frame waits until it is written (backpressure), and a caller
    cancelled while waiting leaves its frame to be written whole. A write that does not
    finish within FRAME_WRITE_TIMEOUT_S (the peer stopped reading) closes the connection.
    """

    _writer_queue: Any = None
    _writer_error: BaseException | None = None

    # Yamux starts every stream with a 256 KiB window and a sender that finds it empty polls
    # every 10 ms for an update, so one 1 MiB shard stalled three or four times per stream
    # (~10 MB/s per stream, measured). Each side grants the peer STREAM_WINDOW_BYTES at once
    # when a stream opens, with a plain window update, as the protocol allows.
    async def open_stream(self) -> Any:
        stream = await super().open_stream()
        await self._grant_initial_window(stream)
        return stream

    async def accept_stream(self) -> Any:
        stream = await super().accept_stream()
        await self._grant_initial_window(stream)
        return stream

    async def _grant_initial_window(self, stream: Any) -> None:
        extra = STREAM_WINDOW_BYTES - stream.recv_window
        if extra <= 0:
            return
        async with stream.window_lock:
            stream.recv_window += extra
            stream.target_recv_window = max(stream.target_recv_window, STREAM_WINDOW_BYTES)
        try:
            await stream.send_window_update(extra, skip_lock=True)
        except Exception as exc:  # the stream or connection is going away
            log.debug("initial window update failed: %r", exc)

    async def _write_frame(self, data: bytes) -> None:
        nursery = self._nursery
        if nursery is None:  # before start(): as py-libp2p does it, but never cut short
            async with self._write_lock:
                with trio.CancelScope(shield=True):
                    await self.secured_conn.write(data)
            return
        queue = self._queue(nursery)
        if len(data) <= YAMUX_HEADER_SIZE:
            queue.send_nowait((data, None))
            await trio.lowlevel.checkpoint()
            return
        await self._written(queue, data)

    async def write_data_frames(self, frames: list[bytes]) -> None:
        """Write several whole yamux frames, in order, as one socket write (see
        _write_batch); returns once they are written, like a data frame's _write_frame."""
        nursery = self._nursery
        if nursery is None or not _batchable(self.secured_conn):
            for frame in frames:
                await self._write_frame(frame)
            return
        await self._written(self._queue(nursery), frames)

    def _queue(self, nursery: trio.Nursery) -> Any:
        """The writer task's queue (the task starts with the first frame); raises once the
        writer has failed."""
        if self._writer_queue is None:
            send, recv = trio.open_memory_channel[tuple[bytes | list[bytes], trio.Event | None]](
                math.inf)
            self._writer_queue = send
            nursery.start_soon(self._writer, recv)
        if self._writer_error is not None:
            raise ConnectionError(f"connection writer failed: {self._writer_error!r}")
        return self._writer_queue

    async def _written(self, queue: Any, item: bytes | list[bytes]) -> None:
        """Queue a data frame (or a batch of them) and return once the writer wrote it."""
        done = trio.Event()
        queue.send_nowait((item, done))
        await done.wait()
        if self._writer_error is not None:
            raise ConnectionError(f"connection writer failed: {self._writer_error!r}")

    async def _write_batch(self, frames: list[bytes]) -> None:
        """Each frame its own Noise message, as SecureSession.write would make it, but all of
        them handed to the socket at once: one send instead of one per 64 KiB (and none of
        the per-message lock and task hand-offs). Only the writer task calls this, so the
        Noise nonces go out in the order they were taken."""
        noise: Any = self.secured_conn.conn  # type: ignore[attr-defined]  # (_batchable)
        out = []
        for frame in frames:
            sealed = noise.encrypt(frame)
            out.append(len(sealed).to_bytes(2, "big"))
            out.append(sealed)
        await noise.read_writer.read_write_closer.write(b"".join(out))

    async def _writer(self, queue: Any) -> None:
        async for data, done in queue:
            try:
                if self._writer_error is None:
                    with trio.move_on_after(FRAME_WRITE_TIMEOUT_S) as scope:
                        if isinstance(data, list):
                            await self._write_batch(data)
                        else:
                            await self.secured_conn.write(data)
                    if scope.cancelled_caught:
                        raise TimeoutError(f"a frame write did not finish in "
                                           f"{FRAME_WRITE_TIMEOUT_S:.0f} s")
            except Exception as exc:
                self._writer_error = exc
                log.info("closing the connection to %s: %r", self.peer_id, exc)
                with trio.move_on_after(2):
                    try:
                        await self.secured_conn.close()
                    except Exception:
                        pass
            finally:
                if done is not None:
                    done.set()


# py-libp2p 0.8.1 ignores the muxer class it is given for yamux: MuxerMultistream.new_conn
# builds its module's `Yamux` by name whenever yamux is negotiated. Without this, no
# connection was ever an AtomicWriteYamux (found by a type check: its writer task, initial
# window and batched writes had not been in use).
_muxer_multistream.Yamux = AtomicWriteYamux  # type: ignore[misc]


class GuardedPubsub(Pubsub):
    """Pubsub whose per-peer reader cannot take the node down.

    py-libp2p 0.8.1 catches stream and read errors in a pubsub stream's handler but not a
    protobuf DecodeError: one malformed gossipsub RPC from any peer crashed the whole swarm
    service, and so the node (seen under load in the consensus benchmark). Here any error
    from a peer's stream ends that stream only, and the peer is penalised.
    """

    on_bad_rpc: Any = None

    async def stream_handler(self, stream: INetStream) -> None:
        try:
            await super().stream_handler(stream)
        except trio.Cancelled:
            raise
        except Exception as exc:
            peer = stream.muxed_conn.peer_id.to_base58()
            log.info("dropping a pubsub stream from %s: %r", peer, exc)
            if self.on_bad_rpc is not None:
                self.on_bad_rpc(peer, exc)
            try:
                await stream.reset()
            except Exception:
                pass


class _CountingTCP(TCP):
    """TCP transport that counts bytes in and out of every connection for /metrics."""

    def __init__(self, metrics: P2PMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def _wrap(self, raw: Any) -> Any:
        if not isinstance(raw, RawConnection):
            return raw
        return _CountingConnection(raw, self._metrics)

    async def dial(self, maddr: multiaddr.Multiaddr) -> Any:
        return self._wrap(await super().dial(maddr))

    def create_listener(self, handler_function: Any) -> Any:
        async def counted(raw: Any) -> None:
            await handler_function(self._wrap(raw))

        return super().create_listener(counted)


class _CountingConnection(RawConnection):
    def __init__(self, inner: RawConnection, metrics: P2PMetrics) -> None:
        super().__init__(
            inner.stream, inner.is_initiator, inner._connection_type, inner._actual_addresses
        )
        self._metrics = metrics

    async def write(self, data: bytes) -> None:
        await super().write(data)
        self._metrics.sent_bytes.inc(len(data))

    async def read(self, n: int | None = None) -> bytes:
        data = await super().read(n)
        self._metrics.received_bytes.inc(len(data))
        return data


class _ConnectionEvents(INotifee):
    """Forwards libp2p connection events to the network (as peer ids in text)."""

    def __init__(self, network: P2PNetwork) -> None:
        self._network = network

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._network._on_connected(conn.muxed_conn.peer_id.to_base58())

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._network._on_disconnected(conn.muxed_conn.peer_id.to_base58())

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


class P2PNetwork:
    """One node's libp2p presence and the interface other services use to talk to peers."""

    def __init__(self, key: Ed25519Key, config: P2PSection, metrics: P2PMetrics,
                 peers_file: Path | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self._key_pair = create_new_key_pair(key.seed)
        self.peer_id = ID.from_pubkey(self._key_pair.public_key).to_base58()
        self._listen = [parse_listen_addr(a) for a in config.listen_addrs]
        self._announce = [parse_listen_addr(a) for a in config.announce_addrs] or \
            _expand_wildcards(self._listen)
        self.book = PeerBook(self, peers_file)
        self._host: Any = None
        self._pubsub: Any = None
        self._dht: Any = None
        self._announcer: Announcer | None = None
        self._ping_streams: dict[str, tuple[Any, float]] = {}  # peer -> (stream, last used)
        self._handlers: dict[str, StreamHandler] = {}
        self._nursery: trio.Nursery | None = None
        self.connection_changed = trio.Event()

    # ---- lifecycle -------------------------------------------------------------------------

    def _build_host(self) -> Any:
        noise = NoiseTransport(
            self._key_pair, noise_privkey=create_new_x25519_key_pair().private_key
        )
        return new_host(
            key_pair=self._key_pair,
            # Noise only: new_host would also offer plaintext (notes/libp2p.md trap 1).
            sec_opt={NOISE_PROTOCOL_ID: noise},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): AtomicWriteYamux},
            listen_addrs=self._listen,
            transports=[_CountingTCP(self.metrics)],
            # One connection per peer: dials take ~10 ms instead of 250 ms (trap 2).
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,
                dial_timeout=self.config.dial_timeout_s,
                # Our PeerBook decides whom to dial; libp2p's own auto-connect and
                # pruning stay out of the way (min 0, watermarks at the cap).
                max_connections=max(self.config.max_peers * 2, 16),
                high_watermark=max(self.config.max_peers * 2, 16),
                low_watermark=0,
                min_connections=0,
            ),
            announce_addrs=self._announce or None,
        )

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        host = self._build_host()
        self._host = host
        # libp2p's AutoConnector dials every peer-store entry up to its watermarks; the
        # PeerBook owns that decision (target_peers, backoff, bans), so it is switched off.
        auto_connector = getattr(host.get_network(), "auto_connector", None)
        if auto_connector is not None:
            async def _peer_book_decides() -> None:
                return None

            auto_connector.maybe_connect = _peer_book_decides
        self._gate_banned_peers(host.get_network())
        router = GossipSub(
            protocols=[GOSSIPSUB_PROTOCOL_ID],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,  # the default is 120 s (trap 8)
            spam_protection_enabled=False,  # it silently drops our own publishes (trap 3)
        )
        # Pubsub must exist before any connect() (trap 12).
        self._pubsub = GuardedPubsub(host, router, strict_signing=True)
        self._pubsub.on_bad_rpc = self._bad_pubsub_rpc
        self._dht = KadDHT(host, DHTMode.SERVER)
        self._announcer = Announcer(host, self._dht)
        host.get_network().register_notifee(_ConnectionEvents(self))
        for addr in self._listen:
            _check_port_free(addr)
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(host.run(listen_addrs=self._listen))
            except OSError as exc:
                raise P2PStartError(
                    f"cannot listen on {', '.join(map(str, self._listen))}: {exc.strerror or exc}"
                ) from exc
            if not host.get_transport_addrs():
                # libp2p logs a failed listen and carries on; a node nobody can dial is useless.
                raise P2PStartError(f"cannot listen on {', '.join(map(str, self._listen))}")
            await stack.enter_async_context(background_trio_service(self._pubsub))
            await stack.enter_async_context(background_trio_service(router))
            await stack.enter_async_context(background_trio_service(self._dht))
            await self._pubsub.wait_until_ready()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.book.run)
                log.info("p2p listening", extra={"addrs": self.listen_addrs()})
                task_status.started()
                await trio.sleep_forever()

    def _bad_pubsub_rpc(self, peer_id: str, exc: BaseException) -> None:
        self.metrics.bad_frames.labels("/meshsub").inc()
        self.book.penalise(peer_id, BAD_PUBSUB_RPC_PENALTY, f"malformed gossipsub RPC: {exc!r}")

    def _gate_banned_peers(self, swarm: Any) -> None:
        """Refuse connections from banned peers once their identity is proven (after Noise).

        py-libp2p has no connection gater for peer ids; every connection, inbound or
        outbound, passes through Swarm.add_conn, and SwarmException there is its
        "connection denied" path.
        """
        admit = swarm.add_conn

        async def add_conn_unless_banned(muxed_conn: Any, direction: str = "unknown") -> Any:
            peer_id = muxed_conn.peer_id.to_base58()
            if self.book.is_banned(peer_id):
                await muxed_conn.close()
                raise SwarmException(f"peer {peer_id} is banned")
            return await admit(muxed_conn, direction=direction)

        swarm.add_conn = add_conn_unless_banned

    # ---- connection events -----------------------------------------------------------------

    def _wake(self) -> None:
        self.connection_changed.set()
        self.connection_changed = trio.Event()

    def _on_connected(self, peer_id: str) -> None:
        self.metrics.peers.set(len(self.connected_peer_ids()))
        self.book.on_connected(peer_id)
        self._wake()

    def _on_disconnected(self, peer_id: str) -> None:
        self.metrics.peers.set(len(self.connected_peer_ids()))
        self.book.on_disconnected(peer_id)
        self._wake()

    # ---- what the rest of the node uses ----------------------------------------------------

    def listen_addrs(self) -> list[str]:
        """Full multiaddrs (ending in /p2p/<id>) peers can dial."""
        if self._host is None:
            return []
        out = []
        for addr in self._host.get_addrs():
            text = str(addr)
            if "/p2p/" not in text:
                text = f"{text}/p2p/{self.peer_id}"
            out.append(text)
        return out

    def connected_peer_ids(self) -> list[str]:
        if self._host is None:
            return []
        return sorted(p.to_base58() for p in self._host.get_connected_peers())

    def is_connected(self, peer_id: str) -> bool:
        if self._host is None:
            return False
        return bool(self._host.get_network().get_connections(ID.from_base58(peer_id)))

    def peer_addrs(self, peer_id: str) -> list[str]:
        if self._host is None:
            return []
        try:
            return [str(a) for a in self._host.get_peerstore().addrs(ID.from_base58(peer_id))]
        except Exception:  # an unknown peer has no addresses
            return []

    def add_peer_addrs(self, peer_id: str, addrs: list[str], ttl_s: int = 3600) -> None:
        """Remember where a peer (learnt from membership gossip) can be dialled."""
        maddrs = []
        for text in addrs:
            try:
                maddrs.append(parse_listen_addr(text.split("/p2p/")[0]))
            except ValueError:
                continue
        if maddrs and self._host is not None:
            self._host.get_peerstore().add_addrs(ID.from_base58(peer_id), maddrs, ttl_s)

    def known_peer_ids(self) -> list[str]:
        """Peers with addresses in the peer store (connected or not), excluding ourselves."""
        if self._host is None:
            return []
        return [p.to_base58() for p in self._host.get_peerstore().peers_with_addrs()
                if p.to_base58() != self.peer_id]

    async def connect(self, peer: PeerAddr | str) -> None:
        """Dial a peer (a PeerAddr, or the id of a peer whose addresses we know)."""
        if isinstance(peer, PeerAddr):
            info = peer.to_peer_info()
        else:
            pid = ID.from_base58(peer)
            info = PeerInfo(pid, self._host.get_peerstore().addrs(pid))
        self.metrics.dials.inc()
        try:
            with trio.fail_after(self.config.dial_timeout_s):
                await self._host.connect(info)
        except Exception as exc:
            self.metrics.dial_failures.inc()
            raise DialError(f"dial {info.peer_id.to_base58()} failed: {exc!r}") from exc

    async def disconnect(self, peer_id: str) -> None:
        await self._host.disconnect(ID.from_base58(peer_id))

    async def ping(self, peer_id: str) -> float:
        """One ping round trip to a connected peer, in milliseconds (float). Pings to a peer
        follow one another on one stream while it stays open (py-libp2p's ping handler
        closes one idle for 10 s); a reused stream that fails is replaced once."""
        kept = self._ping_streams.pop(peer_id, None)
        if kept is not None:
            raw, used = kept
            if trio.current_time() - used <= PING_REUSE_S and not peer_closed(raw):
                try:
                    return await self._ping_on(peer_id, raw)
                except DialError:
                    pass  # stale: once more on a new stream
            else:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await raw.close()
        from libp2p.host.ping import ID as PING_ID

        raw = await self._host.new_stream(ID.from_base58(peer_id), [PING_ID])
        return await self._ping_on(peer_id, raw)

    async def _ping_on(self, peer_id: str, raw: Any) -> float:
        ok = False
        try:
            payload = secrets.token_bytes(32)
            start = trio.current_time()
            try:
                await raw.write(payload)
                got = b""
                while len(got) < 32:
                    chunk = await raw.read(32 - len(got))
                    if not chunk:
                        raise DialError(f"{peer_id} closed the ping stream")
                    got += chunk
            except (DialError, trio.Cancelled):
                raise
            except Exception as exc:
                raise DialError(f"ping stream to {peer_id} broke: {exc!r}") from exc
            if got != payload:
                raise DialError(f"{peer_id} answered ping with wrong bytes")
            ok = True
            return (trio.current_time() - start) * 1000.0
        finally:
            if ok and len(self._ping_streams) < MAX_PING_STREAMS:
                self._ping_streams[peer_id] = (raw, trio.current_time())
            else:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await (raw.close() if ok else raw.reset())

    async def open_stream(self, peer_id: str, protocol: str) -> Stream:
        try:
            raw = await self._host.new_stream(ID.from_base58(peer_id), [protocol])
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise DialError(f"cannot open {protocol} to {peer_id}: {exc!r}") from exc
        self.metrics.streams_opened.labels(protocol).inc()
        return Stream(raw, peer_id, protocol, self.config.max_frame_bytes)

    async def request(self, peer_id: str, protocol: str, frame: bytes,
                      max_bytes: int) -> bytes | None:
        """One frame out and the answer frame back, on a stream of its own (None if the peer
        closed it without answering). The caller bounds it in time."""
        stream = await self.open_stream(peer_id, protocol)
        try:
            await stream.write_frame(frame)
            return await stream.read_frame(max_bytes)
        finally:
            await stream.close()

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve `protocol`: each inbound stream runs `handler` in the host's task."""
        self._handlers[protocol] = handler

        async def on_stream(raw: INetStream) -> None:
            peer_id = raw.muxed_conn.peer_id.to_base58()
            stream = Stream(raw, peer_id, protocol, self.config.max_frame_bytes)
            try:
                await handler(stream)
            except trio.Cancelled:
                raise
            except Exception as exc:  # a handler bug or bad peer never takes the node down
                log.warning("handler for %s failed on stream from %s: %r", protocol, peer_id, exc)
                await stream.reset()

        self._host.set_stream_handler(protocol, on_stream)

    async def publish(self, topic: str, data: bytes) -> None:
        await self._pubsub.publish(topic, data)
        # publish() does not yield; give the outbound queues a chance (trap 4).
        await trio.sleep(0)

    async def subscribe(self, topic: str) -> AsyncIterator[Message]:
        """Messages on `topic`, drained continuously so libp2p never drops them (trap 5)."""
        sub = await self._pubsub.subscribe(topic)
        send, recv = trio.open_memory_channel[Message](SUBSCRIPTION_BUFFER)

        async def drain() -> None:
            async with send:
                while True:
                    msg = await sub.get()
                    item = Message(topic, bytes(msg.data), ID(msg.from_id).to_base58())
                    try:
                        send.send_nowait(item)
                    except trio.WouldBlock:
                        log.warning("subscriber of %s is slow; dropping a message", topic)

        assert self._nursery is not None
        self._nursery.start_soon(drain)
        async with recv:
            async for item in recv:
                yield item

    async def find_closest_peers(self) -> list[str]:
        """Ask the DHT for peers near a random key; their addresses land in the peer store."""
        key = hashlib.sha256(secrets.token_bytes(16)).digest()
        found = await self._dht.peer_routing.find_closest_peers_network(key)
        own = await self._dht.peer_routing.find_closest_peers_network(
            ID.from_base58(self.peer_id).to_bytes()
        )
        return sorted({p.to_base58() for p in [*found, *own]} - {self.peer_id})

    async def add_to_routing_table(self, peer_id: str) -> None:
        await self._dht.add_peer(ID.from_base58(peer_id))

    async def provide(self, keys: Sequence[str]) -> list[str]:
        """Announce DHT provider records for `keys`; the keys that went out (the others did
        not fit in a peer's allowance: call again later). See node.p2p.providers."""
        if self._announcer is None:
            raise DialError("the host is not running")
        return await self._announcer.provide(keys)

    async def find_providers(self, key: str, count: int = 20) -> list[str]:
        infos = await self._dht.find_providers(key, count)
        # find_providers can repeat a provider (trap 11).
        return sorted({i.peer_id.to_base58() for i in infos})


class P2PStartError(Exception):
    """The host could not start (for example, the port is in use)."""


class DialError(Exception):
    """A peer could not be reached or a stream could not be opened."""
