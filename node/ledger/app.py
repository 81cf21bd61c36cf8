"""`LedgerApp`: the ABCI-like application the consensus driver calls.

Per decided block the driver calls, in this order and never concurrently:

    begin_block(header) -> deliver_tx(tx) for each tx -> end_block() -> commit() -> app hash

`check_tx` (mempool admission) and the queries read only the last committed state, so they
give the same answer whether or not a block is executing. A transaction that fails inside a
block is recorded as failed (see `tx_result`) and changes nothing; the block goes on.

After a restart, `info()` tells the driver the last committed height and app hash, so it can
replay any later blocks it has stored (a block may be in the block store but not yet in the
ledger if the node died between the two).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from node.codec import DecodeError
from node.consensus.types import Header
from node.ledger.state import (
    BAD_AMOUNT,
    BAD_ENCODING,
    BAD_SIGNATURE,
    TOO_LARGE,
    WRONG_CHAIN,
    Account,
    BlockChanges,
    LedgerState,
    TxRejected,
    check_transfer,
    genesis_accounts,
)
from node.ledger.store import LedgerStore, StoreError, TxResult
from node.ledger.tx import (
    ADDRESS_BYTES,
    DEFAULT_MAX_TX_BYTES,
    MAX_CHAIN_ID_CHARS,
    InvalidAmount,
    Transfer,
)

DB_FILE = "ledger.sqlite"
OK = "ok"


@dataclass(frozen=True)
class LedgerParams:
    """Consensus parameters of the ledger: every validator must use the same values."""

    max_tx_bytes: int = DEFAULT_MAX_TX_BYTES
    min_fee: int = 0  # genesis consensus param: a transfer paying less is refused
    # Local, not consensus: how many tx hashes whose signature check_tx verified are kept so
    # deliver_tx need not verify them again (pure function of the bytes, so still deterministic).
    verified_cache_size: int = 65_536


@dataclass(frozen=True)
class CheckResult:
    """Outcome of check_tx (and of Mempool.add, which adds its own codes).

    `sender` is the sender's 20-byte address; sender, nonce, fee and amount are empty when the
    bytes did not decode, and tx_hash is "" when they were not even hashed (too large).
    """

    ok: bool
    code: str
    reason: str
    tx_hash: str
    sender: bytes = b""
    nonce: int = 0
    fee: int = 0
    amount: int = 0

    @property
    def spend(self) -> int:
        return self.amount + self.fee


@dataclass(frozen=True)
class DeliverResult:
    ok: bool
    code: str
    reason: str
    tx_hash: str


class LedgerError(Exception):
    """The driver broke the ABCI contract (order of calls, height, chain) or state diverged."""


class LedgerApp:
    """Accounts and transfers behind consensus; persisted in `<data_dir>/ledger.sqlite`."""

    def __init__(self, store: LedgerStore, chain_id: str, state: LedgerState, height: int,
                 params: LedgerParams) -> None:
        self._store = store
        self.chain_id = chain_id
        self.params = params
        self._state = state
        self._height = height
        self._block: BlockChanges | None = None
        self._block_height = 0
        self._block_ended = False
        self._results: dict[bytes, TxResult] = {}
        self._delivered = 0
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    @classmethod
    def open(cls, data_dir: Path | str, chain_id: str,
             genesis: Sequence[tuple[bytes, int]],
             params: LedgerParams | None = None) -> LedgerApp:
        """Open the ledger in `data_dir`, initialising it from `genesis` the first time.

        Raises GenesisError for invalid genesis accounts and StoreError if the directory holds
        another chain's ledger, another genesis, or a state that does not match its app hash.
        """
        if not isinstance(chain_id, str) or not 0 < len(chain_id) <= MAX_CHAIN_ID_CHARS:
            raise ValueError(f"chain id must be a string of 1-{MAX_CHAIN_ID_CHARS} characters")
        accounts = genesis_accounts(genesis)
        genesis_hash = LedgerState(accounts).app_hash()
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        store = LedgerStore(directory / DB_FILE)
        try:
            if not store.is_initialised():
                store.init_genesis(chain_id, accounts, genesis_hash)
            stored = store.load()
            if stored.chain_id != chain_id:
                raise StoreError(f"{store.path} holds chain {stored.chain_id!r}, "
                                 f"not {chain_id!r}")
            if stored.genesis_hash != genesis_hash:
                raise StoreError(f"{store.path} was initialised from another genesis "
                                 f"(genesis hash {stored.genesis_hash.hex()}, "
                                 f"given {genesis_hash.hex()})")
            state = LedgerState(stored.accounts)
            if state.app_hash() != stored.app_hash:
                raise StoreError(f"{store.path} is corrupt: its accounts hash to "
                                 f"{state.app_hash().hex()}, height {stored.height} "
                                 f"committed {stored.app_hash.hex()}")
        except BaseException:
            store.close()
            raise
        return cls(store, chain_id, state, stored.height, params or LedgerParams())

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> LedgerApp:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---- queries (last committed state) -----------------------------------------------------

    def info(self) -> tuple[int, bytes]:
        """(last committed height, app hash after it); height 0 and the genesis hash at first."""
        return self._height, self._state.app_hash()

    @property
    def height(self) -> int:
        return self._height

    @property
    def app_hash(self) -> bytes:
        return self._state.app_hash()

    def account(self, address: bytes) -> Account | None:
        return self._state.get(address)

    def tx_result(self, tx_hash: str | bytes) -> TxResult | None:
        """Result of a committed tx by hash (hex or 32 raw bytes); None if never delivered."""
        if isinstance(tx_hash, str):
            try:
                key = bytes.fromhex(tx_hash)
            except ValueError:
                return None
        else:
            key = tx_hash
        if len(key) != 32:
            return None
        return self._store.tx_result(key)

    # ---- mempool admission ------------------------------------------------------------------

    def check_tx(self, tx_bytes: bytes) -> CheckResult:
        """Would `tx_bytes` be worth keeping in a mempool? Checked against committed state.

        A nonce ahead of the account's is accepted here (the mempool orders a sender's
        pending transfers); the balance must cover this one transfer on its own.
        """
        if not isinstance(tx_bytes, bytes):
            return CheckResult(False, BAD_ENCODING, "a transaction must be bytes", "")
        if len(tx_bytes) > self.params.max_tx_bytes:
            return CheckResult(False, TOO_LARGE, f"transaction of {len(tx_bytes)} bytes exceeds "
                                                 f"{self.params.max_tx_bytes}", "")
        digest = hashlib.sha256(tx_bytes).digest()
        tx_hash = digest.hex()
        try:
            tx = Transfer.decode(tx_bytes, self.params.max_tx_bytes)
        except InvalidAmount as exc:
            return CheckResult(False, BAD_AMOUNT, str(exc), tx_hash)
        except DecodeError as exc:
            return CheckResult(False, BAD_ENCODING, str(exc), tx_hash)

        def result(ok: bool, code: str, reason: str) -> CheckResult:
            return CheckResult(ok, code, reason, tx_hash, tx.sender_address, tx.nonce, tx.fee,
                               tx.amount)

        if tx.chain_id != self.chain_id:
            return result(False, WRONG_CHAIN, f"transaction is for chain {tx.chain_id!r}, "
                                              f"this is {self.chain_id!r}")
        if digest not in self._verified:
            if not tx.verify_signature():
                return result(False, BAD_SIGNATURE, "signature does not verify for the "
                                                    "sender key")
            self._remember_verified(digest)
        sender = self._state.get(tx.sender_address) or Account(0, 0)
        try:
            check_transfer(tx, self.chain_id, sender, signature_checked=True, exact_nonce=False,
                           min_fee=self.params.min_fee)
        except TxRejected as rej:
            return result(False, rej.code, rej.reason)
        return result(True, OK, "")

    def _remember_verified(self, digest: bytes) -> None:
        self._verified[digest] = None
        while len(self._verified) > self.params.verified_cache_size:
            self._verified.popitem(last=False)

    # ---- block execution --------------------------------------------------------------------

    def begin_block(self, header: Header) -> None:
        """Start executing the block of `header`; fees of its transfers go to its proposer."""
        if self._block is not None:
            raise LedgerError(f"begin_block({header.height}) while block {self._block_height} "
                              f"is not committed")
        if header.chain_id != self.chain_id:
            raise LedgerError(f"block for chain {header.chain_id!r} given to the ledger of "
                              f"{self.chain_id!r}")
        if header.height != self._height + 1:
            raise LedgerError(f"block {header.height} given after committed height "
                              f"{self._height}")
        if header.app_hash != self._state.app_hash():
            # Every correct node reaches the same hash; a mismatch means this node's state
            # diverged (or the driver passed the wrong header). Going on would fork it.
            raise LedgerError(f"block {header.height} expects app hash "
                              f"{header.app_hash.hex()}, this ledger has "
                              f"{self._state.app_hash().hex()}")
        if not isinstance(header.proposer, bytes) or len(header.proposer) != ADDRESS_BYTES:
            raise LedgerError(f"block proposer must be a {ADDRESS_BYTES}-byte address")
        self._block = BlockChanges(self._state, self.chain_id, header.proposer,
                                   self.params.min_fee)
        self._block_height = header.height
        self._block_ended = False
        self._results = {}
        self._delivered = 0

    def deliver_tx(self, tx_bytes: bytes) -> DeliverResult:
        """Apply one tx of the current block; a failure is recorded and changes nothing."""
        block = self._block
        if block is None or self._block_ended:
            raise LedgerError("deliver_tx outside begin_block/end_block")
        index = self._delivered
        self._delivered += 1
        digest = hashlib.sha256(tx_bytes).digest()
        code, reason = OK, ""
        if len(tx_bytes) > self.params.max_tx_bytes:
            code, reason = TOO_LARGE, (f"transaction of {len(tx_bytes)} bytes exceeds "
                                       f"{self.params.max_tx_bytes}")
        else:
            try:
                tx = Transfer.decode(tx_bytes, self.params.max_tx_bytes)
                block.apply_transfer(tx, signature_checked=digest in self._verified)
            except InvalidAmount as exc:
                code, reason = BAD_AMOUNT, str(exc)
            except DecodeError as exc:
                code, reason = BAD_ENCODING, str(exc)
            except TxRejected as rej:
                code, reason = rej.code, rej.reason
        ok = code == OK
        # A tx can appear twice in a block; its success (at most one) is what stays recorded.
        previous = self._results.get(digest)
        if previous is None or not previous.ok:
            self._results[digest] = TxResult(self._block_height, index, ok, code, reason)
        return DeliverResult(ok, code, reason, digest.hex())

    def end_block(self) -> list[Any]:
        """Validator updates decided by this block: none yet (no staking module)."""
        if self._block is None or self._block_ended:
            raise LedgerError("end_block without begin_block")
        self._block_ended = True
        return []

    def commit(self) -> bytes:
        """Persist the block (one SQLite transaction) and return the new app hash."""
        block = self._block
        if block is None or not self._block_ended:
            raise LedgerError("commit before begin_block and end_block")
        previous = self._state.apply(block.changes)
        app_hash = self._state.app_hash()
        try:
            self._store.commit(self._block_height, app_hash, block.changes,
                               list(self._results.items()))
        except BaseException:
            # Nothing reached the disk; keep memory equal to it. The block stays open so the
            # driver may retry commit() or stop the node.
            self._state.undo(previous)
            raise
        self._height = self._block_height
        self._block = None
        self._results = {}
        return app_hash
