"""Durable chain data in SQLite: decided blocks with their commits, and every vote we signed.

The signed-votes table is the double-sign guard: a vote is recorded (and synced) before it
leaves the node, and the driver never signs a second, different vote for the same height,
round and type, even after a crash and restart.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from node.codec import from_cbor, to_cbor
from node.consensus.types import Block, Commit, Vote, VoteType

MAX_STORED_BLOCK_BYTES = 64 * 1024 * 1024


class DoubleSignRefused(Exception):
    """Signing this vote would contradict a vote we already signed."""


@dataclass(frozen=True)
class StoredBlock:
    block: Block
    commit: Commit


class BlockStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS blocks (
                height INTEGER PRIMARY KEY, block_id BLOB NOT NULL UNIQUE,
                time_ms INTEGER NOT NULL, num_txs INTEGER NOT NULL,
                block BLOB NOT NULL, commit_ BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS signed_votes (
                height INTEGER NOT NULL, round INTEGER NOT NULL, type INTEGER NOT NULL,
                block_id BLOB, signature BLOB NOT NULL, vote BLOB NOT NULL,
                PRIMARY KEY (height, round, type));
            CREATE TABLE IF NOT EXISTS evidence (
                hash BLOB PRIMARY KEY, height INTEGER NOT NULL);
        """)

    def close(self) -> None:
        self._db.close()

    # ---- blocks ------------------------------------------------------------------------------

    def height(self) -> int:
        row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        return int(row[0] or 0)

    def save_block(self, block: Block, commit: Commit) -> None:
        """Persist a decided block with the commit that proves it, and the hashes of the
        evidence it carries (one transaction)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR IGNORE INTO blocks VALUES (?, ?, ?, ?, ?, ?)",
                (block.height, block.id, block.header.time_ms, len(block.txs), block.to_cbor(),
                 to_cbor(commit.to_list())))
            self._db.executemany("INSERT OR IGNORE INTO evidence VALUES (?, ?)",
                                 [(ev.hash(), block.height) for ev in block.evidence])

    def has_evidence(self, evidence_hash: bytes) -> bool:
        """Was this evidence committed in a block already (it may be included only once)?"""
        return self._db.execute("SELECT 1 FROM evidence WHERE hash = ?",
                                (evidence_hash,)).fetchone() is not None

    def get(self, height: int) -> StoredBlock | None:
        row = self._db.execute("SELECT block, commit_ FROM blocks WHERE height = ?",
                               (height,)).fetchone()
        if row is None:
            return None
        return StoredBlock(Block.from_cbor(row[0], MAX_STORED_BLOCK_BYTES),
                           Commit.from_list(from_cbor(row[1], max_bytes=MAX_STORED_BLOCK_BYTES)))

    def get_raw(self, height: int) -> tuple[bytes, bytes] | None:
        row = self._db.execute("SELECT block, commit_ FROM blocks WHERE height = ?",
                               (height,)).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def block_meta(self, height: int) -> tuple[bytes, int, int] | None:
        """(block id, time in ms, number of txs) of a stored block."""
        row = self._db.execute("SELECT block_id, time_ms, num_txs FROM blocks WHERE height = ?",
                               (height,)).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]), int(row[2]))

    # ---- our own votes -----------------------------------------------------------------------

    def record_signed_vote(self, vote: Vote) -> Vote:
        """Record `vote` before it is sent; returns the vote to send.

        If we already signed a vote for this (height, round, type), that same vote is
        returned when it is for the same block, and DoubleSignRefused is raised otherwise.
        """
        row = self._db.execute(
            "SELECT block_id, vote FROM signed_votes WHERE height=? AND round=? AND type=?",
            (vote.height, vote.round, int(vote.type))).fetchone()
        if row is not None:
            previous = Vote.from_list(from_cbor(row[1], max_bytes=1024))
            if (None if row[0] is None else bytes(row[0])) == vote.block_id:
                return previous
            raise DoubleSignRefused(
                f"already signed {vote.type.name} at height {vote.height} round {vote.round} "
                f"for another block")
        self._db.execute("INSERT INTO signed_votes VALUES (?, ?, ?, ?, ?, ?)",
                         (vote.height, vote.round, int(vote.type), vote.block_id,
                          vote.signature, to_cbor(vote.to_list())))
        return vote

    def signed_vote(self, height: int, round_: int, vote_type: VoteType) -> Vote | None:
        row = self._db.execute(
            "SELECT vote FROM signed_votes WHERE height=? AND round=? AND type=?",
            (height, round_, int(vote_type))).fetchone()
        return None if row is None else Vote.from_list(from_cbor(row[0], max_bytes=1024))

    def all_signed_votes(self) -> list[Vote]:
        rows = self._db.execute("SELECT vote FROM signed_votes ORDER BY height, round, type")
        return [Vote.from_list(from_cbor(r[0], max_bytes=1024)) for r in rows]
