"""Equivocation evidence enters the chain once: the block store remembers committed evidence
(across restarts), and a block repeating evidence, its own or an earlier block's, is invalid."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from node.consensus.genesis import ConsensusParams
from node.consensus.store import BlockStore
from node.consensus.types import (
    Block,
    Commit,
    CommitSig,
    DuplicateVoteEvidence,
    Header,
    Validator,
    ValidatorSet,
    Vote,
    VoteType,
    evidence_hash,
    txs_hash,
)
from node.consensus.validation import ChainTip, InvalidBlock, check_block
from node.crypto import Ed25519Key

CHAIN = "test-chain"
KEYS = [Ed25519Key(hashlib.sha256(f"validator {i}".encode()).digest()) for i in range(4)]
VS = ValidatorSet(tuple(Validator(k.public_key, 1) for k in KEYS))
APP_HASH = bytes(32)


def equivocation(height: int = 1) -> DuplicateVoteEvidence:
    a, b = (Vote.signed(KEYS[0], CHAIN, VoteType.PREVOTE, height, 0, bytes([x]) * 32)
            for x in (1, 2))
    return DuplicateVoteEvidence(a, b)


def block(evidence: tuple[DuplicateVoteEvidence, ...], height: int = 1) -> Block:
    header = Header(CHAIN, height, 1000 * height, None if height == 1 else bytes(32),
                    txs_hash(()), APP_HASH, VS.hash(), VS.proposer(height, 0).address,
                    evidence_hash(evidence))
    last = None if height == 1 else Commit(height - 1, 0, bytes(32), (CommitSig(b"", b""),))
    return Block(header, (), last, evidence)


def genesis_tip(store: BlockStore) -> ChainTip:
    return ChainTip(CHAIN, 0, None, 0, APP_HASH, VS, store.has_evidence)


def test_committed_evidence_is_remembered_across_a_restart(tmp_path: Path) -> None:
    ev = equivocation()
    store = BlockStore(tmp_path / "chain.db")
    assert not store.has_evidence(ev.hash())
    store.save_block(block((ev,)), Commit(1, 0, bytes(32), ()))
    store.close()
    reopened = BlockStore(tmp_path / "chain.db")
    assert reopened.has_evidence(ev.hash())
    assert reopened.get(1) is not None


def test_a_block_with_new_evidence_is_valid(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "chain.db")
    check_block(block((equivocation(),)), genesis_tip(store), ConsensusParams(), 10_000)


def test_evidence_already_committed_makes_a_block_invalid(tmp_path: Path) -> None:
    ev = equivocation()
    store = BlockStore(tmp_path / "chain.db")
    store.save_block(block((ev,)), Commit(1, 0, bytes(32), ()))
    with pytest.raises(InvalidBlock, match="already in this or an earlier block"):
        check_block(block((ev,)), genesis_tip(store), ConsensusParams(), 10_000)


def test_the_same_evidence_twice_in_one_block_is_invalid(tmp_path: Path) -> None:
    ev = equivocation()
    store = BlockStore(tmp_path / "chain.db")
    with pytest.raises(InvalidBlock, match="already in this"):
        check_block(block((ev, ev)), genesis_tip(store), ConsensusParams(), 10_000)
