"""/dcloud/info/0.1.0: a peer asks who we are (moniker, region, version).

Request: one frame holding a msgpack map (empty for now, at most 256 bytes).
Response: one frame holding a msgpack map {node_id, moniker, region, version}.
A peer that sends an oversized or malformed request loses score (node.p2p.peers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from node.codec import DecodeError, pack, unpack
from node.p2p.host import P2PNetwork
from node.p2p.stream import FrameTooLarge, MalformedFrame, Stream, StreamError

log = logging.getLogger("dcloud.p2p.info")

PROTOCOL = "/dcloud/info/0.1.0"
MAX_REQUEST_BYTES = 256
MAX_RESPONSE_BYTES = 4096
OVERSIZED_PENALTY = 50
MALFORMED_PENALTY = 20
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class PeerInfoDoc:
    node_id: str
    moniker: str
    region: str
    version: str

    @classmethod
    def from_wire(cls, doc: Any) -> PeerInfoDoc:
        if not isinstance(doc, dict):
            raise DecodeError("info response must be a map")
        fields = {}
        for name in ("node_id", "moniker", "region", "version"):
            value = doc.get(name)
            if not isinstance(value, str) or not 0 < len(value) <= 128:
                raise DecodeError(f"info response field {name!r} missing or invalid")
            fields[name] = value
        return cls(**fields)


class InfoProtocol:
    def __init__(self, network: P2PNetwork, own: PeerInfoDoc) -> None:
        self.network = network
        self.own = own

    def install(self) -> None:
        self.network.set_handler(PROTOCOL, self._serve)

    async def _serve(self, stream: Stream) -> None:
        try:
            with trio.fail_after(TIMEOUT_S):
                frame = await stream.read_frame(MAX_REQUEST_BYTES)
                if frame is None:
                    return
                request = unpack(frame, max_bytes=MAX_REQUEST_BYTES, max_items=16)
                if not isinstance(request, dict):
                    raise DecodeError("info request must be a map")
                await stream.write_frame(pack(self.own.__dict__))
        except FrameTooLarge as exc:
            await self._reject(stream, OVERSIZED_PENALTY, str(exc))
        except (MalformedFrame, DecodeError) as exc:
            await self._reject(stream, MALFORMED_PENALTY, str(exc))
        except (StreamError, trio.TooSlowError):
            pass
        finally:
            await stream.close()

    async def _reject(self, stream: Stream, penalty: int, reason: str) -> None:
        self.network.metrics.bad_frames.labels(PROTOCOL).inc()
        self.network.book.penalise(stream.peer_id, penalty, reason)
        await stream.reset()

    async def ask(self, peer_id: str) -> PeerInfoDoc:
        stream = await self.network.open_stream(peer_id, PROTOCOL)
        try:
            with trio.fail_after(TIMEOUT_S):
                await stream.write_frame(pack({}))
                frame = await stream.read_frame(MAX_RESPONSE_BYTES)
            if frame is None:
                raise StreamError(f"{peer_id} closed the info stream without answering")
            return PeerInfoDoc.from_wire(unpack(frame, max_bytes=MAX_RESPONSE_BYTES, max_items=16))
        finally:
            await stream.close()
