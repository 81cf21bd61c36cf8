"""Ledger store: WAL, one transaction per block, and what survives a crash mid-commit."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.ledger.state import Account, accounts_hash
from node.ledger.store import LedgerStore, StoreError, TxResult

A, B, C = bytes([1]) * 20, bytes([2]) * 20, bytes([3]) * 20
GENESIS = {A: Account(100, 0), B: Account(50, 0)}
H1, H2 = bytes([0xA1]) * 32, bytes([0xA2]) * 32


def fresh(tmp_path: Path) -> LedgerStore:
    store = LedgerStore(tmp_path / "ledger.sqlite")
    store.init_genesis("chain", GENESIS, accounts_hash(GENESIS))
    return store


def block1(store: LedgerStore) -> dict[bytes, Account]:
    changes = {A: Account(90, 1), C: Account(10, 0)}
    state = GENESIS | changes
    store.commit(1, accounts_hash(state), changes, [(H1, TxResult(1, 0, True, "ok", ""))])
    return state


def test_uses_wal_mode(tmp_path: Path) -> None:
    fresh(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "ledger.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_genesis_then_commits_survive_reopen(tmp_path: Path) -> None:
    store = fresh(tmp_path)
    assert store.load().height == 0
    state = block1(store)
    store.close()
    again = LedgerStore(tmp_path / "ledger.sqlite")
    loaded = again.load()
    assert (loaded.chain_id, loaded.height) == ("chain", 1)
    assert loaded.accounts == state
    assert loaded.app_hash == accounts_hash(state)
    assert loaded.genesis_hash == accounts_hash(GENESIS)
    assert again.tx_result(H1) == TxResult(1, 0, True, "ok", "")
    assert again.tx_result(H2) is None


def test_genesis_is_written_once(tmp_path: Path) -> None:
    store = fresh(tmp_path)
    with pytest.raises(StoreError, match="already initialised"):
        store.init_genesis("chain", GENESIS, accounts_hash(GENESIS))


def test_uninitialised_store_does_not_load(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.sqlite")
    assert not store.is_initialised()
    with pytest.raises(StoreError):
        store.load()


def test_heights_must_follow_each_other(tmp_path: Path) -> None:
    store = fresh(tmp_path)
    with pytest.raises(StoreError, match="committing height 2 after 0"):
        store.commit(2, bytes(32), {}, [])
    block1(store)
    with pytest.raises(StoreError, match="committing height 1 after 1"):
        store.commit(1, bytes(32), {}, [])


def test_a_success_is_never_overwritten_by_a_later_failure(tmp_path: Path) -> None:
    store = fresh(tmp_path)
    store.commit(1, bytes(32), {}, [(H1, TxResult(1, 0, True, "ok", "")),
                                    (H2, TxResult(1, 1, False, "insufficient_funds", "x"))])
    store.commit(2, bytes(32), {}, [(H1, TxResult(2, 0, False, "bad_nonce", "replay")),
                                    (H2, TxResult(2, 3, True, "ok", ""))])
    assert store.tx_result(H1) == TxResult(1, 0, True, "ok", "")
    assert store.tx_result(H2) == TxResult(2, 3, True, "ok", "")


def test_a_failing_commit_leaves_the_last_block_intact(tmp_path: Path) -> None:
    store = fresh(tmp_path)
    state = block1(store)
    # A's row is written first (address order), then C's violates CHECK (balance >= 0).
    with pytest.raises(sqlite3.IntegrityError):
        store.commit(2, bytes(32), {A: Account(0, 2), C: Account(-1, 0)}, [])
    # A result that does not fit SQLite's 64-bit integers fails after the accounts.
    with pytest.raises(OverflowError):
        store.commit(2, bytes(32), {A: Account(0, 2)}, [(H2, TxResult(2**64, 0, True, "", ""))])
    for view in (store, LedgerStore(tmp_path / "ledger.sqlite")):
        loaded = view.load()
        assert loaded.height == 1 and loaded.accounts == state
        assert view.tx_result(H2) is None
    store.commit(2, bytes(32), {A: Account(0, 2)}, [])  # and the store still works
    assert store.load().height == 2


class _Results:
    """Tx results whose iteration runs `hook` (inside commit's open transaction)."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self._hook = hook

    def __iter__(self) -> Iterator[tuple[bytes, TxResult]]:
        self._hook()
        return iter([(H2, TxResult(2, 0, True, "ok", ""))])


def test_a_second_connection_sees_only_committed_blocks(tmp_path: Path) -> None:
    store = fresh(tmp_path)
    state = block1(store)
    seen = []

    def read_from_another_connection() -> None:
        # Block 2's accounts are written but not committed: readers still see block 1.
        other = LedgerStore(tmp_path / "ledger.sqlite")
        seen.append(other.load())
        other.close()

    store.commit(2, bytes(32), {A: Account(0, 2)}, _Results(read_from_another_connection))
    assert seen[0].height == 1 and seen[0].accounts == state
    assert store.load().height == 2


def test_process_killed_mid_commit_leaves_the_last_block(tmp_path: Path) -> None:
    """A real crash: the process dies (os._exit) with block 2 half written."""
    store = fresh(tmp_path)
    block1(store)
    store.close()
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})
        from node.ledger.state import Account
        from node.ledger.store import LedgerStore, TxResult

        class DieWhileIterated:
            def __iter__(self):
                os._exit(9)

        store = LedgerStore(Path({str(tmp_path / "ledger.sqlite")!r}))
        store.commit(2, bytes(32), {{{A!r}: Account(0, 2), {B!r}: Account(150, 0)}},
                     DieWhileIterated())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr.decode()
    store = LedgerStore(tmp_path / "ledger.sqlite")
    loaded = store.load()
    assert loaded.height == 1
    assert loaded.accounts == GENESIS | {A: Account(90, 1), C: Account(10, 0)}
    assert loaded.app_hash == accounts_hash(loaded.accounts)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable ledger database"):
        LedgerStore(path)
