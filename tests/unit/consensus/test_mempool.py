"""Mempool: dedup, per-sender nonce runs, funds across pending txs, eviction, reaping order,
re-checking after a commit, and batched announcement."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.consensus.mempool import Mempool
from node.consensus.types import Header
from node.crypto import Ed25519Key
from node.ledger.app import LedgerApp
from node.ledger.tx import Transfer

CHAIN = "dcloud-test"
KEYS = [Ed25519Key(bytes([i + 1]) * 32) for i in range(8)]
ADDRS = [bytes.fromhex(k.address) for k in KEYS]
POOR, PROPOSER, SINK = 5, ADDRS[6], ADDRS[7]
GENESIS = [(a, 10**15) for a in ADDRS[:5]] + [(ADDRS[POOR], 100)]


def tx(sender: int, nonce: int = 0, fee: int = 1, amount: int = 10, to: bytes = SINK) -> bytes:
    return Transfer.signed(KEYS[sender], CHAIN, to, amount, fee, nonce).encode()


def hash_of(tx_bytes: bytes) -> str:
    return Transfer.decode(tx_bytes).hash


@pytest.fixture
def app(tmp_path: Path) -> LedgerApp:
    return LedgerApp.open(tmp_path, CHAIN, GENESIS)


def commit(app: LedgerApp, pool: Mempool, txs: list[bytes]) -> list[str]:
    """Run a block of `txs` through the app, then tell the mempool; return the result codes."""
    height, app_hash = app.info()
    app.begin_block(Header(CHAIN, height + 1, 0, None, bytes(32), app_hash, bytes(32),
                           PROPOSER, bytes(32)))
    codes = [app.deliver_tx(t).code for t in txs]
    app.end_block()
    app.commit()
    pool.update(height + 1, txs)
    return codes


# ---- admission ------------------------------------------------------------------------------


def test_add_keeps_a_valid_tx(app: LedgerApp) -> None:
    pool = Mempool(app)
    t = tx(0)
    res = pool.add(t)
    assert res.ok and res.tx_hash == hash_of(t)
    assert pool.size() == 1 and pool.bytes() == len(t) and pool.contains(res.tx_hash)


def test_the_same_tx_twice_is_a_duplicate(app: LedgerApp) -> None:
    pool = Mempool(app)
    t = tx(0)
    pool.add(t)
    res = pool.add(t)
    assert (res.ok, res.code) == (False, "duplicate")
    assert pool.size() == 1


def test_refusals_of_the_app_pass_through_and_keep_nothing(app: LedgerApp) -> None:
    pool = Mempool(app)
    bad_sig = tx(0)[:-1] + bytes([tx(0)[-1] ^ 1])
    other_chain = Transfer.signed(KEYS[0], "other", SINK, 1, 0, 0).encode()
    assert [pool.add(t).code for t in (bad_sig, other_chain, b"junk", tx(POOR, amount=101))] \
        == ["bad_signature", "wrong_chain", "bad_encoding", "insufficient_funds"]
    assert pool.size() == 0 and pool.bytes() == 0 and pool.take_unannounced(10) == []


def test_a_sender_s_nonces_must_follow_without_gaps(app: LedgerApp) -> None:
    pool = Mempool(app)
    assert pool.add(tx(0, nonce=0)).ok
    assert pool.pending_nonce(ADDRS[0]) == 1
    gap = pool.add(tx(0, nonce=2))
    assert (gap.code, "gap" in gap.reason) == ("bad_nonce", True)
    again = pool.add(tx(0, nonce=0, fee=50))  # same nonce, another tx: no replacement
    assert (again.code, "already pending" in again.reason) == ("bad_nonce", True)
    assert pool.add(tx(0, nonce=1)).ok and pool.add(tx(0, nonce=2)).ok
    assert pool.add(tx(1, nonce=1)).code == "bad_nonce"  # must start at the account's nonce
    assert pool.size() == 3


def test_a_sender_may_have_only_so_many_pending_txs(app: LedgerApp) -> None:
    pool = Mempool(app, max_txs_per_sender=2)
    assert pool.add(tx(0, 0)).ok and pool.add(tx(0, 1)).ok
    assert pool.add(tx(0, 2)).code == "too_many_pending"
    assert pool.add(tx(1, 0)).ok
    commit(app, pool, [tx(0, 0)])
    assert pool.add(tx(0, 2)).ok


def test_balance_must_cover_all_pending_txs_of_a_sender(app: LedgerApp) -> None:
    pool = Mempool(app)
    assert pool.add(tx(POOR, 0, fee=5, amount=50)).ok
    res = pool.add(tx(POOR, 1, fee=5, amount=50))  # each fits alone; both do not
    assert res.code == "insufficient_funds" and "pending spend 55" in res.reason
    assert pool.add(tx(POOR, 1, fee=5, amount=40)).ok  # exactly 100


# ---- reaping --------------------------------------------------------------------------------


def test_reap_keeps_each_sender_in_nonce_order_and_prefers_high_fees(app: LedgerApp) -> None:
    pool = Mempool(app)
    a0, a1, a2 = tx(0, 0, fee=1), tx(0, 1, fee=100), tx(0, 2, fee=50)
    b0, b1 = tx(1, 0, fee=10), tx(1, 1, fee=2)
    c0 = tx(2, 0, fee=10)  # same fee as b0, added later
    for t in (a0, a1, a2, b0, b1, c0):
        assert pool.add(t).ok
    assert pool.reap(10**6, 100) == [b0, c0, b1, a0, a1, a2]
    assert pool.size() == 6  # reaping does not remove


def test_reap_respects_count_and_byte_limits(app: LedgerApp) -> None:
    pool = Mempool(app)
    a0 = tx(0, 0, fee=9, amount=2**40)  # 8 bytes larger than an amount of 10
    b0, b1 = tx(1, 0, fee=5), tx(1, 1, fee=5, amount=2**40)
    c0 = tx(2, 0, fee=1)
    for t in (a0, b0, b1, c0):
        assert pool.add(t).ok
    assert pool.reap(10**6, 2) == [a0, b0]
    # b1 does not fit in what is left: bob is skipped, c0 (smaller) still comes.
    assert pool.reap(len(a0) + len(b0) + len(c0), 10) == [a0, b0, c0]
    assert pool.reap(len(b0) - 1, 10) == []


# ---- eviction -------------------------------------------------------------------------------


def test_full_pool_evicts_the_lowest_fee_for_a_higher_one(app: LedgerApp) -> None:
    pool = Mempool(app, max_txs=3)
    low, mid, high = tx(0, fee=1), tx(1, fee=3), tx(2, fee=5)
    for t in (low, mid, high):
        pool.add(t)
    refused = pool.add(tx(3, fee=1))  # not above the lowest
    assert (refused.ok, refused.code) == (False, "mempool_full")
    assert pool.add(tx(3, fee=2)).ok
    assert not pool.contains(hash_of(low)) and pool.size() == 3


def test_among_equal_lowest_fees_the_newest_goes(app: LedgerApp) -> None:
    pool = Mempool(app, max_txs=2)
    older, newer = tx(0, fee=1), tx(1, fee=1)
    pool.add(older)
    pool.add(newer)
    assert pool.add(tx(2, fee=2)).ok
    assert pool.contains(hash_of(older)) and not pool.contains(hash_of(newer))


def test_evicting_a_tx_evicts_the_later_nonces_of_its_sender(app: LedgerApp) -> None:
    pool = Mempool(app, max_txs=3)
    a0, a1, b0 = tx(0, 0, fee=1), tx(0, 1, fee=9), tx(1, 0, fee=5)
    for t in (a0, a1, b0):
        pool.add(t)
    assert pool.add(tx(2, fee=2)).ok
    assert not pool.contains(hash_of(a0)) and not pool.contains(hash_of(a1))
    assert pool.size() == 2 and pool.pending_nonce(ADDRS[0]) is None
    assert pool.reap(10**6, 10) == [b0, tx(2, fee=2)]


def test_a_sender_never_evicts_its_own_earlier_nonces(app: LedgerApp) -> None:
    pool = Mempool(app, max_txs=2)
    pool.add(tx(0, 0, fee=1))
    pool.add(tx(0, 1, fee=1))
    assert pool.add(tx(0, 2, fee=100)).code == "mempool_full"
    assert pool.size() == 2


def test_byte_bound_evicts_until_the_new_tx_fits(app: LedgerApp) -> None:
    size = len(tx(0))
    pool = Mempool(app, max_bytes=3 * size)
    for i, fee in enumerate((1, 2, 3)):
        pool.add(tx(i, fee=fee))
    big = tx(3, fee=4, amount=2**40)  # 8 bytes larger: two txs must go
    assert pool.add(big).ok
    assert pool.size() == 2 and pool.bytes() == size + len(big) <= 3 * size
    assert pool.add(tx(4, fee=9, amount=10**14 + 7)).ok  # ok after evicting more
    huge = Mempool(app, max_bytes=size - 1)
    assert huge.add(tx(0)).code == "mempool_full"


def test_eviction_keeps_the_pool_consistent_under_churn(app: LedgerApp) -> None:
    pool = Mempool(app, max_txs=20)
    for round_ in range(6):
        for sender in range(5):
            for nonce in range(round_ * 4, round_ * 4 + 4):
                pool.add(tx(sender, nonce, fee=1 + (sender * 7 + nonce) % 11))
        reaped = pool.reap(10**6, 10**6)
        assert len(reaped) == pool.size() <= 20
        assert sum(map(len, reaped)) == pool.bytes()
        assert all(r == "ok" for r in commit(app, pool, reaped))
        assert pool.size() == 0


# ---- after a commit -------------------------------------------------------------------------


def test_update_removes_committed_txs(app: LedgerApp) -> None:
    pool = Mempool(app)
    a0, a1, b0 = tx(0, 0), tx(0, 1), tx(1, 0)
    for t in (a0, a1, b0):
        pool.add(t)
    assert commit(app, pool, [a0, b0]) == ["ok", "ok"]
    assert pool.reap(10**6, 10) == [a1] and pool.height == 1
    assert pool.add(a0).code == "bad_nonce"  # gossiped again after its commit


def test_update_drops_txs_whose_nonce_another_tx_used(app: LedgerApp) -> None:
    pool = Mempool(app)
    mine0, mine1 = tx(0, 0, amount=10), tx(0, 1)
    pool.add(mine0)
    pool.add(mine1)
    elsewhere0 = tx(0, 0, amount=11)  # the same nonce, sent through another node
    assert commit(app, pool, [elsewhere0]) == ["ok"]
    assert pool.reap(10**6, 10) == [mine1]  # still the account's next nonce


def test_update_drops_what_the_new_balance_no_longer_covers(app: LedgerApp) -> None:
    pool = Mempool(app)
    pool.add(tx(POOR, 0, amount=40))
    pool.add(tx(POOR, 1, amount=40))
    pool.add(tx(POOR, 2, amount=9))
    assert commit(app, pool, [tx(POOR, 0, amount=80, fee=0)]) == ["ok"]  # 20 left, nonce 1
    assert pool.size() == 0  # nonce 1 (41) does not fit any more, and nonce 2 follows it
    assert pool.add(tx(POOR, 1, amount=9)).ok


def test_update_drops_included_txs_that_failed_and_their_successors(app: LedgerApp) -> None:
    pool = Mempool(app)
    a0, a1, a2 = tx(0, 0), tx(0, 1), tx(0, 2)
    for t in (a0, a1, a2):
        pool.add(t)
    # A proposer put a1 before a0: a1 fails, a0 applies; a2 would need a1 first.
    assert commit(app, pool, [a1, a0]) == ["bad_nonce", "ok"]
    assert pool.size() == 0


def test_update_without_changes_keeps_everything(app: LedgerApp) -> None:
    pool = Mempool(app)
    txs = [tx(0, 0), tx(0, 1), tx(1, 0)]
    for t in txs:
        pool.add(t)
    commit(app, pool, [])
    assert pool.size() == 3


# ---- announcing -----------------------------------------------------------------------------


def test_take_unannounced_hands_out_new_txs_once_oldest_first(app: LedgerApp) -> None:
    pool = Mempool(app, max_txs=4)
    txs = [tx(0, 0, fee=5), tx(0, 1, fee=5), tx(1, 0, fee=1), tx(2, 0, fee=5)]
    for t in txs:
        pool.add(t)
    pool.add(tx(3, 0, fee=9), announce=False)  # from gossip: evicts tx(1, 0), not announced
    assert pool.take_unannounced(2) == txs[:2]
    assert pool.take_unannounced(10) == [txs[3]]
    assert pool.take_unannounced(10) == []
    pool.add(tx(0, 2, fee=6))  # evicts tx(2, 0), which was already announced
    assert pool.take_unannounced(10) == [tx(0, 2, fee=6)]


# ---- property: what is reaped applies -------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 5), st.sampled_from([0, 0, 0, 1, -1]),
              st.integers(0, 6), st.integers(1, 60)),
    st.tuples(st.just("block"), st.integers(0, 12), st.integers(200, 3000)),
), max_size=60)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_every_reaped_block_applies_in_full(
        script: list[tuple[str, int, int] | tuple[str, int, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        app = LedgerApp.open(d, CHAIN, GENESIS)
        pool = Mempool(app, max_txs=12, max_bytes=12 * 170)
        next_nonce = [0] * len(KEYS)
        for op in script:
            if op[0] == "add":
                _, sender, skew, fee, amount = op  # type: ignore[misc]
                nonce = max(0, (pool.pending_nonce(ADDRS[sender]) or next_nonce[sender]) + skew)
                pool.add(tx(sender, nonce, fee, amount))
            else:
                _, max_txs, max_bytes = op  # type: ignore[misc]
                block = pool.reap(max_bytes, max_txs)
                assert len(block) <= max_txs and sum(map(len, block)) <= max_bytes
                assert all(code == "ok" for code in commit(app, pool, block))
                for s in range(len(KEYS)):
                    acc = app.account(ADDRS[s])
                    next_nonce[s] = acc.nonce if acc else 0
            assert pool.size() <= 12 and pool.bytes() <= 12 * 170
            everything = pool.reap(10**9, 10**9)
            assert len(everything) == pool.size() and sum(map(len, everything)) == pool.bytes()
        app.close()
