"""Ledger state: genesis, the transfer rules, and the app hash over the whole account map."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.codec import to_cbor
from node.crypto import Ed25519Key
from node.ledger.state import (
    BAD_NONCE,
    BAD_SIGNATURE,
    INSUFFICIENT_FUNDS,
    WRONG_CHAIN,
    Account,
    BlockChanges,
    GenesisError,
    LedgerState,
    TxRejected,
    _cbor_array_header,
    accounts_hash,
    genesis_accounts,
)
from node.ledger.tx import MAX_AMOUNT, Transfer

CHAIN = "dcloud-test"
KEYS = [Ed25519Key(bytes([i + 1]) * 32) for i in range(4)]
ADDRS = [bytes.fromhex(k.address) for k in KEYS]
ALICE, BOB, CAROL, PROPOSER = ADDRS


def state(**balances: int) -> LedgerState:
    names = {"alice": ALICE, "bob": BOB, "carol": CAROL, "proposer": PROPOSER}
    return LedgerState(genesis_accounts([(names[n], b) for n, b in balances.items()]))


def send(sender: int, to: bytes, amount: int, fee: int = 0, nonce: int = 0,
         chain: str = CHAIN) -> Transfer:
    return Transfer.signed(KEYS[sender], chain, to, amount, fee, nonce)


# ---- genesis and hash -----------------------------------------------------------------------


def test_genesis_accounts_start_at_nonce_zero() -> None:
    assert genesis_accounts([(ALICE, 5), (BOB, 0)]) == {ALICE: Account(5, 0), BOB: Account(0, 0)}


@pytest.mark.parametrize("entries,reason", [
    ([(b"short", 1)], "20 bytes"),
    ([(ALICE.hex(), 1)], "20 bytes"),
    ([(ALICE, -1)], ">= 0"),
    ([(ALICE, 1.0)], ">= 0"),
    ([(ALICE, True)], ">= 0"),
    ([(ALICE, 1), (ALICE, 2)], "twice"),
    ([(ALICE, MAX_AMOUNT), (BOB, 1)], "total supply"),
    ([(ALICE,)], "pair"),
])
def test_invalid_genesis_is_refused(entries: list[tuple[object, ...]], reason: str) -> None:
    with pytest.raises(GenesisError, match=reason):
        genesis_accounts(entries)  # type: ignore[arg-type]


def test_app_hash_is_sha256_of_the_sorted_account_list() -> None:
    s = state(bob=7, alice=5)
    items = sorted([[ALICE, 5, 0], [BOB, 7, 0]])
    assert s.app_hash() == hashlib.sha256(to_cbor(items)).digest()
    assert accounts_hash({BOB: Account(7, 0), ALICE: Account(5, 0)}) == s.app_hash()


def test_app_hash_ignores_insertion_order_and_sees_every_field() -> None:
    a = LedgerState({ALICE: Account(5, 0), BOB: Account(7, 1)})
    b = LedgerState({BOB: Account(7, 1), ALICE: Account(5, 0)})
    assert a.app_hash() == b.app_hash()
    for other in ({ALICE: Account(5, 0), BOB: Account(7, 2)},
                  {ALICE: Account(6, 0), BOB: Account(7, 1)},
                  {ALICE: Account(5, 0), BOB: Account(7, 1), CAROL: Account(0, 0)}):
        assert LedgerState(other).app_hash() != a.app_hash()


@pytest.mark.parametrize("length", [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32])
def test_array_head_is_the_canonical_cbor_head(length: int) -> None:
    # Small lengths: compare with cbor2's encoding of a list of zeros (0 encodes as one byte).
    # Large ones: the RFC 8949 forms (0x99/0x9a/0x9b, then a 2/4/8-byte big-endian length).
    if length <= 300:
        assert to_cbor([0] * length) == _cbor_array_header(length) + b"\x00" * length
    else:
        head = _cbor_array_header(length)
        assert head[0] in (0x99, 0x9A, 0x9B) and int.from_bytes(head[1:], "big") == length
        assert len(head) - 1 == {0x99: 2, 0x9A: 4, 0x9B: 8}[head[0]]


addresses = st.binary(min_size=20, max_size=20)
accounts = st.builds(Account, st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1))


@settings(max_examples=60, deadline=None)
@given(start=st.dictionaries(addresses, accounts, max_size=300),
       steps=st.lists(st.dictionaries(addresses, accounts, max_size=30), max_size=4),
       undo_last=st.booleans())
def test_incremental_hash_equals_the_reference(start: dict[bytes, Account],
                                              steps: list[dict[bytes, Account]],
                                              undo_last: bool) -> None:
    s = LedgerState(start)
    model = dict(start)
    assert s.app_hash() == accounts_hash(model)
    prev: dict[bytes, Account | None] = {}
    before = model
    for changes in steps:
        before = dict(model)
        prev = s.apply(changes)
        model.update(changes)
        assert s.app_hash() == accounts_hash(model)
        assert s.items() == sorted(model.items())
    if undo_last and steps:
        s.undo(prev)
        assert s.app_hash() == accounts_hash(before)
        assert s.items() == sorted(before.items())


def test_apply_and_undo_restore_the_state_and_hash() -> None:
    s = state(alice=5)
    before = s.app_hash()
    prev = s.apply({ALICE: Account(1, 1), BOB: Account(4, 0)})
    assert s.app_hash() != before
    s.undo(prev)
    assert s.app_hash() == before and s.get(BOB) is None


# ---- transfers ------------------------------------------------------------------------------


def test_transfer_moves_amount_pays_fee_to_proposer_and_bumps_nonce() -> None:
    base = state(alice=1000, bob=10)
    block = BlockChanges(base, CHAIN, PROPOSER)
    block.apply_transfer(send(0, BOB, 300, fee=7))
    assert block.changes == {ALICE: Account(693, 1), BOB: Account(310, 0),
                             PROPOSER: Account(7, 0)}
    assert base.get(ALICE) == Account(1000, 0)  # committed state untouched until commit


def test_zero_fee_creates_no_proposer_account() -> None:
    block = BlockChanges(state(alice=10), CHAIN, PROPOSER)
    block.apply_transfer(send(0, CAROL, 10))
    assert PROPOSER not in block.changes
    assert block.changes[ALICE] == Account(0, 1)  # emptied, never deleted: the nonce stays


def test_self_transfer_costs_only_the_fee_and_consumes_a_nonce() -> None:
    block = BlockChanges(state(alice=100), CHAIN, PROPOSER)
    block.apply_transfer(send(0, ALICE, 60, fee=5))
    assert block.get(ALICE) == Account(95, 1)
    assert block.get(PROPOSER) == Account(5, 0)


def test_proposer_paying_a_fee_gets_it_back() -> None:
    block = BlockChanges(state(proposer=100), CHAIN, PROPOSER)
    block.apply_transfer(send(3, BOB, 40, fee=5))
    assert block.get(PROPOSER) == Account(60, 1)


def test_exact_balance_is_enough() -> None:
    block = BlockChanges(state(alice=105), CHAIN, PROPOSER)
    block.apply_transfer(send(0, BOB, 100, fee=5))
    assert block.get(ALICE) == Account(0, 1)


def test_transfers_of_one_block_see_each_other() -> None:
    block = BlockChanges(state(alice=100), CHAIN, PROPOSER)
    block.apply_transfer(send(0, BOB, 60))
    block.apply_transfer(send(1, CAROL, 50))  # bob spends what alice just sent
    with pytest.raises(TxRejected) as exc:
        block.apply_transfer(send(0, BOB, 60, nonce=1))
    assert exc.value.code == INSUFFICIENT_FUNDS


@pytest.mark.parametrize("make_tx,code", [
    (lambda: send(0, BOB, 10, chain="other"), WRONG_CHAIN),
    (lambda: Transfer(CHAIN, KEYS[0].public_key, BOB, 10, 0, 0, bytes(64)), BAD_SIGNATURE),
    (lambda: send(0, BOB, 10, nonce=1), BAD_NONCE),  # a gap
    (lambda: send(0, BOB, 100, fee=1), INSUFFICIENT_FUNDS),
    (lambda: send(1, ALICE, 1), INSUFFICIENT_FUNDS),  # bob has no account: balance 0, nonce 0
    (lambda: send(1, ALICE, 1, nonce=1), BAD_NONCE),
])
def test_rejected_transfer_changes_nothing(make_tx: Callable[[], Transfer], code: str) -> None:
    block = BlockChanges(state(alice=100), CHAIN, PROPOSER)
    with pytest.raises(TxRejected) as exc:
        block.apply_transfer(make_tx())
    assert exc.value.code == code
    assert block.changes == {}


def test_a_used_nonce_cannot_be_replayed() -> None:
    block = BlockChanges(state(alice=100), CHAIN, PROPOSER)
    tx = send(0, BOB, 10)
    block.apply_transfer(tx)
    snapshot = dict(block.changes)
    with pytest.raises(TxRejected) as exc:
        block.apply_transfer(tx)
    assert exc.value.code == BAD_NONCE
    assert block.changes == snapshot


def test_signature_checked_skips_verification_only() -> None:
    block = BlockChanges(state(alice=100), CHAIN, PROPOSER)
    bad = Transfer(CHAIN, KEYS[0].public_key, BOB, 10, 0, 0, bytes(64))
    block.apply_transfer(bad, signature_checked=True)  # the caller vouched for it
    assert block.get(BOB) == Account(10, 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 400),
                          st.integers(0, 20), st.integers(-1, 1)), max_size=25))
def test_transfers_conserve_supply_and_never_go_negative(
        ops: list[tuple[int, int, int, int, int]]) -> None:
    base = state(alice=1000, bob=500, carol=0, proposer=3)
    supply = 1503
    block = BlockChanges(base, CHAIN, PROPOSER)
    for sender, to, amount, fee, nonce_skew in ops:
        nonce = max(0, block.get(ADDRS[sender]).nonce + nonce_skew)
        try:
            block.apply_transfer(send(sender, ADDRS[to], amount, fee, nonce))
        except TxRejected:
            pass
    base.apply(block.changes)
    accounts = dict(base.items())
    assert sum(a.balance for a in accounts.values()) == supply
    assert all(a.balance >= 0 for a in accounts.values())
