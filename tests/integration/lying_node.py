"""A Byzantine storage node for the tests: the real `dcloud-node`, except that every chunk it
serves has one byte flipped (right size, wrong bytes). Everything else (consensus,
membership, holding and proving shards) is the unmodified node. Only tests start it:

    python -m tests.integration.lying_node start --home HOME
"""

from __future__ import annotations

from node.cli import main
from node.p2p import Stream
from node.storage import exchange
from node.storage.chunks import ChunkNotFound


async def _serve_corrupted(self: exchange.ChunkExchange, stream: Stream, chunk_id: str) -> None:
    try:
        data = bytearray(self.store.get(chunk_id))
    except ChunkNotFound:
        await stream.write_frame(exchange._err("not_found", f"no chunk {chunk_id} here"))
        return
    data[len(data) // 2] ^= 0xFF
    await stream.write_frame(exchange._ok(len(data)))
    for start in range(0, len(data), exchange.DATA_FRAME_BYTES):
        await stream.write_frame(bytes(data[start:start + exchange.DATA_FRAME_BYTES]))


exchange.ChunkExchange._serve_get = _serve_corrupted  # type: ignore[method-assign]

if __name__ == "__main__":
    raise SystemExit(main())
