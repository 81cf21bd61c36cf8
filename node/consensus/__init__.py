"""Tendermint BFT consensus: pure round state machine, votes, blocks, WAL, store, driver."""
