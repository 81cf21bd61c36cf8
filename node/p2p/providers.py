"""DHT provider records sent in batches: one stream per peer carrying many ADD_PROVIDER messages.

py-libp2p's `KadDHT.provide(key)` announces one key at a time: an iterative FIND_NODE lookup
(a new stream to each of the closest peers, each answer full of signed peer records to check)
and then a new stream per closest peer for one ADD_PROVIDER. On a 6-node testnet that was
~125 ms of CPU across the nodes per key (measured), so the ~100 shards of a 64 MiB put kept
both cores busy for five seconds. And a py-libp2p node accepts at most
`LIBP2P_PROVIDES_PER_WINDOW` ADD_PROVIDER messages from one peer per
`LIBP2P_PROVIDE_WINDOW_S` (it resets the stream after that), so most of a batch of 64 was
silently dropped by every receiver.

Here the keys of one call are grouped by the peers they go to, each peer gets one stream with
its messages (each answered by the echo the spec asks for), and no peer is sent more than its
window allows: keys that would exceed it wait for a later call (`Announcer.provide` returns
only the keys that went out). The closest peers to a key are computed locally when this node
knows fewer than K peers (in a network that small they are all of them: a lookup would only
ask them for the peers we already know); otherwise py-libp2p's network lookup finds them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import trio
import varint  # type: ignore[import-untyped]
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import _encode_key
from libp2p.kad_dht.pb.kademlia_pb2 import Message as KadMessage
from libp2p.kad_dht.utils import sort_peer_ids_by_distance
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

log = logging.getLogger("dcloud.p2p")

K = 20  # Kademlia's replication parameter: a record goes to the K closest peers
# What a py-libp2p receiver takes from one sender (KadDHT._provider_rate_max and
# _provider_rate_window); our window is a second longer, so that a new window of ours never
# starts before the receiver's has ended.
LIBP2P_PROVIDES_PER_WINDOW = 10
LIBP2P_PROVIDE_WINDOW_S = 10.0
WINDOW_S = LIBP2P_PROVIDE_WINDOW_S + 1.0
PEER_TIMEOUT_S = 10.0
PEERS_IN_FLIGHT = 8
MAX_ECHO_BYTES = 4096


class Announcer:
    """Sends this host's provider records; keeps, per peer, how many went out this window."""

    def __init__(self, host: Any, dht: Any) -> None:
        self._host = host
        self._dht = dht
        self._sent: dict[ID, tuple[float, int]] = {}  # peer -> (window start, sent in it)

    def _window(self, peer: ID, now: float) -> tuple[float, int]:
        """(start, records sent) of the peer's current window; a new one once it ended."""
        start, sent = self._sent.get(peer, (now, 0))
        return (now, 0) if now - start >= WINDOW_S else (start, sent)

    def _budget(self, peer: ID, now: float) -> int:
        return LIBP2P_PROVIDES_PER_WINDOW - self._window(peer, now)[1]

    def _spend(self, peer: ID, now: float, count: int) -> None:
        start, sent = self._window(peer, now)
        self._sent[peer] = (start, sent + count)
        if len(self._sent) > 4 * 4096:
            self._sent = {p: v for p, v in self._sent.items() if now - v[0] < WINDOW_S}

    async def _closest(self, key: bytes) -> list[ID]:
        me = self._host.get_id()
        known = {p for p in self._dht.routing_table.get_peer_ids() if p != me}
        known.update(p for p in self._host.get_connected_peers() if p != me)
        if len(known) < K:
            return sort_peer_ids_by_distance(key, list(known))
        found = await self._dht.peer_routing.find_closest_peers_network(key, K)
        return [p for p in found if p != me][:K]

    async def provide(self, keys: Sequence[str]) -> list[str]:
        """Announce that this host provides each of `keys`; the keys that went out (to every
        peer each goes to). The others did not fit in a peer's window, or this host knows no
        peers yet: call again later."""
        me = PeerInfo(self._host.get_id(), list(self._host.get_addrs()))
        store = self._dht.provider_store
        now = trio.current_time()
        planned: dict[ID, list[bytes]] = {}
        budget: dict[ID, int] = {}
        done: list[str] = []
        for key in keys:
            kb = _encode_key(key)
            targets = await self._closest(kb)
            if not targets:
                break  # nobody to tell yet
            for p in targets:
                budget.setdefault(p, self._budget(p, now))
            if any(budget[p] <= 0 for p in targets):
                break  # keep the caller's order: this key and the rest go next time
            for p in targets:
                budget[p] -= 1
                planned.setdefault(p, []).append(kb)
            store.add_provider(kb, me)
            store.providing_keys.add(kb)
            done.append(key)
        for p, batch in planned.items():
            self._spend(p, now, len(batch))
        limiter = trio.CapacityLimiter(PEERS_IN_FLIGHT)

        async def send(peer: ID, batch: list[bytes]) -> None:
            async with limiter:
                with trio.move_on_after(PEER_TIMEOUT_S):
                    try:
                        await self._send(peer, batch, me)
                    except trio.Cancelled:
                        raise
                    except Exception as exc:  # an unreachable peer: the others still have it
                        log.debug("ADD_PROVIDER to %s failed: %r", peer, exc)

        async with trio.open_nursery() as nursery:
            for peer, batch in planned.items():
                nursery.start_soon(send, peer, batch)
        return done

    async def _send(self, peer: ID, batch: list[bytes], me: PeerInfo) -> None:
        stream = await self._host.new_stream(peer, [KAD_PROTOCOL_ID])
        try:
            for kb in batch:
                msg = KadMessage()
                msg.type = KadMessage.MessageType.ADD_PROVIDER
                msg.key = kb
                provider = msg.providerPeers.add()
                provider.id = me.peer_id.to_bytes()
                provider.addrs.extend(a.to_bytes() for a in me.addrs)
                body = msg.SerializeToString()
                await stream.write(varint.encode(len(body)) + body)
                # The echo (per spec) also paces us to the receiver.
                await read_varint_prefixed_bytes_limited(stream, MAX_ECHO_BYTES)
        finally:
            await stream.close()
