"""Deterministic consensus simulation: N validators, each a ConsensusCore behind a tiny driver.

The driver does, in simulated time, what the trio driver does for real: it signs the core's
votes and proposals with real ed25519 keys (types.Vote.signed / types.Proposal.signed), sends
them to every peer and feeds them back to its own core, verifies every received signature
before the core sees the message, asks the "application" whether a block is valid, buffers
messages of the next height, fires timeouts from the simulated clock, starts the next height
after the commit timeout, and gossips:
- every `retransmit_ms` it re-sends its own votes of the current round and the proposals it
  holds for that round (with the prevotes of their pol_round), so that a lost message only
  delays a round (the paper assumes gossip: what one correct process receives, all do);
- to a peer still working on a height it has decided, it sends the decided proposal and the
  precommits that prove it (CometBFT's catch-up), since nobody re-sends old heights otherwise.

One seed determines everything: keys are fixed per index, every random choice comes from
`random.Random` instances derived from the seed, events run in (time, sequence) order, and no
set or hash-ordered collection is ever iterated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from node.codec import DecodeError
from node.consensus.core import (
    BroadcastProposal,
    BroadcastVote,
    ConsensusCore,
    Decide,
    Equivocation,
    Output,
    RequestValue,
    ScheduleTimeout,
    Step,
)
from node.consensus.timeouts import TimeoutParams
from node.consensus.types import (
    Block,
    Commit,
    DuplicateVoteEvidence,
    Header,
    Proposal,
    Validator,
    ValidatorSet,
    Vote,
    VoteType,
    evidence_hash,
    txs_hash,
)
from node.crypto import Ed25519Key
from tests.sim.network import Delivery, EventQueue, Network, NetworkConfig, NetworkStats, Partition

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


@dataclass(frozen=True)
class Stabilised:
    """Global stabilisation time: from here on, every honest validator must keep deciding."""


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
        if not self.sim.scenario.catchup or not proof or last is not None and self.now - last < self.sim.scenario.retransmit_ms:
            return
        self.helped[(peer, height)] = self.now
        for msg in proof:
            self.sim.network.send(self.index, peer, msg)


# ---- scenarios and runs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """What one simulation family varies; a seed then picks delays, drops, Byzantine slots."""

    name: str
    n: int = 4
    powers: tuple[int, ...] | None = None
    byzantine: tuple[str, ...] = ()  # behaviours (byzantine.BEHAVIOURS), one validator each
    network: NetworkConfig = NetworkConfig()
    partition_ms: tuple[int, int] | None = None  # a random two-way split, during [start, end)
    timeouts: TimeoutParams = TimeoutParams()
    retransmit_ms: int = 400
    heights_after_gst: int = 5
    liveness_ms: int = 60_000  # after stabilisation, everyone must decide that many heights
    max_byzantine_power_fraction: tuple[int, int] = (1, 3)  # strictly below this fraction
    core: type[ConsensusCore] = ConsensusCore
    catchup: bool = True  # honest drivers send decided heights to peers still working on them
    stop_on_violation: bool = False


@dataclass
class SimResult:
    scenario: str
    seed: int
    honest: list[int]
    byzantine: dict[int, str]
    decisions: dict[int, dict[int, bytes]]  # honest node -> height -> decided block id
    violations: list[str]
    live: bool
    stall: str
    end_ms: int
    events: int
    stats: NetworkStats
    trace: list[tuple[int, int, int, int, str]] = field(default_factory=list)

    def digest(self) -> str:
        """One string for the whole run, to compare two runs of a seed."""
        h = hashlib.sha256(repr((self.trace, self.end_ms, self.events, self.stats)).encode())
        return h.hexdigest()

    def describe(self) -> str:
        heights = {i: max(d, default=0) for i, d in self.decisions.items()}
        return (f"scenario {self.scenario} seed {self.seed}: byzantine {self.byzantine}, "
                f"decided heights {heights}, t={self.end_ms} ms, {self.events} events, "
                f"{self.stats}; reproduce with SIM_SEED={self.seed} SIM_SCENARIO={self.scenario}")


class Simulation:
    def __init__(self, scenario: Scenario, seed: int) -> None:
        from tests.sim.byzantine import BEHAVIOURS, Adversary  # byzantine builds on Driver

        self.scenario = scenario
        self.seed = seed
        self.rng = random.Random(seed)
        powers = scenario.powers or (1,) * scenario.n
        self.keys = [validator_key(i) for i in range(scenario.n)]
        self.validators = ValidatorSet(tuple(Validator(k.public_key, p)
                                             for k, p in zip(self.keys, powers, strict=True)))
        self.validators_hash = self.validators.hash()
        self.crypto = Crypto(self.validators)
        self.queue = EventQueue()
        network = scenario.network
        if scenario.partition_ms is not None:
            nodes = list(range(scenario.n))
            self.rng.shuffle(nodes)
            cut = self.rng.randint(1, scenario.n - 1)
            start, end = scenario.partition_ms
            split = Partition(start, end, (frozenset(nodes[:cut]), frozenset(nodes[cut:])))
            network = dataclasses.replace(network, partitions=network.partitions + (split,))
        self.network = Network(network, random.Random(self.rng.getrandbits(64)), self.queue)
        self.gst_ms = network.heal_ms
        self.byzantine = self._place_byzantine(powers)
        self.honest = [i for i in range(scenario.n) if i not in self.byzantine]
        self.adversary = Adversary(self, self.honest, sorted(self.byzantine))
        self.drivers: list[Driver] = [
            BEHAVIOURS[self.byzantine[i]](self, i) if i in self.byzantine else Driver(self, i)
            for i in range(scenario.n)]
        self._peers = [tuple(j for j in range(scenario.n) if j != i) for i in range(scenario.n)]
        self.violations: list[str] = []
        self.bad_signatures = 0
        self.decisions: dict[int, dict[int, bytes]] = {i: {} for i in self.honest}
        self.first_decider: dict[int, tuple[int, bytes]] = {}  # height -> (node, block id)
        self.trace: list[tuple[int, int, int, int, str]] = []
        self.base: dict[int, int] | None = None  # decided heights at stabilisation
        self.done = False

    def _place_byzantine(self, powers: tuple[int, ...]) -> dict[int, str]:
        behaviours = self.scenario.byzantine
        if not behaviours:
            return {}
        num, den = self.scenario.max_byzantine_power_fraction
        total = sum(powers)
        for _ in range(1000):
            chosen = self.rng.sample(range(self.scenario.n), len(behaviours))
            if sum(powers[i] for i in chosen) * den < total * num:
                return dict(zip(chosen, behaviours, strict=True))
        raise ValueError(f"scenario {self.scenario.name}: no placement of {behaviours} keeps "
                         f"the Byzantine power below {num}/{den}")

    def peers(self, index: int) -> tuple[int, ...]:
        return self._peers[index]

    def on_decide(self, driver: Driver, d: Decide) -> None:
        if driver.index not in self.decisions:
            return
        block_id = d.block.id
        self.decisions[driver.index][d.height] = block_id
        self.trace.append((self.queue.now_ms, driver.index, d.height, d.round,
                           block_id.hex()[:16]))
        first = self.first_decider.setdefault(d.height, (driver.index, block_id))
        if first[1] != block_id:
            self.violations.append(
                f"agreement violated at height {d.height}: node {first[0]} decided "
                f"{first[1].hex()[:16]}, node {driver.index} decided {block_id.hex()[:16]}")
        if self.base is not None:
            self.done = all(len(self.decisions[i]) >= self.base[i]
                            + self.scenario.heights_after_gst for i in self.honest)

    def run(self) -> SimResult:
        for d in self.drivers:
            d.start()
        self.queue.at(self.gst_ms, Stabilised())
        deadline = self.gst_ms + self.scenario.liveness_ms
        events = 0
        while len(self.queue) and self.queue.next_time_ms() <= deadline:
            item = self.queue.pop()
            events += 1
            if isinstance(item, Delivery):
                if self.network.arrives(item):
                    self.drivers[item.dst].receive(item.src, item.message)
            elif isinstance(item, Timer):
                self.drivers[item.node].timer(item)
            elif isinstance(item, Tick):
                self.drivers[item.node].tick()
            elif isinstance(item, StartHeight):
                self.drivers[item.node].start_height(item.height)
            elif isinstance(item, Stabilised):
                self.base = {i: len(self.decisions[i]) for i in self.honest}
            if self.done or (self.violations and self.scenario.stop_on_violation):
                break
        stall = "" if self.done else self._stall_report()
        return SimResult(self.scenario.name, self.seed, self.honest, self.byzantine,
                         self.decisions, self.violations + self._check_agreement(), self.done,
                         stall, self.queue.now_ms, events, self.network.stats, self.trace)

    def _check_agreement(self) -> list[str]:
        """Every pair of honest validators, every height: the same block (agreement)."""
        out = []
        heights = sorted({h for d in self.decisions.values() for h in d})
        for h in heights:
            ids = {d[h] for d in self.decisions.values() if h in d}
            if len(ids) > 1:
                out.append(f"height {h}: honest validators decided {len(ids)} different blocks")
        for i, d in self.decisions.items():
            if sorted(d) != list(range(1, len(d) + 1)):
                out.append(f"node {i} decided heights {sorted(d)}: not contiguous from 1")
        return out

    def _stall_report(self) -> str:
        parts = []
        for i in self.honest:
            c = self.drivers[i].core
            parts.append(f"node {i}: h={c.height} r={c.round} step={c.step.name} "
                         f"locked={c.locked_round} valid={c.valid_round} "
                         f"decided={c.decision is not None}")
        return "; ".join(parts)


def run(scenario: Scenario, seed: int) -> SimResult:
    return Simulation(scenario, seed).run()
