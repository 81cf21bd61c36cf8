"""LedgerApp: genesis, check_tx codes, block execution, persistence and determinism."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.codec import to_cbor
from node.consensus.types import Header
from node.crypto import Ed25519Key
from node.ledger.app import DB_FILE, DeliverResult, LedgerApp, LedgerError, LedgerParams
from node.ledger.state import Account, GenesisError, accounts_hash
from node.ledger.store import LedgerStore, StoreError, TxResult
from node.ledger.tx import Transfer, transfer_sign_bytes

CHAIN = "dcloud-test"
KEYS = [Ed25519Key(bytes([i + 1]) * 32) for i in range(6)]
ADDRS = [bytes.fromhex(k.address) for k in KEYS]
ALICE, BOB, CAROL, DAVE, PROPOSER, RICH = ADDRS
GENESIS = [(ALICE, 1000), (BOB, 500), (CAROL, 0), (RICH, 10**12)]


def open_app(path: Path, genesis: list[tuple[bytes, int]] = GENESIS,
             chain: str = CHAIN) -> LedgerApp:
    return LedgerApp.open(path, chain, genesis, LedgerParams())


@pytest.fixture
def app(tmp_path: Path) -> LedgerApp:
    return open_app(tmp_path)


def send(sender: int, to: bytes, amount: int, fee: int = 0, nonce: int = 0,
         chain: str = CHAIN) -> bytes:
    return Transfer.signed(KEYS[sender], chain, to, amount, fee, nonce).encode()


def flip_last_bit(tx: bytes) -> bytes:
    """The same transfer with a corrupted signature (its last byte is signature)."""
    return tx[:-1] + bytes([tx[-1] ^ 1])


def header(app: LedgerApp, proposer: bytes = PROPOSER, **change: object) -> Header:
    height, app_hash = app.info()
    fields: dict[str, object] = dict(
        chain_id=app.chain_id, height=height + 1, time_ms=0, prev_block_id=None,
        txs_hash=bytes(32), app_hash=app_hash, validators_hash=bytes(32), proposer=proposer,
        evidence_hash=bytes(32))
    return Header(**(fields | change))  # type: ignore[arg-type]


def run_block(app: LedgerApp, txs: list[bytes], proposer: bytes = PROPOSER
              ) -> list[DeliverResult]:
    app.begin_block(header(app, proposer))
    results = [app.deliver_tx(tx) for tx in txs]
    assert app.end_block() == []
    app.commit()
    return results


# ---- genesis and reopening ------------------------------------------------------------------


def test_genesis_state_and_hash_before_block_one(app: LedgerApp) -> None:
    expected = accounts_hash({a: Account(b, 0) for a, b in GENESIS})
    assert app.info() == (0, expected)
    assert app.account(ALICE) == (1000, 0)
    assert app.account(DAVE) is None


def test_reopen_restores_state_height_and_hash(tmp_path: Path) -> None:
    app = open_app(tmp_path)
    run_block(app, [send(0, DAVE, 100, fee=3)])
    info = app.info()
    app.close()
    with open_app(tmp_path) as again:
        assert again.info() == info
        assert again.account(ALICE) == (897, 1)
        assert again.account(DAVE) == (100, 0)
        assert again.account(PROPOSER) == (3, 0)


def test_reopen_with_another_chain_or_genesis_is_refused(tmp_path: Path) -> None:
    open_app(tmp_path).close()
    with pytest.raises(StoreError, match="holds chain"):
        open_app(tmp_path, chain="other-chain")
    with pytest.raises(StoreError, match="another genesis"):
        open_app(tmp_path, genesis=[(ALICE, 1001)])


def test_reopen_of_a_tampered_state_is_refused(tmp_path: Path) -> None:
    open_app(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_FILE)
    conn.execute("UPDATE accounts SET balance = balance + 1 WHERE address = ?", (ALICE,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="corrupt"):
        open_app(tmp_path)


def test_invalid_genesis_or_chain_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GenesisError):
        open_app(tmp_path, genesis=[(ALICE, -1)])
    with pytest.raises(ValueError, match="chain id"):
        open_app(tmp_path, chain="")


# ---- check_tx -------------------------------------------------------------------------------


def test_check_tx_accepts_a_valid_transfer(app: LedgerApp) -> None:
    tx = Transfer.signed(KEYS[0], CHAIN, BOB, 100, 5, 0)
    res = app.check_tx(tx.encode())
    assert (res.ok, res.code, res.tx_hash) == (True, "ok", tx.hash)
    assert (res.sender, res.nonce, res.fee, res.amount) == (ALICE, 0, 5, 100)


def test_check_tx_accepts_a_nonce_ahead_of_the_account(app: LedgerApp) -> None:
    assert app.check_tx(send(0, BOB, 1, nonce=3)).ok  # the mempool decides about order


def amount_zero_tx() -> bytes:
    pub = KEYS[0].public_key
    sig = KEYS[0].sign(transfer_sign_bytes(CHAIN, pub, BOB, 0, 0, 0))
    return to_cbor(["transfer", CHAIN, pub, BOB, 0, 0, 0, sig])


@pytest.mark.parametrize("make_tx,code", [
    (lambda: b"\x00garbage", "bad_encoding"),
    (lambda: send(0, BOB, 1)[:-1], "bad_encoding"),
    (lambda: b"\x98\x08" + send(0, BOB, 1)[1:], "bad_encoding"),  # non-canonical
    (lambda: send(0, BOB, 1, chain="other"), "wrong_chain"),
    (lambda: flip_last_bit(send(0, BOB, 1)), "bad_signature"),
    (lambda: send(0, BOB, 1000, fee=1), "insufficient_funds"),
    (lambda: send(3, BOB, 1), "insufficient_funds"),  # no account at all
    (lambda: b"\x00" * 1025, "too_large"),
    (amount_zero_tx, "bad_amount"),
])
def test_check_tx_refusals(app: LedgerApp, make_tx: object, code: str) -> None:
    res = app.check_tx(make_tx())  # type: ignore[operator]
    assert not res.ok
    assert res.code == code and res.reason


def test_check_tx_refuses_a_used_nonce(app: LedgerApp) -> None:
    tx = send(0, BOB, 1)
    run_block(app, [tx])
    res = app.check_tx(tx)
    assert (res.ok, res.code) == (False, "bad_nonce")


def test_check_tx_reads_the_committed_state_during_a_block(app: LedgerApp) -> None:
    app.begin_block(header(app))
    assert app.deliver_tx(send(0, BOB, 1000)).ok  # alice is empty in the block...
    assert app.check_tx(send(0, BOB, 900)).ok  # ...but not in the committed state
    app.end_block()
    app.commit()
    assert app.check_tx(send(0, BOB, 900, nonce=1)).code == "insufficient_funds"


# ---- blocks ---------------------------------------------------------------------------------


def test_block_applies_transfers_and_pays_fees_to_its_proposer(app: LedgerApp) -> None:
    results = run_block(app, [send(0, BOB, 100, fee=2), send(1, CAROL, 50, fee=1),
                              send(0, CAROL, 10, fee=0, nonce=1)])
    assert all(r.ok for r in results)
    assert app.account(ALICE) == (888, 2)
    assert app.account(BOB) == (549, 1)
    assert app.account(CAROL) == (60, 0)
    assert app.account(PROPOSER) == (3, 0)
    assert app.info()[0] == 1


def test_failing_txs_are_recorded_and_do_not_stop_the_block(app: LedgerApp) -> None:
    good, replay = send(0, BOB, 10), send(0, BOB, 10)
    txs = [b"junk", good, replay, send(0, BOB, 5, chain="x", nonce=1), send(1, ALICE, 511),
           send(0, CAROL, 20, fee=1, nonce=1)]
    results = run_block(app, txs)
    assert [r.code for r in results] == ["bad_encoding", "ok", "bad_nonce", "wrong_chain",
                                         "insufficient_funds", "ok"]
    assert app.account(ALICE) == (969, 2)
    assert app.account(BOB) == (510, 0)  # bob's failed transfer changed nothing
    # good and replay are the same bytes: the success stays recorded.
    assert app.tx_result(results[1].tx_hash) == TxResult(1, 1, True, "ok", "")
    failed = app.tx_result(results[4].tx_hash)
    assert failed is not None and (failed.tx_index, failed.ok, failed.code) == \
        (4, False, "insufficient_funds")
    assert app.tx_result(bytes.fromhex(results[5].tx_hash)) == TxResult(1, 5, True, "ok", "")


def test_tx_results_appear_only_after_commit(app: LedgerApp) -> None:
    app.begin_block(header(app))
    h = app.deliver_tx(send(0, BOB, 10)).tx_hash
    assert app.tx_result(h) is None
    app.end_block()
    app.commit()
    assert app.tx_result(h) is not None
    assert app.tx_result("not hex") is None
    assert app.tx_result(b"short") is None


def test_oversized_tx_in_a_block_fails(tmp_path: Path) -> None:
    app = LedgerApp.open(tmp_path, CHAIN, GENESIS, LedgerParams(max_tx_bytes=100))
    assert [r.code for r in run_block(app, [send(0, BOB, 10)])] == ["too_large"]


def test_a_fee_below_the_chains_minimum_is_refused_at_check_tx_and_in_a_block(
        tmp_path: Path) -> None:
    app = LedgerApp.open(tmp_path, CHAIN, GENESIS, LedgerParams(min_fee=5))
    cheap, paid = send(0, BOB, 10, fee=4), send(0, BOB, 10, fee=5)
    result = app.check_tx(cheap)
    assert (result.ok, result.code) == (False, "fee_too_low") and "minimum 5" in result.reason
    assert app.check_tx(paid).ok
    assert [r.code for r in run_block(app, [cheap, paid])] == ["fee_too_low", "ok"]
    assert app.account(ALICE) == Account(1000 - 15, 1)


def test_a_bad_signature_is_caught_in_the_block_even_after_check_tx(app: LedgerApp) -> None:
    forged = flip_last_bit(send(0, BOB, 10))
    assert app.check_tx(forged).code == "bad_signature"
    assert run_block(app, [forged])[0].code == "bad_signature"


def test_calls_out_of_order_are_refused(app: LedgerApp) -> None:
    with pytest.raises(LedgerError):
        app.deliver_tx(send(0, BOB, 1))
    with pytest.raises(LedgerError):
        app.end_block()
    with pytest.raises(LedgerError):
        app.commit()
    with pytest.raises(LedgerError, match="after committed height 0"):
        app.begin_block(header(app, height=2))
    with pytest.raises(LedgerError, match="chain"):
        app.begin_block(header(app, chain_id="other"))
    with pytest.raises(LedgerError, match="app hash"):
        app.begin_block(header(app, app_hash=bytes(32)))
    with pytest.raises(LedgerError, match="proposer"):
        app.begin_block(header(app, proposer=b"short"))
    app.begin_block(header(app))
    with pytest.raises(LedgerError, match="not committed"):
        app.begin_block(header(app))
    with pytest.raises(LedgerError):
        app.commit()  # end_block first
    app.end_block()
    with pytest.raises(LedgerError):
        app.deliver_tx(send(0, BOB, 1))
    app.commit()
    assert app.info()[0] == 1


def test_a_failed_commit_keeps_the_last_state_and_can_be_retried(
        app: LedgerApp, monkeypatch: pytest.MonkeyPatch) -> None:
    before = app.info()
    app.begin_block(header(app))
    app.deliver_tx(send(0, BOB, 10))
    app.end_block()
    real_commit = LedgerStore.commit

    def disk_full(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(LedgerStore, "commit", disk_full)
    with pytest.raises(sqlite3.OperationalError):
        app.commit()
    assert app.info() == before
    assert app.account(ALICE) == (1000, 0)
    monkeypatch.setattr(LedgerStore, "commit", real_commit)
    app.commit()
    assert app.info()[0] == 1 and app.account(ALICE) == (990, 1)


# ---- determinism ----------------------------------------------------------------------------

tx_op = st.tuples(
    st.integers(0, 3),  # sender: alice, bob, carol, dave (carol and dave start empty)
    st.integers(0, 4),  # recipient (index 4: the proposer)
    st.integers(1, 400),  # amount
    st.integers(0, 9),  # fee
    st.sampled_from([0, 0, 0, 0, -1, 1]),  # nonce skew: mostly right, sometimes replay or gap
    st.sampled_from(["ok"] * 6 + ["bad_sig", "wrong_chain", "junk"]),
)
blocks_strategy = st.lists(st.tuples(st.integers(0, 4), st.lists(tx_op, max_size=8)),
                           min_size=1, max_size=5)


def build_blocks(app: LedgerApp, plan: list[tuple[int, list[tuple[int, int, int, int, int,
                                                                   str]]]]
                 ) -> list[tuple[bytes, list[bytes]]]:
    """Turn a plan into tx bytes, executing it on `app` (nonces follow its successes)."""
    nonces = [0] * len(KEYS)
    blocks = []
    for proposer_i, ops in plan:
        proposer = ADDRS[proposer_i]
        app.begin_block(header(app, proposer))
        txs = []
        for sender, to, amount, fee, skew, mangle in ops:
            nonce = max(0, nonces[sender] + skew)
            tx = send(sender, ADDRS[to], amount, fee, nonce,
                      chain="other" if mangle == "wrong_chain" else CHAIN)
            if mangle == "bad_sig":
                tx = flip_last_bit(tx)
            elif mangle == "junk":
                tx = tx[:20]
            if app.deliver_tx(tx).ok:
                nonces[sender] += 1
            txs.append(tx)
        app.end_block()
        app.commit()
        blocks.append((proposer, txs))
    return blocks


def replay(app: LedgerApp, blocks: list[tuple[bytes, list[bytes]]]) -> list[bytes]:
    hashes = []
    for proposer, txs in blocks:
        run_block(app, txs, proposer)
        hashes.append(app.info()[1])
    return hashes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=blocks_strategy)
def test_same_blocks_give_the_same_app_hash_on_every_node(
        plan: list[tuple[int, list[tuple[int, int, int, int, int, str]]]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        first = open_app(root / "a")
        hashes_a = []
        blocks = []
        for step in plan:
            blocks += build_blocks(first, [step])
            hashes_a.append(first.info()[1])
        second = open_app(root / "b")
        assert replay(second, blocks) == hashes_a
        # A different sequence: one more transfer in the last block.
        third = open_app(root / "c")
        extra = send(5, ALICE, 1)
        changed = blocks[:-1] + [(blocks[-1][0], blocks[-1][1] + [extra])]
        hashes_c = replay(third, changed)
        assert hashes_c[:-1] == hashes_a[:-1] and hashes_c[-1] != hashes_a[-1]
        # Restarting gives the same state back.
        second.close()
        with open_app(root / "b") as reopened:
            assert reopened.info() == (len(blocks), hashes_a[-1])
        for app in (first, third):
            app.close()
