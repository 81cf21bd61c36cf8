"""Prometheus metrics of one node, in a registry the node owns (no global state)."""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from node import __version__


class P2PMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.peers = Gauge("dcloud_p2p_peers", "Connected peers.", registry=registry)
        self.dials = Counter(
            "dcloud_p2p_dials", "Outbound connection attempts.", registry=registry
        )
        self.dial_failures = Counter(
            "dcloud_p2p_dial_failures", "Outbound connection attempts that failed.",
            registry=registry,
        )
        self.received_bytes = Counter(
            "dcloud_p2p_received_bytes", "Bytes received on libp2p connections (encrypted).",
            registry=registry,
        )
        self.sent_bytes = Counter(
            "dcloud_p2p_sent_bytes", "Bytes sent on libp2p connections (encrypted).",
            registry=registry,
        )
        self.pings_failed = Counter(
            "dcloud_p2p_ping_failures", "Pings to connected peers that failed or timed out.",
            registry=registry,
        )
        self.bad_frames = Counter(
            "dcloud_p2p_rejected_frames", "Frames rejected as malformed or oversized.",
            ["protocol"], registry=registry,
        )
        self.streams_opened = Counter(
            "dcloud_p2p_streams_opened", "Outbound streams opened, by protocol.",
            ["protocol"], registry=registry,
        )
        self.peer_disconnects = Counter(
            "dcloud_p2p_penalty_disconnects", "Peers disconnected for misbehaviour.",
            registry=registry,
        )


class ConsensusMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.height = Gauge("dcloud_consensus_height", "Last committed block height.",
                            registry=registry)
        self.rounds = Histogram(
            "dcloud_consensus_rounds", "Rounds needed to decide a height (1 = first round).",
            buckets=(1, 2, 3, 4, 6, 10), registry=registry)
        self.block_interval = Histogram(
            "dcloud_consensus_block_interval_seconds", "Time between consecutive blocks.",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=registry)
        self.txs_per_block = Histogram(
            "dcloud_consensus_block_txs", "Transactions per committed block.",
            buckets=(0, 1, 10, 100, 500, 1000, 2000, 5000, 10000), registry=registry)
        self.txs = Counter("dcloud_consensus_committed_txs", "Committed transactions.",
                           registry=registry)
        self.mempool_size = Gauge("dcloud_mempool_txs", "Transactions in the mempool.",
                                  registry=registry)
        self.missed_votes = Counter(
            "dcloud_consensus_missed_votes",
            "Validators whose precommit is missing from a block's commit.", registry=registry)
        self.evidence = Counter("dcloud_consensus_evidence",
                                "Equivocations detected (conflicting signed votes).",
                                registry=registry)


class MembershipMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.members = Gauge("dcloud_membership_members", "Members by state.", ["state"],
                             registry=registry)
        self.probes_sent = Counter("dcloud_membership_probes", "SWIM probes sent.",
                                   registry=registry)
        self.probes_failed = Counter("dcloud_membership_probe_failures",
                                     "SWIM probes that got no ack (direct or indirect).",
                                     registry=registry)
        self.events = Counter("dcloud_membership_events",
                              "Membership events (joins, suspicions, deaths, leaves, refutes).",
                              ["event"], registry=registry)
        self.detect_seconds = Histogram(
            "dcloud_membership_detect_seconds",
            "From first suspicion of a member to its declared death.",
            buckets=(0.5, 1, 2, 4, 8, 16, 32, 64), registry=registry)
        self.leader_changes = Counter("dcloud_membership_leader_changes",
                                      "Times a region's leader changed.", registry=registry)
        self.heartbeat_batches = Counter(
            "dcloud_membership_heartbeat_batches",
            "Gossip messages of heartbeats this node published (each carries up to 128).",
            registry=registry)
        self.rejected_heartbeats = Counter(
            "dcloud_membership_rejected_heartbeats",
            "Heartbeats handed to this node to relay although it does not lead their region.",
            registry=registry)
        self.rejected_summaries = Counter(
            "dcloud_membership_rejected_summaries",
            "Region summaries refused because their sender is not the region's leader.",
            registry=registry)


class StorageMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stored_bytes = Gauge("dcloud_storage_stored_bytes",
                                  "Bytes of chunks (shards, manifests) on this node's disk.",
                                  registry=registry)
        self.quota_bytes = Gauge("dcloud_storage_quota_bytes", "Chunk store quota.",
                                 registry=registry)
        self.chunks = Gauge("dcloud_storage_chunks", "Chunks on this node's disk.",
                            registry=registry)
        self.objects = Gauge("dcloud_storage_objects", "Objects named in this node's index.",
                             registry=registry)
        self.served_bytes = Counter("dcloud_storage_served_bytes",
                                    "Chunk bytes served to peers.", registry=registry)
        self.fetched_bytes = Counter("dcloud_storage_fetched_bytes",
                                     "Chunk bytes fetched from peers (checked).",
                                     registry=registry)
        self.received_bytes = Counter("dcloud_storage_received_bytes",
                                      "Chunk bytes peers pushed to this node (stored).",
                                      registry=registry)
        self.pushed_bytes = Counter("dcloud_storage_pushed_bytes",
                                    "Chunk bytes this node pushed to peers.", registry=registry)
        self.bad_chunks = Counter("dcloud_storage_bad_chunks",
                                  "Chunks a peer served that did not match their id.",
                                  registry=registry)
        self.objects_put = Counter("dcloud_storage_objects_put", "Objects put through this node.",
                                   registry=registry)
        self.object_bytes_put = Counter("dcloud_storage_object_put_bytes",
                                        "Object bytes put through this node.", registry=registry)
        self.object_bytes_got = Counter("dcloud_storage_object_get_bytes",
                                        "Object bytes served through this node's API.",
                                        registry=registry)
        self.repairs = Counter("dcloud_storage_repairs", "Shards rebuilt onto a new holder.",
                               registry=registry)
        self.repairs_pending = Gauge("dcloud_storage_repairs_pending",
                                     "Shards found lost by the last audit, not yet rebuilt.",
                                     registry=registry)
        self.audits = Counter("dcloud_storage_audits",
                              "Possession challenges sent to shard holders.", registry=registry)
        self.audit_failures = Counter("dcloud_storage_audit_failures",
                                      "Challenges a holder failed (or did not answer).",
                                      registry=registry)


class NodeMetrics:
    """All metrics of one node process."""

    def __init__(self, *, moniker: str, region: str, node_id: str) -> None:
        self.registry = CollectorRegistry()
        self.started_at = time.monotonic()
        build = Info("dcloud_node_build", "Build and identity of this node.",
                     registry=self.registry)
        build.info({"version": __version__, "moniker": moniker, "region": region,
                    "node_id": node_id})
        uptime = Gauge("dcloud_node_uptime_seconds", "Seconds since the node started.",
                       registry=self.registry)
        uptime.set_function(lambda: time.monotonic() - self.started_at)
        self.http_requests = Counter(
            "dcloud_http_requests", "HTTP API requests by path class and status code.",
            ["route", "code"], registry=self.registry,
        )
        self.p2p = P2PMetrics(self.registry)
        self.consensus = ConsensusMetrics(self.registry)
        self.membership = MembershipMetrics(self.registry)
        self.storage = StorageMetrics(self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
