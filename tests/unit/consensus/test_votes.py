"""VoteKeeper: weighted counting, one vote per validator, equivocation, thresholds, commits."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.consensus.types import (
    DuplicateVoteEvidence,
    InvalidCommit,
    Validator,
    ValidatorSet,
    Vote,
    VoteType,
)
from node.consensus.votes import VoteKeeper
from node.crypto import Ed25519Key

CHAIN = "test-chain"
PV, PC = VoteType.PREVOTE, VoteType.PRECOMMIT
A, B = hashlib.sha256(b"block a").digest(), hashlib.sha256(b"block b").digest()


def keys(n: int) -> list[Ed25519Key]:
    return [Ed25519Key(hashlib.sha256(f"validator {i}".encode()).digest()) for i in range(n)]


def vset(ks: list[Ed25519Key], powers: list[int] | None = None) -> ValidatorSet:
    powers = powers or [1] * len(ks)
    return ValidatorSet(tuple(Validator(k.public_key, p) for k, p in zip(ks, powers, strict=True)))


_VOTES: dict[tuple[bytes, VoteType, int, int, bytes | None], Vote] = {}


def vote(k: Ed25519Key, t: VoteType, round_: int, block_id: bytes | None, height: int = 1) -> Vote:
    key = (k.seed, t, height, round_, block_id)  # signing is the slow part: sign once
    if key not in _VOTES:
        _VOTES[key] = Vote.signed(k, CHAIN, t, height, round_, block_id)
    return _VOTES[key]


KS = keys(4)
VS = vset(KS)  # 4 x power 1: quorum 3, one third 2


def test_thresholds_of_the_validator_set() -> None:
    assert (VS.quorum, VS.one_third) == (3, 2)
    weighted = vset(keys(4), [1, 2, 3, 4])  # total 10: > 2/3 is 7, > 1/3 is 4
    assert (weighted.quorum, weighted.one_third) == (7, 4)


def test_each_validator_counts_once_per_round_and_type() -> None:
    vk = VoteKeeper(1, VS)
    assert vk.add(vote(KS[0], PV, 0, A), 0).added
    assert not vk.add(vote(KS[0], PV, 0, A), 0).added  # a duplicate (re-sent) vote
    assert vk.power(0, PV, A) == 1
    assert vk.add(vote(KS[0], PC, 0, A), 0).added  # other type: counts separately
    assert vk.add(vote(KS[0], PV, 1, A), 0).added  # other round: counts separately
    assert vk.power(0, PC, A) == 1 and vk.power(1, PV, A) == 1


def test_quorum_for_a_value_for_nil_and_for_anything() -> None:
    vk = VoteKeeper(1, VS)
    vk.add(vote(KS[0], PV, 0, A), 0)
    vk.add(vote(KS[1], PV, 0, A), 0)
    vk.add(vote(KS[2], PV, 0, None), 0)
    assert not vk.has_quorum(0, PV, A) and vk.has_quorum_any(0, PV)
    assert vk.quorum_block(0, PV) is None
    vk.add(vote(KS[3], PV, 0, A), 0)
    assert vk.has_quorum(0, PV, A) and vk.quorum_block(0, PV) == A
    for k in KS[:3]:
        vk.add(vote(k, PC, 0, None), 0)
    assert vk.has_quorum(0, PC, None) and vk.quorum_block(0, PC) is None


def test_weighted_power_decides_the_quorum() -> None:
    ks = keys(4)
    vs = vset(ks, [1, 2, 3, 4])
    vk = VoteKeeper(1, vs)
    by_power = {vs.power_of(bytes.fromhex(k.address)): k for k in ks}
    vk.add(vote(by_power[4], PV, 0, A), 0)
    vk.add(vote(by_power[2], PV, 0, A), 0)
    assert vk.power(0, PV, A) == 6 and not vk.has_quorum(0, PV, A)
    vk.add(vote(by_power[1], PV, 0, A), 0)
    assert vk.has_quorum(0, PV, A)  # 7 of 10, with three of four validators
    vk2 = VoteKeeper(1, vs)
    vk2.add(vote(by_power[4], PV, 0, A), 0)
    vk2.add(vote(by_power[3], PV, 0, A), 0)
    assert vk2.has_quorum(0, PV, A)  # 7 of 10 with only two validators


def test_conflicting_vote_is_evidence_and_not_counted_for_an_unproposed_value() -> None:
    vk = VoteKeeper(1, VS)
    first, second = vote(KS[0], PC, 2, A), vote(KS[0], PC, 2, B)
    assert vk.add(first, 2).added
    result = vk.add(second, 2)
    assert not result.added
    assert result.evidence == DuplicateVoteEvidence(first, second)
    result.evidence.check(CHAIN, VS)  # the evidence stands on its own
    assert vk.power(2, PC, A) == 1 and vk.power(2, PC, B) == 0
    assert vk.add(vote(KS[0], PC, 2, None), 2).evidence is None  # reported once
    assert vk.add(vote(KS[0], PC, 2, A), 2).evidence is None  # the same vote is no conflict


def test_votes_of_other_heights_and_strangers_are_ignored() -> None:
    vk = VoteKeeper(1, VS)
    assert not vk.add(vote(KS[0], PV, 0, A, height=2), 0).added
    stranger = keys(5)[4]
    assert not vk.add(vote(stranger, PV, 0, A), 0).added
    assert vk.power(0, PV, A) == 0


def test_f_plus_one_senders_of_a_higher_round_allow_a_skip() -> None:
    vk = VoteKeeper(1, VS)
    vk.add(vote(KS[0], PV, 3, A), 0)
    assert vk.skip_round(0) is None  # one third is not more than one third
    vk.add(vote(KS[0], PC, 3, A), 0)  # the same sender twice is still one sender
    assert vk.skip_round(0) is None
    assert vk.note_sender(3, bytes.fromhex(KS[1].address), 0)  # e.g. the proposal of round 3
    assert vk.skip_round(0) == 3
    assert vk.skip_round(3) is None
    vk.add(vote(KS[2], PV, 5, None), 0)
    vk.add(vote(KS[3], PC, 5, None), 0)
    assert vk.skip_round(0) == 5  # the highest round with f+1


def test_future_rounds_per_validator_are_bounded() -> None:
    vk = VoteKeeper(1, VS, max_future_rounds=2)
    assert vk.add(vote(KS[0], PV, 10, A), 0).added
    assert vk.add(vote(KS[0], PV, 11, A), 0).added
    assert vk.add(vote(KS[0], PC, 11, A), 0).added  # a round it already occupies
    assert not vk.add(vote(KS[0], PV, 12, A), 0).added  # a third future round: refused
    assert vk.add(vote(KS[0], PV, 0, A), 0).added  # the current round is always fine
    assert vk.add(vote(KS[0], PV, 12, A), 10).added  # once we reach round 10, 12 is fine


def test_commit_from_precommits_verifies() -> None:
    vk = VoteKeeper(1, VS)
    for k in KS[:2]:
        vk.add(vote(k, PC, 1, A), 1)
    assert vk.commit(1, A) is None
    vk.add(vote(KS[2], PC, 1, A), 1)
    vk.add(vote(KS[3], PC, 1, None), 1)
    commit = vk.commit(1, A)
    assert commit is not None
    assert (commit.height, commit.round, commit.block_id) == (1, 1, A)
    assert len(commit.signatures) == 3  # nil precommits are not part of it
    commit.verify(CHAIN, VS)
    assert vk.precommit_quorums() == [(1, A)]


def test_commit_does_not_verify_on_another_chain() -> None:
    vk = VoteKeeper(1, VS)
    for k in KS[:3]:
        vk.add(vote(k, PC, 0, A), 0)
    commit = vk.commit(0, A)
    assert commit is not None
    with pytest.raises(InvalidCommit):
        commit.verify("other-chain", VS)


def test_an_equivocators_second_vote_counts_for_a_proposed_value_only() -> None:
    """The paper counts distinct senders of <PRECOMMIT, h, r, id(v)>: a correct validator that
    first saw the equivocator's vote for A must still see the +2/3 for B the others decided."""
    vk = VoteKeeper(1, VS)
    byz = KS[3]
    vk.add(vote(byz, PC, 0, A), 0)  # what the equivocator showed us first
    for k in KS[:2]:
        vk.add(vote(k, PC, 0, B), 0)
    result = vk.add(vote(byz, PC, 0, B), 0)  # its other vote, e.g. inside a catch-up commit
    assert result.evidence is not None and not result.added  # B is not proposed (tracked) yet
    assert vk.power(0, PC, B) == 2
    vk.track(B)  # we now hold a proposal for B
    result = vk.add(vote(byz, PC, 0, B), 0)
    assert result.added and result.evidence is None  # evidence was reported already
    assert vk.power(0, PC, B) == 3 and vk.has_quorum(0, PC, B)
    assert vk.power(0, PC, A) == 1  # its first vote still counts too
    assert vk.first_power(0, PC, B) == 2
    votes = vk.votes_in(0, PC)
    assert len(votes) == 3  # but "+2/3 of anything" counts each validator once
    assert vk.precommit_quorums() == [(0, B)]
    commit = vk.commit(0, B)
    assert commit is not None and len(commit.signatures) == 3
    commit.verify(CHAIN, VS)
    assert not vk.add(vote(byz, PC, 0, B), 0).added  # and only once


def test_an_equivocators_nil_vote_counts_for_nil() -> None:
    vk = VoteKeeper(1, VS)
    vk.add(vote(KS[0], PV, 0, A), 0)
    vk.add(vote(KS[1], PV, 0, None), 0)
    vk.add(vote(KS[2], PV, 0, None), 0)
    assert not vk.has_quorum(0, PV, None) and vk.has_quorum_any(0, PV)
    assert vk.add(vote(KS[0], PV, 0, None), 0).added  # L44 may now fire
    assert vk.has_quorum(0, PV, None) and len(vk.votes_in(0, PV)) == 3


def test_untracking_stops_counting_new_conflicting_votes() -> None:
    vk = VoteKeeper(1, VS)
    vk.track(B)
    vk.track(B)
    vk.untrack(B)
    vk.add(vote(KS[0], PV, 0, A), 0)
    assert vk.add(vote(KS[0], PV, 0, B), 0).added  # still one proposal for B held
    vk.untrack(B)
    vk.add(vote(KS[1], PV, 0, A), 0)
    assert not vk.add(vote(KS[1], PV, 0, B), 0).added


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([PV, PC]), st.integers(0, 2),
                          st.sampled_from([A, B, None])), max_size=40),
       st.lists(st.integers(1, 5), min_size=4, max_size=4), st.booleans())
def test_counts_follow_the_paper(
        inputs: list[tuple[int, VoteType, int, bytes | None]], powers: list[int],
        track_b: bool) -> None:
    """Per value: the power of the distinct validators that voted it, where a validator's later
    different votes count only for nil or a tracked value; overall: each validator once.
    Every validator's first conflict in a (round, type) is reported, exactly once."""
    vs = vset(KS, powers)
    vk = VoteKeeper(1, vs, max_future_rounds=10)
    if track_b:
        vk.track(B)
    countable = {None, B} if track_b else {None}
    first: dict[tuple[int, VoteType, int], bytes | None] = {}
    counted: dict[tuple[int, VoteType, int], set[bytes | None]] = {}
    conflicted: set[tuple[int, VoteType, int]] = set()
    for i, t, r, value in inputs:
        result = vk.add(vote(KS[i], t, r, value), 0)
        key = (r, t, i)
        if key not in first:
            assert result.added and result.evidence is None
            first[key] = value
            counted[key] = {value}
            continue
        expect_evidence = first[key] != value and key not in conflicted
        assert (result.evidence is not None) == expect_evidence
        if expect_evidence:
            conflicted.add(key)
        expect_added = value not in counted[key] and value in countable
        assert result.added == expect_added
        if expect_added:
            counted[key].add(value)
    for r in range(3):
        for t in (PV, PC):
            total = sum(vs.power_of(bytes.fromhex(KS[i].address))
                        for (rr, tt, i) in first if (rr, tt) == (r, t))
            assert vk.has_quorum_any(r, t) == (total >= vs.quorum)
            for value in (A, B, None):
                want = sum(vs.power_of(bytes.fromhex(KS[i].address))
                           for (rr, tt, i), vals in counted.items()
                           if (rr, tt) == (r, t) and value in vals)
                assert vk.power(r, t, value) == want
                assert vk.has_quorum(r, t, value) == (want >= vs.quorum)
