"""Consensus messages on the wire (canonical CBOR), with the limits a receiver enforces.

Gossip topic dcloud/<chain-id>/consensus carries ["proposal", P], ["vote", V] and
["evidence", E]; topic dcloud/<chain-id>/txs carries ["txs", [tx, ...]] batches. Block sync
uses the stream protocol /dcloud/blocksync/0.1.0 (see node.consensus.blocksync).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.codec import DecodeError, from_cbor, to_cbor
from node.consensus.types import DuplicateVoteEvidence, Proposal, Vote

# Gossipsub in py-libp2p caps one RPC at 1 MiB; a proposal carries its whole block.
MAX_CONSENSUS_MESSAGE_BYTES = 1_000_000
# What a proposal leaves for its block's txs: header, last commit (~120 B per validator) and
# up to 10 pieces of evidence fit in the rest. Genesis refuses a larger max_block_bytes, which
# would let a proposer reap a block that no peer accepts from gossip.
MAX_BLOCK_TXS_BYTES = MAX_CONSENSUS_MESSAGE_BYTES - 128 * 1024
MAX_TX_BATCH_BYTES = 1_000_000
MAX_TXS_PER_BATCH = 5_000


def consensus_topic(chain_id: str) -> str:
    return f"dcloud/{chain_id}/consensus"


def txs_topic(chain_id: str) -> str:
    return f"dcloud/{chain_id}/txs"


@dataclass(frozen=True)
class ProposalMsg:
    proposal: Proposal


@dataclass(frozen=True)
class VoteMsg:
    vote: Vote


@dataclass(frozen=True)
class EvidenceMsg:
    evidence: DuplicateVoteEvidence


ConsensusMessage = ProposalMsg | VoteMsg | EvidenceMsg


def encode(msg: ConsensusMessage) -> bytes:
    if isinstance(msg, ProposalMsg):
        return to_cbor(["proposal", msg.proposal.to_list()])
    if isinstance(msg, VoteMsg):
        return to_cbor(["vote", msg.vote.to_list()])
    return to_cbor(["evidence", msg.evidence.to_list()])


def decode(data: bytes) -> ConsensusMessage:
    raw: Any = from_cbor(data, max_bytes=MAX_CONSENSUS_MESSAGE_BYTES)
    if not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[0], str):
        raise DecodeError("consensus message must be [kind, body]")
    kind, body = raw
    if kind == "proposal":
        return ProposalMsg(Proposal.from_list(body))
    if kind == "vote":
        return VoteMsg(Vote.from_list(body))
    if kind == "evidence":
        return EvidenceMsg(DuplicateVoteEvidence.from_list(body))
    raise DecodeError(f"unknown consensus message kind {kind!r}")


def encode_txs(txs: list[bytes]) -> bytes:
    return to_cbor(["txs", txs])


def decode_txs(data: bytes, max_tx_bytes: int) -> list[bytes]:
    raw = from_cbor(data, max_bytes=MAX_TX_BATCH_BYTES)
    if not isinstance(raw, list) or len(raw) != 2 or raw[0] != "txs" or \
            not isinstance(raw[1], list) or len(raw[1]) > MAX_TXS_PER_BATCH:
        raise DecodeError("tx batch must be ['txs', [tx, ...]] with at most "
                          f"{MAX_TXS_PER_BATCH} txs")
    out = []
    for tx in raw[1]:
        if not isinstance(tx, bytes) or not 0 < len(tx) <= max_tx_bytes:
            raise DecodeError("tx in batch must be 1 to max_tx_bytes bytes")
        out.append(tx)
    return out
