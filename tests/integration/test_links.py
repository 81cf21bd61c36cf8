"""Long-lived frame streams (node.p2p.links) between two real libp2p hosts in one trio run:
many frames on one stream, in order; a stream the receiver dropped is replaced on the next
send; a write cut short never leaves half a frame for the next one; bad frames are reported."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry

from node.config import load_config
from node.crypto import Ed25519Key
from node.metrics import P2PMetrics
from node.p2p import P2PNetwork, Stream
from node.p2p.links import FrameLinks, serve_frames
from tests.integration.conftest import free_port_block

pytestmark = pytest.mark.slow

PROTOCOL = "/dcloud/test-links/0.1.0"


def network(tmp_path: Path, name: str, port: int, bootstrap: list[str]) -> P2PNetwork:
    home = tmp_path / name
    home.mkdir()
    config = replace(load_config(home).p2p, listen_addrs=[f"/ip4/127.0.0.1/tcp/{port}"],
                     bootstrap=bootstrap)
    return P2PNetwork(Ed25519Key.generate(), config, P2PMetrics(CollectorRegistry()))


class Receiver:
    def __init__(self, idle_s: float = 30.0) -> None:
        self.frames: list[bytes] = []
        self.bad: list[Exception] = []
        self.streams: list[Stream] = []
        self.idle_s = idle_s

    async def serve(self, stream: Stream) -> None:
        self.streams.append(stream)
        await serve_frames(stream, 1024, self.idle_s, self.frames.append, self.bad.append)


@asynccontextmanager
async def pair(tmp_path: Path, receiver: Receiver):
    base = free_port_block(2)
    async with trio.open_nursery() as nursery:
        server = network(tmp_path, "server", base, [])
        await nursery.start(server.run)
        server.set_handler(PROTOCOL, receiver.serve)
        client = network(tmp_path, "client", base + 1, [server.listen_addrs()[0]])
        await nursery.start(client.run)
        with trio.fail_after(20):
            while server.peer_id not in client.connected_peer_ids():
                await trio.sleep(0.05)
        yield client, server
        nursery.cancel_scope.cancel()


def opened(net: P2PNetwork) -> float:
    return net.metrics.streams_opened.labels(PROTOCOL)._value.get()


async def until(check, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


async def test_frames_follow_one_another_on_one_stream(tmp_path: Path) -> None:
    receiver = Receiver()
    async with pair(tmp_path, receiver) as (client, server):
        links = FrameLinks(client, PROTOCOL)
        sent = [f"message {i}".encode() for i in range(50)]
        for frame in sent:
            await links.send(server.peer_id, frame)
        await until(lambda: len(receiver.frames) == 50)
        assert receiver.frames == sent
        assert opened(client) == 1 and len(receiver.streams) == 1


async def test_a_dropped_stream_is_replaced_on_the_next_send(tmp_path: Path) -> None:
    receiver = Receiver()
    async with pair(tmp_path, receiver) as (client, server):
        links = FrameLinks(client, PROTOCOL)
        await links.send(server.peer_id, b"one")
        await until(lambda: receiver.frames == [b"one"])
        await receiver.streams[0].reset()  # the receiver gives up on the stream
        await trio.sleep(0.2)
        # The first write after the reset may still be taken by the dead stream, or fail and
        # be retried on a new one; either way a later frame arrives on a new stream.
        with trio.fail_after(10):
            while b"three" not in receiver.frames:
                await links.send(server.peer_id, b"three")
                await trio.sleep(0.1)
        assert len(receiver.streams) == 2 and opened(client) == 2


async def test_a_cut_write_resets_the_stream_and_the_next_frame_is_whole(tmp_path: Path) -> None:
    receiver = Receiver()
    async with pair(tmp_path, receiver) as (client, server):
        links = FrameLinks(client, PROTOCOL)
        await links.send(server.peer_id, b"first")
        await until(lambda: receiver.frames == [b"first"])
        with trio.CancelScope() as scope:
            scope.cancel()  # cancelled at its first checkpoint: mid-write or before it
            await links.send(server.peer_id, b"x" * 900)
        await links.send(server.peer_id, b"after")
        await until(lambda: b"after" in receiver.frames)
        assert all(f in (b"first", b"x" * 900, b"after") for f in receiver.frames)
        assert receiver.bad == []


async def test_a_stream_the_receiver_closed_is_not_written_on(tmp_path: Path) -> None:
    receiver = Receiver(idle_s=0.5)
    async with pair(tmp_path, receiver) as (client, server):
        links = FrameLinks(client, PROTOCOL, idle_s=30.0)
        await links.send(server.peer_id, b"a")
        await trio.sleep(1.0)  # the receiver timed out and closed its end
        await links.send(server.peer_id, b"b")  # once: it must not vanish into the old one
        await until(lambda: b"b" in receiver.frames)
        assert len(receiver.streams) == 2


async def test_idle_links_are_replaced_and_bad_frames_reported(tmp_path: Path) -> None:
    receiver = Receiver()
    async with pair(tmp_path, receiver) as (client, server):
        links = FrameLinks(client, PROTOCOL, idle_s=0.2)
        await links.send(server.peer_id, b"a")
        await trio.sleep(0.5)
        await links.send(server.peer_id, b"b")
        await until(lambda: receiver.frames == [b"a", b"b"])
        assert len(receiver.streams) == 2 and opened(client) == 2
        raw = await client.open_stream(server.peer_id, PROTOCOL)
        await raw.write(b"\x90\x10")  # announces a 2,064-byte frame: over the 1,024 limit
        await until(lambda: len(receiver.bad) == 1)
        await links.close()


async def test_pings_reuse_one_stream_and_replace_a_broken_one(tmp_path: Path) -> None:
    async with pair(tmp_path, Receiver()) as (client, server):
        assert await client.ping(server.peer_id) > 0
        first = client._ping_streams[server.peer_id][0]
        assert await client.ping(server.peer_id) > 0
        assert client._ping_streams[server.peer_id][0] is first  # the same stream again
        await first.reset()  # it breaks: the next ping opens another, and succeeds
        assert await client.ping(server.peer_id) > 0
        assert client._ping_streams[server.peer_id][0] is not first


async def test_concurrent_first_sends_share_one_stream(tmp_path: Path) -> None:
    receiver = Receiver()
    async with pair(tmp_path, receiver) as (client, server):
        links = FrameLinks(client, PROTOCOL)
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(links.send, server.peer_id, f"f{i}".encode())
        await until(lambda: len(receiver.frames) == 8)  # none lost to a reset
        assert sorted(receiver.frames) == sorted(f"f{i}".encode() for i in range(8))
        assert len(links._links) == 1
