"""The node: builds its services from the config and runs them in one root nursery."""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from typing import Any

import trio

from node import __version__
from node.api.chain import ChainApi
from node.api.http import ApiStartError, HttpApi, NodeView, Readiness
from node.api.members import MembersApi
from node.api.objects import ObjectsApi
from node.config import Config
from node.consensus.driver import ConsensusService
from node.consensus.genesis import Genesis
from node.consensus.mempool import Mempool
from node.consensus.store import BlockStore
from node.consensus.wal import ConsensusWAL
from node.crypto import Ed25519Key, read_key_file
from node.errors import leaves
from node.gossip.service import MembershipService
from node.home import Home, HomeLock
from node.ledger.app import LedgerApp, LedgerParams
from node.logs import setup_logging
from node.metrics import NodeMetrics
from node.p2p import P2PNetwork, P2PStartError, peer_id_of
from node.p2p.addrs import verify_by_node_id
from node.p2p.info import InfoProtocol, PeerInfoDoc
from node.runtime.resources import ResourceMonitor
from node.storage.chunks import ChunkStore
from node.storage.erasure import keep_freed_memory
from node.storage.exchange import ChunkExchange
from node.storage.names import NameIndex
from node.storage.objects import ObjectService
from node.storage.repair import Repairer

log = logging.getLogger("dcloud.node")

SHUTDOWN_GRACE_S = 4.0  # from the signal to the process's exit, at most


class Node(NodeView):
    """One dcloud node: p2p host, peer book, HTTP API (later: consensus, gossip, storage)."""

    def __init__(self, config: Config, node_key: Ed25519Key, lock: HomeLock | None = None) -> None:
        self.config = config
        self.lock = lock
        self.home = Home(config.home)
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.node_id = peer_id_of(node_key)
        self.metrics = NodeMetrics(moniker=config.node.moniker, region=config.node.region,
                                   node_id=self.node_id)
        self.p2p = P2PNetwork(node_key, config.p2p, self.metrics.p2p,
                              peers_file=self.home.data_dir / "peers.json")
        self.info = InfoProtocol(self.p2p, PeerInfoDoc(
            node_id=self.node_id, moniker=config.node.moniker, region=config.node.region,
            version=__version__))
        self.api = HttpApi(config.api, self, self.metrics)
        self.consensus = self._build_consensus()
        self.api.add_routes(ChainApi(self.consensus).routes())
        self.membership = MembershipService(
            network=self.p2p, node_key=node_key, chain_id=self.consensus.chain_id,
            region=config.node.region, version=__version__, config=config.gossip,
            monitor=ResourceMonitor(self.home.data_dir), metrics=self.metrics.membership)
        self.api.add_routes(MembersApi(self.membership).routes())
        self.objects = self._build_storage(node_key) if config.storage.enabled else None
        if self.objects is not None:
            self.api.add_routes(ObjectsApi(self.objects, config.storage.max_object_bytes)
                                .routes())
        self.peer_info: dict[str, PeerInfoDoc] = {}
        self.ready_services: set[str] = set()

    def _build_consensus(self) -> ConsensusService:
        genesis = Genesis.read(self.home.genesis_file)
        data = self.home.data_dir
        ledger = LedgerApp.open(data, genesis.chain_id,
                                [(a.address, a.balance) for a in genesis.accounts],
                                LedgerParams(max_tx_bytes=genesis.params.max_tx_bytes,
                                             min_fee=genesis.params.min_fee))
        return ConsensusService(
            genesis=genesis, validator_key=read_key_file(self.home.validator_key_file),
            network=self.p2p, app=ledger, mempool=Mempool(ledger),
            store=BlockStore(data / "chain.db"), wal=ConsensusWAL(data / "cs.wal"),
            metrics=self.metrics.consensus)

    def _build_storage(self, node_key: Ed25519Key) -> ObjectService:
        cfg = self.config.storage
        data = self.home.data_dir
        store = ChunkStore(data / "chunks", quota_bytes=cfg.quota_bytes,
                           gc_grace_s=cfg.gc_grace_s)
        exchange = ChunkExchange(self.p2p, store, metrics=self.metrics.storage)
        membership = self.membership

        def members() -> list[Any]:
            return membership.core.members() if membership.core is not None else []

        return ObjectService(
            network=self.p2p, store=store, exchange=exchange,
            index=NameIndex(data / "objects.sqlite3", verify_by_node_id), node_key=node_key,
            chain_id=self.consensus.chain_id, region=self.config.node.region, config=cfg,
            metrics=self.metrics.storage, members=members,
            leaders=lambda: dict(membership.leaders))

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.config.api.enabled:
            # The API starts last; a port it cannot have must fail before anything starts.
            self.api.check_port_free()
        async with trio.open_nursery() as nursery:
            # Dependency order: the network first, then what uses it, the API last.
            await nursery.start(self.p2p.run)
            self.ready_services.add("p2p")
            self.info.install()
            nursery.start_soon(self._learn_peer_info)
            await nursery.start(self.consensus.run)
            self.ready_services.add("consensus")
            await nursery.start(self.membership.run)
            self.ready_services.add("membership")
            if self.objects is not None:
                self.objects.install()
                await nursery.start(self.objects.run)
                await nursery.start(Repairer(self.objects).run)
                self.ready_services.add("storage")
            if self.config.api.enabled:
                await nursery.start(self.api.run)
                self.ready_services.add("api")
                if self.lock is not None and self.api.bound is not None:
                    host, port = self.api.bound
                    self.lock.update(api_url=f"http://{host}:{port}")
            log.info("node started", extra={"listen_addrs": self.p2p.listen_addrs(),
                                            "moniker": self.config.node.moniker})
            task_status.started()

    async def before_shutdown(self) -> None:
        """Leave the cluster gracefully while the network is still up."""
        await self.membership.leave()

    async def _learn_peer_info(self) -> None:
        while True:
            for peer_id in self.p2p.connected_peer_ids():
                if peer_id not in self.peer_info:
                    try:
                        self.peer_info[peer_id] = await self.info.ask(peer_id)
                    except Exception as exc:
                        log.debug("no info from %s: %r", peer_id, exc)
            await trio.sleep(1.0)

    # ---- NodeView ----------------------------------------------------------------------------

    def readiness(self) -> Readiness:
        if "p2p" not in self.ready_services:
            return Readiness(False, "p2p host not started")
        peers = len(self.p2p.connected_peer_ids())
        if peers > 0:
            return Readiness(True, f"connected to {peers} peer(s)")
        if self.config.p2p.allow_solo and not self.config.p2p.bootstrap:
            return Readiness(True, "running alone (no bootstrap peers, p2p.allow_solo)")
        return Readiness(False, "not connected to any peer yet")

    def status(self) -> dict[str, Any]:
        peers = []
        for snap in self.p2p.book.snapshot():
            info = self.peer_info.get(snap.peer_id)
            peers.append({
                "peer_id": snap.peer_id,
                "addrs": snap.addrs,
                "latency_ms": snap.latency_ms,
                "moniker": info.moniker if info else None,
                "region": info.region if info else None,
                "score": snap.score,
                "bootstrap": snap.bootstrap,
            })
        ready = self.readiness()
        return {
            "node_id": self.node_id,
            "moniker": self.config.node.moniker,
            "region": self.config.node.region,
            "version": __version__,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "uptime_s": round(time.monotonic() - self.started_monotonic, 3),
            "ready": ready.ready,
            "listen_addrs": self.p2p.listen_addrs(),
            "peers": peers,
            "chain": self.consensus.status(),
            "membership": self.membership.status(),
            "storage": self.objects.status() if self.objects is not None else None,
        }


def _only_leaf(group: BaseExceptionGroup[Any]) -> BaseException | None:
    found = leaves(group)
    return found[0] if len(found) == 1 else None


def load_node_key(home: Home) -> Ed25519Key:
    return read_key_file(home.node_key_file)


def _exit_if_still_running_after(seconds: float) -> None:
    """A shutdown that hangs (a peer that never closes a stream, a stuck library task) must
    not keep the process alive: after `seconds`, exit at once. The home's lock is an flock,
    which the kernel releases with the process, and everything acknowledged is on disk."""

    def watchdog() -> None:
        time.sleep(seconds)
        log.error("shutdown took longer than %.0f s; exiting now", seconds)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=watchdog, name="shutdown-watchdog", daemon=True).start()


async def run_until_signalled(node: Node) -> None:
    """Run `node` until SIGINT/SIGTERM, then shut down within a few seconds."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)

            async def wait_signal() -> None:
                async for signum in signals:
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    _exit_if_still_running_after(SHUTDOWN_GRACE_S)
                    await node.before_shutdown()  # bounded: membership's leave grace
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(wait_signal)
    log.info("node stopped")


# Python's cyclic collector ran a young-generation pass every 700 container allocations,
# and a busy node makes those fast (trio tasks, frames, lists of pieces); with what start-up
# built moved out of its sight (gc.freeze) and passes 70x rarer, a getter spent ~12 % less
# CPU per MiB and gets were faster in three of three paired bench invocations
# (docs/benchmarks.md). Cycles are still collected, later.
GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """Freeze what exists now (start-up state: modules, config, keys) out of the cyclic
    collector's scans and make its passes rarer (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def start_node(config: Config) -> None:
    """Blocking entry point of `dcloud-node start` (raises on start-up errors)."""
    home = Home(config.home)
    key = load_node_key(home)
    keep_freed_memory()  # before the first segment is coded (node.storage.erasure)
    lock = HomeLock(home.lock_file)
    lock.acquire()
    try:
        node = Node(config, key, lock)
        log_file = (config.home / config.node.log_file) if config.node.log_file else None
        setup_logging(level=config.node.log_level, fmt=config.node.log_format,
                      log_file=log_file, static={"node_id": node.node_id})
        tune_gc()
        try:
            trio.run(run_until_signalled, node)
        except BaseExceptionGroup as group:
            # A start-up error (port in use, ...) arrives wrapped by the nurseries it crossed.
            leaf = _only_leaf(group)
            if isinstance(leaf, (P2PStartError, ApiStartError)):
                raise leaf from None
            raise
    finally:
        lock.release()
