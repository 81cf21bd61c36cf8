"""Vote keeping for one height: weighted counts per round, type and value, and equivocation.

The Tendermint rules are all thresholds over the messages of the current height, in every
round (not only the current one): +2/3 of the voting power for one value (L28, L36, L44, L49),
+2/3 for anything including nil (L34, L47), and more than 1/3 sending any message in a higher
round (L55). Each validator counts once per (round, type); a second, different vote from it is
never counted again but reported as DuplicateVoteEvidence.

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
    """The votes of one (round, type): at most one per validator, power summed per value."""

    votes: dict[bytes, Vote] = field(default_factory=dict)  # validator address -> first vote
    power: dict[bytes | None, int] = field(default_factory=dict)  # block id (None: nil) -> power
    total: int = 0  # power of every counted vote, nil included


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

    # ---- adding ------------------------------------------------------------------------

    def add(self, vote: Vote, current_round: int) -> AddResult:
        """Count `vote` (signature already verified) unless it is a duplicate or conflict."""
        power = self.validators.power_of(vote.validator)
        if vote.height != self.height or power == 0:
            return AddResult(False)
        tally = self._tallies.get((vote.round, vote.type))
        first = tally.votes.get(vote.validator) if tally is not None else None
        if first is not None:
            if first.block_id == vote.block_id:
                return AddResult(False)
            key = (vote.round, vote.type, vote.validator)
            if key in self._reported:
                return AddResult(False)
            self._reported.add(key)
            return AddResult(False, DuplicateVoteEvidence(first, vote))
        if not self.note_sender(vote.round, vote.validator, current_round):
            return AddResult(False)
        if tally is None:
            tally = self._tallies[(vote.round, vote.type)] = VoteTally()
        tally.votes[vote.validator] = vote
        tally.power[vote.block_id] = tally.power.get(vote.block_id, 0) + power
        tally.total += power
        if vote.type == VoteType.PRECOMMIT and vote.block_id is not None and \
                tally.power[vote.block_id] >= self.quorum:
            self._precommit_quorums[(vote.round, vote.block_id)] = None
        return AddResult(True)

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
        tally = self._tallies.get((round_, vote_type))
        return 0 if tally is None else tally.power.get(block_id, 0)

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
        return sorted((v for v in tally.votes.values() if v.block_id == block_id),
                      key=lambda v: v.validator)

    def votes_in(self, round_: int, vote_type: VoteType) -> list[Vote]:
        """Every counted vote of this round and type, in validator order."""
        tally = self._tallies.get((round_, vote_type))
        return [] if tally is None else sorted(tally.votes.values(), key=lambda v: v.validator)

    def commit(self, round_: int, block_id: bytes) -> Commit | None:
        """A Commit from the +2/3 precommits for `block_id` in `round_`, or None without them."""
        if not self.has_quorum(round_, VoteType.PRECOMMIT, block_id):
            return None
        sigs = tuple(CommitSig(v.validator, v.signature)
                     for v in self.votes_for(round_, VoteType.PRECOMMIT, block_id))
        return Commit(self.height, round_, block_id, sigs)
