"""The deterministic ledger state: accounts and the rules that move balances between them.

State is a map address(20 bytes) -> Account(balance, nonce), all integers in micro-units. A
block's transactions apply to a `BlockChanges` overlay on the committed `LedgerState`, so the
committed state stays readable (for check_tx and queries) while a block executes, and a block
either commits as a whole or leaves no trace.

Rules of a transfer (the same on every node, a function of state and block alone):
- chain id must be this chain's, the signature must verify;
- nonce must equal the sender's account nonce (a missing account has nonce 0, balance 0);
- balance must cover amount + fee; amount > 0 and fee >= 0 are enforced by the encoding;
- sending to oneself is allowed: it costs the fee and consumes a nonce, so a sender can burn a
  stuck nonce without moving funds anywhere else;
- on success the sender pays amount + fee and its nonce grows by 1, the recipient receives
  amount (its account is created if needed), the block's proposer receives the fee (no account
  is created for a zero fee);
- a failing transfer changes nothing (it pays no fee and consumes no nonce).

Accounts are never deleted, even at balance 0: the nonce must survive, or old transfers would
become replayable once the account is funded again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from node.codec import to_cbor
from node.ledger.tx import ADDRESS_BYTES, MAX_AMOUNT, Transfer


class Account(NamedTuple):
    balance: int
    nonce: int


EMPTY_ACCOUNT = Account(0, 0)

# Machine-readable reasons a transaction is refused (check_tx) or fails (deliver_tx).
BAD_ENCODING = "bad_encoding"
WRONG_CHAIN = "wrong_chain"
BAD_SIGNATURE = "bad_signature"
BAD_NONCE = "bad_nonce"
INSUFFICIENT_FUNDS = "insufficient_funds"
TOO_LARGE = "too_large"
BAD_AMOUNT = "bad_amount"
FEE_TOO_LOW = "fee_too_low"


class GenesisError(ValueError):
    """Genesis accounts that cannot start a chain (bad address, duplicate, negative, too large)."""


class TxRejected(Exception):
    """A transaction that does not apply to the state; `code` is one of the codes above."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def accounts_hash(accounts: Mapping[bytes, Account]) -> bytes:
    """The app hash: sha256 of canonical CBOR of [[address, balance, nonce], ...] by address."""
    items = [[addr, acc.balance, acc.nonce] for addr, acc in sorted(accounts.items())]
    return hashlib.sha256(to_cbor(items)).digest()


def genesis_accounts(entries: Iterable[tuple[bytes, int]]) -> dict[bytes, Account]:
    """Validate genesis (address, balance) pairs into accounts at nonce 0."""
    accounts: dict[bytes, Account] = {}
    total = 0
    for entry in entries:
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise GenesisError("a genesis account is an (address, balance) pair")
        addr, balance = entry
        if not isinstance(addr, bytes) or len(addr) != ADDRESS_BYTES:
            raise GenesisError(f"genesis address must be {ADDRESS_BYTES} bytes")
        if not isinstance(balance, int) or isinstance(balance, bool) or balance < 0:
            raise GenesisError(f"genesis balance of {addr.hex()} must be an integer >= 0")
        if addr in accounts:
            raise GenesisError(f"genesis lists account {addr.hex()} twice")
        total += balance
        accounts[addr] = Account(balance, 0)
    if total > MAX_AMOUNT:
        # Transfers conserve the supply, so this cap keeps every balance a signed 64-bit int.
        raise GenesisError(f"genesis total supply {total} exceeds {MAX_AMOUNT}")
    return accounts


def _cbor_array_header(length: int) -> bytes:
    """Canonical CBOR head of an array of `length` items (major type 4, shortest form)."""
    if length < 24:
        return bytes([0x80 | length])
    for prefix, size in ((0x98, 1), (0x99, 2), (0x9A, 4), (0x9B, 8)):
        if length < 1 << (8 * size):
            return bytes([prefix]) + length.to_bytes(size, "big")
    raise ValueError("array too long for CBOR")


class LedgerState:
    """The committed accounts, with an app hash kept cheap to recompute.

    The hash is `accounts_hash` of the accounts; it is computed from cached per-account
    encodings (a canonical CBOR array is its head followed by its items' canonical encodings),
    so a commit re-encodes only the accounts the block changed.
    """

    def __init__(self, accounts: Mapping[bytes, Account] | None = None) -> None:
        self._accounts: dict[bytes, Account] = dict(accounts or {})
        self._encoded = {addr: _encode_account(addr, acc)
                         for addr, acc in self._accounts.items()}
        self._order = sorted(self._accounts)
        self._hash: bytes | None = None

    def get(self, address: bytes) -> Account | None:
        return self._accounts.get(address)

    def __len__(self) -> int:
        return len(self._accounts)

    def items(self) -> list[tuple[bytes, Account]]:
        return [(addr, self._accounts[addr]) for addr in self._order]

    def app_hash(self) -> bytes:
        if self._hash is None:
            encoded = self._encoded
            body = b"".join([encoded[addr] for addr in self._order])
            self._hash = hashlib.sha256(_cbor_array_header(len(self._order)) + body).digest()
        return self._hash

    def apply(self, changes: Mapping[bytes, Account]) -> dict[bytes, Account | None]:
        """Write `changes`; return the previous values (None: absent) so a caller can undo."""
        previous = {addr: self._accounts.get(addr) for addr in changes}
        for addr, acc in changes.items():
            self._accounts[addr] = acc
            self._encoded[addr] = _encode_account(addr, acc)
        new = [addr for addr, acc in previous.items() if acc is None]
        if new:
            self._order.extend(new)
            self._order.sort()  # two sorted runs: timsort merges them in linear time
        self._hash = None
        return previous

    def undo(self, previous: Mapping[bytes, Account | None]) -> None:
        removed = False
        for addr, acc in previous.items():
            if acc is None:
                removed |= self._accounts.pop(addr, None) is not None
                self._encoded.pop(addr, None)
            else:
                self._accounts[addr] = acc
                self._encoded[addr] = _encode_account(addr, acc)
        if removed:
            self._order = sorted(self._accounts)
        self._hash = None


def _encode_account(address: bytes, acc: Account) -> bytes:
    return to_cbor([address, acc.balance, acc.nonce])


class BlockChanges:
    """The accounts a block has written so far, over the committed state."""

    def __init__(self, base: LedgerState, chain_id: str, proposer: bytes,
                 min_fee: int = 0) -> None:
        self._base = base
        self.chain_id = chain_id
        self.proposer = proposer
        self.min_fee = min_fee
        self.changes: dict[bytes, Account] = {}

    def get(self, address: bytes) -> Account:
        acc = self.changes.get(address)
        if acc is None:
            acc = self._base.get(address) or EMPTY_ACCOUNT
        return acc

    def apply_transfer(self, tx: Transfer, *, signature_checked: bool = False) -> None:
        """Apply `tx` or raise TxRejected, leaving the changes untouched.

        `signature_checked` lets a caller skip re-verifying a signature it already verified
        for these exact bytes (validity of a signature is a pure function of the bytes).
        """
        check_transfer(tx, self.chain_id, self.get(tx.sender_address),
                       signature_checked=signature_checked, min_fee=self.min_fee)
        sender = tx.sender_address
        acc = self.get(sender)
        self.changes[sender] = Account(acc.balance - tx.spend, acc.nonce + 1)
        # Read the recipient after writing the sender: a self-transfer then gets its amount back.
        rcpt = self.get(tx.to)
        self.changes[tx.to] = Account(rcpt.balance + tx.amount, rcpt.nonce)
        if tx.fee:
            prop = self.get(self.proposer)
            self.changes[self.proposer] = Account(prop.balance + tx.fee, prop.nonce)


def check_transfer(tx: Transfer, chain_id: str, sender: Account, *,
                   signature_checked: bool = False, exact_nonce: bool = True,
                   min_fee: int = 0) -> None:
    """Raise TxRejected unless `tx` applies to a sender account in state `sender`.

    `exact_nonce=False` is the mempool's view: a nonce ahead of the account may wait behind the
    sender's pending transfers.
    """
    if tx.chain_id != chain_id:
        raise TxRejected(WRONG_CHAIN, f"transaction is for chain {tx.chain_id!r}, "
                                      f"this is {chain_id!r}")
    if not signature_checked and not tx.verify_signature():
        raise TxRejected(BAD_SIGNATURE, "signature does not verify for the sender key")
    if tx.fee < min_fee:
        raise TxRejected(FEE_TOO_LOW, f"fee {tx.fee} is below the chain's minimum {min_fee}")
    if tx.nonce < sender.nonce or (exact_nonce and tx.nonce != sender.nonce):
        raise TxRejected(BAD_NONCE, f"nonce {tx.nonce}, account expects {sender.nonce}")
    if sender.balance < tx.spend:
        raise TxRejected(INSUFFICIENT_FUNDS, f"balance {sender.balance} does not cover amount "
                                             f"{tx.amount} + fee {tx.fee}")
