"""Block sync: a node that is behind fetches decided blocks, with their commits, from peers.

Protocol /dcloud/blocksync/0.1.0, one request and one response frame per stream:
- ["status"] -> ["status", last_committed_height]
- ["get", height] -> ["block", block (CBOR list), commit (CBOR list)] or ["none", last_height]
Every fetched block is checked before it is applied: its commit must carry +2/3 of the
validator set's power for exactly this block, and the block must extend our chain.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import trio

from node.codec import DecodeError, from_cbor, to_cbor
from node.consensus.types import Block, Commit, InvalidCommit
from node.consensus.validation import InvalidBlock, check_block
from node.p2p.breaker import BreakerRegistry
from node.p2p.breaker import call as breaker_call

if TYPE_CHECKING:
    from node.consensus.driver import ConsensusService

log = logging.getLogger("dcloud.consensus.sync")

PROTOCOL = "/dcloud/blocksync/0.1.0"
MAX_REQUEST_BYTES = 64
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
REQUEST_TIMEOUT_S = 10.0
STATUS_INTERVAL_S = 2.0  # between status polls while our height stands still
STATUS_LIVE_INTERVAL_S = 10.0  # and while blocks commit
BAD_BLOCK_PENALTY = 50
# At start-up, how long to wait for a first peer before deciding nobody is ahead of us.
STARTUP_PEER_WAIT_S = 5.0


class BlockSync:
    def __init__(self, service: ConsensusService) -> None:
        self.service = service
        self._wake = trio.Event()
        self._breakers = BreakerRegistry(failure_threshold=3, cool_down_ms=10_000)

    def install(self) -> None:
        self.service.network.set_handler(PROTOCOL, self._serve)

    def wake(self) -> None:
        self._wake.set()

    # ---- serving -----------------------------------------------------------------------------

    async def _serve(self, stream: Any) -> None:
        net = self.service.network
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                frame = await stream.read_frame(MAX_REQUEST_BYTES)
                if frame is None:
                    return
                request = from_cbor(frame, max_bytes=MAX_REQUEST_BYTES)
                await stream.write_frame(self._answer(request))
        except DecodeError as exc:
            net.book.penalise(stream.peer_id, 20, f"bad blocksync request: {exc}")
            await stream.reset()
        except Exception as exc:  # the stream broke or timed out: nothing to answer
            log.debug("blocksync stream from %s: %r", stream.peer_id, exc)
        finally:
            await stream.close()

    def _answer(self, request: Any) -> bytes:
        store = self.service.store
        if request == ["status"]:
            return to_cbor(["status", store.height()])
        if isinstance(request, list) and len(request) == 2 and request[0] == "get" and \
                isinstance(request[1], int) and request[1] >= 1:
            raw = store.get_raw(request[1])
            if raw is None:
                return to_cbor(["none", store.height()])
            block_bytes, commit_bytes = raw
            # Stored bytes are canonical CBOR lists; splice them without re-decoding.
            return _splice_block_response(block_bytes, commit_bytes)
        raise DecodeError("blocksync request must be ['status'] or ['get', height]")

    # ---- fetching ----------------------------------------------------------------------------

    async def _ask(self, peer: str, request: list[Any]) -> Any:
        """One request to `peer` through its circuit breaker: a peer that keeps failing
        (down, hung, or answering garbage) is skipped at once until its cool-down ends."""
        return await breaker_call(self._breakers, peer, self._request, peer, request)

    async def _request(self, peer: str, request: list[Any]) -> Any:
        with trio.fail_after(REQUEST_TIMEOUT_S):
            frame = await self.service.network.request(peer, PROTOCOL, to_cbor(request),
                                                       MAX_RESPONSE_BYTES)
        if frame is None:
            raise DecodeError("no answer")
        return from_cbor(frame, max_bytes=MAX_RESPONSE_BYTES, max_depth=24)

    async def _poll_status(self) -> None:
        svc = self.service

        async def one(peer: str) -> None:
            try:
                answer = await self._ask(peer, ["status"])
                if isinstance(answer, list) and len(answer) == 2 and answer[0] == "status" \
                        and isinstance(answer[1], int) and answer[1] >= 0:
                    # A peer whose last committed block is H works on H + 1.
                    svc._note_height(peer, answer[1] + 1)
            except Exception as exc:
                log.debug("status from %s failed: %r", peer, exc)

        async with trio.open_nursery() as nursery:
            for peer in svc.network.connected_peer_ids():
                nursery.start_soon(one, peer)

    async def catch_up(self) -> None:
        """Before consensus starts: fetch and apply every block peers have decided."""
        svc = self.service
        own_power = svc.validators.power_of(svc.own_address) if svc.own_address else 0
        if own_power == svc.validators.total_power:
            svc.catching_up = False
            return  # the only validator: nobody is ahead of us
        with trio.move_on_after(STARTUP_PEER_WAIT_S):
            while not svc.network.connected_peer_ids():
                await trio.sleep(0.1)
        while True:
            await self._poll_status()
            ahead = self._ahead_peers()
            if not ahead:
                break
            start = svc.height
            log.info("catching up from height %d", start,
                     extra={"peers_ahead": len(ahead),
                            "target": max(svc.peer_heights[p] for p in ahead) - 1})
            for peer in ahead:
                await self._fetch_direct(peer)
            if svc.height == start:
                break  # nobody could serve us: start consensus and retry in the background
        svc.catching_up = False

    async def _fetch_direct(self, peer: str) -> None:
        """Apply `peer`'s blocks ourselves (before the consensus loop runs)."""
        svc = self.service
        while svc.peer_heights.get(peer, 0) - 1 >= svc.height:
            fetched = await self._fetch_next(peer)
            if fetched is None:
                return
            svc._commit(*fetched, synced=True)

    async def _fetch_next(self, peer: str) -> tuple[Block, Commit] | None:
        """The block at our next height from `peer`, checked; None if it has none or failed."""
        svc = self.service
        height = svc.height
        try:
            return self._check(await self._ask(peer, ["get", height]), height)
        except (DecodeError, InvalidBlock, InvalidCommit) as exc:
            log.warning("bad block %d from %s: %s", height, peer, exc)
            svc.network.book.penalise(peer, BAD_BLOCK_PENALTY, f"bad synced block: {exc}")
            return None
        except Exception as exc:
            log.debug("fetching block %d from %s failed: %r", height, peer, exc)
            return None

    def _ahead_peers(self) -> list[str]:
        svc = self.service
        # A peer working on height H has decided every block below H.
        return [p for p, h in svc.peer_heights.items() if h - 1 >= svc.height]

    async def run(self) -> None:
        svc = self.service
        seen_height, seen_at = svc.height, trio.current_time()
        while True:
            # Committing blocks (idle ones come every empty_block_interval_ms) means we keep
            # up, and a peer's message from a later height wakes us at once: then the poll (a
            # stream to every peer) is only a fallback.
            now = trio.current_time()
            if svc.height != seen_height:
                seen_height, seen_at = svc.height, now
            live_s = svc.params.empty_block_interval_ms / 1000 + STATUS_LIVE_INTERVAL_S
            interval = STATUS_LIVE_INTERVAL_S if now - seen_at < live_s else STATUS_INTERVAL_S
            await self._poll_status()
            ahead = self._ahead_peers()
            best = max((svc.peer_heights[p] for p in ahead), default=0)
            svc.catching_up = best - 1 > svc.height
            if ahead:
                await self._fetch_from(ahead)
            else:
                svc.catching_up = False
            self._wake = trio.Event()
            with trio.move_on_after(interval):
                await self._wake.wait()

    async def _fetch_from(self, peers: list[str]) -> None:
        svc = self.service
        random.shuffle(peers)
        for peer in peers:
            while svc.peer_heights.get(peer, 0) - 1 >= svc.height:
                height = svc.height
                fetched = await self._fetch_next(peer)
                if fetched is None:
                    break
                block, commit = fetched
                committed = svc.committed
                svc._send.send_nowait(_synced(block, commit))
                with trio.move_on_after(REQUEST_TIMEOUT_S):
                    await committed.wait()
                if svc.height <= height:
                    break  # not applied (consensus got there first, or it failed)

    def _check(self, answer: Any, height: int) -> tuple[Block, Commit] | None:
        """The checked block and commit of an answer; None when the peer has no such block."""
        if isinstance(answer, list) and answer and answer[0] == "none":
            return None
        if not (isinstance(answer, list) and len(answer) == 3 and answer[0] == "block"):
            raise DecodeError("blocksync answer must be ['block', block, commit]")
        block = Block.from_list(answer[1])
        commit = Commit.from_list(answer[2])
        svc = self.service
        if block.height != height or commit.height != height or commit.block_id != block.id:
            raise InvalidBlock("synced block and commit do not match the requested height")
        commit.verify(svc.chain_id, svc.validators)
        check_block(block, svc.tip, svc.params, svc._now_ms())
        return block, commit


def _splice_block_response(block_cbor: bytes, commit_cbor: bytes) -> bytes:
    # ["block", <block>, <commit>]: a 3-item array header, the text "block", then both items.
    return b"\x83" + to_cbor("block") + block_cbor + commit_cbor


def _synced(block: Block, commit: Commit) -> Any:
    from node.consensus.driver import _Synced

    return _Synced(block, commit)
