"""valid(v) of the paper: is a proposed block acceptable on top of our committed chain?"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from node.codec import DecodeError
from node.consensus.genesis import ConsensusParams
from node.consensus.types import Block, InvalidCommit, Proposal, ValidatorSet

# A proposer's clock may run ahead of ours by this much before its block is refused.
MAX_CLOCK_DRIFT_MS = 10_000


class InvalidBlock(Exception):
    """The block cannot extend our chain; the message says which rule it breaks."""


@dataclass(frozen=True)
class ChainTip:
    """What the next block must build on."""

    chain_id: str
    height: int  # last committed height (0 before the first block)
    last_block_id: bytes | None
    last_block_time_ms: int
    app_hash: bytes
    validators: ValidatorSet
    # Evidence hash -> was it committed in an earlier block (the block store's record).
    committed_evidence: Callable[[bytes], bool] = field(default=lambda _hash: False,
                                                        compare=False)


def check_block(block: Block, tip: ChainTip, params: ConsensusParams, now_ms: int) -> None:
    h = block.header
    try:
        block.check_structure()
    except DecodeError as exc:
        raise InvalidBlock(str(exc)) from exc
    if h.chain_id != tip.chain_id:
        raise InvalidBlock(f"block is for chain {h.chain_id!r}, not {tip.chain_id!r}")
    if h.height != tip.height + 1:
        raise InvalidBlock(f"block height {h.height}, expected {tip.height + 1}")
    if h.prev_block_id != tip.last_block_id:
        raise InvalidBlock("block does not build on our last block")
    if h.app_hash != tip.app_hash:
        raise InvalidBlock("block's app hash differs from our state after the last block")
    if h.validators_hash != tip.validators.hash():
        raise InvalidBlock("block names another validator set")
    if h.time_ms <= tip.last_block_time_ms:
        raise InvalidBlock("block time does not advance")
    if h.time_ms > now_ms + MAX_CLOCK_DRIFT_MS:
        raise InvalidBlock("block time is too far in the future")
    if len(block.txs) > params.max_block_txs:
        raise InvalidBlock(f"block has {len(block.txs)} txs, limit {params.max_block_txs}")
    if sum(len(tx) for tx in block.txs) > params.max_block_bytes:
        raise InvalidBlock(f"block txs exceed {params.max_block_bytes} bytes")
    if any(len(tx) > params.max_tx_bytes for tx in block.txs):
        raise InvalidBlock(f"block holds a tx over {params.max_tx_bytes} bytes")
    if block.last_commit is not None:
        try:
            block.last_commit.verify(tip.chain_id, tip.validators)
        except InvalidCommit as exc:
            raise InvalidBlock(f"last commit: {exc}") from exc
    seen: set[bytes] = set()
    for evidence in block.evidence:
        try:
            evidence.check(tip.chain_id, tip.validators)
        except DecodeError as exc:
            raise InvalidBlock(f"evidence: {exc}") from exc
        key = evidence.hash()
        if key in seen or tip.committed_evidence(key):
            raise InvalidBlock(f"evidence {key.hex()[:16]} is already in this or an earlier "
                               "block")
        seen.add(key)


def check_proposal(proposal: Proposal, tip: ChainTip, params: ConsensusParams,
                   now_ms: int) -> None:
    expected = tip.validators.proposer(proposal.height, proposal.round).address
    if proposal.block.header.proposer != proposal.proposer or proposal.proposer != expected:
        raise InvalidBlock("block was not proposed by the round's proposer")
    check_block(proposal.block, tip, params, now_ms)
