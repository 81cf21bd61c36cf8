"""Peer discovery through the Kademlia DHT alone.

In a running node, membership (SWIM) and heartbeats open streams to the members they learn of,
and opening a stream dials, so a full mesh of `dcloud-node` processes does not by itself show
that the DHT found anyone. Here three real libp2p hosts (`P2PNetwork` with its `PeerBook`, on
127.0.0.1, in one trio run) run with nothing else above them: B and C know only A, and C must
end up connected to B through DHT lookups.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
from prometheus_client import CollectorRegistry

from node.config import load_config
from node.crypto import Ed25519Key
from node.metrics import P2PMetrics
from node.p2p import P2PNetwork
from tests.integration.conftest import free_port_block

pytestmark = pytest.mark.slow


def network(tmp_path, name: str, port: int, bootstrap: list[str]) -> P2PNetwork:
    home = tmp_path / name
    home.mkdir()
    config = load_config(home).p2p
    config = replace(config, listen_addrs=[f"/ip4/127.0.0.1/tcp/{port}"], bootstrap=bootstrap,
                     discovery_interval_s=0.5, ping_interval_s=1.0)
    return P2PNetwork(Ed25519Key.generate(), config, P2PMetrics(CollectorRegistry()))


async def test_a_node_bootstrapped_only_to_a_finds_b_through_the_dht(tmp_path) -> None:
    base = free_port_block(3)
    a = network(tmp_path, "a", base, [])
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        a_addr = a.listen_addrs()[0]
        b = network(tmp_path, "b", base + 1, [a_addr])
        await nursery.start(b.run)
        with trio.fail_after(20):
            while a.peer_id not in b.connected_peer_ids():
                await trio.sleep(0.1)
        c = network(tmp_path, "c", base + 2, [a_addr])
        await nursery.start(c.run)
        with trio.fail_after(30):
            while b.peer_id not in c.connected_peer_ids():
                await trio.sleep(0.2)
        # C was told of A alone: B came from the DHT, and C's book holds it as discovered.
        assert c.config.bootstrap == [a_addr]
        snapshot = {p.peer_id: p for p in c.book.snapshot()}
        assert snapshot[b.peer_id].bootstrap is False
        assert snapshot[a.peer_id].bootstrap is True
        nursery.cancel_scope.cancel()
