"""Audit and repair: keep every shard of every object on a live node that really holds it.

Who audits an object: the leader of its creator's region (node.gossip.leader), or, when that
region has no live member, the first live member in the rendezvous ranking of the object's
name. Every node computes the same answer from its membership view, so exactly one node
audits an object once views agree (two, briefly, while they do not: harmless, the second
repair finds nothing to do).

One audit of an object, every `storage.audit_interval_s`:
1. Every shard's holders are checked: a holder that membership holds dead or left has lost
   its shards; the others are asked which of their shards they hold (`have`). Holders scrub
   their own disks (below), so a shard that rotted on disk is reported missing.
2. Possession is then proven for one random segment: its data shards are fetched from their
   holders and checked against their hashes (a fetch is the strongest proof), the segment's
   other shards are rebuilt from those, and each of their holders must answer a challenge
   for a random byte range: sha256(nonce + range), which the auditor can check because it
   rebuilt the shard. A wrong answer costs the holder score and its shard.
3. Each lost shard is rebuilt from k good shards of its segment and pushed to a new node
   (node.storage.placement with `previous`: the slot moves, the other slots stay). The
   new manifest (same content, new holders: `Manifest.same_content`) goes to every holder,
   and an updated name record, signed by the auditor, replaces the old one everywhere.

Scrub: every node re-hashes up to SCRUB_CHUNKS_PER_ROUND of its pinned chunks per audit
interval (round robin), dropping any that no longer match their id (ChunkStore.check).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import trio

from node.gossip.leader import LIVE_STATES as LIVE
from node.storage.erasure import ErasureError, SegmentCoder
from node.storage.exchange import MAX_RANGE_BYTES, proof_digest
from node.storage.manifest import Manifest, ShardRef
from node.storage.names import NameRecord, update_record
from node.storage.objects import ObjectError, ObjectService, holders_of, now_ms
from node.storage.placement import ranking

log = logging.getLogger("dcloud.storage.repair")

SCRUB_CHUNKS_PER_ROUND = 64
CHALLENGE_BYTES = 4096
LOST_PROOF_PENALTY = 40


class Repairer:
    def __init__(self, objects: ObjectService) -> None:
        self.objects = objects
        self._scrub_cursor = ""
        self.failed_proofs: set[tuple[int, int]] = set()  # of the object being audited

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.objects.config.audit_interval_s)
            try:
                await self.scrub()
                await self.audit_all()
            except trio.Cancelled:
                raise
            except Exception as exc:  # one bad round must not end auditing
                log.warning("audit round failed: %r", exc)

    # ---- who --------------------------------------------------------------------------------

    def responsible(self, record: NameRecord) -> str | None:
        objects = self.objects
        live = objects.candidates()
        region_of = {c.node_id: c.region for c in live}
        leaders = objects.leaders()
        region = region_of.get(record.creator) or _region_in(objects, record.creator)
        if region is not None and leaders.get(region) in region_of:
            return leaders[region]
        order = ranking(record.name.encode(), live)
        return order[0].node_id if order else None

    # ---- scrub ------------------------------------------------------------------------------

    async def scrub(self) -> int:
        """Re-hash a batch of our pinned chunks; returns how many were found bad (dropped)."""
        store = self.objects.store
        ids = sorted(c for c in store.chunk_ids() if c > self._scrub_cursor)
        batch = ids[:SCRUB_CHUNKS_PER_ROUND]
        self._scrub_cursor = batch[-1] if len(batch) == SCRUB_CHUNKS_PER_ROUND else ""
        bad = 0
        for chunk_id in batch:
            if not await trio.to_thread.run_sync(store.check, chunk_id):
                bad += 1
                log.warning("scrub: chunk %s was damaged on disk and is dropped", chunk_id)
        return bad

    # ---- audit ------------------------------------------------------------------------------

    async def audit_all(self) -> int:
        """Audit every object this node is responsible for; returns shards repaired."""
        repaired = pending = 0
        for record in self.objects.names.live_records():
            if self.responsible(record) != self.objects.node_id:
                continue
            try:
                lost, fixed = await self.audit(record)
            except ObjectError as exc:
                log.warning("audit of %s failed: %s", record.name, exc)
                continue
            repaired += fixed
            pending += lost - fixed
        self.objects.repairs_pending = pending
        self.objects.metrics.repairs_pending.set(pending)
        return repaired

    async def audit(self, record: NameRecord) -> tuple[int, int]:
        """(shards found lost, shards rebuilt) for one object."""
        objects = self.objects
        manifest = await objects.manifest_of(record)
        lost = await self._lost_shards(manifest)
        self.failed_proofs = await self._prove_one_segment(manifest, lost)
        lost |= self.failed_proofs
        if not lost:
            return 0, 0
        log.warning("object %s: %d shard(s) lost, repairing", record.name, len(lost))
        repaired = await self.repair(record, manifest, lost)
        return len(lost), repaired

    async def _lost_shards(self, manifest: Manifest) -> set[tuple[int, int]]:
        objects = self.objects
        states = objects.member_states()
        answers = await objects.holdings(manifest, states)
        lost: set[tuple[int, int]] = set()
        for s, ref in enumerate(manifest.segments):
            for i, shard in enumerate(ref.shards):
                holder = shard.holders[0] if shard.holders else None
                if holder is None or states.get(holder) not in LIVE:
                    lost.add((s, i))
                elif answers.get((holder, shard.chunk_id)) is False:
                    lost.add((s, i))  # no answer is not lost: membership decides that
        return lost

    async def _prove_one_segment(self, manifest: Manifest,
                                 lost: set[tuple[int, int]]) -> set[tuple[int, int]]:
        objects = self.objects
        s = random.randrange(len(manifest.segments))
        ref = manifest.segments[s]
        k, n = manifest.coding.k, manifest.coding.n
        skip = [i for i in range(n) if (s, i) in lost]
        try:
            shards = await objects.fetch_shards(ref, k, skip=skip)
        except ObjectError:
            return set()  # fewer than k answer now; the next rounds (and repair) see to it
        failed: set[tuple[int, int]] = set()
        coder = SegmentCoder(k, manifest.coding.m, manifest.coding.backend)
        others = [i for i in range(n) if i not in shards and (s, i) not in lost | failed]
        try:
            rebuilt = await trio.to_thread.run_sync(
                lambda: coder.reconstruct(shards, ref.shard_hashes, others))
        except ErasureError as exc:
            log.warning("segment %d: cannot rebuild to challenge: %s", s, exc)
            return failed
        for i, data in rebuilt.items():
            holder = ref.shards[i].holders[0]
            if holder == objects.node_id:
                continue
            length = min(CHALLENGE_BYTES, len(data), MAX_RANGE_BYTES)
            offset = random.randrange(len(data) - length + 1)
            nonce = os.urandom(16)
            objects.metrics.audits.inc()
            try:
                answer = await objects.exchange.prove(holder, ref.shards[i].chunk_id, offset,
                                                      length, nonce)
            except trio.Cancelled:
                raise
            except Exception as exc:
                answer = b""
                log.info("challenge of %s failed: %s", holder, exc)
            if answer != proof_digest(nonce, data[offset:offset + length]):
                objects.metrics.audit_failures.inc()
                failed.add((s, i))
                if answer:
                    objects.network.book.penalise(holder, LOST_PROOF_PENALTY,
                                                  f"wrong possession proof for shard {i}")
        return failed

    # ---- repair -----------------------------------------------------------------------------

    def _targets(self, ref: Any, s: int, missing: list[int], candidates: list[Any],
                 states: dict[str, str]) -> dict[int, str]:
        """Where each lost shard of segment `s` goes.

        A holder that is alive and did not fail a proof gets its shard back (its disk lost
        it: scrub or a read found it damaged). Otherwise the slot moves to the best-ranked
        live node holding nothing of this segment (rendezvous order, as the put placed it);
        with no such node left, to the live node holding the fewest of its shards, so that
        the object is whole again, if less spread.
        """
        live = [c for c in candidates if states.get(c.node_id) == "alive"]
        order = [c.node_id for c in ranking(ref.shards[0].hash, live)]
        count: dict[str, int] = {}
        for i, shard in enumerate(ref.shards):
            if i not in missing and shard.holders:
                count[shard.holders[0]] = count.get(shard.holders[0], 0) + 1
        out: dict[int, str] = {}
        for i in missing:
            holder = ref.shards[i].holders[0] if ref.shards[i].holders else None
            if holder in order and (s, i) not in self.failed_proofs:
                target: str | None = holder
            else:
                free = [node for node in order if count.get(node, 0) == 0 and node != holder]
                fallback = sorted((node for node in order if node != holder),
                                  key=lambda node: (count.get(node, 0), order.index(node)))
                target = free[0] if free else (fallback[0] if fallback else None)
            if target is not None:
                out[i] = target
                count[target] = count.get(target, 0) + 1
        return out

    async def repair(self, record: NameRecord, manifest: Manifest,
                     lost: set[tuple[int, int]]) -> int:
        objects = self.objects
        k, n = manifest.coding.k, manifest.coding.n
        coder = SegmentCoder(k, manifest.coding.m, manifest.coding.backend)
        candidates = objects.candidates()
        states = objects.member_states()
        new = manifest
        repaired = 0
        for s in sorted({s for s, _ in lost}):
            ref = manifest.segments[s]
            missing = [i for i in range(n) if (s, i) in lost]
            try:
                shards = await objects.fetch_shards(ref, k, skip=missing)
                rebuilt = await trio.to_thread.run_sync(
                    lambda ref=ref, shards=shards, missing=missing:
                    coder.reconstruct(shards, ref.shard_hashes, missing))
            except (ObjectError, ErasureError) as exc:
                log.warning("segment %d of %s cannot be rebuilt now: %s", s, record.name, exc)
                continue
            slots = self._targets(ref, s, missing, candidates, states)
            for i in missing:
                target = slots.get(i)
                if target is None:
                    log.warning("segment %d of %s: no live node can take shard %d", s,
                                record.name, i)
                    continue
                shard: ShardRef = ref.shards[i]
                try:
                    await objects.exchange.push(target, shard.chunk_id, rebuilt[i])
                except trio.Cancelled:
                    raise
                except Exception as exc:
                    log.warning("pushing rebuilt shard %d.%d to %s failed: %s", s, i, target,
                                exc)
                    continue
                new = new.with_holders(s, i, (target,))
                repaired += 1
                objects.metrics.repairs.inc()
        if new.id == manifest.id:
            return repaired  # shards went back to their own holders: the manifest stands
        await objects.distribute_manifest(new)
        updated = update_record(record, objects.node_id, now_ms(), objects.key.sign,
                                manifest_id=new.id)
        offer = objects.index.offer(updated, same_content=lambda _a, _b: manifest.same_content(new))
        if not offer.accepted:
            log.warning("repaired record of %s refused: %s", record.name, offer.reason)
            return 0
        await objects.after_change(updated, offer.replaced)
        await objects.names.announce(updated,
                                     sorted(set(holders_of(new)) | set(holders_of(manifest))))
        log.info("repaired %d shard(s) of %s: manifest %s", repaired, record.name, new.id[:16])
        return repaired


def _region_in(objects: ObjectService, node_id: str) -> str | None:
    for m in objects.members():
        if m.node_id == node_id:
            return str(m.region)
    return None
