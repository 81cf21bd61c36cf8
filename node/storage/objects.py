"""Erasure-coded objects over the nodes: put, get, delete, list, status.

Put (streamed): the body is cut into segments (`storage.segment_bytes`), each sealed when a
key is given (node.storage.sealing), coded RS(k, m) in a worker thread, and its k+m shards
pushed to k+m distinct live members chosen by rendezvous hashing on the segment's hash,
spread over regions (node.storage.placement); a holder that fails is replaced by the next in
the ranking. At most PUT_SEGMENTS_IN_FLIGHT segments are in memory at once. The manifest then
goes to every holder, and a signed name record (node.storage.names) makes the object visible:
first in our index, then directly on every holder (which pins what it holds of the object
under the owner `object:<manifest id>`), then by gossip on `dcloud/<chain-id>/objects`. Until
that record exists nothing is visible, and the shards pushed so far are unpinned chunks that
GC removes after `storage.gc_grace_s`: an interrupted put leaves neither.

Get (streamed): the name is resolved (our index, else our peers), the manifest read or fetched
(checked by its id), and each segment rebuilt from any k shards: those this node holds itself
first (decoding with a local parity shard costs less than receiving a data shard), then its
data shards, fetched in parallel from their holders, and parity shards only for data shards
that could not be had; from k data shards nothing is decoded. Up to GET_SEGMENTS_IN_FLIGHT
segments are fetched at once and written out in order. A Range needs only the segments it
covers.

Delete: a tombstone record, signed by the node that put the object; holders unpin, GC frees.

How name records reach the other nodes (gossip, `/dcloud/objects/0.1.0`, anti-entropy) is
node.storage.directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from node.codec import DecodeError
from node.crypto import Ed25519Key
from node.errors import leaves
from node.gossip.leader import LIVE_STATES as LIVE  # alive or suspect
from node.p2p import P2PNetwork
from node.storage.chunks import ChunkStore, ChunkStoreError, chunk_id_of
from node.storage.directory import NameDirectory, now_ms
from node.storage.erasure import ErasureError, SegmentCoder
from node.storage.exchange import ChunkExchange, ExchangeError
from node.storage.manifest import (
    MAX_MANIFEST_BYTES,
    Coding,
    InvalidManifest,
    Manifest,
    Sealing,
    SegmentRef,
    segment_ref,
)
from node.storage.names import (
    NameIndex,
    NameRecord,
    new_record,
    update_record,
    validate_name,
)
from node.storage.placement import Candidate, NotEnoughNodes, ranking
from node.storage.sealing import SCHEME, SegmentSealer, new_salt
from node.storage.segmenter import SegmentCutter

log = logging.getLogger("dcloud.storage.objects")

REQUEST_TIMEOUT_S = 15.0
PUT_SEGMENTS_IN_FLIGHT = 2
GET_SEGMENTS_IN_FLIGHT = 2  # 6 -> 2 with long frames on one window grant (docs/benchmarks.md)
SAME_NODE_TRIES = 4  # pushes of a shard to its chosen node before the next in the ranking
RECONNECT_WAIT_S = 5.0
PUSH_TIMEOUT_S = 60.0
PROVIDE_INTERVAL_S = 4.0  # a round finds each peer's window (11 s) open at most 3 s late
PROVIDE_PER_ROUND = 64
REPROVIDE_S = 3600.0


class ObjectError(Exception):
    """An object operation failed; `code` is the API's error code, `status` its HTTP status."""

    status = 500
    code = "storage_error"


class ObjectNotFound(ObjectError):
    status, code = 404, "not_found"


class NotCreator(ObjectError):
    status, code = 403, "not_creator"


class KeyRequired(ObjectError):
    status, code = 403, "key_required"


class BadRequest(ObjectError):
    status, code = 400, "bad_request"


class TooLarge(ObjectError):
    status, code = 413, "too_large"


class NeedMoreNodes(ObjectError):
    status, code = 503, "not_enough_nodes"

    def __init__(self, needed: int, available: int) -> None:
        self.needed, self.available = needed, available
        super().__init__(f"a put with k+m = {needed} needs {needed} live nodes, "
                         f"{available} {'is' if available == 1 else 'are'} live")


class PutFailed(ObjectError):
    status, code = 502, "put_failed"


class GetFailed(ObjectError):
    status, code = 502, "get_failed"


@dataclass(frozen=True)
class StoredObject:
    record: NameRecord
    manifest: Manifest

    @property
    def encrypted(self) -> bool:
        return self.manifest.sealing is not None


def owner_of(manifest_id: str) -> str:
    """The pin owner of an object's chunks on a holder."""
    return f"object:{manifest_id}"


ReadBlock = Callable[[], Awaitable[bytes]]  # b"" at the end of the body
WriteBlock = Callable[[bytes], Awaitable[None]]


class ObjectService:
    def __init__(self, *, network: P2PNetwork, store: ChunkStore, exchange: ChunkExchange,
                 index: NameIndex, node_key: Ed25519Key, chain_id: str, region: str,
                 config: Any, metrics: Any, members: Callable[[], list[Any]],
                 leaders: Callable[[], dict[str, str]] = dict) -> None:
        self.network = network
        self.store = store
        self.exchange = exchange
        self.index = index
        self.key = node_key
        self.node_id = network.peer_id
        self.region = region
        self.config = config
        self.metrics = metrics
        self.members = members  # () -> MemberView list (node.gossip.swim), self included
        self.leaders = leaders  # () -> region -> leader (node.gossip.leader)
        self.names = NameDirectory(network=network, index=index, chain_id=chain_id,
                                   manifest_of=self.manifest_of, after_change=self.after_change,
                                   member_states=self.member_states)
        self._nursery: trio.Nursery | None = None
        self.repairs_pending = 0  # shards the last audit found lost (node.storage.repair)
        # Pinned chunks we hold and have announced in the DHT (node.p2p.providers), and when.
        self._announced: dict[str, float] = {}

    # ---- lifecycle --------------------------------------------------------------------------

    def install(self) -> None:
        self.exchange.install()
        self.names.install()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.names.run)
            nursery.start_soon(self._gc_loop)
            nursery.start_soon(self._provide_loop)
            self.refresh_metrics()
            task_status.started()

    # ---- members ----------------------------------------------------------------------------

    def candidates(self) -> list[Candidate]:
        """Live members that may hold shards (alive or suspect, as for leadership: a
        suspicion is often wrong and a push to a node that is gone moves on; ourselves
        always)."""
        out = {self.node_id: Candidate(self.node_id, self.region)}
        for m in self.members():
            if m.state in LIVE and m.node_id not in out:
                out[m.node_id] = Candidate(m.node_id, m.region)
        if len(out) == 1:
            # No membership view (yet): the connected peers, in our region as far as we know.
            for peer in self.network.connected_peer_ids():
                out.setdefault(peer, Candidate(peer, self.region))
        return list(out.values())

    def member_states(self) -> dict[str, str]:
        states = {m.node_id: m.state for m in self.members()}
        states[self.node_id] = "alive"
        return states

    # ---- put --------------------------------------------------------------------------------

    async def put(self, name: str, read_block: ReadBlock, *, k: int | None = None,
                  m: int | None = None, key: bytes | None = None) -> NameRecord:
        name = _checked_name(name)
        k = self.config.k if k is None else k
        m = self.config.m if m is None else m
        try:
            coder = SegmentCoder(k, m)
        except ErasureError as exc:
            raise BadRequest(f"coding k={k}, m={m}: {exc}") from exc
        candidates = self.candidates()
        if len(candidates) < k + m:
            raise NeedMoreNodes(k + m, len(candidates))  # before a byte is read or written
        sealing = Sealing(SCHEME, new_salt()) if key is not None else None
        sealer = SegmentSealer(key, sealing.salt) if key is not None and sealing else None
        cutter = SegmentCutter(self.config.segment_bytes,
                               max_object_bytes=self.config.max_object_bytes)
        segments: dict[int, SegmentRef] = {}
        slots = trio.Semaphore(PUT_SEGMENTS_IN_FLIGHT)

        async def store_segment(index: int, plain: bytes) -> None:
            try:
                stored = sealer.seal(index, plain) if sealer is not None else plain
                encoded = await trio.to_thread.run_sync(coder.encode, stored)
                holders = await self._place_shards(encoded.shard_hashes[0], encoded.shards,
                                                   candidates)
                segments[index] = segment_ref(stored, encoded, [[h] for h in holders])
            finally:
                slots.release()

        try:
            async with trio.open_nursery() as nursery:
                index = 0
                while True:
                    block = await read_block()
                    ready = cutter.push(block) if block else []
                    last = cutter.finish() if not block else None
                    for plain in ready + ([last] if last is not None else []):
                        await slots.acquire()
                        nursery.start_soon(store_segment, index, plain)
                        index += 1
                    if not block:
                        break
        except* Exception as group:
            raise _put_error(group) from None
        manifest = Manifest(cutter.total, self.config.segment_bytes, Coding(k, m, coder.backend),
                            tuple(segments[i] for i in range(len(segments))), sealing)
        await self.distribute_manifest(manifest)
        record = new_record(name, manifest.id, manifest.size, self.node_id, now_ms(),
                            self.key.sign)
        offer = self.index.offer(record)
        if not offer.accepted:
            raise PutFailed(f"name record refused: {offer.reason}")
        await self.after_change(record, offer.replaced)
        await self.names.announce(record, holders_of(manifest))
        self.metrics.objects_put.inc()
        self.metrics.object_bytes_put.inc(manifest.size)
        log.info("put object %s: %d bytes, %d segments, manifest %s", name, manifest.size,
                 len(manifest.segments), manifest.id[:16])
        return record

    async def _place_shards(self, key: bytes, shards: Sequence[bytes],
                            candidates: list[Candidate]) -> list[str]:
        """Push shard i to the i-th node of the ranking; a failed node is replaced by the
        next unused one. Returns the holder of each shard."""
        order = [c.node_id for c in ranking(key, candidates)]
        spare = iter(order[len(shards):])
        holders: list[str | None] = list(order[:len(shards)])
        lock = trio.Lock()

        async def push(i: int) -> None:
            errors: list[str] = []
            tries = 0
            while (node := holders[i]) is not None:
                try:
                    with trio.fail_after(PUSH_TIMEOUT_S):
                        await self.exchange.push(node, chunk_id_of(shards[i]), shards[i])
                    return
                except trio.Cancelled:
                    raise
                except Exception as exc:
                    log.info("shard push to %s failed: %s", node, exc)
                    errors.append(f"{node}: {exc}")
                tries += 1
                if tries < SAME_NODE_TRIES:
                    # A connection being replaced (two peers that dialled each other, a
                    # reset) breaks the streams on it, and is noticed a moment later: back
                    # off (1, 2, 4 s), then wait for the peer to be connected again.
                    await trio.sleep(2 ** (tries - 1))
                    await self.wait_connected(node, RECONNECT_WAIT_S)
                    continue
                tries = 0
                async with lock:
                    holders[i] = next(spare, None)
            raise PutFailed(f"no node took shard {i}: {'; '.join(errors[-3:])}")

        async with trio.open_nursery() as nursery:
            for i in range(len(shards)):
                nursery.start_soon(push, i)
        return [h for h in holders if h is not None]

    async def wait_connected(self, peer: str, timeout_s: float) -> bool:
        with trio.move_on_after(timeout_s):
            await trio.sleep(0.2)
            while not self.network.is_connected(peer):
                await trio.sleep(0.1)
            return True
        return False

    async def distribute_manifest(self, manifest: Manifest) -> None:
        data = manifest.encode()
        targets = sorted(set(holders_of(manifest)) | {self.node_id})
        failures: list[str] = []

        async def one(node: str) -> None:
            try:
                with trio.fail_after(PUSH_TIMEOUT_S):
                    await self.exchange.push(node, manifest.id, data)
            except trio.Cancelled:
                raise
            except Exception as exc:
                failures.append(f"{node}: {exc}")

        async with trio.open_nursery() as nursery:
            for node in targets:
                nursery.start_soon(one, node)
        if len(failures) == len(targets):
            raise PutFailed(f"the manifest reached no node: {'; '.join(failures)}")

    # ---- names ----------------------------------------------------------------------------

    async def after_change(self, record: NameRecord, replaced: NameRecord | None) -> None:
        """Pin what we hold of the object now named, unpin what no name holds any more."""
        if replaced is not None and replaced.manifest_id != record.manifest_id:
            await trio.to_thread.run_sync(self.store.unpin_owner, owner_of(replaced.manifest_id))
        if record.deleted:
            await trio.to_thread.run_sync(self.store.unpin_owner, owner_of(record.manifest_id))
        elif self.store.has(record.manifest_id):
            try:
                manifest = await self._local_manifest(record.manifest_id)
            except ObjectError as exc:
                log.warning("cannot pin %s: %s", record.name, exc)
                return
            held = [c for c in {record.manifest_id, *manifest.chunk_ids()} if self.store.has(c)]
            await trio.to_thread.run_sync(self.store.pin_many, held,
                                          owner_of(record.manifest_id))
        self.refresh_metrics()

    async def resolve(self, name: str) -> NameRecord | None:
        """Our record of `name`, else the newest valid one our peers hold (then kept)."""
        return await self.names.resolve(_checked_name(name))

    # ---- lookups ----------------------------------------------------------------------------

    async def open(self, name: str) -> StoredObject:
        record = await self.resolve(name)
        if record is None or record.deleted:
            raise ObjectNotFound(f"no object named {name!r}")
        return StoredObject(record, await self.manifest_of(record))

    async def _local_manifest(self, manifest_id: str) -> Manifest:
        try:
            data = await trio.to_thread.run_sync(self.store.get, manifest_id)
            return Manifest.decode(data, expected_id=manifest_id)
        except (ChunkStoreError, InvalidManifest, DecodeError) as exc:
            raise GetFailed(f"manifest {manifest_id[:16]}: {exc}") from exc

    async def manifest_of(self, record: NameRecord) -> Manifest:
        """The record's manifest: ours, else from the nodes likely to have it (checked)."""
        mid = record.manifest_id
        if self.store.has(mid):
            return await self._local_manifest(mid)
        peers = [record.signer, record.creator, *self.network.connected_peer_ids()]
        seen: list[str] = []
        for p in peers:
            if p not in seen and p != self.node_id:
                seen.append(p)
        try:
            try:
                data = await self.exchange.fetch_any(seen, mid, MAX_MANIFEST_BYTES)
            except ExchangeError:  # the likely holders failed: ask the DHT who has it
                data = await self.exchange.fetch_found(mid, MAX_MANIFEST_BYTES, seen)
            manifest = Manifest.decode(data, expected_id=mid)
        except Exception as exc:
            raise GetFailed(f"manifest {mid[:16]} of {record.name!r}: {exc}") from exc
        try:  # cached unpinned: GC drops it unless we hold part of the object
            await trio.to_thread.run_sync(lambda: self.store.put(data, expected_id=mid))
        except ChunkStoreError:
            pass
        return manifest

    # ---- get --------------------------------------------------------------------------------

    async def read(self, obj: StoredObject, start: int, end: int, write: WriteBlock, *,
                   key: bytes | None = None) -> None:
        """Write bytes [start, end) of the object, segment by segment, fetching the next
        segment while the current one is written."""
        manifest = obj.manifest
        if manifest.sealing is not None and key is None:
            raise KeyRequired(f"object {obj.record.name!r} is encrypted: give its key")
        if not 0 <= start <= end <= manifest.size:
            raise BadRequest(f"range [{start}, {end}) outside an object of {manifest.size} bytes")
        if start == end:
            return
        seg = manifest.segment_size
        first, last = start // seg, (end - 1) // seg
        # Up to GET_SEGMENTS_IN_FLIGHT segments are fetched at once (k shard fetches each,
        # from different holders) and written out in order: a get is bound by round trips,
        # not by any one peer's bandwidth.
        ready: dict[int, bytes] = {}
        arrived = {i: trio.Event() for i in range(first, last + 1)}
        slots = trio.Semaphore(GET_SEGMENTS_IN_FLIGHT)

        async def fetch(i: int) -> None:
            ready[i] = await self.segment(manifest, i, key)
            arrived[i].set()

        async def produce(nursery: trio.Nursery) -> None:
            for i in range(first, last + 1):
                await slots.acquire()
                nursery.start_soon(fetch, i)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce, nursery)
                for i in range(first, last + 1):
                    await arrived[i].wait()
                    plain = ready.pop(i)
                    slots.release()
                    lo = start - i * seg if i == first else 0
                    hi = end - i * seg if i == last else len(plain)
                    await write(plain[lo:hi])
                    self.metrics.object_bytes_got.inc(hi - lo)
        except BaseExceptionGroup as group:
            raise _first_object_error(group) from None

    async def segment(self, manifest: Manifest, index: int, key: bytes | None) -> bytes:
        """Segment `index` in plaintext, from any k of its shards."""
        ref = manifest.segments[index]
        coder = SegmentCoder(manifest.coding.k, manifest.coding.m, manifest.coding.backend)
        shards = await self.fetch_shards(ref, manifest.coding.k)
        try:
            stored = await trio.to_thread.run_sync(
                lambda: coder.decode(shards, ref.shard_hashes, segment_size=ref.size,
                                     segment_hash=ref.hash, shards_verified=True))
        except ErasureError as exc:
            raise GetFailed(f"segment {index}: {exc}") from exc
        if manifest.sealing is None:
            return stored
        assert key is not None
        try:
            return SegmentSealer(key, manifest.sealing.salt).open(index, stored)
        except Exception as exc:
            raise KeyRequired(f"segment {index} does not open with this key: {exc}") from exc

    async def fetch_shards(self, ref: SegmentRef, k: int, skip: Sequence[int] = (),
                           use_dht: bool = False) -> dict[int, bytes]:
        """Any k shards of a segment (ours first, then data shards), each checked against
        its hash."""
        got: dict[int, bytes] = {}
        order = [i for i in range(len(ref.shards)) if i not in skip]
        ours = [i for i in order if self.node_id in ref.shards[i].holders
                and self.store.has(ref.shards[i].chunk_id)]
        order = ours + [i for i in order if i not in ours]
        failed: list[str] = []

        async def one(i: int) -> None:
            shard = ref.shards[i]
            try:
                got[i] = await self.exchange.fetch_any(list(shard.holders) or [self.node_id],
                                                       shard.chunk_id, shard.size)
                return
            except trio.Cancelled:
                raise
            except Exception as exc:
                failed.append(f"shard {i}: {exc}")
            if not use_dht:
                return
            try:  # its holder failed: somebody else may hold a copy (a repair in flight)
                got[i] = await self.exchange.fetch_found(shard.chunk_id, shard.size,
                                                         shard.holders)
            except trio.Cancelled:
                raise
            except Exception as exc:
                failed.append(f"shard {i} via the DHT: {exc}")

        pending = iter(order)
        wave = [i for _, i in zip(range(k), pending, strict=False)]
        while wave:
            async with trio.open_nursery() as nursery:
                for i in wave:
                    nursery.start_soon(one, i)
            missing = k - len(got)
            wave = [i for _, i in zip(range(missing), pending, strict=False)] if missing else []
        if len(got) < k and not use_dht:
            # Not enough from the holders the manifest names: once more, asking the DHT
            # for every shard still missing.
            return await self.fetch_shards(ref, k, skip, use_dht=True)
        if len(got) < k:
            raise GetFailed(f"only {len(got)} of the k={k} shards needed could be fetched: "
                            f"{'; '.join(failed)}")
        return got

    # ---- delete -----------------------------------------------------------------------------

    async def delete(self, name: str) -> NameRecord:
        record = await self.resolve(name)
        if record is None or record.deleted:
            raise ObjectNotFound(f"no object named {name!r}")
        if record.creator != self.node_id:
            raise NotCreator(f"object {name!r} was put through node {record.creator}; "
                             "delete it there")
        tomb = update_record(record, self.node_id, now_ms(), self.key.sign, deleted=True)
        offer = self.index.offer(tomb)
        if not offer.accepted:
            raise ObjectError(f"delete refused: {offer.reason}")
        holders: list[str] = []
        if self.store.has(record.manifest_id):
            try:
                holders = holders_of(await self._local_manifest(record.manifest_id))
            except ObjectError:
                pass
        await self.after_change(tomb, offer.replaced)
        await self.names.announce(tomb, holders)
        return tomb

    # ---- status -----------------------------------------------------------------------------

    async def holdings(self, manifest: Manifest,
                       states: dict[str, str]) -> dict[tuple[str, str], bool]:
        """(holder, chunk id) -> whether that holder says it holds that shard of `manifest`.

        Only live (alive or suspect) holders are asked, in batches of 1,000 ids; one that does
        not answer has no entries: unknown, not missing (membership decides it is gone)."""
        asked: dict[str, list[str]] = {}
        for ref in manifest.segments:
            for shard in ref.shards:
                for holder in shard.holders:
                    if states.get(holder) in LIVE:
                        asked.setdefault(holder, []).append(shard.chunk_id)
        answers: dict[tuple[str, str], bool] = {}

        async def ask(holder: str, ids: list[str]) -> None:
            for start in range(0, len(ids), 1000):
                part = ids[start:start + 1000]
                try:
                    if holder == self.node_id:
                        has = [self.store.has(i) for i in part]
                    else:
                        with trio.fail_after(REQUEST_TIMEOUT_S):
                            has = await self.exchange.have(holder, part)
                except trio.Cancelled:
                    raise
                except Exception as exc:
                    log.info("holder %s did not answer have: %r", holder, exc)
                    return
                answers.update({(holder, i): h for i, h in zip(part, has, strict=True)})

        async with trio.open_nursery() as nursery:
            for holder, ids in asked.items():
                nursery.start_soon(ask, holder, ids)
        return answers

    async def health(self, obj: StoredObject) -> dict[str, Any]:
        """Every shard's holders, their membership state and whether they say they hold it."""
        manifest = obj.manifest
        states = self.member_states()
        answers = await self.holdings(manifest, states)
        segments, healthy, total = [], 0, 0
        for s, ref in enumerate(manifest.segments):
            shards = []
            for i, shard in enumerate(ref.shards):
                holders = [{"node_id": h, "state": states.get(h, "unknown"),
                            # None: a live holder that did not answer (unknown)
                            "has": answers.get((h, shard.chunk_id),
                                               None if states.get(h) in LIVE else False)}
                           for h in shard.holders]
                ok = any(h["has"] is True for h in holders)
                healthy += ok
                total += 1
                shards.append({"index": i, "chunk_id": shard.chunk_id, "holders": holders,
                               "healthy": ok})
            segments.append({"index": s, "shards": shards})
        return {"name": obj.record.name, "manifest_id": obj.record.manifest_id,
                "size": manifest.size, "k": manifest.coding.k, "m": manifest.coding.m,
                "encrypted": obj.encrypted, "healthy_shards": healthy, "total_shards": total,
                "segments": segments, "repairs_pending": self.repairs_pending}

    def refresh_metrics(self) -> None:
        stat = self.store.stat()
        self.metrics.stored_bytes.set(stat.used_bytes)
        self.metrics.quota_bytes.set(stat.quota_bytes)
        self.metrics.chunks.set(stat.chunks)
        self.metrics.objects.set(self.index.count())

    def status(self) -> dict[str, Any]:
        stat = self.store.stat()
        return {"used_bytes": stat.used_bytes, "quota_bytes": stat.quota_bytes,
                "chunks": stat.chunks, "pinned_chunks": stat.pinned_chunks,
                "objects": self.index.count(),
                "repairs_pending": self.repairs_pending,
                **self.announcement_counts(stat.pinned_chunks)}

    def announcement_counts(self, pinned: int) -> dict[str, int]:
        """Of the `pinned` chunks, how many this node has announced in the DHT and how many
        it has not (new since the last round, waiting for a peer's window, or whose file is
        missing). From counts, not a scan: a chunk unpinned since the last round still
        counts as announced until the next one, so the two are capped to add up."""
        announced = min(len(self._announced), pinned)
        return {"announced_chunks": announced, "announcements_pending": pinned - announced}

    # ---- DHT announcements -------------------------------------------------------------------

    async def _provide_loop(self) -> None:
        """Announce, as DHT provider records, the manifests and shards we hold pinned (new
        ones each round, at most PROVIDE_PER_ROUND; all of them again every hour, since
        provider records expire)."""
        announced = self._announced
        while True:
            await trio.sleep(PROVIDE_INTERVAL_S)
            now = time.monotonic()
            pinned = await trio.to_thread.run_sync(
                lambda: [c for c in self.store.pinned_ids() if self.store.has(c)])
            due = [c for c in pinned if now - announced.get(c, -1e9) > REPROVIDE_S]
            sent = await self.exchange.announce(due[:PROVIDE_PER_ROUND]) if due else []
            # Peers take only so many records a window (node.p2p.providers): the rest wait.
            announced.update((c, now) for c in sent)
            held = set(pinned)
            for c in [c for c in announced if c not in held]:
                del announced[c]

    # ---- GC ---------------------------------------------------------------------------------

    async def _gc_loop(self) -> None:
        while True:
            await trio.sleep(self.config.gc_interval_s)
            result = await trio.to_thread.run_sync(self.store.gc)
            if result.removed:
                log.info("GC removed %d unpinned chunks (%d bytes)", result.removed,
                         result.freed_bytes)
            self.refresh_metrics()

def holders_of(manifest: Manifest) -> list[str]:
    seen: dict[str, None] = {}
    for ref in manifest.segments:
        for shard in ref.shards:
            for h in shard.holders:
                seen.setdefault(h)
    return list(seen)


def _checked_name(name: str) -> str:
    try:
        return validate_name(name)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc


def _first_object_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The ObjectError inside a nursery's exception group (else the group itself)."""
    return next((e for e in leaves(group) if isinstance(e, ObjectError)), group)


def _put_error(group: BaseExceptionGroup[Exception]) -> ObjectError:
    """The one error an operator needs from a failed put (the first that says most)."""
    from node.storage.segmenter import ObjectTooLarge

    found = leaves(group)
    for exc in found:
        if isinstance(exc, ObjectTooLarge):
            return TooLarge(str(exc))
        if isinstance(exc, NotEnoughNodes):
            return NeedMoreNodes(exc.needed, exc.available)
        if isinstance(exc, ObjectError):
            return exc
    return PutFailed("; ".join(str(e) for e in found[:3]) or "put failed")


