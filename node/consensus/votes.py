"""Vote keeping for one height: weighted counts per round, type and value, and equivocation.

The Tendermint rules are all thresholds over the messages of the current height, in every
round (not only the current one): +2/3 of the voting power for one value (L28, L36, L44, L49),
+2/3 for anything including nil (L34, L47), and more than 1/3 sending any message in a higher
round (L55).

Counting, as the paper's message log does:
- "+2/3 for anything" and "f+1 senders" count each validator once per round (and type);
- "+2/3 for id(v)" counts the distinct validators that sent a vote for id(v).
A validator that signs two different votes in one (round, type) is reported once as
DuplicateVoteEvidence. Its second vote never adds to "+2/3 for anything", and never counts twice
for one value, but it does count for its own value when that value is *tracked* (nil, or the
block of a proposal we hold): that is the paper's rule (2f+1 <PRECOMMIT, h, r, id(v)> messages
from distinct processes), and it is what lets a correct validator that first saw the
equivocator's vote for A still see the +2/3 for B that everyone else decided. Quorums of two
different values still need more than 1/3 Byzantine power, so safety is unchanged. Tracking
keeps a Byzantine validator from making us store votes for values nobody proposed.

Votes for rounds above the current one are needed (L55, and L28/L36/L49 once we get there) but
a Byzantine validator could sign votes for millions of rounds. As CometBFT does with its
"catch-up rounds", each validator may occupy at most `max_future_rounds` distinct rounds above
the current one; further future-round messages are refused until we advance. Correct
validators re-send the votes of their current round, so a refused message only delays us.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.consensus.types import (
    Commit,
    CommitSig,
    DuplicateVoteEvidence,
    ValidatorSet,
    Vote,
    VoteType,
)

DEFAULT_MAX_FUTURE_ROUNDS = 2


@dataclass
class VoteTally:
    """The votes of one (round, type), per validator and per value (block id, None for nil)."""

    first: dict[bytes, Vote] = field(default_factory=dict)  # validator -> its first vote
    total: int = 0  # power of the first votes: each validator once, nil included
    first_power: dict[bytes | None, int] = field(default_factory=dict)  # value -> first votes
    by_value: dict[bytes | None, dict[bytes, Vote]] = field(default_factory=dict)
    power: dict[bytes | None, int] = field(default_factory=dict)  # value -> distinct voters


@dataclass(frozen=True)
class AddResult:
    """What adding a vote did: `added` when it now counts; `evidence` when it conflicts."""

    added: bool
    evidence: DuplicateVoteEvidence | None = None


class VoteKeeper:
    """Every prevote and precommit of one height, with the threshold queries of the paper."""

    def __init__(self, height: int, validators: ValidatorSet,
                 max_future_rounds: int = DEFAULT_MAX_FUTURE_ROUNDS) -> None:
        self.height = height
        self.validators = validators
        self.quorum = validators.quorum  # 2f+1: strictly more than 2/3 of the power
        self.one_third = validators.one_third  # f+1: strictly more than 1/3 of the power
        self.max_future_rounds = max_future_rounds
        self._tallies: dict[tuple[int, VoteType], VoteTally] = {}
        # L55 counts senders of any message of a round, proposals included.
        self._senders: dict[int, dict[bytes, None]] = {}
        self._sender_power: dict[int, int] = {}
        self._rounds_of: dict[bytes, set[int]] = {}  # validator -> rounds it has messages in
        self._reported: set[tuple[int, VoteType, bytes]] = set()
        self._precommit_quorums: dict[tuple[int, bytes], None] = {}  # (round, block id)
        self._tracked: dict[bytes, int] = {}  # block id -> number of held proposals for it

    # ---- adding ------------------------------------------------------------------------

    def add(self, vote: Vote, current_round: int) -> AddResult:
        """Count `vote` (signature already verified); report it if it conflicts."""
        power = self.validators.power_of(vote.validator)
        if vote.height != self.height or power == 0:
            return AddResult(False)
        tally = self._tallies.get((vote.round, vote.type))
        first = None if tally is None else tally.first.get(vote.validator)
        if tally is None or first is None:
            if not self.note_sender(vote.round, vote.validator, current_round):
                return AddResult(False)
            if tally is None:
                tally = self._tallies[(vote.round, vote.type)] = VoteTally()
            tally.first[vote.validator] = vote
            tally.total += power
            tally.first_power[vote.block_id] = tally.first_power.get(vote.block_id, 0) + power
            self._count(tally, vote, power)
            return AddResult(True)
        if vote.validator in tally.by_value.get(vote.block_id, {}):
            return AddResult(False)  # a vote we already have
        evidence = None
        key = (vote.round, vote.type, vote.validator)
        if key not in self._reported:
            self._reported.add(key)
            evidence = DuplicateVoteEvidence(first, vote)
        if vote.block_id is not None and vote.block_id not in self._tracked:
            return AddResult(False, evidence)
        self._count(tally, vote, power)
        return AddResult(True, evidence)

    def _count(self, tally: VoteTally, vote: Vote, power: int) -> None:
        tally.by_value.setdefault(vote.block_id, {})[vote.validator] = vote
        tally.power[vote.block_id] = tally.power.get(vote.block_id, 0) + power
        if vote.type == VoteType.PRECOMMIT and vote.block_id is not None and \
                tally.power[vote.block_id] >= self.quorum:
            self._precommit_quorums[(vote.round, vote.block_id)] = None

    def track(self, block_id: bytes) -> None:
        """A proposal for `block_id` is held: equivocators' votes for it count from now on."""
        self._tracked[block_id] = self._tracked.get(block_id, 0) + 1

    def untrack(self, block_id: bytes) -> None:
        left = self._tracked.get(block_id, 0) - 1
        if left > 0:
            self._tracked[block_id] = left
        else:
            self._tracked.pop(block_id, None)

    def note_sender(self, round_: int, address: bytes, current_round: int) -> bool:
        """Record that `address` sent a message (vote or proposal) in `round_`, for L55.

        Returns False, and records nothing, when that would give the validator more than
        `max_future_rounds` rounds above `current_round`.
        """
        power = self.validators.power_of(address)
        if power == 0:
            return False
        rounds = self._rounds_of.setdefault(address, set())
        if round_ not in rounds:
            if round_ > current_round and \
                    sum(1 for r in rounds if r > current_round) >= self.max_future_rounds:
                return False
            rounds.add(round_)
        senders = self._senders.setdefault(round_, {})
        if address not in senders:
            senders[address] = None
            self._sender_power[round_] = self._sender_power.get(round_, 0) + power
        return True

    # ---- threshold queries -------------------------------------------------------------

    def power(self, round_: int, vote_type: VoteType, block_id: bytes | None) -> int:
        """Power of the distinct validators that voted `block_id` in this round."""
        tally = self._tallies.get((round_, vote_type))
        return 0 if tally is None else tally.power.get(block_id, 0)

    def first_power(self, round_: int, vote_type: VoteType, block_id: bytes | None) -> int:
        """Power of the validators whose first vote of this round was for `block_id`."""
        tally = self._tallies.get((round_, vote_type))
        return 0 if tally is None else tally.first_power.get(block_id, 0)

    def has_quorum(self, round_: int, vote_type: VoteType, block_id: bytes | None) -> bool:
        """+2/3 of the power voted `block_id` (None: nil) in this round."""
        return self.power(round_, vote_type, block_id) >= self.quorum

    def has_quorum_any(self, round_: int, vote_type: VoteType) -> bool:
        """+2/3 of the power voted in this round, for anything including nil (L34, L47)."""
        tally = self._tallies.get((round_, vote_type))
        return tally is not None and tally.total >= self.quorum

    def quorum_block(self, round_: int, vote_type: VoteType) -> bytes | None:
        """The block id (never nil) with +2/3 of this round's votes of this type, if any.

        At most one value can have +2/3 while less than 1/3 of the power is Byzantine; if
        more is, the first one found is returned, in arrival order.
        """
        tally = self._tallies.get((round_, vote_type))
        if tally is None or tally.total < self.quorum:
            return None
        for block_id, power in tally.power.items():
            if block_id is not None and power >= self.quorum:
                return block_id
        return None

    def sender_power(self, round_: int) -> int:
        return self._sender_power.get(round_, 0)

    def skip_round(self, current_round: int) -> int | None:
        """The highest round above `current_round` in which f+1 power sent messages (L55)."""
        best: int | None = None
        for round_, power in self._sender_power.items():
            if round_ > current_round and power >= self.one_third and \
                    (best is None or round_ > best):
                best = round_
        return best

    def precommit_quorums(self) -> list[tuple[int, bytes]]:
        """Every (round, block id) with +2/3 precommits, in the order they were reached (L49)."""
        return list(self._precommit_quorums)

    # ---- the votes themselves ----------------------------------------------------------

    def votes_for(self, round_: int, vote_type: VoteType, block_id: bytes | None) -> list[Vote]:
        """The counted votes of this round and type for `block_id`, in validator order."""
        tally = self._tallies.get((round_, vote_type))
        if tally is None:
            return []
        return sorted(tally.by_value.get(block_id, {}).values(), key=lambda v: v.validator)

    def votes_in(self, round_: int, vote_type: VoteType) -> list[Vote]:
        """The first vote of each validator in this round and type, in validator order."""
        tally = self._tallies.get((round_, vote_type))
        return [] if tally is None else sorted(tally.first.values(), key=lambda v: v.validator)

    def commit(self, round_: int, block_id: bytes) -> Commit | None:
        """A Commit from the +2/3 precommits for `block_id` in `round_`, or None without them."""
        if not self.has_quorum(round_, VoteType.PRECOMMIT, block_id):
            return None
        sigs = tuple(CommitSig(v.validator, v.signature)
                     for v in self.votes_for(round_, VoteType.PRECOMMIT, block_id))
        return Commit(self.height, round_, block_id, sigs)
