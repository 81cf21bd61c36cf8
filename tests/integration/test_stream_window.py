"""node.p2p.Stream's receive window on a real yamux stream between two libp2p hosts (one trio
run, 127.0.0.1): a long frame is read on one window update granting all of it up front
(Stream._granted_reader) instead of one update per read, and frames of every size after it
still arrive intact on the same stream (a grant that left the window short would stall them:
the sender waits for credit)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry

from node.config import load_config
from node.crypto import Ed25519Key
from node.metrics import P2PMetrics
from node.p2p import P2PNetwork, Stream
from node.p2p.host import AtomicWriteYamux
from node.p2p.stream import BATCH_PIECES, GRANT_MIN_BYTES, WRITE_PIECE_BYTES
from tests.integration.conftest import free_port_block

pytestmark = pytest.mark.slow

PROTOCOL = "/dcloud/test/window/0.1.0"
MIB = 1 << 20


def network(tmp_path: Path, name: str, port: int, bootstrap: list[str]) -> P2PNetwork:
    home = tmp_path / name
    home.mkdir()
    config = replace(load_config(home).p2p, listen_addrs=[f"/ip4/127.0.0.1/tcp/{port}"],
                     bootstrap=bootstrap, max_frame_bytes=8 * MIB)
    return P2PNetwork(Ed25519Key.generate(), config, P2PMetrics(CollectorRegistry()))


@asynccontextmanager
async def client_stream(tmp_path: Path, handler: Any) -> AsyncIterator[Stream]:
    """A stream from a client host to a server host serving PROTOCOL with `handler`; both
    hosts stop on exit."""
    base = free_port_block(2)
    async with trio.open_nursery() as nursery:
        server = network(tmp_path, "server", base, [])
        await nursery.start(server.run)
        server.set_handler(PROTOCOL, handler)
        client = network(tmp_path, "client", base + 1, [server.listen_addrs()[0]])
        await nursery.start(client.run)
        with trio.fail_after(30):
            while server.peer_id not in client.connected_peer_ids():
                await trio.sleep(0.05)
            stream = await client.open_stream(server.peer_id, PROTOCOL)
        yield stream
        nursery.cancel_scope.cancel()


async def test_long_frames_take_one_window_update_and_leave_the_window_as_it_was(
        tmp_path: Path) -> None:
    frames = [os.urandom(3 * MIB), b"", os.urandom(100), os.urandom(GRANT_MIN_BYTES),
              os.urandom(GRANT_MIN_BYTES - 1), os.urandom(5 * MIB + 7)]
    received: list[bytes] = []
    updates: list[int] = []  # window updates the reader sent, per frame
    done = trio.Event()

    async def reader(stream: Stream) -> None:
        muxed = stream._raw.muxed_stream
        sent: list[int] = []
        real = muxed.send_window_update

        async def counted(increment: int, *args, **kwargs):  # type: ignore[no-untyped-def]
            sent.append(increment)
            return await real(increment, *args, **kwargs)

        muxed.send_window_update = counted
        for _ in frames:
            sent.clear()
            frame = await stream.read_frame()
            assert frame is not None
            received.append(frame)
            updates.append(len(sent))
        await stream.write_frame(b"done")
        done.set()

    async with client_stream(tmp_path, reader) as stream:
        with trio.fail_after(60):
            for frame in frames:
                await stream.write_frame(frame)
            assert await stream.read_frame() == b"done"
            await done.wait()

    assert received == frames
    # A 3 MiB frame read with per-read credit takes ~48 updates (one per ~64 KiB read);
    # granted, it takes the grant plus at most the one of the read that found its length.
    assert updates[0] <= 2, updates
    assert updates[-1] <= 2, updates


async def test_every_connection_is_an_atomic_write_yamux_and_long_writes_are_batched(
        tmp_path: Path) -> None:
    """py-libp2p builds yamux connections by name, whatever muxer class it is given: both
    ends must still be AtomicWriteYamux (its writer task, its window grant, its batches). A
    long write then goes to the socket a few frames at a time, not once per 64 KiB."""
    payload = os.urandom(3 * MIB)
    got: list[bytes] = []
    kinds: list[type] = []
    done = trio.Event()

    async def reader(stream: Stream) -> None:
        kinds.append(type(stream._raw.muxed_stream.conn))
        frame = await stream.read_frame()
        assert frame is not None
        got.append(frame)
        await stream.write_frame(b"done")
        done.set()

    async with client_stream(tmp_path, reader) as stream:
        with trio.fail_after(60):
            conn = stream._raw.muxed_stream.conn
            kinds.append(type(conn))
            socket = conn.secured_conn.conn.read_writer.read_write_closer
            writes: list[int] = []
            real = socket.write

            async def counted(data: bytes) -> None:
                writes.append(len(data))
                await real(data)

            socket.write = counted
            await stream.write_frame(payload)
            socket.write = real
            assert await stream.read_frame() == b"done"
            await done.wait()

    assert kinds == [AtomicWriteYamux, AtomicWriteYamux]
    assert got == [payload]
    # 3 MiB is 49 pieces of 65,000 bytes: one socket write each unbatched; batched, at most
    # BATCH_PIECES pieces per write (fewer when the send window runs low).
    assert sum(writes) > len(payload)
    assert len(writes) <= 49 // 2, writes
    assert max(writes) > BATCH_PIECES // 2 * WRITE_PIECE_BYTES, writes
