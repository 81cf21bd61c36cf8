"""SQLite persistence of the ledger: accounts, delivered tx results, last committed height.

One file, WAL mode, synchronous=FULL (what commit() returned is on disk). Every write of a
block - its changed accounts, its tx results and the new height and app hash - happens in one
transaction, so after a crash the file holds the last committed block entirely, never half of
the next one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from node.ledger.state import Account

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accounts (
    address BLOB PRIMARY KEY,
    balance INTEGER NOT NULL CHECK (balance >= 0),
    nonce INTEGER NOT NULL CHECK (nonce >= 0)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tx_results (
    hash BLOB PRIMARY KEY,
    height INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL
) WITHOUT ROWID;
"""


class StoreError(Exception):
    """The ledger database is unusable: wrong chain or genesis, corrupt, or out of order."""


class TxResult(NamedTuple):
    """Where and how a delivered transaction ended: block height, index in the block, outcome."""

    height: int
    tx_index: int  # position in the block
    ok: bool
    code: str
    reason: str


@dataclass(frozen=True)
class StoredLedger:
    chain_id: str
    genesis_hash: bytes
    height: int
    app_hash: bytes
    accounts: dict[bytes, Account]


class LedgerStore:
    """The ledger's SQLite file. Not thread-safe: one caller at a time (any thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a block is exactly one
        # transaction. check_same_thread=False lets a trio driver commit from a worker thread.
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{path}: SQLite refused WAL mode (got {mode})")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"{path}: not a usable ledger database: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    # ---- reading ----------------------------------------------------------------------------

    def _meta(self, key: str) -> bytes | int | str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def is_initialised(self) -> bool:
        return self._meta("height") is not None

    def load(self) -> StoredLedger:
        """Read the last committed ledger; raise StoreError if the file was never initialised."""
        chain_id, genesis_hash = self._meta("chain_id"), self._meta("genesis_hash")
        height, app_hash = self._meta("height"), self._meta("app_hash")
        version = self._meta("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version!r}, this node reads "
                             f"{SCHEMA_VERSION}")
        if not (isinstance(chain_id, str) and isinstance(genesis_hash, bytes)
                and isinstance(height, int) and isinstance(app_hash, bytes)):
            raise StoreError(f"{self.path}: ledger metadata is missing or malformed")
        accounts = {
            bytes(addr): Account(balance, nonce)
            for addr, balance, nonce in self._conn.execute(
                "SELECT address, balance, nonce FROM accounts")
        }
        return StoredLedger(chain_id, genesis_hash, height, app_hash, accounts)

    def tx_result(self, tx_hash: bytes) -> TxResult | None:
        row = self._conn.execute(
            "SELECT height, idx, ok, code, reason FROM tx_results WHERE hash = ?", (tx_hash,)
        ).fetchone()
        if row is None:
            return None
        height, idx, ok, code, reason = row
        return TxResult(height, idx, bool(ok), code, reason)

    # ---- writing ----------------------------------------------------------------------------

    def init_genesis(self, chain_id: str, accounts: Mapping[bytes, Account],
                     app_hash: bytes) -> None:
        """Write the genesis state at height 0 (one transaction)."""
        with self._transaction():
            if self._meta("height") is not None:
                raise StoreError(f"{self.path}: ledger already initialised")
            self._conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", SCHEMA_VERSION), ("chain_id", chain_id),
                 ("genesis_hash", app_hash), ("height", 0), ("app_hash", app_hash)])
            self._write_accounts(accounts)

    def commit(self, height: int, app_hash: bytes, changes: Mapping[bytes, Account],
               results: Iterable[tuple[bytes, TxResult]]) -> None:
        """Persist block `height`: its account changes, tx results, height and app hash.

        All or nothing: if anything fails (or the process dies) before the COMMIT, the file
        still holds block height - 1.
        """
        with self._transaction():
            last = self._meta("height")
            if last != height - 1:
                raise StoreError(f"{self.path}: committing height {height} after {last!r}")
            self._write_accounts(changes)
            # One tx may be in several blocks (a replay fails with bad_nonce); keep its success
            # if it ever had one, otherwise its latest failure.
            self._conn.executemany(
                "INSERT INTO tx_results (hash, height, idx, ok, code, reason) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (hash) DO UPDATE SET "
                "height = excluded.height, idx = excluded.idx, ok = excluded.ok, "
                "code = excluded.code, reason = excluded.reason WHERE tx_results.ok = 0",
                [(h, r.height, r.tx_index, int(r.ok), r.code, r.reason) for h, r in results])
            self._conn.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [(height, "height"), (app_hash, "app_hash")])

    def _write_accounts(self, accounts: Mapping[bytes, Account]) -> None:
        self._conn.executemany(
            "INSERT INTO accounts (address, balance, nonce) VALUES (?, ?, ?) "
            "ON CONFLICT (address) DO UPDATE SET balance = excluded.balance, "
            "nonce = excluded.nonce",
            [(addr, acc.balance, acc.nonce) for addr, acc in sorted(accounts.items())])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
