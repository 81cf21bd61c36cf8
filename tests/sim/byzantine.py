"""Byzantine validators for the simulator: drivers that lie, with real signatures.

Each behaviour keeps an honest core for its own bookkeeping and deviates in what it sends.
Colluding Byzantine validators share an `Adversary`: one split of the honest validators into
two halves, and the pair of values they push on the two halves in each round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.consensus.core import BroadcastProposal, BroadcastVote, Output
from node.consensus.types import Block, Proposal, VoteType
from tests.sim.driver import CHAIN, INVALID_TX, Driver

if TYPE_CHECKING:
    from tests.sim.harness import Simulation


class Adversary:
    """What the Byzantine validators of one simulation share."""

    def __init__(self, sim: Simulation, honest: list[int], byzantine: list[int]) -> None:
        order = list(honest)
        sim.rng.shuffle(order)
        half = len(order) // 2
        self.group_a = tuple(sorted(order[:half]))
        self.group_b = tuple(sorted(order[half:]))
        self.byzantine = tuple(byzantine)
        self.split: dict[tuple[int, int], tuple[bytes, bytes]] = {}  # (h, r) -> (to a, to b)

    def side_a(self, me: int) -> tuple[int, ...]:
        return self.group_a + tuple(b for b in self.byzantine if b != me)

    def side_b(self) -> tuple[int, ...]:
        return self.group_b


class Silent(Driver):
    """Crashed from the start: sends nothing, answers nothing."""

    def start(self) -> None:
        pass

    def receive(self, src: int, msg: Any) -> None:
        pass

    def tick(self) -> None:
        pass


class _Liar(Driver):
    """Shared by the lying behaviours: no catch-up help for honest validators."""

    def help(self, peer: int, height: int) -> None:
        pass

    def help_round(self, peer: int, round_: int) -> None:
        pass


class Equivocator(_Liar):
    """Two different proposals to the two halves when proposing; in every round, prevotes and
    precommits for two values, one to each half (the equivocated pair when there is one,
    else its core's value and nil, alternating which half gets which)."""

    def __init__(self, sim: Simulation, index: int) -> None:
        super().__init__(sim, index)
        self.split_msgs: dict[tuple[int, int], tuple[Any, Any]] = {}

    def start_height(self, height: int) -> None:
        if self.core.height == height - 1 and self.core.decision is not None:
            self.split_msgs = {}
        super().start_height(height)

    def send_proposal(self, o: BroadcastProposal) -> list[Output]:
        adv = self.sim.adversary
        other = self.build_block(o.height)
        while other.id == o.block.id:  # pragma: no cover - random txs make this unlikely
            other = self.build_block(o.height)
        pa = Proposal.signed(self.key, CHAIN, o.height, o.round, o.pol_round, o.block)
        pb = Proposal.signed(self.key, CHAIN, o.height, o.round, -1, other)
        adv.split[(o.height, o.round)] = (pa.block_id, pb.block_id)
        self.split_msgs[(o.round, 0)] = (pa, pb)
        self.broadcast(pa, adv.side_a(self.index))
        self.broadcast(pb, adv.side_b())
        return self.core.on_proposal(pa, True)

    def send_vote(self, o: BroadcastVote) -> list[Output]:
        adv = self.sim.adversary
        pair: tuple[bytes | None, bytes | None] | None = adv.split.get((o.height, o.round))
        if pair is None:
            pair = (o.block_id, None) if o.round % 2 == 0 else (None, o.block_id)
        va = self.sim.crypto.vote(self.key, o.type, o.height, o.round, pair[0])
        vb = self.sim.crypto.vote(self.key, o.type, o.height, o.round, pair[1])
        self.split_msgs[(o.round, int(o.type))] = (va, vb)
        self.broadcast(va, adv.side_a(self.index))
        self.broadcast(vb, adv.side_b())
        own = self.sim.crypto.vote(self.key, o.type, o.height, o.round, o.block_id)
        return self.core.on_vote(own)

    def retransmit(self) -> None:
        if self.core.decision is not None or self.core.height == 0:
            return
        adv = self.sim.adversary
        for kind in (0, int(VoteType.PREVOTE), int(VoteType.PRECOMMIT)):
            pair = self.split_msgs.get((self.core.round, kind))
            if pair is not None:
                self.broadcast(pair[0], adv.side_a(self.index))
                self.broadcast(pair[1], adv.side_b())


class Mirror(Equivocator):
    """An equivocator that answers each honest validator's vote with its own vote for the
    same value, sent to that validator alone, so that everyone sees one more vote agreeing
    with itself. Its precommits for a value go to one honest validator per round only: that
    one may decide while the others, locked on the value, do not."""

    def __init__(self, sim: Simulation, index: int) -> None:
        super().__init__(sim, index)
        self.mirrored: set[tuple[int, int, int, int]] = set()  # (peer, height, round, type)
        self.favoured: dict[tuple[int, int], int] = {}  # (height, round) -> the one honest

    def send_vote(self, o: BroadcastVote) -> list[Output]:
        own = self.sim.crypto.vote(self.key, o.type, o.height, o.round, o.block_id)
        return self.core.on_vote(own)  # it speaks only through mirroring

    def receive(self, src: int, msg: Any) -> None:
        super().receive(src, msg)
        if isinstance(msg, Proposal) or src in self.sim.adversary.byzantine:
            return
        key = (src, msg.height, msg.round, int(msg.type))
        if key in self.mirrored or msg.height < self.core.height:
            return
        self.mirrored.add(key)
        value = msg.block_id
        if msg.type == VoteType.PRECOMMIT and value is not None and \
                self.favoured.setdefault((msg.height, msg.round), src) != src:
            value = None
        echo = self.sim.crypto.vote(self.key, msg.type, msg.height, msg.round, value)
        self.broadcast(echo, (src,))


class InvalidProposer(_Liar):
    """Honest, except that its fresh proposals carry a transaction the application rejects."""

    def build_block(self, height: int) -> Block:
        good = super().build_block(height).txs
        return self.make_block(height, (INVALID_TX + self.rng.randbytes(8),) + good)

    def send_proposal(self, o: BroadcastProposal) -> list[Output]:
        p = Proposal.signed(self.key, CHAIN, o.height, o.round, o.pol_round, o.block)
        self.own[(o.round, 0)] = p
        self.broadcast(p)
        return self.core.on_proposal(p, True)  # it believes in its own block


class RandomVoter(_Liar):
    """Honest, plus a spray of signed votes for random rounds (past, current and far ahead),
    random types and random values (nil, made-up ids, ids of real proposals), also for the
    next height, which conflict with its real votes."""

    def tick(self) -> None:
        super().tick()
        c = self.core
        if c.height == 0:
            return
        known: list[bytes | None] = [None, self.rng.randbytes(32)]
        known += [p.block_id for p in c.proposals(c.round)]
        for _ in range(4):
            height = c.height + (1 if self.rng.random() < 0.2 else 0)
            round_ = self.rng.randint(0, c.round + 12)
            vote_type = self.rng.choice([VoteType.PREVOTE, VoteType.PRECOMMIT])
            vote = self.sim.crypto.vote(self.key, vote_type, height, round_,
                                        self.rng.choice(known))
            self.broadcast(vote)


BEHAVIOURS: dict[str, type[Driver]] = {
    "silent": Silent,
    "equivocator": Equivocator,
    "mirror": Mirror,
    "invalid": InvalidProposer,
    "random": RandomVoter,
}
