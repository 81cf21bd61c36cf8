"""The Tendermint round machine, rule by rule (arXiv:1807.04938, Algorithm 1).

Each test feeds inputs to one ConsensusCore ("us") and checks its outputs. Messages of the
other validators are really signed; our own votes are fed back, as the driver does.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.consensus.core import (
    MAX_UNSUPPORTED_PROPOSALS,
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

CHAIN = "test-chain"
PV, PC = VoteType.PREVOTE, VoteType.PRECOMMIT
T = TimeoutParams()

_SIGNED: dict[tuple[object, ...], object] = {}


def make_block(height: int, tag: str) -> Block:
    txs = (tag.encode(),)
    header = Header(CHAIN, height, 0, None if height == 1 else bytes(32), txs_hash(txs),
                    bytes(32), bytes(32), bytes(20), evidence_hash(()))
    return Block(header, txs, None, ())


A, B, C = make_block(1, "a"), make_block(1, "b"), make_block(1, "c")


class Net:
    """Four validators of power 1 (or `powers`); we are validator `me`."""

    def __init__(self, me: int | None = 2, powers: list[int] | None = None) -> None:
        self.keys = [Ed25519Key(hashlib.sha256(f"validator {i}".encode()).digest())
                     for i in range(4)]
        powers = powers or [1, 1, 1, 1]
        self.vs = ValidatorSet(tuple(Validator(k.public_key, p)
                                     for k, p in zip(self.keys, powers, strict=True)))
        self.addr = [bytes.fromhex(k.address) for k in self.keys]
        self.me = me
        self.core = ConsensusCore(chain_id=CHAIN, validators=self.vs, timeouts=T,
                                  own_address=None if me is None else self.addr[me])

    def proposer(self, round_: int, height: int = 1) -> int:
        return self.addr.index(self.vs.proposer(height, round_).address)

    def others(self) -> list[int]:
        return [i for i in range(4) if i != self.me]

    def vote(self, i: int, t: VoteType, round_: int, block: Block | None,
             height: int = 1) -> Vote:
        block_id = None if block is None else block.id
        key = ("vote", i, t, height, round_, block_id)
        if key not in _SIGNED:
            _SIGNED[key] = Vote.signed(self.keys[i], CHAIN, t, height, round_, block_id)
        v = _SIGNED[key]
        assert isinstance(v, Vote)
        return v

    def start(self, height: int = 1) -> list[Output]:
        return self.echo(self.core.start_height(height, self.vs))

    def propose(self, round_: int, block: Block, vr: int = -1, valid: bool = True,
                signer: int | None = None) -> list[Output]:
        i = self.proposer(round_, block.height) if signer is None else signer
        p = Proposal.signed(self.keys[i], CHAIN, block.height, round_, vr, block)
        return self.echo(self.core.on_proposal(p, valid))

    def votes(self, t: VoteType, round_: int, block: Block | None, who: list[int],
              height: int = 1) -> list[Output]:
        out: list[Output] = []
        for i in who:
            out += self.echo(self.core.on_vote(self.vote(i, t, round_, block, height)))
        return out

    def timeout(self, kind: Step, round_: int, height: int = 1) -> list[Output]:
        return self.echo(self.core.on_timeout(kind, height, round_))

    def echo(self, outputs: list[Output]) -> list[Output]:
        """Feed our own votes back, as the driver does; return everything emitted."""
        out = list(outputs)
        for o in outputs:
            if isinstance(o, BroadcastVote) and self.me is not None:
                v = Vote.signed(self.keys[self.me], CHAIN, o.type, o.height, o.round, o.block_id)
                out += self.echo(self.core.on_vote(v))
        return out

    def lock_on(self, block: Block, round_: int = 0) -> None:
        """Drive round `round_` until we precommit `block` (L36), then move to the next round."""
        others = self.others()
        self.propose(round_, block)
        self.votes(PV, round_, block, others[:2])
        assert self.core.locked_round == round_
        self.votes(PC, round_, None, others)
        self.timeout(Step.PRECOMMIT, round_)
        assert self.core.round == round_ + 1


def votes_of(outputs: list[Output]) -> list[tuple[VoteType, int, bytes | None]]:
    return [(o.type, o.round, o.block_id) for o in outputs if isinstance(o, BroadcastVote)]


def timeouts_of(outputs: list[Output]) -> list[tuple[Step, int, int]]:
    return [(o.kind, o.round, o.duration_ms) for o in outputs if isinstance(o, ScheduleTimeout)]


# ---- timeouts -----------------------------------------------------------------------------


def test_timeouts_grow_linearly_with_the_round() -> None:
    t = TimeoutParams()
    assert [t.propose(r) for r in range(3)] == [1000, 1500, 2000]
    assert [t.prevote(r) for r in range(3)] == [500, 750, 1000]
    assert [t.precommit(r) for r in range(3)] == [500, 750, 1000]
    assert 0 <= t.commit_ms <= 200
    assert t.propose(10**12) == 24 * 3600 * 1000  # a peer-driven huge round stays bounded


@pytest.mark.parametrize("bad", [{"propose_ms": -1}, {"prevote_delta_ms": 1.5},
                                 {"commit_ms": True}, {"precommit_ms": 10**12}])
def test_timeouts_reject_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="milliseconds"):
        TimeoutParams(**bad)  # type: ignore[arg-type]


def test_core_uses_its_timeout_params() -> None:
    net = Net()
    net.core.timeouts = TimeoutParams(propose_ms=7, propose_delta_ms=3)
    net.start()
    out = net.votes(PV, 2, None, [0, 1])  # L55 to round 2
    assert ScheduleTimeout(Step.PROPOSE, 1, 2, 13) in out


# ---- StartRound (L11-L21) -----------------------------------------------------------------


def test_l11_non_proposer_schedules_timeout_propose() -> None:
    net = Net()
    assert net.proposer(0) != net.me
    out = net.start()
    assert out == [ScheduleTimeout(Step.PROPOSE, 1, 0, T.propose(0))]
    assert (net.core.height, net.core.round, net.core.step) == (1, 0, Step.PROPOSE)


def test_l14_l18_proposer_asks_for_a_value_then_proposes_it_once() -> None:
    net = Net(me=0)
    assert net.proposer(0) == 0
    assert net.start() == [RequestValue(1, 0)]
    assert net.core.on_value(1, 0, A) == [BroadcastProposal(1, 0, A, -1)]
    assert net.core.on_value(1, 0, B) == []  # a second answer is ignored
    assert net.core.on_value(1, 5, B) == []  # and so is an answer for another round


def test_l15_proposer_re_proposes_its_valid_value_with_its_valid_round() -> None:
    net = Net()  # validator 2 proposes round 3 of height 1
    assert net.proposer(3) == 2
    net.start()
    net.lock_on(A, 0)
    net.timeout(Step.PROPOSE, 1)
    net.votes(PV, 1, None, net.others())
    net.votes(PC, 1, None, net.others())
    net.timeout(Step.PRECOMMIT, 1)
    net.timeout(Step.PROPOSE, 2)
    net.votes(PV, 2, None, net.others())
    net.votes(PC, 2, None, net.others())
    out = net.timeout(Step.PRECOMMIT, 2)
    assert out[0] == BroadcastProposal(1, 3, A, 0)  # no RequestValue: validValue is set
    assert not any(isinstance(o, RequestValue) for o in out)


# ---- L22-L27 ------------------------------------------------------------------------------


def test_l22_prevotes_a_valid_proposal() -> None:
    net = Net()
    net.start()
    assert votes_of(net.propose(0, A)) == [(PV, 0, A.id)]
    assert net.core.step == Step.PREVOTE


def test_l22_prevotes_nil_for_an_invalid_proposal() -> None:
    net = Net()
    net.start()
    assert votes_of(net.propose(0, A, valid=False)) == [(PV, 0, None)]


def test_l22_a_block_for_another_height_is_invalid() -> None:
    net = Net()
    net.start()
    wrong = make_block(2, "a")
    p = Proposal.signed(net.keys[net.proposer(0)], CHAIN, 1, 0, -1, wrong)
    assert votes_of(net.core.on_proposal(p, True)) == [(PV, 0, None)]


def test_l22_ignores_proposals_not_from_the_proposer() -> None:
    net = Net()
    net.start()
    intruder = net.proposer(1)
    assert net.propose(0, A, signer=intruder) == []
    assert net.core.step == Step.PROPOSE


def test_l22_ignores_a_pol_round_not_below_the_round() -> None:
    net = Net()
    net.start()
    assert net.propose(0, A, vr=0) == []
    assert net.core.proposals(0) == []


def test_l22_locked_validator_prevotes_nil_for_another_value_and_yes_for_its_own() -> None:
    net = Net()
    net.start()
    net.lock_on(A, 0)
    assert votes_of(net.propose(1, B)) == [(PV, 1, None)]
    net2 = Net()
    net2.start()
    net2.lock_on(A, 0)
    assert votes_of(net2.propose(1, A)) == [(PV, 1, A.id)]


# ---- L28-L33 ------------------------------------------------------------------------------


def test_l28_waits_for_the_polka_of_the_pol_round_then_prevotes() -> None:
    net = Net()
    net.start()
    net.timeout(Step.PROPOSE, 0)  # we missed the proposal of round 0: prevote nil
    net.votes(PC, 0, None, net.others())
    net.timeout(Step.PRECOMMIT, 0)
    assert net.propose(1, B, vr=0) == []  # no 2f+1 prevotes for B in round 0 (yet)
    out = net.votes(PV, 0, B, net.others())  # the polka arrives late
    assert votes_of(out) == [(PV, 1, B.id)]


def test_l28_polka_of_a_later_round_releases_the_lock() -> None:
    net = Net()
    net.start()
    net.lock_on(A, 0)
    net.timeout(Step.PROPOSE, 1)  # no proposal for us in round 1...
    net.votes(PV, 1, B, net.others())  # ...but the others formed a polka for B
    net.timeout(Step.PREVOTE, 1)
    net.votes(PC, 1, None, net.others())
    net.timeout(Step.PRECOMMIT, 1)
    assert net.core.locked_round == 0 and net.core.locked_value == A
    assert votes_of(net.propose(2, B, vr=1)) == [(PV, 2, B.id)]  # lockedRound 0 <= vr 1


def test_l28_lock_from_a_later_round_than_vr_wins() -> None:
    net = Net()
    net.start()
    net.timeout(Step.PROPOSE, 0)
    net.votes(PV, 0, B, net.others())  # polka for B in round 0 without its proposal
    net.timeout(Step.PREVOTE, 0)
    net.votes(PC, 0, None, net.others())
    net.timeout(Step.PRECOMMIT, 0)
    net.lock_on(A, 1)
    assert votes_of(net.propose(2, B, vr=0)) == [(PV, 2, None)]  # lockedRound 1 > vr 0


def test_l28_locked_value_is_prevoted_even_with_an_older_pol_round() -> None:
    net = Net()
    net.start()
    net.lock_on(A, 0)
    net.timeout(Step.PROPOSE, 1)
    net.votes(PC, 1, None, net.others())
    net.timeout(Step.PRECOMMIT, 1)
    assert votes_of(net.propose(2, A, vr=0)) == [(PV, 2, A.id)]


def test_l28_invalid_value_is_prevoted_nil() -> None:
    net = Net()
    net.start()
    net.timeout(Step.PROPOSE, 0)
    net.votes(PV, 0, B, net.others())
    net.votes(PC, 0, None, net.others())
    net.timeout(Step.PRECOMMIT, 0)
    assert votes_of(net.propose(1, B, vr=0, valid=False)) == [(PV, 1, None)]


# ---- L34, L44, L47, timeouts -------------------------------------------------------------


def test_l34_two_thirds_of_any_prevotes_schedule_timeout_prevote_once() -> None:
    net = Net()
    net.start()
    net.propose(0, A)  # we prevote A
    o = net.others()
    assert timeouts_of(net.votes(PV, 0, None, [o[0]])) == []
    assert timeouts_of(net.votes(PV, 0, B, [o[1]])) == [(Step.PREVOTE, 0, T.prevote(0))]
    assert timeouts_of(net.votes(PV, 0, None, [o[2]])) == []  # only the first time
    assert net.core.step == Step.PREVOTE


def test_l34_waits_for_the_prevote_step() -> None:
    net = Net()
    net.start()
    assert timeouts_of(net.votes(PV, 0, None, [0])) == []
    assert timeouts_of(net.votes(PV, 0, A, [1])) == []
    out = net.votes(PV, 0, B, [3])
    assert timeouts_of(out) == []  # still in propose: L34 needs step = prevote
    out = net.timeout(Step.PROPOSE, 0)  # L57: prevote nil, and now L34 holds
    assert votes_of(out) == [(PV, 0, None)]
    assert (Step.PREVOTE, 0, T.prevote(0)) in timeouts_of(out)


def test_l44_two_thirds_nil_prevotes_precommit_nil() -> None:
    net = Net()
    net.start()
    net.propose(0, A)
    out = net.votes(PV, 0, None, net.others())
    assert votes_of(out) == [(PC, 0, None)]
    assert net.core.step == Step.PRECOMMIT and net.core.locked_round == -1


def test_l47_two_thirds_of_any_precommits_schedule_timeout_precommit_in_any_step() -> None:
    net = Net()
    net.start()
    o = net.others()
    net.votes(PC, 0, A, o[:2])
    assert timeouts_of(net.votes(PC, 0, None, [o[2]])) == [(Step.PRECOMMIT, 0, T.precommit(0))]
    assert net.core.step == Step.PROPOSE
    assert timeouts_of(net.timeout(Step.PROPOSE, 0)) == []  # not again in this round


def test_l57_l61_l65_timeouts_and_stale_timeouts() -> None:
    net = Net()
    net.start()
    assert net.timeout(Step.PREVOTE, 0) == []  # wrong step
    assert net.timeout(Step.PROPOSE, 0, height=2) == []  # wrong height
    assert votes_of(net.timeout(Step.PROPOSE, 0)) == [(PV, 0, None)]  # L57
    assert net.timeout(Step.PROPOSE, 0) == []  # no longer in propose
    assert votes_of(net.timeout(Step.PREVOTE, 0)) == [(PC, 0, None)]  # L61
    assert net.timeout(Step.PRECOMMIT, 1) == []  # wrong round
    out = net.timeout(Step.PRECOMMIT, 0)  # L65
    assert net.core.round == 1 and net.core.step == Step.PROPOSE
    assert out == [ScheduleTimeout(Step.PROPOSE, 1, 1, T.propose(1))]
    assert T.propose(1) > T.propose(0)


# ---- L36-L43 ------------------------------------------------------------------------------


def test_l36_locks_precommits_and_sets_valid_value() -> None:
    net = Net()
    net.start()
    net.propose(0, A)
    out = net.votes(PV, 0, A, net.others()[:2])
    assert votes_of(out) == [(PC, 0, A.id)]
    c = net.core
    assert (c.locked_value, c.locked_round, c.valid_value, c.valid_round) == (A, 0, A, 0)
    assert votes_of(net.votes(PV, 0, A, net.others()[2:])) == []  # once per round


def test_l36_in_precommit_step_only_updates_the_valid_value() -> None:
    net = Net()
    net.start()
    net.timeout(Step.PROPOSE, 0)
    net.votes(PV, 0, A, net.others()[:2])  # 2f+1 of any, with ours (nil)
    assert votes_of(net.timeout(Step.PREVOTE, 0)) == [(PC, 0, None)]
    assert votes_of(net.votes(PV, 0, A, net.others()[2:])) == []  # polka for A
    out = net.propose(0, A)  # the proposal arrives last: L36 fires now
    assert votes_of(out) == []
    c = net.core
    assert (c.locked_round, c.valid_value, c.valid_round) == (-1, A, 0)


def test_l36_does_not_fire_for_an_invalid_value() -> None:
    net = Net()
    net.start()
    net.propose(0, A, valid=False)
    out = net.votes(PV, 0, A, net.others())
    assert votes_of(out) == []  # no lock on an invalid value: wait for timeoutPrevote
    assert net.core.valid_round == -1


# ---- L49-L54 ------------------------------------------------------------------------------


def test_l49_decides_with_a_commit_that_verifies() -> None:
    net = Net()
    net.start()
    net.propose(0, A)
    net.votes(PV, 0, A, net.others())
    out = net.votes(PC, 0, A, net.others()[:2])
    decides = [o for o in out if isinstance(o, Decide)]
    assert len(decides) == 1
    d = decides[0]
    assert (d.height, d.round, d.block) == (1, 0, A)
    d.commit.verify(CHAIN, net.vs)
    assert len(d.commit.signatures) == 3
    # After Decide nothing happens at this height, but precommits still join the commit.
    assert net.votes(PC, 0, A, net.others()[2:]) == []
    assert net.timeout(Step.PRECOMMIT, 0) == []
    assert net.propose(1, B) == []
    last = net.core.last_commit()
    assert last is not None and len(last.signatures) == 4


def test_l49_decides_on_precommits_of_an_earlier_round() -> None:
    net = Net()
    net.start()
    o = net.others()
    net.votes(PC, 0, B, o)  # the others decided B in round 0; we missed its proposal
    net.votes(PV, 1, None, o[:2])  # and moved on to round 1: so do we (L55)
    assert net.core.round == 1 and net.core.decision is None
    out = net.propose(0, B)  # the proposal of round 0 arrives late
    decide = [o for o in out if isinstance(o, Decide)]
    assert decide and decide[0].round == 0 and decide[0].block == B


def test_l49_never_decides_an_invalid_value() -> None:
    net = Net()
    net.start()
    net.propose(0, A, valid=False)
    out = net.votes(PC, 0, A, net.others())
    assert not any(isinstance(o, Decide) for o in out)
    assert net.core.decision is None


def test_start_height_resets_and_must_increase() -> None:
    net = Net()
    net.start()
    net.lock_on(A, 0)
    out = net.start(2)
    assert (net.core.height, net.core.round, net.core.locked_round) == (2, 0, -1)
    assert net.core.valid_value is None and out
    with pytest.raises(ValueError):
        net.core.start_height(2, net.vs)


# ---- L55 ----------------------------------------------------------------------------------


def test_l55_f_plus_one_messages_of_a_higher_round_skip_to_it() -> None:
    net = Net()
    net.start()
    o = net.others()
    assert net.votes(PV, 3, None, [o[0]]) == []  # f: not enough
    assert net.votes(PC, 3, None, [o[0]]) == []  # the same sender again: still f
    out = net.votes(PC, 3, A, [o[1]])  # f+1
    assert net.core.round == 3
    assert ScheduleTimeout(Step.PROPOSE, 1, 3, T.propose(3)) in out or net.proposer(3) == net.me


def test_l55_a_proposal_counts_as_a_message_of_its_round() -> None:
    net = Net()
    net.start()
    r = 2
    proposer = net.proposer(r)
    other = next(i for i in net.others() if i != proposer)
    net.propose(r, A)
    assert net.core.round == 0
    out = net.votes(PV, r, A, [other])
    assert net.core.round == r
    assert votes_of(out) == [(PV, r, A.id)]  # and the stored proposal is acted on (L22)


def test_l55_weighted_one_third_is_by_power() -> None:
    net = Net(powers=[1, 1, 1, 4])  # total 7, f+1 power is 3: validator 3 alone suffices
    net.start()
    net.votes(PV, 5, None, [3])
    assert net.core.round == 5


# ---- validators, followers, evidence, other heights ---------------------------------------


def test_follower_never_broadcasts_but_decides() -> None:
    net = Net(me=None)
    assert net.start() == [ScheduleTimeout(Step.PROPOSE, 1, 0, T.propose(0))]
    assert net.propose(0, A) == []
    net.votes(PV, 0, A, [0, 1, 2])
    out = net.votes(PC, 0, A, [0, 1, 2])
    assert [type(o) for o in out] == [Decide]  # L49 (L47 needs no timeout any more)


def test_equivocating_vote_is_reported() -> None:
    net = Net()
    net.start()
    net.votes(PV, 0, A, [0])
    out = net.votes(PV, 0, B, [0])
    ev = [o for o in out if isinstance(o, Equivocation)]
    assert len(ev) == 1
    ev[0].evidence.check(CHAIN, net.vs)
    assert net.core.votes.power(0, PV, B.id) == 0  # nobody proposed B: not counted
    assert votes_of(net.propose(0, B)) == [(PV, 0, B.id)]
    assert net.core.votes.power(0, PV, B.id) == 1  # ours; the equivocator's came too early


def test_an_equivocators_second_precommit_completes_the_commit() -> None:
    """Validator 3 showed us a precommit for A; the others decided B with its precommit for B.
    The paper counts distinct senders of <PRECOMMIT, h, r, id(B)>, so we decide B too."""
    net = Net(me=None)
    net.start()
    B0 = make_block(1, "b0")
    net.votes(PC, 0, A, [3])
    net.votes(PC, 0, B0, [0, 1])
    net.propose(0, B0)
    assert net.core.decision is None
    out = net.votes(PC, 0, B0, [3])
    assert [type(o) for o in out] == [Equivocation, Decide]
    decide = out[1]
    assert isinstance(decide, Decide) and decide.block == B0
    decide.commit.verify(CHAIN, net.vs)


def test_an_equivocating_proposer_cannot_make_us_hold_many_blocks() -> None:
    net = Net()
    net.start()
    blocks = [make_block(1, f"spam {i}") for i in range(12)]
    net.votes(PV, 0, blocks[3], [1])  # someone's first prevote supports block 3
    for b in blocks:
        net.propose(0, b)
    kept = [p.proposal.block for p in net.core.proposals(0)]
    assert len(kept) == 2 + MAX_UNSUPPORTED_PROPOSALS
    assert kept[0] == blocks[0]  # the first one, which we prevoted
    assert blocks[3] in kept  # supported by a vote
    assert kept[-MAX_UNSUPPORTED_PROPOSALS:] == blocks[-MAX_UNSUPPORTED_PROPOSALS:]


def test_a_validator_cannot_fill_many_future_rounds() -> None:
    net = Net()
    net.start()
    net.votes(PV, 5, A, [0])
    net.votes(PV, 6, A, [0])
    net.votes(PV, 7, A, [0])  # a third round ahead of ours: refused for now
    assert [net.core.votes.power(r, PV, A.id) for r in (5, 6, 7)] == [1, 1, 0]
    net.votes(PV, 6, None, [1])  # f+1 in round 6: we go there (L55)
    assert net.core.round == 6
    net.votes(PV, 7, A, [0])  # now round 7 is only one ahead
    assert net.core.votes.power(7, PV, A.id) == 1


def test_messages_of_other_heights_are_ignored() -> None:
    net = Net()
    net.start()
    assert net.votes(PV, 0, A, [0, 1, 3], height=2) == []
    assert net.propose(0, make_block(2, "x")) == []
    assert net.core.votes.power(0, PV, A.id) == 0


def test_nothing_happens_before_start_height() -> None:
    net = Net()
    assert net.votes(PV, 0, A, [0, 1, 3]) == []
    assert net.timeout(Step.PROPOSE, 0) == []


@pytest.mark.parametrize("powers", [[1, 1, 1, 1], [1, 2, 3, 4], [5, 1, 1, 1]])
def test_proposer_is_weighted_round_robin(powers: list[int]) -> None:
    net = Net(powers=powers)
    total = sum(powers)
    for height in (1, 7):
        seen = Counter(net.vs.proposer(height, r).address for r in range(3 * total))
        assert {a: seen[a] for a in net.addr} == \
            {a: 3 * net.vs.power_of(a) for a in net.addr}
        assert net.vs.proposer(height, 4) == net.vs.proposer(height, 4)  # deterministic


# ---- properties over random schedules -----------------------------------------------------

# Rounds are drawn relative to the core's current round, and values mostly A, so that random
# schedules do reach polkas, locks, round changes and decisions.
_delta = st.sampled_from([0, 0, 0, 0, 1, 2, -1])
_block = st.sampled_from([A, A, B, C])
_value = st.sampled_from([A, A, A, B, None])
_proposal = st.tuples(st.just("proposal"), _delta, _block, st.sampled_from([-1, -1, 1, 2]),
                      st.sampled_from([True, True, True, False]))
_vote = st.tuples(st.just("vote"), st.sampled_from([[0], [1], [3], [0, 1], [1, 3], [0, 1, 3]]),
                  st.sampled_from([PV, PC]), _delta, _value)
_timeout = st.tuples(st.just("timeout"), st.sampled_from(list(Step)), _delta)
_input = st.one_of(_proposal, _vote, _vote, _vote, _timeout)
SEEN_IN_RANDOM_SCHEDULES: Counter[str] = Counter()


@settings(max_examples=200, deadline=None)
@given(st.lists(_input, min_size=10, max_size=80))
def test_random_schedules_keep_the_invariants(inputs: list[tuple[object, ...]]) -> None:
    """Whatever arrives in whatever order: one vote per (round, type), locks are consistent,
    rounds never go back, one decision, and every decision carries a commit that verifies."""
    net = Net()
    out = net.start()
    for item in inputs:
        if net.core.decision is not None:
            break
        c = net.core
        before = c.round
        match item:
            case ("proposal", int(dr), Block() as b, int(back), bool(valid)):
                r = max(0, c.round + dr)
                out += net.propose(r, b, vr=-1 if back < 0 else r - back, valid=valid)
            case ("vote", list(who), VoteType() as t, int(dr), v):
                assert v is None or isinstance(v, Block)
                out += net.votes(t, max(0, c.round + dr), v, who)
            case ("timeout", Step() as kind, int(dr)):
                out += net.timeout(kind, max(0, c.round + dr))
        assert c.round >= before
        assert c.locked_round <= c.valid_round <= c.round
        assert (c.locked_round == -1) == (c.locked_value is None)
        assert (c.valid_round == -1) == (c.valid_value is None)
    sent = votes_of(out)
    assert len({(t, r) for t, r, _ in sent}) == len(sent)
    decides = [o for o in out if isinstance(o, Decide)]
    assert len(decides) <= 1
    for d in decides:
        d.commit.verify(CHAIN, net.vs)
        assert d.commit.block_id == d.block.id
    SEEN_IN_RANDOM_SCHEDULES.update(
        {"decide": bool(decides), "lock": net.core.locked_round >= 0,
         "round>0": net.core.round > 0, "precommit": any(t == PC for t, _, _ in sent)})


def test_random_schedules_reach_the_interesting_states() -> None:
    """The property above is not vacuous: its schedules lock, change rounds and decide."""
    if not SEEN_IN_RANDOM_SCHEDULES:
        pytest.skip("run together with test_random_schedules_keep_the_invariants")
    for what in ("decide", "lock", "round>0", "precommit"):
        assert SEEN_IN_RANDOM_SCHEDULES[what] >= 5, SEEN_IN_RANDOM_SCHEDULES
