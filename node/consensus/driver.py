"""The trio driver: runs the pure consensus core against the network, the WAL and the app.

One task owns the core and handles one input at a time (a proposal, a vote, a timeout, a
block from sync): log it in the WAL, feed it to the core, act on the outputs. Signing
happens here: a vote is recorded in the block store's double-sign guard and the WAL is
fsynced before the vote leaves the node. Gossip can drop messages (notes/libp2p.md), so
the node re-publishes its current-round proposal and votes on a timer, and a node that
falls behind fetches decided blocks with their commits over block sync.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from node.codec import DecodeError
from node.consensus import messages
from node.consensus.blocksync import BlockSync
from node.consensus.core import (
    BroadcastProposal,
    BroadcastVote,
    ConsensusCore,
    Decide,
    Equivocation,
    RequestValue,
    ScheduleTimeout,
    Step,
)
from node.consensus.genesis import Genesis
from node.consensus.store import BlockStore, DoubleSignRefused
from node.consensus.timeouts import TimeoutParams
from node.consensus.types import (
    Block,
    Commit,
    DuplicateVoteEvidence,
    Header,
    Proposal,
    Vote,
    evidence_hash,
    txs_hash,
)
from node.consensus.validation import ChainTip, InvalidBlock, check_proposal
from node.consensus.wal import ConsensusWAL
from node.crypto import Ed25519Key
from node.metrics import ConsensusMetrics

log = logging.getLogger("dcloud.consensus")

RETRANSMIT_INTERVAL_S = 1.0
PROPOSAL_RETRANSMIT_TICKS = 3
TX_ANNOUNCE_INTERVAL_S = 0.05
MAX_FUTURE_MESSAGES = 10_000
BAD_MESSAGE_PENALTY = 20
# How many heights ahead a message may be before we stop buffering it and sync instead.
MAX_BUFFERED_HEIGHTS = 2


@dataclass(frozen=True)
class _Timeout:
    kind: Step
    height: int
    round: int


@dataclass(frozen=True)
class _Start:
    height: int


@dataclass(frozen=True)
class _Synced:
    block: Block
    commit: Commit


@dataclass(frozen=True)
class _Incoming:
    message: messages.ConsensusMessage
    from_peer: str


class ConsensusService:
    def __init__(self, *, genesis: Genesis, validator_key: Ed25519Key | None, network: Any,
                 app: Any, mempool: Any, store: BlockStore, wal: ConsensusWAL,
                 metrics: ConsensusMetrics, now_ms: Callable[[], int] | None = None) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.params = genesis.params
        self.validators = genesis.validator_set()
        self.network = network
        self.app = app
        self.mempool = mempool
        self.store = store
        self.wal = wal
        self.metrics = metrics
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        own = None
        if validator_key is not None:
            address = bytes.fromhex(validator_key.address)
            if self.validators.get(address) is not None:
                own = address
        self.key = validator_key if own is not None else None
        self.own_address = own
        self.timeouts = TimeoutParams(
            propose_ms=self.params.timeout_propose_ms,
            propose_delta_ms=self.params.timeout_propose_delta_ms,
            prevote_ms=self.params.timeout_vote_ms,
            prevote_delta_ms=self.params.timeout_vote_delta_ms,
            precommit_ms=self.params.timeout_vote_ms,
            precommit_delta_ms=self.params.timeout_vote_delta_ms,
            commit_ms=self.params.timeout_commit_ms,
        )
        self.core = ConsensusCore(chain_id=self.chain_id, validators=self.validators,
                                  own_address=own, timeouts=self.timeouts)
        self.topic = messages.consensus_topic(self.chain_id)
        self.txs_topic = messages.txs_topic(self.chain_id)
        send, recv = trio.open_memory_channel[Any](100_000)
        self._send, self._recv = send, recv
        self._future: dict[int, list[_Incoming]] = {}
        self._future_count = 0
        self._work = trio.Event()  # set when there may be something to commit (see _start_later)
        self._pending_evidence: dict[bytes, DuplicateVoteEvidence] = {}
        self._own_messages: list[messages.ConsensusMessage] = []  # current height, to resend
        self._seen_proposals: set[tuple[int, int, bytes]] = set()  # current height
        self.peer_heights: dict[str, int] = {}
        self.catching_up = True
        self.committed = trio.Event()  # set (then replaced) after every commit
        self._nursery: trio.Nursery | None = None
        self._round_started_at = trio.current_time() if _in_trio() else 0.0
        self.blocksync = BlockSync(self)
        self.last_commit: Commit | None = None
        self._replaying = False
        self._initial_sync = True
        self._deferred_value: RequestValue | None = None
        self.tip = self._load_tip()

    # ---- committed state ---------------------------------------------------------------------

    def _load_tip(self) -> ChainTip:
        height = self.store.height()
        app_height, app_hash = self.app.info()
        # A crash between saving a block and committing it to the app: apply it now.
        while app_height < height:
            stored = self.store.get(app_height + 1)
            assert stored is not None
            log.info("replaying block %d into the application", app_height + 1)
            app_hash = self._apply_to_app(stored.block)
            app_height += 1
        if height == 0:
            return ChainTip(self.chain_id, 0, None, self.genesis.genesis_time_ms, app_hash,
                            self.validators, self.store.has_evidence)
        stored = self.store.get(height)
        assert stored is not None
        self.last_commit = stored.commit
        return ChainTip(self.chain_id, height, stored.block.id, stored.block.header.time_ms,
                        app_hash, self.validators, self.store.has_evidence)

    def _apply_to_app(self, block: Block) -> bytes:
        self.app.begin_block(block.header)
        for tx in block.txs:
            self.app.deliver_tx(tx)
        self.app.end_block()
        return bytes(self.app.commit())

    @property
    def height(self) -> int:
        """The height consensus works on (last committed + 1)."""
        return self.tip.height + 1

    # ---- service -----------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.blocksync.install()
            nursery.start_soon(self._read_gossip)
            nursery.start_soon(self._read_txs)
            nursery.start_soon(self._announce_txs)
            nursery.start_soon(self._retransmit)
            task_status.started()
            # Catch up before taking part: a restarted or wiped validator must not vote at
            # heights the others have already decided.
            await self.blocksync.catch_up()
            self._initial_sync = False
            nursery.start_soon(self.blocksync.run)
            self._enter_height(self.height, replay=True)
            async for item in self._recv:
                try:
                    self._handle(item)
                except DoubleSignRefused as exc:
                    log.error("refused to sign: %s", exc)

    def submit_tx(self, tx: bytes) -> Any:
        """Check a tx from a client and add it to the mempool (gossiped in the next batch)."""
        result = self.mempool.add(tx)
        self.metrics.mempool_size.set(self.mempool.size())
        self._work.set()
        return result

    # ---- inputs ------------------------------------------------------------------------------

    async def _read_gossip(self) -> None:
        async for msg in self.network.subscribe(self.topic):
            if msg.from_peer == self.network.peer_id:
                continue
            try:
                decoded = messages.decode(msg.data)
            except DecodeError as exc:
                self.network.book.penalise(msg.from_peer, BAD_MESSAGE_PENALTY,
                                           f"bad consensus message: {exc}")
                continue
            try:
                self._send.send_nowait(_Incoming(decoded, msg.from_peer))
            except trio.WouldBlock:
                log.warning("consensus input queue full; dropping a message")

    async def _read_txs(self) -> None:
        async for msg in self.network.subscribe(self.txs_topic):
            if msg.from_peer == self.network.peer_id:
                continue
            try:
                txs = messages.decode_txs(msg.data, self.params.max_tx_bytes)
            except DecodeError as exc:
                self.network.book.penalise(msg.from_peer, BAD_MESSAGE_PENALTY,
                                           f"bad tx batch: {exc}")
                continue
            for tx in txs:
                self.mempool.add(tx, announce=False)  # gossipsub relays it already
            self.metrics.mempool_size.set(self.mempool.size())
            self._work.set()
            await trio.sleep(0)

    async def _announce_txs(self) -> None:
        """Batch new mempool txs into few gossip messages (never one message per tx)."""
        while True:
            await trio.sleep(TX_ANNOUNCE_INTERVAL_S)
            while True:
                batch = self.mempool.take_unannounced(2000)
                if not batch:
                    break
                await self.network.publish(self.txs_topic, messages.encode_txs(batch))

    async def _retransmit(self) -> None:
        """Re-publish our messages of the current height while it is undecided.

        Votes go out every interval; a proposal (it carries the whole block) only when the
        height has made no progress for a few intervals, which is when someone may lack it.
        """
        ticks = 0
        last_height = -1
        while True:
            await trio.sleep(RETRANSMIT_INTERVAL_S)
            if self.height != last_height:
                last_height, ticks = self.height, 0
            ticks += 1
            for msg in list(self._own_messages):
                if isinstance(msg, messages.ProposalMsg) and ticks < PROPOSAL_RETRANSMIT_TICKS:
                    continue
                await self.network.publish(self.topic, messages.encode(msg))

    async def _timeout(self, t: _Timeout, duration_ms: int) -> None:
        await trio.sleep(duration_ms / 1000)
        await self._send.send(t)

    # ---- the loop ----------------------------------------------------------------------------

    def _handle(self, item: Any) -> None:
        if isinstance(item, _Incoming):
            self._on_message(item)
        elif isinstance(item, _Timeout):
            if item.height == self.height:
                self.wal.append(["timeout", int(item.kind), item.height, item.round])
                self._act(self.core.on_timeout(item.kind, item.height, item.round))
        elif isinstance(item, _Start):
            if item.height == self.height and self.core.height < item.height:
                self._enter_height(item.height, replay=False)
        elif isinstance(item, _Synced):
            if item.block.height == self.height:
                self._commit(item.block, item.commit, synced=True)

    def _note_height(self, peer: str, height: int) -> None:
        if height > self.peer_heights.get(peer, 0):
            self.peer_heights[peer] = height
        if height > self.height:
            self.blocksync.wake()

    def _on_message(self, item: _Incoming) -> None:
        msg = item.message
        if isinstance(msg, messages.EvidenceMsg):
            self._add_evidence(msg.evidence, item.from_peer)
            return
        height = msg.proposal.height if isinstance(msg, messages.ProposalMsg) else msg.vote.height
        if not self._signature_ok(msg):
            self.network.book.penalise(item.from_peer, BAD_MESSAGE_PENALTY,
                                       "consensus message with a bad signature or signer")
            return
        # Only a validator's signature makes a height worth syncing towards: an unsigned
        # claim of a huge height would keep us catching up forever.
        self._note_height(item.from_peer, height)
        if height < self.height:
            return
        if height > self.height or self.core.height < height:
            if height - self.height < MAX_BUFFERED_HEIGHTS and \
                    self._future_count < MAX_FUTURE_MESSAGES:
                self._future.setdefault(height, []).append(item)
                self._future_count += 1
                self._work.set()
            return
        self._feed(msg)

    def _signature_ok(self, msg: messages.ConsensusMessage) -> bool:
        if isinstance(msg, messages.ProposalMsg):
            return msg.proposal.verify(self.chain_id, self.validators)
        if isinstance(msg, messages.VoteMsg):
            return msg.vote.verify(self.chain_id, self.validators)
        return False

    def _feed(self, msg: messages.ConsensusMessage) -> None:
        if isinstance(msg, messages.ProposalMsg):
            p = msg.proposal
            key = (p.height, p.round, p.signature)
            if key in self._seen_proposals:
                return  # a retransmission: already validated and fed
            self._seen_proposals.add(key)
            valid = self._proposal_valid(p)
            self.wal.append(["proposal", p.to_list(), valid])
            self._act(self.core.on_proposal(p, valid))
        elif isinstance(msg, messages.VoteMsg):
            self.wal.append(["vote", msg.vote.to_list()])
            self._act(self.core.on_vote(msg.vote))

    def _proposal_valid(self, p: Proposal) -> bool:
        try:
            check_proposal(p, self.tip, self.params, self._now_ms())
        except InvalidBlock as exc:
            log.warning("invalid proposal at height %d round %d: %s", p.height, p.round, exc)
            return False
        return True

    def _enter_height(self, height: int, *, replay: bool) -> None:
        self._own_messages = []
        self._seen_proposals = set()
        self._round_started_at = trio.current_time()
        records = self.wal.records() if replay else []
        if replay and records and records[0] == ["height", height]:
            log.info("replaying %d WAL records at height %d", len(records) - 1, height)
            self._replaying = True
            try:
                self._act(self.core.start_height(height, self.validators))
                for record in records[1:]:
                    self._replay(record)
            finally:
                self._replaying = False
            deferred, self._deferred_value = self._deferred_value, None
            if deferred is not None:  # we crashed before choosing a value: choose one now
                self._act([deferred])
        else:
            self.wal.start_height(height)
            self._act(self.core.start_height(height, self.validators))
        for item in self._future.pop(height, []):
            self._future_count -= 1
            self._feed(item.message)

    def _replay(self, record: Any) -> None:
        kind = record[0]
        if kind == "proposal":
            self._act(self.core.on_proposal(Proposal.from_list(record[1]), bool(record[2])))
        elif kind == "vote":
            self._act(self.core.on_vote(Vote.from_list(record[1])))
        elif kind == "timeout":
            self._act(self.core.on_timeout(Step(record[1]), record[2], record[3]))
        elif kind == "value":
            self._deferred_value = None
            self._act(self.core.on_value(record[1], record[2], Block.from_list(record[3])))

    # ---- outputs -----------------------------------------------------------------------------

    def _act(self, outputs: list[Any]) -> None:
        for out in outputs:
            if isinstance(out, BroadcastVote):
                self._sign_and_send_vote(out)
            elif isinstance(out, BroadcastProposal):
                self._sign_and_send_proposal(out)
            elif isinstance(out, ScheduleTimeout):
                assert self._nursery is not None
                self._nursery.start_soon(self._timeout, _Timeout(out.kind, out.height, out.round),
                                         out.duration_ms)
            elif isinstance(out, RequestValue):
                if self._replaying:
                    self._deferred_value = out  # the WAL may hold the value chosen before
                    continue
                block = self._build_block(out.height, out.round)
                self.wal.append(["value", out.height, out.round, block.to_list()])
                self._act(self.core.on_value(out.height, out.round, block))
            elif isinstance(out, Decide):
                self._commit(out.block, out.commit, synced=False, round_=out.round)
            elif isinstance(out, Equivocation):
                self._add_evidence(out.evidence, None)

    def _publish(self, msg: messages.ConsensusMessage) -> None:
        self._own_messages.append(msg)
        assert self._nursery is not None
        self._nursery.start_soon(self.network.publish, self.topic, messages.encode(msg))

    def _sign_and_send_vote(self, out: BroadcastVote) -> None:
        assert self.key is not None, "a non-validator core never votes"
        vote = Vote.signed(self.key, self.chain_id, out.type, out.height, out.round, out.block_id)
        vote = self.store.record_signed_vote(vote)  # raises DoubleSignRefused
        if not self._replaying:
            self.wal.append(["vote", vote.to_list()])
            self.wal.sync()
        self._publish(messages.VoteMsg(vote))
        self._act(self.core.on_vote(vote))

    def _sign_and_send_proposal(self, out: BroadcastProposal) -> None:
        assert self.key is not None
        proposal = Proposal.signed(self.key, self.chain_id, out.height, out.round, out.pol_round,
                                   out.block)
        if not self._replaying:
            self.wal.append(["proposal", proposal.to_list(), True])
            self.wal.sync()
        self._publish(messages.ProposalMsg(proposal))
        self._act(self.core.on_proposal(proposal, True))

    def _build_block(self, height: int, round_: int) -> Block:
        assert self.own_address is not None
        txs = tuple(self.mempool.reap(self.params.max_block_bytes, self.params.max_block_txs))
        evidence = tuple(self._pending_evidence.values())[:10]
        header = Header(
            chain_id=self.chain_id, height=height,
            time_ms=max(self._now_ms(), self.tip.last_block_time_ms + 1),
            prev_block_id=self.tip.last_block_id, txs_hash=txs_hash(txs),
            app_hash=self.tip.app_hash, validators_hash=self.validators.hash(),
            proposer=self.own_address, evidence_hash=evidence_hash(evidence))
        return Block(header, txs, self.last_commit, evidence)

    def _add_evidence(self, evidence: DuplicateVoteEvidence, from_peer: str | None) -> None:
        key = evidence.hash()
        if key in self._pending_evidence or self.store.has_evidence(key):
            return
        try:
            evidence.check(self.chain_id, self.validators)
        except DecodeError as exc:
            if from_peer is not None:
                self.network.book.penalise(from_peer, BAD_MESSAGE_PENALTY, f"bad evidence: {exc}")
            return
        log.warning("equivocation by validator %s at height %d round %d",
                    evidence.vote_a.validator.hex(), evidence.vote_a.height,
                    evidence.vote_a.round)
        self.metrics.evidence.inc()
        self._pending_evidence[key] = evidence
        self._work.set()
        if from_peer is None:
            assert self._nursery is not None
            self._nursery.start_soon(self.network.publish, self.topic,
                                     messages.encode(messages.EvidenceMsg(evidence)))

    def _commit(self, block: Block, commit: Commit, *, synced: bool, round_: int = 0) -> None:
        height = block.height
        self.store.save_block(block, commit)
        app_hash = self._apply_to_app(block)
        self.mempool.update(height, list(block.txs))
        for ev in block.evidence:  # now in the store: never proposed again
            self._pending_evidence.pop(ev.hash(), None)
        interval = (block.header.time_ms - self.tip.last_block_time_ms) / 1000
        self.tip = ChainTip(self.chain_id, height, block.id, block.header.time_ms, app_hash,
                            self.validators, self.store.has_evidence)
        self.last_commit = commit
        self._record_metrics(block, commit, round_, interval, synced)
        log.info("committed block", extra={"height": height, "txs": len(block.txs),
                                           "round": round_, "synced": synced,
                                           "block_id": block.id.hex()[:16]})
        self.committed.set()
        self.committed = trio.Event()
        self._own_messages = []
        self.wal.start_height(height + 1)
        if self._initial_sync:
            return  # run() enters consensus once caught up
        if synced:
            self._enter_height(height + 1, replay=False)
        else:
            assert self._nursery is not None
            self._nursery.start_soon(self._start_later, height + 1)

    async def _start_later(self, height: int) -> None:
        await trio.sleep(self.timeouts.commit_ms / 1000)
        idle_s = (self.params.empty_block_interval_ms - self.timeouts.commit_ms) / 1000
        if idle_s > 0:
            # Nothing to commit: an empty block every timeout_commit_ms would keep every
            # validator signing, gossiping and fsyncing ten times a second for nothing.
            with trio.move_on_after(idle_s):
                while not self._has_work(height):
                    self._work = trio.Event()
                    await self._work.wait()
        await self._send.send(_Start(height))

    def _has_work(self, height: int) -> bool:
        """A tx or evidence to commit, or a validator already at `height` (join it)."""
        return self.mempool.size() > 0 or bool(self._pending_evidence) or height in self._future

    def _record_metrics(self, block: Block, commit: Commit, round_: int, interval: float,
                        synced: bool) -> None:
        m = self.metrics
        m.height.set(block.height)
        m.txs.inc(len(block.txs))
        m.txs_per_block.observe(len(block.txs))
        m.mempool_size.set(self.mempool.size())
        if not synced:
            m.rounds.observe(round_ + 1)
            if block.height > 1:
                m.block_interval.observe(max(interval, 0.0))
            signed = {s.validator for s in commit.signatures}
            m.missed_votes.inc(sum(1 for v in self.validators.validators
                                   if v.address not in signed))

    # ---- views -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        meta = self.store.block_meta(self.tip.height) if self.tip.height else None
        return {
            "chain_id": self.chain_id,
            "height": self.tip.height,
            "last_block_hash": self.tip.last_block_id.hex() if self.tip.last_block_id else None,
            "last_block_time": _iso(meta[1]) if meta else None,
            "app_hash": self.tip.app_hash.hex(),
            "validators": [{"address": v.address.hex(), "pub_key": v.pub_key.hex(),
                            "power": v.power} for v in self.validators.validators],
            "voting_power": self.validators.power_of(self.own_address) if self.own_address else 0,
            "catching_up": self.catching_up,
            "round": self.core.round,
            "mempool_size": self.mempool.size(),
        }


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
