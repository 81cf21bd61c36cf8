"""Peers that send garbage or oversized frames are cut off; the node keeps serving."""

from __future__ import annotations

import os
import socket

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from node.config import P2PSection, defaults
from node.crypto import Ed25519Key
from node.metrics import NodeMetrics
from node.p2p import P2PNetwork, StreamError
from node.p2p.info import PROTOCOL as INFO_PROTOCOL
from node.p2p.info import InfoProtocol, PeerInfoDoc
from node.p2p.stream import encode_uvarint
from tests.integration.conftest import HOST, free_port_block, http_get

pytestmark = pytest.mark.slow


def _rejected_frames(url: str) -> float:
    _, text = http_get(f"{url}/metrics")
    for family in text_string_to_metric_families(text):
        if family.name == "dcloud_p2p_rejected_frames":
            return sum(s.value for s in family.samples
                       if s.name.endswith("_total") and s.labels.get("protocol") == INFO_PROTOCOL)
    return 0.0


def _client(bootstrap: str) -> P2PNetwork:
    cfg = dict(defaults()["p2p"])
    cfg.update(listen_addrs=[f"/ip4/{HOST}/tcp/{free_port_block(1)}"], bootstrap=[bootstrap],
               dial_backoff_initial_s=0.2)
    key = Ed25519Key.generate()
    return P2PNetwork(key, P2PSection(**cfg), NodeMetrics(moniker="t", region="t",
                                                          node_id="t").p2p)


async def _answered_nothing(stream) -> bool:
    """The node reset or closed the stream without sending a frame."""
    try:
        with trio.fail_after(5):
            return await stream.read_frame() is None
    except StreamError:
        return True


async def _wait(predicate, timeout: float, what: str) -> None:
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.1)


async def test_oversized_and_malformed_frames_get_the_peer_disconnected(node_factory):
    node = node_factory().start()
    status = await trio.to_thread.run_sync(node.wait_healthy)
    target = status["node_id"]
    bad = _client(status["listen_addrs"][0])
    honest = _client(status["listen_addrs"][0])
    async with trio.open_nursery() as nursery:
        await nursery.start(bad.run)
        await nursery.start(honest.run)

        async def connected() -> bool:
            return bad.is_connected(target) and honest.is_connected(target)

        await _wait(connected, 15, "clients connected")

        # A well-formed request is answered.
        info = await InfoProtocol(honest, PeerInfoDoc("x", "x", "x", "x")).ask(target)
        assert info.node_id == target

        # Malformed msgpack (0xc1 is never valid) costs 20 points; the stream is reset.
        stream = await bad.open_stream(target, INFO_PROTOCOL)
        await stream.write(encode_uvarint(1) + b"\xc1")
        assert await _answered_nothing(stream)

        # A length prefix claiming 1 GiB is refused before any payload is read.
        for _ in range(2):
            stream = await bad.open_stream(target, INFO_PROTOCOL)
            await stream.write(encode_uvarint(1 << 30) + os.urandom(64))
            assert await _answered_nothing(stream)

        async def bad_cut_off() -> bool:
            return not bad.is_connected(target)

        await _wait(bad_cut_off, 10, "the misbehaving peer to be disconnected")
        assert await trio.to_thread.run_sync(_rejected_frames, node.url) == 3

        # The banned peer keeps redialling (its backoff starts at 0.2 s); the node refuses
        # it each time, so the node never lists it as a peer again.
        for _ in range(20):
            await trio.sleep(0.1)
            code, doc = await trio.to_thread.run_sync(http_get, f"{node.url}/status")
            assert code == 200
            assert bad.peer_id not in {p["peer_id"] for p in doc["peers"]}
            assert honest.peer_id in {p["peer_id"] for p in doc["peers"]}
        again = await InfoProtocol(honest, PeerInfoDoc("x", "x", "x", "x")).ask(target)
        assert again.moniker == status["moniker"]
        nursery.cancel_scope.cancel()


def test_raw_tcp_garbage_is_dropped_and_the_node_stays_up(node_factory):
    node = node_factory().start()
    node.wait_healthy()
    payloads = [
        os.urandom(256 * 1024),  # noise where multistream-select is expected
        b"\x7f" + b"/multistream/1.0.0\n" + os.urandom(4096),
        b"\xff\xff\xff\xff\x0f" + b"A" * 1024,  # a huge length prefix
        b"\x13/multistream/1.0.0\n\x07/noise\n" + b"\xff\xff" + os.urandom(70000),
    ]
    for payload in payloads:
        with socket.create_connection((HOST, node.p2p_port), timeout=10) as sock:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                # The node closes its side: recv returns b"" (or the socket resets).
                while sock.recv(65536):
                    pass
            except OSError:  # reset, broken pipe, or already closed (ENOTCONN) by the node
                pass
        assert http_get(f"{node.url}/health")[0] == 200
    assert node.proc is not None and node.proc.poll() is None
    assert node.status()["listen_addrs"]


async def test_a_malformed_gossipsub_rpc_costs_the_peer_and_not_the_node(node_factory):
    """py-libp2p let a protobuf error in one peer's gossipsub stream crash the swarm (and
    the node); node.p2p's GuardedPubsub ends that stream only and penalises the peer."""
    node = node_factory().start()
    status = await trio.to_thread.run_sync(node.wait_healthy)
    target = status["node_id"]
    bad = _client(status["listen_addrs"][0])
    async with trio.open_nursery() as nursery:
        await nursery.start(bad.run)
        await _wait(lambda: _true(bad.is_connected(target)), 15, "the client connected")
        for _ in range(3):
            stream = await bad.open_stream(target, "/meshsub/1.0.0")
            # A varint-prefixed RPC whose bytes are not protobuf: tag 0, wire type 7.
            await stream.write(encode_uvarint(8) + b"\x07\xff\xff\xff\xff\xff\xff\xff")
            await trio.sleep(0.3)
        for _ in range(10):
            await trio.sleep(0.2)
            code, _ = await trio.to_thread.run_sync(http_get, f"{node.url}/health")
            assert code == 200, "the node went down"
        assert node.proc is not None and node.proc.poll() is None
        code, doc = await trio.to_thread.run_sync(http_get, f"{node.url}/metrics")
        assert 'dcloud_p2p_rejected_frames_total{protocol="/meshsub"}' in doc, doc[:2000]
        nursery.cancel_scope.cancel()


async def _true(value: bool) -> bool:
    return value
