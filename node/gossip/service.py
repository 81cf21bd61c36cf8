"""The trio driver of membership: SWIM over libp2p streams, heartbeats and region summaries.

- SWIM messages travel one per stream on /dcloud/swim/0.1.0 (one frame, then close): a lost
  or refused stream is a lost datagram, which SWIM is built to tolerate.
- Every `heartbeat_interval_s` the node signs a heartbeat with its free resources and hands
  it to its region's leader on /dcloud/heartbeat/0.1.0; the leader gossips its region's
  heartbeats in one batch per interval, so gossip carries about one message per region per
  interval instead of one per node. A node that leads, knows no leader, finds the leader's
  circuit open or does not see its last heartbeats come back in a batch publishes its own.
- The oldest alive member of each region (node.gossip.leader) gossips a signed summary of
  its region; members accept a summary only from the node they hold to be its leader.
- On shutdown the node leaves gracefully, so others mark it `left` at once.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import trio

from node.codec import DecodeError
from node.config import GossipSection
from node.crypto import Ed25519Key
from node.gossip import leader as leadership
from node.gossip.heartbeat import (
    MAX_BATCH,
    MAX_HEARTBEAT_BYTES,
    MAX_REGION_MEMBERS,
    RESOURCE_KEYS,
    Heartbeat,
    RegionSummary,
    decode_batch,
    decode_heartbeat,
    decode_summary,
    encode_batch,
    encode_heartbeat,
    encode_summary,
)
from node.gossip.swim import Membership, Send, SwimConfig
from node.gossip.swim_messages import MAX_FRAME_BYTES
from node.metrics import MembershipMetrics
from node.p2p import P2PNetwork, Stream
from node.p2p.addrs import public_key_of, verify_by_node_id
from node.p2p.breaker import BreakerRegistry, CircuitOpenError
from node.p2p.breaker import call as breaker_call
from node.p2p.links import FrameLinks, serve_frames
from node.runtime.resources import ResourceMonitor

log = logging.getLogger("dcloud.gossip")

PROTOCOL = "/dcloud/swim/0.1.0"
HEARTBEAT_PROTOCOL = "/dcloud/heartbeat/0.1.0"
RELAY_LAG = 2  # own heartbeats not seen relayed before we publish ourselves
MAX_SWIM_FRAME_BYTES = MAX_FRAME_BYTES  # a push_pull (full state) is the largest message
TICK_S = 0.05
SEND_TIMEOUT_S = 1.0
# SWIM messages to a peer follow one another on one stream (node.p2p.links): the sender
# closes it after LINK_IDLE_S without a message, the receiver gives up after SERVE_IDLE_S.
LINK_IDLE_S = 20.0
SERVE_IDLE_S = 60.0
SEND_CONCURRENCY = 32
LEAVE_GRACE_S = 1.0
BAD_MESSAGE_PENALTY = 10


def heartbeat_topic(chain_id: str) -> str:
    return f"dcloud/{chain_id}/heartbeats"


def regions_topic(chain_id: str) -> str:
    return f"dcloud/{chain_id}/regions"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Seen:
    heartbeat: Heartbeat
    received_at_ms: int


class MembershipService:
    def __init__(self, *, network: P2PNetwork, node_key: Ed25519Key, chain_id: str,
                 region: str, version: str, config: GossipSection,
                 monitor: ResourceMonitor, metrics: MembershipMetrics) -> None:
        self.network = network
        self.key = node_key
        self.chain_id = chain_id
        self.region = region
        self.version = version
        self.config = config
        self.monitor = monitor
        self.metrics = metrics
        self.node_id = network.peer_id
        self.core: Membership | None = None
        self.heartbeats: dict[str, Seen] = {}
        self.summaries: dict[str, RegionSummary] = {}
        self._leaders: dict[str, str] = {}
        self._seq = 0
        self._relayed_seq = 0  # our newest heartbeat seen in a batch on the topic
        self._batch: dict[str, tuple[int, bytes]] = {}  # heartbeats to publish next
        self._breakers = BreakerRegistry(failure_threshold=2, cool_down_ms=30_000)
        self._counted_probes = (0, 0)
        self._suspected_at: dict[str, float] = {}
        self._limiter = trio.CapacityLimiter(SEND_CONCURRENCY)
        self._links = FrameLinks(network, PROTOCOL, idle_s=LINK_IDLE_S)
        self._nursery: trio.Nursery | None = None
        self._left = False

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.core = Membership(
            self_id=self.node_id, region=self.region,
            addrs=tuple(self.network.listen_addrs()), joined_at_ms=now_ms(),
            config=SwimConfig(probe_interval_ms=self.config.probe_interval_ms,
                              probe_timeout_ms=self.config.probe_timeout_ms,
                              suspicion_mult=self.config.suspicion_mult),
            rng=random.Random(), sign=self.key.sign, verify=verify_by_node_id)
        self.network.set_handler(PROTOCOL, self._serve)
        self.network.set_handler(HEARTBEAT_PROTOCOL, self._serve_heartbeat)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._tick_loop)
            nursery.start_soon(self._join_loop)
            nursery.start_soon(self._heartbeat_loop)
            nursery.start_soon(self._read_heartbeats)
            nursery.start_soon(self._summary_loop)
            nursery.start_soon(self._read_summaries)
            task_status.started()

    async def leave(self) -> None:
        """Tell the cluster we are leaving (call before the network shuts down)."""
        if self.core is None or self._left:
            return
        self._left = True
        sends = self.core.leave(now_ms())
        with trio.move_on_after(LEAVE_GRACE_S):
            async with trio.open_nursery() as nursery:
                for send in sends:
                    nursery.start_soon(self._send, send)

    # ---- SWIM transport ----------------------------------------------------------------------

    def _deliver(self, sends: list[Send]) -> None:
        if self._nursery is None:
            return
        for send in sends:
            self._nursery.start_soon(self._send, send)

    async def _send(self, send: Send) -> None:
        assert self.core is not None
        async with self._limiter:
            self._remember_addrs(send.to)
            try:
                with trio.fail_after(SEND_TIMEOUT_S):
                    await self._links.send(send.to, send.data)
            except Exception as exc:  # a lost datagram; SWIM's probes notice what matters
                log.debug("swim message to %s lost: %r", send.to, exc)

    def _remember_addrs(self, node_id: str) -> None:
        assert self.core is not None
        member = self.core.member(node_id)
        if member is not None:
            self.network.add_peer_addrs(node_id, list(member.addrs))

    async def _serve(self, stream: Stream) -> None:
        """SWIM messages from one peer, on a stream it keeps open (node.p2p.links)."""
        assert self.core is not None
        peer = stream.peer_id

        def on_frame(frame: bytes) -> None:
            assert self.core is not None
            before = self.core.stats.rejected_messages
            self._deliver(self.core.on_message(peer, frame, now_ms()))
            if self.core.stats.rejected_messages > before:
                self.network.book.penalise(peer, BAD_MESSAGE_PENALTY,
                                           "rejected membership message")
            self._after_change()

        def on_bad(exc: Exception) -> None:
            log.debug("bad swim stream from %s: %r", peer, exc)
            self.network.book.penalise(peer, BAD_MESSAGE_PENALTY, f"bad swim frame: {exc}")

        await serve_frames(stream, MAX_SWIM_FRAME_BYTES, SERVE_IDLE_S, on_frame, on_bad)

    async def _tick_loop(self) -> None:
        assert self.core is not None
        while True:
            self._deliver(self.core.tick(now_ms()))
            self._after_change()
            await trio.sleep(TICK_S)

    async def _join_loop(self) -> None:
        """Join through whoever we are connected to; retry while we know nobody."""
        assert self.core is not None
        while True:
            alive_others = [m for m in self.core.members()
                            if m.node_id != self.node_id and m.state == "alive"]
            if not alive_others:
                seeds = self.network.connected_peer_ids()
                if seeds:
                    self._deliver(self.core.join(seeds, now_ms()))
            await trio.sleep(1.0)

    def _after_change(self) -> None:
        assert self.core is not None
        for event in self.core.take_events():
            kind = type(event).__name__
            self.metrics.events.labels(kind).inc()
            node = getattr(event, "node_id", "")
            if kind == "MemberSuspected":
                self._suspected_at.setdefault(node, trio.current_time())
            elif kind == "MemberDead" and node in self._suspected_at:
                self.metrics.detect_seconds.observe(
                    trio.current_time() - self._suspected_at.pop(node))
            else:
                self._suspected_at.pop(node, None)
        members = self.core.members()
        counts = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
        for m in members:
            counts[m.state] = counts.get(m.state, 0) + 1
        for state, n in counts.items():
            self.metrics.members.labels(state).set(n)
        leaders = leadership.leaders(members)
        if leaders != self._leaders:
            for region, node in leaders.items():
                if self._leaders.get(region) not in (None, node):
                    self.metrics.leader_changes.inc()
                    log.info("new leader of region %s: %s", region, node)
            self._leaders = leaders
        stats = self.core.stats
        self.metrics.probes_sent.inc(stats.probes_sent - self._counted_probes[0])
        self.metrics.probes_failed.inc(stats.probes_failed - self._counted_probes[1])
        self._counted_probes = (stats.probes_sent, stats.probes_failed)

    # ---- heartbeats and summaries ------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        topic = heartbeat_topic(self.chain_id)
        while True:
            resources = await trio.to_thread.run_sync(self.monitor.sample)
            self._seq += 1
            hb = Heartbeat(self.node_id, self._seq, now_ms(), self.region, self.version,
                           resources.to_wire())
            data = encode_heartbeat(hb, self.key.sign)
            self.heartbeats[self.node_id] = Seen(hb, now_ms())
            leader = self._leaders.get(self.region)
            if leader is None or leader == self.node_id or \
                    self._seq - self._relayed_seq > RELAY_LAG or not await self._hand_over(
                        leader, data):
                self._batch[self.node_id] = (hb.seq, data)
                self._relayed_seq = self._seq
                await self._publish_batch(topic)
            await trio.sleep(self.config.heartbeat_interval_s)

    async def _hand_over(self, leader: str, data: bytes) -> bool:
        """Give our heartbeat to the region's leader to batch; False if that failed."""
        async def send() -> None:
            self._remember_addrs(leader)
            with trio.fail_after(SEND_TIMEOUT_S):
                stream = await self.network.open_stream(leader, HEARTBEAT_PROTOCOL)
                try:
                    await stream.write_frame(data)
                finally:
                    await stream.close()

        try:
            await breaker_call(self._breakers, leader, send)
            return True
        except CircuitOpenError:
            return False
        except Exception as exc:
            log.debug("heartbeat to leader %s failed: %r", leader, exc)
            return False

    async def _publish_batch(self, topic: str) -> None:
        pending = [data for _, (_, data) in sorted(self._batch.items())]
        self._batch.clear()
        for i in range(0, len(pending), MAX_BATCH):
            await self.network.publish(topic, encode_batch(pending[i:i + MAX_BATCH]))
            self.metrics.heartbeat_batches.inc()

    async def _serve_heartbeat(self, stream: Stream) -> None:
        """A member of our region hands us its heartbeat to batch (we lead the region)."""
        assert self.core is not None
        peer = stream.peer_id
        try:
            with trio.fail_after(SEND_TIMEOUT_S):
                frame = await stream.read_frame(MAX_HEARTBEAT_BYTES)
            if frame is None:
                return
            hb = decode_heartbeat(frame, public_key_of)
        except DecodeError as exc:
            self.network.book.penalise(peer, BAD_MESSAGE_PENALTY, f"bad heartbeat: {exc}")
            return
        except Exception as exc:
            log.debug("heartbeat stream from %s failed: %r", peer, exc)
            self.network.book.penalise(peer, BAD_MESSAGE_PENALTY, f"bad heartbeat frame: {exc}")
            await stream.reset()
            return
        finally:
            await stream.close()
        if hb.node_id != peer:
            self.network.book.penalise(peer, BAD_MESSAGE_PENALTY, "heartbeat for another node")
            return
        member = self.core.member(peer)
        if self._leaders.get(self.region) != self.node_id or member is None or \
                member.region != self.region or hb.region != self.region:
            # Views differ for a moment after a change: refuse quietly, the member
            # publishes its heartbeat itself when it is not relayed.
            self.metrics.rejected_heartbeats.inc()
            return
        self._accept(hb)
        queued = self._batch.get(peer)
        if (queued is None and len(self._batch) < MAX_REGION_MEMBERS) or \
                (queued is not None and hb.seq > queued[0]):
            self._batch[peer] = (hb.seq, frame)

    def _accept(self, hb: Heartbeat) -> None:
        seen = self.heartbeats.get(hb.node_id)
        if seen is None or hb.seq > seen.heartbeat.seq:
            self.heartbeats[hb.node_id] = Seen(hb, now_ms())

    async def _read_heartbeats(self) -> None:
        async for msg in self.network.subscribe(heartbeat_topic(self.chain_id)):
            try:
                batch = decode_batch(msg.data, public_key_of)
            except DecodeError as exc:
                # Each heartbeat carries its own node's signature, so a relay cannot forge
                # one; a batch with a bad one comes from a bad relay.
                self.network.book.penalise(msg.from_peer, BAD_MESSAGE_PENALTY,
                                           f"bad heartbeat batch: {exc}")
                continue
            for hb in batch:
                if hb.node_id == self.node_id:
                    self._relayed_seq = max(self._relayed_seq, min(hb.seq, self._seq))
                else:
                    self._accept(hb)

    async def _summary_loop(self) -> None:
        topic = regions_topic(self.chain_id)
        seq = 0
        while True:
            await trio.sleep(self.config.summary_interval_s)
            if self._leaders.get(self.region) != self.node_id or self.core is None:
                continue
            members = tuple(sorted(m.node_id for m in self.core.members()
                                   if m.region == self.region and m.state == "alive"))
            free = {k: 0 for k in RESOURCE_KEYS}
            for node in members:
                seen = self.heartbeats.get(node)
                if seen is not None:
                    for k in RESOURCE_KEYS:
                        free[k] += seen.heartbeat.resources[k]
            seq += 1
            summary = RegionSummary(self.node_id, self.region, seq, now_ms(), members, free)
            self.summaries[self.region] = summary
            await self.network.publish(topic, encode_summary(summary, self.key.sign))

    async def _read_summaries(self) -> None:
        async for msg in self.network.subscribe(regions_topic(self.chain_id)):
            try:
                summary = decode_summary(msg.data, public_key_of)
            except DecodeError as exc:
                self.network.book.penalise(msg.from_peer, BAD_MESSAGE_PENALTY,
                                           f"bad region summary: {exc}")
                continue
            if self._leaders.get(summary.region) != summary.leader or \
                    summary.leader != msg.from_peer:
                self.metrics.rejected_summaries.inc()
                continue  # only the node we hold to be the region's leader speaks for it
            previous = self.summaries.get(summary.region)
            if previous is None or previous.leader != summary.leader or \
                    summary.seq > previous.seq:
                self.summaries[summary.region] = summary

    # ---- views -------------------------------------------------------------------------------

    @property
    def leaders(self) -> dict[str, str]:
        """Region -> the node this node holds to lead it (node.gossip.leader)."""
        return dict(self._leaders)

    def status(self) -> dict[str, Any]:
        if self.core is None:
            return {"members": [], "leaders": {}, "self_is_leader": False}
        now = now_ms()
        members = []
        for m in sorted(self.core.members(), key=lambda m: (m.joined_at_ms, m.node_id)):
            seen = self.heartbeats.get(m.node_id)
            members.append({
                "node_id": m.node_id, "region": m.region, "state": m.state,
                "incarnation": m.incarnation, "joined_at": m.joined_at_ms,
                "last_heartbeat_s": round((now - seen.received_at_ms) / 1000, 3)
                if seen else None,
                "resources": seen.heartbeat.resources if seen else None,
            })
        return {"members": members, "leaders": dict(self._leaders),
                "self_is_leader": self._leaders.get(self.region) == self.node_id}

    def regions(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for region, node in self._leaders.items():
            s = self.summaries.get(region)
            out[region] = {
                "leader": node,
                "summary": None if s is None or s.leader != node else {
                    "seq": s.seq, "time_ms": s.time_ms, "members": list(s.members),
                    "free": s.free},
            }
        return out
