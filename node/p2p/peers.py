"""The peer book: which peers the node knows, dials, keeps, pings and penalises.

- Bootstrap peers are dialled with exponential backoff until they answer, and redialled
  whenever the connection drops.
- While below `target_peers`, the DHT is asked for more peers; their addresses are
  remembered and dialled.
- A peer we were connected to that goes away (restart, crash) is redialled with backoff.
- The addresses of peers we were connected to are saved in the home (`peers.json`) and
  dialled again after a restart, so a node that comes back finds the cluster even when its
  bootstrap peers are gone (or it has none) and before others redial it.
- Connected peers are pinged to measure latency.
- Misbehaving peers lose score; at the ban threshold they are disconnected and not
  redialled (or accepted) for a while.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from node.p2p.addrs import PeerAddr, parse_peer_addr

if TYPE_CHECKING:
    from node.p2p.host import P2PNetwork

log = logging.getLogger("dcloud.p2p.peers")

BAN_SCORE = -100
BAN_SECONDS = 600.0
PING_TIMEOUT_S = 5.0
# Peers learnt through the DHT that keep failing are forgotten after this many dials.
FORGET_AFTER_FAILURES = 8
DIAL_CONCURRENCY = 8
# Once the node has its target peers, discovery still runs now and then to keep the
# routing table fresh.
IDLE_DISCOVERY_INTERVAL_S = 30.0
SAVE_INTERVAL_S = 30.0
MAX_SAVED_PEERS = 256
MAX_SAVED_ADDRS = 8
MAX_PEERS_FILE_BYTES = 1 << 20


@dataclass
class PeerRecord:
    peer_id: str
    bootstrap_addr: PeerAddr | None = None
    connected: bool = False
    ever_connected: bool = False
    dialing: bool = False
    failures: int = 0
    next_dial_at: float = 0.0
    latency_ms: float | None = None
    score: int = 0
    banned_until: float = 0.0
    in_routing_table: bool = False
    # Where it was last reachable, kept here because libp2p's peer store may drop a
    # disconnected peer's addresses (or be gone at shutdown) before we save them.
    addrs: list[str] = field(default_factory=list)

    @property
    def is_bootstrap(self) -> bool:
        return self.bootstrap_addr is not None


@dataclass(frozen=True)
class PeerSnapshot:
    peer_id: str
    addrs: list[str]
    latency_ms: float | None
    score: int
    bootstrap: bool


class PeerBook:
    def __init__(self, network: P2PNetwork, peers_file: Path | None = None) -> None:
        self._net = network
        self._cfg = network.config
        self._peers_file = peers_file
        self._nursery: trio.Nursery | None = None
        self._records: dict[str, PeerRecord] = {}
        self._dial_limiter = trio.CapacityLimiter(DIAL_CONCURRENCY)
        self._wakeup = trio.Event()
        for text in self._cfg.bootstrap:
            addr = parse_peer_addr(text)
            if addr.peer_id == network.peer_id:
                continue  # our own address in a shared bootstrap list
            self._records[addr.peer_id] = PeerRecord(addr.peer_id, bootstrap_addr=addr)

    # ---- events ----------------------------------------------------------------------------

    def _record(self, peer_id: str) -> PeerRecord:
        rec = self._records.get(peer_id)
        if rec is None:
            rec = self._records[peer_id] = PeerRecord(peer_id)
        return rec

    def on_connected(self, peer_id: str) -> None:
        rec = self._record(peer_id)
        if self.is_banned(peer_id):
            log.info("dropping connection from banned peer %s", peer_id)
            self._spawn(self._net.disconnect, peer_id)
            return
        if not rec.connected:
            log.info("peer connected", extra={"peer": peer_id})
        rec.connected = True
        rec.ever_connected = True
        rec.failures = 0

    def on_disconnected(self, peer_id: str) -> None:
        rec = self._record(peer_id)
        if self._net.is_connected(peer_id):
            return  # another connection to the same peer is still up
        self._known_addrs(rec)
        if rec.connected:
            log.info("peer disconnected", extra={"peer": peer_id})
        rec.connected = False
        rec.latency_ms = None
        rec.in_routing_table = False
        rec.next_dial_at = trio.current_time() + self._backoff(0)
        self._wakeup.set()

    def _spawn(self, fn: Any, *args: Any) -> None:
        nursery = self._nursery
        if nursery is not None:
            nursery.start_soon(fn, *args)

    # ---- scoring ---------------------------------------------------------------------------

    def is_banned(self, peer_id: str) -> bool:
        rec = self._records.get(peer_id)
        return rec is not None and rec.banned_until > trio.current_time()

    def penalise(self, peer_id: str, points: int, reason: str) -> None:
        """Lower a peer's score; at BAN_SCORE it is disconnected and banned for a while."""
        rec = self._record(peer_id)
        rec.score -= points
        log.warning("penalised peer %s by %d (%s); score %d", peer_id, points, reason, rec.score)
        if rec.score <= BAN_SCORE and not self.is_banned(peer_id):
            rec.banned_until = trio.current_time() + BAN_SECONDS
            self._net.metrics.peer_disconnects.inc()
            log.warning("disconnecting and banning peer %s for %.0f s", peer_id, BAN_SECONDS)
            self._spawn(self._net.disconnect, peer_id)

    # ---- views -----------------------------------------------------------------------------

    def snapshot(self) -> list[PeerSnapshot]:
        out = []
        for peer_id in self._net.connected_peer_ids():
            rec = self._record(peer_id)
            out.append(PeerSnapshot(peer_id, self._net.peer_addrs(peer_id), rec.latency_ms,
                                    rec.score, rec.is_bootstrap))
        return out

    def connected_count(self) -> int:
        return len(self._net.connected_peer_ids())

    # ---- tasks -----------------------------------------------------------------------------

    _nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._load_saved()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._dial_loop)
                nursery.start_soon(self._discovery_loop)
                nursery.start_soon(self._ping_loop)
                nursery.start_soon(self._save_loop)
                task_status.started()
        finally:
            self.save()

    # ---- remembered peers ------------------------------------------------------------------

    def _load_saved(self) -> None:
        """Dial the peers of our last run again (as discovered peers: while below target,
        forgotten after repeated failures). A bad file is reported and ignored."""
        path = self._peers_file
        if path is None or not path.exists():
            return
        try:
            if path.stat().st_size > MAX_PEERS_FILE_BYTES:
                raise ValueError(f"larger than {MAX_PEERS_FILE_BYTES} bytes")
            entries = json.loads(path.read_text())
            if not isinstance(entries, list):
                raise ValueError("not a list")
        except (OSError, ValueError) as exc:
            log.warning("ignoring saved peers in %s: %s", path, exc)
            return
        loaded = 0
        for entry in entries[:MAX_SAVED_PEERS]:
            try:
                peer_id, addrs = entry["peer_id"], entry["addrs"]
                if not isinstance(addrs, list) or not addrs:
                    raise ValueError("no addresses")
                for text in addrs[:MAX_SAVED_ADDRS]:
                    parse_peer_addr(f"{text}/p2p/{peer_id}")
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring a saved peer in %s: %r", path, exc)
                continue
            if peer_id == self._net.peer_id or peer_id in self._records:
                continue
            self._net.add_peer_addrs(peer_id, addrs[:MAX_SAVED_ADDRS])
            self._records[peer_id] = PeerRecord(peer_id)
            loaded += 1
        if loaded:
            log.info("dialling %d peers saved by the last run", loaded)

    def save(self) -> None:
        """Write the addresses of the peers we have been connected to (atomically)."""
        path = self._peers_file
        if path is None:
            return
        entries = []
        for rec in self._records.values():
            if rec.ever_connected and rec.banned_until == 0.0:
                addrs = self._known_addrs(rec)
                if addrs:
                    entries.append({"peer_id": rec.peer_id, "addrs": addrs[:MAX_SAVED_ADDRS]})
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(entries[:MAX_SAVED_PEERS], indent=1))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot save peers to %s: %s", path, exc)

    def _known_addrs(self, rec: PeerRecord) -> list[str]:
        """The peer's addresses (without /p2p/): the peer store's, else the last ones seen."""
        addrs = [a.split("/p2p/")[0] for a in self._net.peer_addrs(rec.peer_id)]
        if addrs:
            rec.addrs = addrs[:MAX_SAVED_ADDRS]
        return rec.addrs

    async def _save_loop(self) -> None:
        while True:
            await trio.sleep(SAVE_INTERVAL_S)
            self.save()

    def _backoff(self, failures: int) -> float:
        """Delay before the next dial after `failures` consecutive failures (0: a lost peer)."""
        doubling = 2.0 ** max(failures - 1, 0)
        base = min(self._cfg.dial_backoff_initial_s * doubling, self._cfg.dial_backoff_max_s)
        return base * random.uniform(0.8, 1.2)

    def _wants_dial(self, rec: PeerRecord, now: float) -> bool:
        if rec.connected or rec.dialing or rec.banned_until > now or now < rec.next_dial_at:
            return False
        if rec.is_bootstrap or rec.ever_connected:
            # Bootstrap peers and peers we lost are always redialled (with backoff).
            return rec.is_bootstrap or self.connected_count() < self._cfg.max_peers
        return self.connected_count() < self._cfg.target_peers

    async def _dial_loop(self) -> None:
        while True:
            now = trio.current_time()
            # Enforce bans here too: a banned peer's new connection may not be registered
            # yet when the connect notification arrives.
            for peer_id in self._net.connected_peer_ids():
                if self.is_banned(peer_id):
                    self._spawn(self._net.disconnect, peer_id)
            for rec in list(self._records.values()):
                if self._wants_dial(rec, now):
                    rec.dialing = True
                    self._spawn(self._dial, rec)
            self._wakeup = trio.Event()
            with trio.move_on_after(0.25):
                await self._wakeup.wait()

    async def _dial(self, rec: PeerRecord) -> None:
        from node.p2p.host import DialError

        try:
            async with self._dial_limiter:
                if self._net.is_connected(rec.peer_id):
                    return
                target = rec.bootstrap_addr or rec.peer_id
                if not rec.bootstrap_addr and not self._net.peer_addrs(rec.peer_id):
                    raise DialError(f"no known address for {rec.peer_id}")
                await self._net.connect(target)
                rec.failures = 0
        except DialError as exc:
            rec.failures += 1
            delay = self._backoff(rec.failures)
            rec.next_dial_at = trio.current_time() + delay
            what = "bootstrap peer" if rec.is_bootstrap else "peer"
            log.warning("%s %s unreachable (attempt %d): %s; retrying in %.1f s",
                        what, rec.peer_id, rec.failures, exc, delay)
            if (not rec.is_bootstrap and rec.failures >= FORGET_AFTER_FAILURES
                    and not rec.ever_connected):
                self._records.pop(rec.peer_id, None)
        finally:
            rec.dialing = False

    async def _discovery_loop(self) -> None:
        while True:
            below_target = self.connected_count() < self._cfg.target_peers
            if self.connected_count() > 0:
                await self._discover_once()
            await trio.sleep(self._cfg.discovery_interval_s if below_target
                             else max(self._cfg.discovery_interval_s, IDLE_DISCOVERY_INTERVAL_S))

    async def _discover_once(self) -> None:
        for peer_id in self._net.connected_peer_ids():
            rec = self._record(peer_id)
            if not rec.in_routing_table:
                try:
                    await self._net.add_to_routing_table(peer_id)
                    rec.in_routing_table = True
                except Exception as exc:  # the peer may not speak the DHT yet
                    log.debug("cannot add %s to the routing table: %r", peer_id, exc)
        try:
            with trio.move_on_after(10):
                await self._net.find_closest_peers()
        except Exception as exc:
            log.debug("DHT lookup failed: %r", exc)
        for peer_id in self._net.known_peer_ids():
            if peer_id not in self._records:
                self._records[peer_id] = PeerRecord(peer_id)
                self._wakeup.set()

    async def _ping_loop(self) -> None:
        while True:
            async with trio.open_nursery() as nursery:
                for peer_id in self._net.connected_peer_ids():
                    nursery.start_soon(self._ping_one, peer_id)
            await trio.sleep(self._cfg.ping_interval_s)

    async def _ping_one(self, peer_id: str) -> None:
        rec = self._record(peer_id)
        self._known_addrs(rec)
        try:
            with trio.fail_after(PING_TIMEOUT_S):
                rec.latency_ms = round(await self._net.ping(peer_id), 3)
        except trio.Cancelled:
            raise
        except Exception as exc:
            self._net.metrics.pings_failed.inc()
            log.debug("ping to %s failed: %r", peer_id, exc)
