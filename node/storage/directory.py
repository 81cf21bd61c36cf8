"""Object names across the nodes: who learns a name record, and how.

A name record (node.storage.names) binds a name to a manifest. Every node keeps the records it
has accepted in its NameIndex; this module moves them between nodes:
- `announce` hands a new record to the object's holders directly (they pin on it), then
  publishes it on the gossip topic `dcloud/<chain-id>/objects`;
- records heard by gossip, from a peer's request or through anti-entropy are offered to the
  index, which keeps the winner of each name's lineage (node.storage.names.judge); a repair
  (same name, new manifest) is accepted only if the manifests hold the same content;
- anti-entropy: soon after start and then every minute, the index of a random peer is copied,
  page by page, so that a node that missed gossip (or was down) learns every name;
- `resolve` asks the connected peers for a name this node has no record of.

Protocol `/dcloud/objects/0.1.0`, one request per stream, msgpack frames:
- `[1, "record", bytes]` -> `[1, "ok", accepted, reason]`: offer a name record
- `[1, "resolve", name]` -> `[1, "ok", bytes | nil]`: this node's record of a name
- `[1, "list", after, limit]` -> `[1, "ok", [bytes, ...]]`: records after a name (<= 256)

A peer whose record or request is malformed loses RECORD_PENALTY points of score.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from node.codec import DecodeError, pack, unpack
from node.gossip.leader import LIVE_STATES as LIVE  # alive or suspect
from node.p2p import P2PNetwork, Stream
from node.p2p.addrs import verify_by_node_id
from node.storage.manifest import Manifest
from node.storage.names import InvalidRecord, NameIndex, NameRecord, Offer, judge, validate_name

log = logging.getLogger("dcloud.storage.directory")

PROTOCOL = "/dcloud/objects/0.1.0"
VERSION = 1
MAX_FRAME_BYTES = 512 * 1024
MAX_LIST = 256
REQUEST_TIMEOUT_S = 15.0
RECORD_PENALTY = 10
SYNC_FIRST_S = 2.0
SYNC_INTERVAL_S = 60.0

ManifestOf = Callable[[NameRecord], Awaitable[Manifest]]
AfterChange = Callable[[NameRecord, "NameRecord | None"], Awaitable[None]]


class DirectoryError(Exception):
    """A peer did not answer a records request properly."""


class NameDirectory:
    """Spreads, gathers and looks up name records (see the module docstring)."""

    def __init__(self, *, network: P2PNetwork, index: NameIndex, chain_id: str,
                 manifest_of: ManifestOf, after_change: AfterChange,
                 member_states: Callable[[], dict[str, str]]) -> None:
        self.network = network
        self.index = index
        self.node_id = network.peer_id
        self.topic = f"dcloud/{chain_id}/objects"
        self._manifest_of = manifest_of  # a record's manifest, fetched if need be
        self._after_change = after_change  # pin / unpin once the index changed
        self._member_states = member_states

    def install(self) -> None:
        self.network.set_handler(PROTOCOL, self._serve)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_gossip)
            nursery.start_soon(self._sync_index)
            task_status.started()

    # ---- spreading ----------------------------------------------------------------------------

    async def announce(self, record: NameRecord, holders: Sequence[str]) -> None:
        """Tell the object's holders directly (they pin on it), then everyone by gossip."""
        data = record.encode()

        async def one(node: str) -> None:
            try:
                await self._request(node, [VERSION, "record", data])
            except trio.Cancelled:
                raise
            except Exception as exc:  # it will hear by gossip; repair covers the rest
                log.info("record to %s failed: %s", node, exc)

        states = self._member_states()
        async with trio.open_nursery() as nursery:
            for node in sorted(set(holders) - {self.node_id}):
                if states.get(node, "alive") in LIVE:  # the dead hear later
                    nursery.start_soon(one, node)
        try:
            await self.network.publish(self.topic, data)
        except Exception as exc:
            log.info("publishing the record of %s failed: %s", record.name, exc)

    # ---- gathering ----------------------------------------------------------------------------

    async def offer_record(self, record: NameRecord) -> Offer:
        """Apply a record from a peer: judge it, check a repair's manifest, store, pin."""
        held = self.index.get(record.name)
        if held == record:
            # Heard again (gossip, index sync): pin what we hold of it, in case the first
            # time came before the chunks did.
            await self._after_change(record, None)
            return Offer(False, "already held")
        verdict = judge(record, held, now_ms())
        if not verdict.accepted:
            return verdict
        same: Callable[[NameRecord, NameRecord], bool] | None = None
        if verdict.needs_content_check:
            assert held is not None
            try:
                old = await self._manifest_of(held)
                new = await self._manifest_of(record)
            except trio.Cancelled:
                raise
            except Exception as exc:
                return Offer(False, f"cannot check the repair: {exc}")
            same = lambda _held, _new: old.same_content(new)  # noqa: E731
        offer = self.index.offer(record, same_content=same)
        if offer.accepted:
            await self._after_change(record, offer.replaced)
        return offer

    async def _read_gossip(self) -> None:
        async for msg in self.network.subscribe(self.topic):
            if msg.from_peer == self.node_id:
                continue
            try:
                record = NameRecord.decode(msg.data, verify_by_node_id)
            except InvalidRecord as exc:
                self.network.book.penalise(msg.from_peer, RECORD_PENALTY, f"bad record: {exc}")
                continue
            try:
                await self.offer_record(record)
            except Exception as exc:  # a peer's record must never stop this loop
                log.warning("record of %s from gossip: %r", record.name, exc)

    async def _sync_index(self) -> None:
        """Anti-entropy: copy the index of a random peer (paged), SYNC_FIRST_S after start
        and then every SYNC_INTERVAL_S."""
        while True:
            await trio.sleep(SYNC_FIRST_S)
            peers = self.network.connected_peer_ids()
            if not peers:
                continue
            peer = random.choice(peers)
            after = ""
            try:
                while True:
                    answer = await self._request(peer, [VERSION, "list", after, MAX_LIST])
                    items = answer[0] if answer and isinstance(answer[0], list) else []
                    for data in items:
                        try:
                            record = NameRecord.decode(data, verify_by_node_id)
                        except InvalidRecord:
                            continue
                        after = max(after, record.name)
                        await self.offer_record(record)
                    if len(items) < MAX_LIST:
                        break
            except trio.Cancelled:
                raise
            except Exception as exc:
                log.debug("index sync with %s: %r", peer, exc)
                continue
            await trio.sleep(SYNC_INTERVAL_S)

    # ---- lookups ------------------------------------------------------------------------------

    async def resolve(self, name: str) -> NameRecord | None:
        """Our record of `name` (a valid name), else the newest valid one our peers hold
        (then kept)."""
        held = self.index.get(name)
        if held is not None:
            return held
        found: list[NameRecord] = []

        async def ask(peer: str) -> None:
            try:
                answer = await self._request(peer, [VERSION, "resolve", name])
                if answer and isinstance(answer[0], bytes):
                    record = NameRecord.decode(answer[0], verify_by_node_id)
                    if record.name == name:
                        found.append(record)
            except trio.Cancelled:
                raise
            except Exception as exc:
                log.debug("resolve %s at %s: %r", name, peer, exc)

        with trio.move_on_after(REQUEST_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for peer in self.network.connected_peer_ids()[:32]:
                    nursery.start_soon(ask, peer)
        # Offer the lineage starts first, oldest first, then updates: the index keeps the
        # winner, and an update is accepted only on top of its lineage.
        for record in sorted(found, key=lambda r: (r.updated_ms != r.created_ms, r.order)):
            await self.offer_record(record)
        return self.index.get(name)

    def live_records(self) -> list[NameRecord]:
        """Every live (not deleted) record this node holds, by name."""
        out, after = [], ""
        while True:
            page = self.index.live(after, 1000)
            out += page
            if len(page) < 1000:
                return out
            after = page[-1].name

    # ---- protocol -----------------------------------------------------------------------------

    async def _request(self, peer: str, request: list[Any]) -> list[Any]:
        with trio.fail_after(REQUEST_TIMEOUT_S):
            frame = await self.network.request(peer, PROTOCOL, pack(request), MAX_FRAME_BYTES)
        if frame is None:
            raise DirectoryError(f"peer {peer} closed the stream")
        msg = unpack(frame, max_bytes=MAX_FRAME_BYTES, max_items=MAX_LIST + 8)
        if not isinstance(msg, list) or len(msg) < 2 or msg[0] != VERSION or msg[1] != "ok":
            raise DirectoryError(f"peer {peer} answered {str(msg)[:100]}")
        return msg[2:]

    async def _serve(self, stream: Stream) -> None:
        peer = stream.peer_id
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                frame = await stream.read_frame(MAX_FRAME_BYTES)
                if frame is None:
                    return  # closed before asking anything: a broken connection
                await stream.write_frame(pack(await self._answer(frame)))
        except (DecodeError, InvalidRecord, ValueError, TypeError) as exc:
            self.network.book.penalise(peer, RECORD_PENALTY, f"bad objects request: {exc}")
            try:
                await stream.write_frame(pack([VERSION, "err", "bad_request", str(exc)[:300]]))
            except Exception:
                pass
        except Exception as exc:
            log.debug("objects stream from %s: %r", peer, exc)
        finally:
            await stream.close()  # Stream.close never raises

    async def _answer(self, frame: bytes) -> list[Any]:
        msg = unpack(frame, max_bytes=MAX_FRAME_BYTES, max_items=16)
        if not isinstance(msg, list) or len(msg) < 2 or msg[0] != VERSION:
            raise DecodeError("expected [1, op, ...]")
        op = msg[1]
        if op == "record" and len(msg) == 3 and isinstance(msg[2], bytes):
            offer = await self.offer_record(NameRecord.decode(msg[2], verify_by_node_id))
            return [VERSION, "ok", offer.accepted, offer.reason]
        if op == "resolve" and len(msg) == 3:
            record = self.index.get(validate_name(msg[2]))
            return [VERSION, "ok", None if record is None else record.encode()]
        if op == "list" and len(msg) == 4 and isinstance(msg[2], str) and \
                type(msg[3]) is int and 1 <= msg[3] <= MAX_LIST and len(msg[2]) <= 255:
            return [VERSION, "ok", [r.encode() for r in self.index.all(msg[2], msg[3])]]
        raise DecodeError(f"unknown or malformed op {str(op)[:32]!r}")


def now_ms() -> int:
    return int(time.time() * 1000)
