"""Proposer selection: weighted by voting power, the same on every node, and interleaved, so
that no validator proposes a long run of heights (a validator that is down would cost one
failed round per height of its run)."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from node.consensus.types import Validator, ValidatorSet


def validator_set(powers: list[int]) -> ValidatorSet:
    return ValidatorSet(tuple(Validator(hashlib.sha256(bytes([i])).digest(), p)
                              for i, p in enumerate(powers)))


def owners(vs: ValidatorSet, heights: range, round_: int = 0) -> list[bytes]:
    return [vs.proposer(h, round_).address for h in heights]


def test_equal_powers_take_turns_one_height_each() -> None:
    vs = validator_set([10, 10, 10, 10])  # the testnet's genesis
    seq = owners(vs, range(1, 41))
    assert all(a != b for a, b in zip(seq, seq[1:], strict=False))
    assert seq[:4] == seq[4:8] and len(set(seq[:4])) == 4


def test_a_round_change_moves_to_the_next_proposer() -> None:
    vs = validator_set([10, 10, 10, 10])
    assert len({vs.proposer(5, r).address for r in range(4)}) == 4


def test_a_heavier_validator_proposes_more_often_but_never_all_in_a_row() -> None:
    vs = validator_set([3, 1])
    heavy, light = (v.address for v in sorted(vs.validators, key=lambda v: -v.power))
    seq = owners(vs, range(0, 8))
    assert Counter(seq) == {heavy: 6, light: 2}
    assert seq.index(light) in (1, 2) and seq[4:] == seq[:4]


@given(st.lists(st.integers(1, 2**40), min_size=1, max_size=7),
       st.integers(0, 2**40))
def test_each_cycle_gives_every_validator_its_share_evenly_spread(powers: list[int],
                                                                  start: int) -> None:
    vs = validator_set(powers)
    g = math.gcd(*powers)
    reduced = {v.address: v.power // g for v in vs.validators}
    cycle = sum(reduced.values())
    if cycle > 2000:  # keep the example small; the formula is the same at any size
        return
    seq = owners(vs, range(start, start + cycle))
    assert Counter(seq) == reduced
    # Evenly spread: between two turns of a validator with share p there are at most
    # about cycle / p others (Sainte-Lague spacing), never a long run.
    for address, p in reduced.items():
        turns = [i for i, a in enumerate(seq + seq) if a == address]
        gaps = [b - a for a, b in zip(turns, turns[1:], strict=False)]
        assert max(gaps) <= math.ceil(cycle / p) + len(powers)


def test_every_node_computes_the_same_proposer_from_the_set_alone() -> None:
    powers = [5, 3, 1, 8]
    a, b = validator_set(powers), validator_set(list(powers))
    assert owners(a, range(0, 200, 7), 2) == owners(b, range(0, 200, 7), 2)
    assert owners(a, range(0, 50)) == owners(a, range(0, 50))  # cached or not
