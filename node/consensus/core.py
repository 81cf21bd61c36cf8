"""The Tendermint round state machine: Algorithm 1 of "The latest gossip on BFT consensus".

Buchman, Kwon, Milosevic, arXiv:1807.04938. Comments cite the paper's line numbers (L11 ...).

Sans-IO: `ConsensusCore` never sends, sleeps, reads a clock or draws a random number. The
driver feeds it verified messages, application verdicts and fired timeouts, and carries out
the returned outputs (sign and broadcast, schedule a timeout, ask for a block, commit). The
paper's "broadcast" includes the sender: the driver feeds our own signed messages back, and
only then do they count.

Structure, after malachite's core-state-machine:
- the *log*: every proposal and vote of the current height, all rounds (`_proposals`,
  `votes`); the paper's upon-rules are conditions over it;
- the *multiplexer* (`_enabled`): which rule conditions over the log hold now, as events;
- the *table* (`_apply`): one `match` on (step, event), one arm per rule of the paper.
After every input, `_run` applies enabled events until none changes the state, so an
upon-rule fires whenever its condition becomes true, whatever input made it true.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from node.consensus.timeouts import TimeoutParams
from node.consensus.types import (
    Block,
    Commit,
    DuplicateVoteEvidence,
    Proposal,
    ValidatorSet,
    Vote,
    VoteType,
)
from node.consensus.votes import VoteKeeper

# Beyond the first proposal of a round and those some vote supports, keep at most this many
# more from an (equivocating) proposer; the oldest unsupported one goes first.
MAX_UNSUPPORTED_PROPOSALS = 4


class Step(IntEnum):
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3


# ---- outputs: what the driver must do ---------------------------------------------------


@dataclass(frozen=True)
class RequestValue:
    """getValue() of L18: answer with on_value(height, round, block)."""

    height: int
    round: int


@dataclass(frozen=True)
class BroadcastProposal:
    """Sign and send <PROPOSAL, height, round, block, pol_round> (L19), to ourselves too."""

    height: int
    round: int
    block: Block
    pol_round: int


@dataclass(frozen=True)
class BroadcastVote:
    """Sign and send a prevote or precommit (block_id None: nil), to ourselves too."""

    type: VoteType
    height: int
    round: int
    block_id: bytes | None


@dataclass(frozen=True)
class ScheduleTimeout:
    """Call on_timeout(kind, height, round) after duration_ms."""

    kind: Step
    height: int
    round: int
    duration_ms: int


@dataclass(frozen=True)
class Decide:
    """`block` is decided at `height` (L51); `commit` holds the +2/3 precommits proving it."""

    height: int
    round: int
    block: Block
    commit: Commit


@dataclass(frozen=True)
class Equivocation:
    """A validator signed two different votes for one height, round and type."""

    evidence: DuplicateVoteEvidence


Output = RequestValue | BroadcastProposal | BroadcastVote | ScheduleTimeout | Decide | Equivocation


# ---- events: rule conditions that hold over the log (the table's inputs) -----------------


@dataclass(frozen=True)
class StoredProposal:
    """A proposal from the round's proposer, its block id, and the application's verdict."""

    proposal: Proposal
    block_id: bytes
    valid: bool


@dataclass(frozen=True)
class ValueReady:
    """getValue() returned (L18)."""

    block: Block


@dataclass(frozen=True)
class ProposalInRound:
    """<PROPOSAL, h, round, v, -1> from the proposer (L22)."""

    p: StoredProposal


@dataclass(frozen=True)
class ProposalAndPolkaPrevious:
    """<PROPOSAL, h, round, v, vr> and 2f+1 <PREVOTE, h, vr, id(v)>, 0 <= vr < round (L28)."""

    p: StoredProposal


@dataclass(frozen=True)
class PolkaAny:
    """2f+1 <PREVOTE, h, round, *> (L34)."""


@dataclass(frozen=True)
class ProposalAndPolkaCurrent:
    """<PROPOSAL, h, round, v, *>, valid(v), and 2f+1 <PREVOTE, h, round, id(v)> (L36)."""

    p: StoredProposal


@dataclass(frozen=True)
class PolkaNil:
    """2f+1 <PREVOTE, h, round, nil> (L44)."""


@dataclass(frozen=True)
class PrecommitAny:
    """2f+1 <PRECOMMIT, h, round, *> (L47)."""


@dataclass(frozen=True)
class ProposalAndCommit:
    """<PROPOSAL, h, r, v, *>, valid(v), and 2f+1 <PRECOMMIT, h, r, id(v)>, any r (L49)."""

    p: StoredProposal


@dataclass(frozen=True)
class SkipRound:
    """f+1 messages of some round above ours (L55)."""

    round: int


@dataclass(frozen=True)
class TimeoutPropose:
    round: int


@dataclass(frozen=True)
class TimeoutPrevote:
    round: int


@dataclass(frozen=True)
class TimeoutPrecommit:
    round: int


Event = (ValueReady | ProposalInRound | ProposalAndPolkaPrevious | PolkaAny
         | ProposalAndPolkaCurrent | PolkaNil | PrecommitAny | ProposalAndCommit | SkipRound
         | TimeoutPropose | TimeoutPrevote | TimeoutPrecommit)

_TIMEOUT_EVENTS: dict[Step, type[TimeoutPropose | TimeoutPrevote | TimeoutPrecommit]] = {
    Step.PROPOSE: TimeoutPropose, Step.PREVOTE: TimeoutPrevote, Step.PRECOMMIT: TimeoutPrecommit,
}


class ConsensusCore:
    """One validator's (or a follower's) Tendermint state for the current height."""

    def __init__(self, *, chain_id: str, validators: ValidatorSet, own_address: bytes | None,
                 timeouts: TimeoutParams) -> None:
        self.chain_id = chain_id
        self.own_address = own_address  # None: a non-validator that follows decisions
        self.timeouts = timeouts
        self.validators = validators
        self.height = 0  # nothing happens before start_height
        self.round = 0
        self.step = Step.PROPOSE
        self.locked_value: Block | None = None
        self.locked_round = -1
        self.valid_value: Block | None = None
        self.valid_round = -1
        self.decision: Block | None = None
        self.decision_round = -1
        self.votes = VoteKeeper(0, validators)
        self._locked_id: bytes | None = None
        self._proposals: dict[int, dict[tuple[bytes, int], StoredProposal]] = {}
        self._fired: set[int] = set()  # "for the first time" latches of this round: 34, 36, 47
        self._proposed: set[int] = set()  # rounds we sent a proposal in
        self._sent: dict[tuple[int, VoteType], bytes | None] = {}  # our votes of this height

    # ---- inputs ------------------------------------------------------------------------

    def start_height(self, height: int, validators: ValidatorSet) -> list[Output]:
        """Begin `height` with `validators` (after Decide and the commit timeout), at round 0."""
        if height <= self.height:
            raise ValueError(f"cannot start height {height}: already at height {self.height}")
        self.height = height
        self.validators = validators
        self.votes = VoteKeeper(height, validators)  # L54: the log of a height starts empty
        self.locked_value, self.locked_round, self._locked_id = None, -1, None  # L53
        self.valid_value, self.valid_round = None, -1  # L53
        self.decision, self.decision_round = None, -1
        self._proposals = {}
        self._proposed = set()
        self._sent = {}
        return self._run(self._start_round(0))  # L54

    def on_proposal(self, proposal: Proposal, valid: bool) -> list[Output]:
        """A proposal whose signature the caller verified; `valid` is the application's valid(v)."""
        r = proposal.round
        if proposal.height != self.height or self.decision is not None:
            return []
        if proposal.proposer != self.validators.proposer(self.height, r).address:
            return []  # only proposals "from proposer(h, r)" appear in any rule
        if not -1 <= proposal.pol_round < r:
            return []  # no rule accepts such a vr (L22 wants -1, L28 wants 0 <= vr < round)
        block_id = proposal.block_id
        round_proposals = self._proposals.get(r, {})
        if (block_id, proposal.pol_round) in round_proposals:
            return []
        if not self.votes.note_sender(r, proposal.proposer, self.round):
            return []  # too many rounds ahead of us from this validator; it will re-send
        valid = valid and proposal.block.height == self.height
        self._store(StoredProposal(proposal, block_id, valid))
        return self._run([])

    def on_vote(self, vote: Vote) -> list[Output]:
        """A vote whose signature the caller verified, from a member of the validator set.

        After Decide, precommits are still collected (see `last_commit`) and equivocation
        is still reported, but nothing else happens at this height.
        """
        if vote.height != self.height:
            return []
        result = self.votes.add(vote, self.round)
        out: list[Output] = []
        if result.evidence is not None:
            out.append(Equivocation(result.evidence))
        if not result.added or self.decision is not None:
            return out
        return self._run(out)

    def on_value(self, height: int, round: int, block: Block) -> list[Output]:
        """The answer to RequestValue(height, round); ignored once that round is over."""
        if height != self.height or round != self.round or self.decision is not None:
            return []
        return self._run(self._apply(ValueReady(block)) or [])

    def on_timeout(self, kind: Step, height: int, round: int) -> list[Output]:
        """A timeout scheduled by ScheduleTimeout fired; stale ones are ignored (L57, L61, L65)."""
        if height != self.height or self.decision is not None:
            return []
        return self._run(self._apply(_TIMEOUT_EVENTS[kind](round)) or [])

    # ---- queries -----------------------------------------------------------------------

    def last_commit(self) -> Commit | None:
        """After Decide: the commit with every precommit for the decided block seen so far."""
        if self.decision is None:
            return None
        return self.votes.commit(self.decision_round, self.decision.id)

    def proposals(self, round_: int) -> list[StoredProposal]:
        """The proposals kept for `round_` of this height, in arrival order."""
        return list(self._proposals.get(round_, {}).values())

    # ---- the multiplexer: which rule conditions hold over the log ------------------------

    def _enabled(self) -> Iterator[Event]:
        r = self.round
        for round_, block_id in self.votes.precommit_quorums():
            p = self._valid_proposal(round_, block_id)
            if p is not None:
                yield ProposalAndCommit(p)  # L49
        if self.step == Step.PROPOSE:
            for p in self._proposals.get(r, {}).values():
                vr = p.proposal.pol_round
                if vr == -1:
                    yield ProposalInRound(p)  # L22
                elif self.votes.has_quorum(vr, VoteType.PREVOTE, p.block_id):
                    yield ProposalAndPolkaPrevious(p)  # L28
        if 36 not in self._fired:
            polka = self.votes.quorum_block(r, VoteType.PREVOTE)
            p = None if polka is None else self._valid_proposal(r, polka)
            if p is not None:
                yield ProposalAndPolkaCurrent(p)  # L36
        if self.votes.has_quorum(r, VoteType.PREVOTE, None):
            yield PolkaNil()  # L44
        if 34 not in self._fired and self.votes.has_quorum_any(r, VoteType.PREVOTE):
            yield PolkaAny()  # L34
        if 47 not in self._fired and self.votes.has_quorum_any(r, VoteType.PRECOMMIT):
            yield PrecommitAny()  # L47
        higher = self.votes.skip_round(r)
        if higher is not None:
            yield SkipRound(higher)  # L55

    def _run(self, out: list[Output]) -> list[Output]:
        """Fire enabled rules until none changes the state (each arm that fires changes it)."""
        while self.decision is None:
            for event in self._enabled():
                fired = self._apply(event)
                if fired is not None:
                    out.extend(fired)
                    break
            else:
                break
        return out

    # ---- the table: one arm per rule of Algorithm 1 ------------------------------------

    def _apply(self, event: Event) -> list[Output] | None:
        """Apply `event` in the current step; None when no rule takes it in this step."""
        match self.step, event:
            case Step.PROPOSE, ValueReady(block) if self._is_proposer() and \
                    self.round not in self._proposed:
                return self._propose(block, -1)  # L18-L19: proposal <- getValue(), vr = -1

            case Step.PROPOSE, ProposalInRound(p):  # L22-L27
                if p.valid and (self.locked_round == -1 or self._locked_id == p.block_id):
                    return self._prevote(p.block_id)  # L24
                return self._prevote(None)  # L26

            case Step.PROPOSE, ProposalAndPolkaPrevious(p):  # L28-L33
                vr = p.proposal.pol_round
                if p.valid and (self.locked_round <= vr or self._locked_id == p.block_id):
                    return self._prevote(p.block_id)  # L30
                return self._prevote(None)  # L32

            case Step.PREVOTE, PolkaAny():  # L34-L35, first time in this round
                self._fired.add(34)
                return [self._schedule(Step.PREVOTE)]

            case Step.PREVOTE | Step.PRECOMMIT, ProposalAndPolkaCurrent(p):  # L36-L43
                self._fired.add(36)
                out: list[Output] = []
                if self.step == Step.PREVOTE:  # L37
                    self.locked_value, self.locked_round = p.proposal.block, self.round  # L38-39
                    self._locked_id = p.block_id
                    out = self._precommit(p.block_id)  # L40-L41
                self.valid_value, self.valid_round = p.proposal.block, self.round  # L42-L43
                return out

            case Step.PREVOTE, PolkaNil():  # L44-L46
                return self._precommit(None)

            case _, PrecommitAny():  # L47-L48, first time in this round, any step
                self._fired.add(47)
                return [self._schedule(Step.PRECOMMIT)]

            case _, ProposalAndCommit(p):  # L49-L54; the next height is start_height's job
                commit = self.votes.commit(p.proposal.round, p.block_id)
                if commit is None:  # pragma: no cover - the multiplexer checked the quorum
                    raise AssertionError("L49 fired without +2/3 precommits")
                self.decision, self.decision_round = p.proposal.block, p.proposal.round
                return [Decide(self.height, p.proposal.round, p.proposal.block, commit)]

            case _, SkipRound(higher):  # L55-L56
                return self._start_round(higher)

            case Step.PROPOSE, TimeoutPropose(r) if r == self.round:  # L57-L60
                return self._prevote(None)

            case Step.PREVOTE, TimeoutPrevote(r) if r == self.round:  # L61-L64
                return self._precommit(None)

            case _, TimeoutPrecommit(r) if r == self.round:  # L65-L67
                return self._start_round(r + 1)

        return None

    # ---- actions -----------------------------------------------------------------------

    def _start_round(self, round_: int) -> list[Output]:
        """StartRound (L11-L21)."""
        self.round, self.step = round_, Step.PROPOSE  # L12-L13
        self._fired = set()
        if self._is_proposer():  # L14
            if self.valid_value is not None:  # L15-L16: re-propose what may be decided
                return self._propose(self.valid_value, self.valid_round)
            return [RequestValue(self.height, round_)]  # L18: getValue(), answered by on_value
        return [self._schedule(Step.PROPOSE)]  # L21

    def _propose(self, block: Block, pol_round: int) -> list[Output]:
        if self.round in self._proposed:
            raise AssertionError(f"second proposal for height {self.height} round {self.round}")
        self._proposed.add(self.round)
        return [BroadcastProposal(self.height, self.round, block, pol_round)]  # L19

    def _prevote(self, block_id: bytes | None) -> list[Output]:
        self.step = Step.PREVOTE
        return self._vote(VoteType.PREVOTE, block_id)

    def _precommit(self, block_id: bytes | None) -> list[Output]:
        self.step = Step.PRECOMMIT
        return self._vote(VoteType.PRECOMMIT, block_id)

    def _vote(self, vote_type: VoteType, block_id: bytes | None) -> list[Output]:
        if not self._is_validator():
            return []
        key = (self.round, vote_type)
        if key in self._sent:  # each step is left once per round, so this cannot happen
            raise AssertionError(f"second {vote_type.name} for height {self.height} round "
                                 f"{self.round} (had {self._sent[key]!r}, now {block_id!r})")
        self._sent[key] = block_id
        return [BroadcastVote(vote_type, self.height, self.round, block_id)]

    def _schedule(self, kind: Step) -> ScheduleTimeout:
        duration = {Step.PROPOSE: self.timeouts.propose, Step.PREVOTE: self.timeouts.prevote,
                     Step.PRECOMMIT: self.timeouts.precommit}[kind](self.round)
        return ScheduleTimeout(kind, self.height, self.round, duration)

    # ---- helpers -----------------------------------------------------------------------

    def _is_validator(self) -> bool:
        return self.own_address is not None and self.validators.get(self.own_address) is not None

    def _is_proposer(self) -> bool:
        return self.own_address is not None and \
            self.validators.proposer(self.height, self.round).address == self.own_address

    def _valid_proposal(self, round_: int, block_id: bytes) -> StoredProposal | None:
        for p in self._proposals.get(round_, {}).values():
            if p.block_id == block_id and p.valid:
                return p
        return None

    def _store(self, p: StoredProposal) -> None:
        """Keep `p`; bound what an equivocating proposer can make us hold for one round.

        The first proposal of a round stays, and so does any whose value some validator's
        first vote of the round supports (at most two values per validator); of the others,
        only the newest MAX_UNSUPPORTED_PROPOSALS stay.
        """
        r = p.proposal.round
        kept = self._proposals.setdefault(r, {})
        kept[(p.block_id, p.proposal.pol_round)] = p
        self.votes.track(p.block_id)
        unsupported = [key for i, (key, q) in enumerate(kept.items())
                       if i > 0 and self.votes.first_power(r, VoteType.PREVOTE, q.block_id) == 0
                       and self.votes.first_power(r, VoteType.PRECOMMIT, q.block_id) == 0]
        for key in unsupported[:max(0, len(unsupported) - MAX_UNSUPPORTED_PROPOSALS)]:
            self.votes.untrack(kept.pop(key).block_id)
