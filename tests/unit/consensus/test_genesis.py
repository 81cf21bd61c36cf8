"""Genesis files: round trip, and the consensus params a network cannot run with are refused."""

from __future__ import annotations

import pytest

from node.consensus.genesis import ConsensusParams, Genesis, GenesisError, GenesisValidator
from node.consensus.messages import MAX_BLOCK_TXS_BYTES, MAX_CONSENSUS_MESSAGE_BYTES
from node.crypto import Ed25519Key


def genesis_doc(**params: int) -> dict:
    key = Ed25519Key(bytes([7]) * 32)
    g = Genesis("dcloud-test", 0, (GenesisValidator("v0", key.public_key, 10),), (),
                ConsensusParams(**params))
    return g.to_json()


def test_a_genesis_round_trips_through_json() -> None:
    doc = genesis_doc(min_fee=3)
    assert Genesis.from_json(doc).to_json() == doc


def test_the_default_block_fits_in_one_proposal_message() -> None:
    assert ConsensusParams().max_block_bytes <= MAX_BLOCK_TXS_BYTES < MAX_CONSENSUS_MESSAGE_BYTES


@pytest.mark.parametrize("size", [0, MAX_BLOCK_TXS_BYTES + 1, 4 * 1024 * 1024])
def test_a_block_limit_that_gossip_cannot_carry_is_refused(size: int) -> None:
    with pytest.raises(GenesisError, match="max_block_bytes"):
        Genesis.from_json(genesis_doc(max_block_bytes=size))


def test_unknown_params_are_refused() -> None:
    doc = genesis_doc()
    doc["params"]["max_gas"] = 1
    with pytest.raises(GenesisError, match="unknown consensus params: max_gas"):
        Genesis.from_json(doc)
