"""The simulator's validator: a ConsensusCore behind a tiny driver, in simulated time.

The driver does, in simulated time, what the trio driver does for real: it signs the core's
votes and proposals with real ed25519 keys (types.Vote.signed / types.Proposal.signed), sends
them to every peer and feeds them back to its own core, verifies every received signature
before the core sees the message, asks the "application" whether a block is valid, buffers
messages of the next height, fires timeouts from the simulated clock, starts the next height
after the commit timeout, and gossips:
- every `retransmit_ms` it re-sends its own votes of the current round and the proposals it
  holds for that round (with the prevotes of their pol_round, which L28 needs and which a
  Byzantine validator may have shown to some validators only), so that a lost message only
  delays a round (the paper assumes gossip: what one correct process receives, all do);
- to a peer still in an earlier round of its height, it sends the votes it holds for that
  round: it no longer re-sends them itself, and the peer may need exactly those to move on;
- to a peer still working on a height it has decided, it sends the decided proposal and the
  precommits that prove it (CometBFT's catch-up), since nobody re-sends old heights otherwise.
Re-sending only our own current-round votes is not enough: with that alone (height catch-up
kept), 7-51 % of the seeds of each equivocating-Byzantine scenario stall.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node.codec import DecodeError
from node.consensus.core import (
    BroadcastProposal,
    BroadcastVote,
    Decide,
    Equivocation,
    Output,
    RequestValue,
    ScheduleTimeout,
    Step,
)
from node.consensus.types import (
    Block,
    Commit,
    DuplicateVoteEvidence,
    Header,
    Proposal,
    ValidatorSet,
    Vote,
    VoteType,
    evidence_hash,
    txs_hash,
)
from node.crypto import Ed25519Key

if TYPE_CHECKING:
    from tests.sim.harness import Simulation

CHAIN = "sim-chain"
GENESIS_APP_HASH = hashlib.sha256(b"sim genesis state").digest()
INVALID_TX = b"invalid:"  # the sim application rejects any block carrying such a tx
MAX_EVIDENCE_PER_BLOCK = 4


def validator_key(index: int) -> Ed25519Key:
    return Ed25519Key(hashlib.sha256(f"sim validator {index}".encode()).digest())


class Crypto:
    """Real ed25519, each signature made and each verification done once per simulation."""

    def __init__(self, validators: ValidatorSet) -> None:
        self.validators = validators
        self._votes: dict[tuple[bytes, VoteType, int, int, bytes | None], Vote] = {}
        self._vote_ok: dict[Vote, bool] = {}
        self._proposal_ok: dict[tuple[bytes, int, int, int, bytes, bytes], bool] = {}

    def vote(self, key: Ed25519Key, t: VoteType, height: int, round_: int,
             block_id: bytes | None) -> Vote:
        k = (key.seed, t, height, round_, block_id)
        v = self._votes.get(k)
        if v is None:
            v = self._votes[k] = Vote.signed(key, CHAIN, t, height, round_, block_id)
        return v

    def vote_ok(self, vote: Vote) -> bool:
        ok = self._vote_ok.get(vote)
        if ok is None:
            ok = self._vote_ok[vote] = vote.verify(CHAIN, self.validators)
        return ok

    def proposal_ok(self, p: Proposal) -> bool:
        k = (p.proposer, p.height, p.round, p.pol_round, p.block_id, p.signature)
        ok = self._proposal_ok.get(k)
        if ok is None:
            ok = self._proposal_ok[k] = p.verify(CHAIN, self.validators)
        return ok

    def commit_ok(self, commit: Commit) -> bool:
        """Commit.verify, through the vote cache: each CommitSig is a precommit we may know."""
        seen: set[bytes] = set()
        power = 0
        for s in commit.signatures:
            vote = Vote(VoteType.PRECOMMIT, commit.height, commit.round, commit.block_id,
                        s.validator, s.signature)
            if s.validator in seen or not self.vote_ok(vote):
                return False
            seen.add(s.validator)
            power += self.validators.power_of(s.validator)
        return power >= self.validators.quorum

    def evidence_ok(self, ev: DuplicateVoteEvidence) -> bool:
        a, b = ev.vote_a, ev.vote_b
        return (a.type, a.height, a.round, a.validator) == (b.type, b.height, b.round,
                                                            b.validator) \
            and a.block_id != b.block_id and self.vote_ok(a) and self.vote_ok(b)


# ---- events on the simulated clock ----------------------------------------------------------


@dataclass(frozen=True)
class Timer:
    node: int
    kind: Step
    height: int
    round: int


@dataclass(frozen=True)
class Tick:
    node: int


@dataclass(frozen=True)
class StartHeight:
    node: int
    height: int


# ---- the driver ---------------------------------------------------------------------------


class Driver:
    """An honest validator: a ConsensusCore and the I/O around it, in simulated time."""

    def __init__(self, sim: Simulation, index: int) -> None:
        self.sim = sim
        self.index = index
        self.key = sim.keys[index]
        self.address = bytes.fromhex(self.key.address)
        self.core = sim.scenario.core(chain_id=CHAIN, validators=sim.validators,
                                      own_address=self.address, timeouts=sim.scenario.timeouts)
        self.rng = random.Random(f"{sim.seed}/{index}")
        self.decided: dict[int, Block] = {}
        self.app_hash = GENESIS_APP_HASH
        self.last_block: Block | None = None
        self.last_commit: Commit | None = None
        self.catchup: dict[int, list[Any]] = {}  # height -> decided proposal and its precommits
        self.helped: dict[tuple[int, int], int] = {}  # (peer, height or -1-round) -> when
        self.future: dict[Any, None] = {}  # verified messages of the next height, in order
        self.own: dict[tuple[int, int], Any] = {}  # (round, 0 proposal / vote type) -> message
        self.valid_cache: dict[bytes, bool] = {}
        self.evidence_pending: dict[bytes, DuplicateVoteEvidence] = {}
        self.evidence_committed: set[bytes] = set()

    @property
    def now(self) -> int:
        return self.sim.queue.now_ms

    # ---- inputs from the simulation -----------------------------------------------------

    def start(self) -> None:
        self.act(self.core.start_height(1, self.sim.validators))
        self.sim.queue.after(self.rng.randint(1, self.sim.scenario.retransmit_ms), Tick(self.index))

    def receive(self, src: int, msg: Any) -> None:
        ok = self.sim.crypto.proposal_ok(msg) if isinstance(msg, Proposal) \
            else self.sim.crypto.vote_ok(msg)
        if not ok:
            self.sim.bad_signatures += 1
            return
        height = self.core.height
        if msg.height < height:
            self.help(src, msg.height)
        elif msg.height == height + 1:
            self.future[msg] = None
        elif msg.height == height:
            if msg.round < self.core.round and self.core.decision is None:
                self.help_round(src, msg.round)
            self.feed(msg)

    def timer(self, t: Timer) -> None:
        self.act(self.core.on_timeout(t.kind, t.height, t.round))

    def tick(self) -> None:
        self.retransmit()
        self.sim.queue.after(self.sim.scenario.retransmit_ms, Tick(self.index))

    def start_height(self, height: int) -> None:
        if self.core.height != height - 1 or self.core.decision is None:
            return
        self.last_commit = self.core.last_commit()  # with the precommits that came in late
        self.own = {}
        self.valid_cache = {}
        self.helped = {k: t for k, t in self.helped.items() if k[1] >= 0}
        self.act(self.core.start_height(height, self.sim.validators))
        buffered, self.future = list(self.future), {}
        for msg in buffered:
            self.feed(msg)

    # ---- the core's side ----------------------------------------------------------------

    def feed(self, msg: Any) -> None:
        if self.core.decision is not None and isinstance(msg, Proposal):
            return  # (votes still go in: late precommits join the next block's last commit)
        if isinstance(msg, Proposal):
            self.act(self.core.on_proposal(msg, self.valid(msg.block)))
        else:
            self.act(self.core.on_vote(msg))

    def act(self, outputs: list[Output]) -> None:
        work = deque(outputs)
        while work:
            o = work.popleft()
            if isinstance(o, BroadcastVote):
                work.extend(self.send_vote(o))
            elif isinstance(o, BroadcastProposal):
                work.extend(self.send_proposal(o))
            elif isinstance(o, ScheduleTimeout):
                self.sim.queue.after(o.duration_ms, Timer(self.index, o.kind, o.height, o.round))
            elif isinstance(o, RequestValue):
                work.extend(self.core.on_value(o.height, o.round, self.build_block(o.height)))
            elif isinstance(o, Decide):
                self.decide(o)
            elif isinstance(o, Equivocation):
                self.evidence_pending.setdefault(o.evidence.hash(), o.evidence)

    def send_vote(self, o: BroadcastVote) -> list[Output]:
        vote = self.sim.crypto.vote(self.key, o.type, o.height, o.round, o.block_id)
        self.own[(o.round, int(o.type))] = vote
        self.broadcast(vote)
        return self.core.on_vote(vote)

    def send_proposal(self, o: BroadcastProposal) -> list[Output]:
        p = Proposal.signed(self.key, CHAIN, o.height, o.round, o.pol_round, o.block)
        self.own[(o.round, 0)] = p
        self.broadcast(p)
        return self.core.on_proposal(p, self.valid(p.block))

    def decide(self, d: Decide) -> None:
        block = d.block
        if not self.sim.crypto.commit_ok(d.commit) or d.commit.block_id != block.id:
            self.sim.violations.append(f"node {self.index}: Decide at height {d.height} "
                                       "carries a commit that does not verify")
        self.decided[d.height] = block
        self.app_hash = hashlib.sha256(self.app_hash + block.header.txs_hash).digest()
        self.last_block = block
        for ev in block.evidence:
            self.evidence_committed.add(ev.hash())
            self.evidence_pending.pop(ev.hash(), None)
        proof: list[Any] = [p.proposal for p in self.core.proposals(d.round)
                            if p.block_id == block.id][:1]
        proof += self.core.votes.votes_for(d.round, VoteType.PRECOMMIT, block.id)
        self.catchup[d.height] = proof
        self.sim.on_decide(self, d)
        self.sim.queue.after(self.sim.scenario.timeouts.commit_ms,
                             StartHeight(self.index, d.height + 1))

    # ---- the application ----------------------------------------------------------------

    def build_block(self, height: int) -> Block:
        txs = tuple(self.rng.randbytes(self.rng.randint(8, 40))
                    for _ in range(self.rng.randint(0, 4)))
        return self.make_block(height, txs)

    def make_block(self, height: int, txs: tuple[bytes, ...]) -> Block:
        evidence = tuple(self.evidence_pending.values())[:MAX_EVIDENCE_PER_BLOCK]
        last = self.last_block
        header = Header(
            chain_id=CHAIN, height=height,
            time_ms=max(self.now, last.header.time_ms + 1 if last else 0),
            prev_block_id=last.id if last else None, txs_hash=txs_hash(txs),
            app_hash=self.app_hash, validators_hash=self.sim.validators_hash,
            proposer=self.address, evidence_hash=evidence_hash(evidence))
        return Block(header, txs, self.last_commit if height > 1 else None, evidence)

    def valid(self, block: Block) -> bool:
        """valid(v) of the paper: the sim application's verdict on a proposed block."""
        block_id = block.id
        ok = self.valid_cache.get(block_id)
        if ok is None:
            ok = self.valid_cache[block_id] = self._check(block)
        return ok

    def _check(self, block: Block) -> bool:
        try:
            block.check_structure()
        except DecodeError:
            return False
        h, last = block.header, self.last_block
        if (h.chain_id, h.height, h.prev_block_id, h.app_hash, h.validators_hash) != \
                (CHAIN, self.core.height, last.id if last else None, self.app_hash,
                 self.sim.validators_hash):
            return False
        if last is not None and h.time_ms <= last.header.time_ms:
            return False
        if any(tx.startswith(INVALID_TX) for tx in block.txs):
            return False
        if block.last_commit is not None and not self.sim.crypto.commit_ok(block.last_commit):
            return False
        hashes = [ev.hash() for ev in block.evidence]
        if len(set(hashes)) != len(hashes) or any(x in self.evidence_committed for x in hashes):
            return False
        return all(self.sim.crypto.evidence_ok(ev) for ev in block.evidence)

    # ---- gossip -------------------------------------------------------------------------

    def broadcast(self, msg: Any, to: tuple[int, ...] | None = None) -> None:
        for peer in self.sim.peers(self.index) if to is None else to:
            self.sim.network.send(self.index, peer, msg)

    def retransmit(self) -> None:
        if self.core.decision is not None or self.core.height == 0:
            return
        r = self.core.round
        msgs: dict[Any, None] = {}
        for p in self.core.proposals(r):
            msgs[p.proposal] = None
            if p.proposal.pol_round >= 0:
                for v in self.core.votes.votes_for(p.proposal.pol_round, VoteType.PREVOTE,
                                                   p.block_id):
                    msgs[v] = None
        for kind in (0, int(VoteType.PREVOTE), int(VoteType.PRECOMMIT)):
            own = self.own.get((r, kind))
            if own is not None:
                msgs[own] = None
        for msg in msgs:
            self.broadcast(msg)

    def help_round(self, peer: int, round_: int) -> None:
        """Send a peer still in an earlier round of our height the votes we hold for it.

        We re-send only our current round's messages, so without this, a vote we took to
        move on could be lost to the peer for good, and the peer would wait forever.
        """
        key = (peer, -1 - round_)  # rounds of this height, apart from heights in `helped`
        last = self.helped.get(key)
        if last is not None and self.now - last < self.sim.scenario.retransmit_ms:
            return
        self.helped[key] = self.now
        for t in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            for v in self.core.votes.votes_in(round_, t):
                self.sim.network.send(self.index, peer, v)

    def help(self, peer: int, height: int) -> None:
        """Send a peer stuck at `height` what proves our decision there (catch-up)."""
        proof = self.catchup.get(height)
        last = self.helped.get((peer, height))
        if not self.sim.scenario.catchup or not proof or \
                last is not None and self.now - last < self.sim.scenario.retransmit_ms:
            return
        self.helped[(peer, height)] = self.now
        for msg in proof:
            self.sim.network.send(self.index, peer, msg)
