"""The mempool: transactions waiting for a block, in an order every sender's nonces allow.

Sans-IO: no trio, no clock. The node adds txs from clients and peers, gossips what
`take_unannounced` hands out, lets the proposer `reap` a block's worth, and calls `update`
after each commit.

Rules (on top of the application's check_tx, which decodes, checks chain id and signature,
and checks the tx against the last committed state):
- De-duplication by tx hash ("duplicate"). A tx gossiped again after it was committed is
  refused by check_tx as "bad_nonce" (cheaply: the app caches verified signatures).
- Per sender, pending txs form a gapless run of nonces starting at the account's committed
  nonce. A tx is accepted only with the next nonce of that run; a nonce already pending or one
  that would leave a gap is refused ("bad_nonce"). Holding gapped txs would let any client park
  unexecutable txs here; clients submit in order, and batches keep their order in gossip.
  Replacing a pending tx (same nonce, higher fee) is not supported.
- At most `max_txs_per_sender` pending txs per sender ("too_many_pending"), so one account
  cannot fill the pool nor make eviction scan long runs of its own txs.
- A sender's balance must cover all its pending txs together ("insufficient_funds"), so a
  proposer never reaps a run whose tail is bound to fail (failed txs pay no fee, so they would
  fill blocks for free).
- Bounded by count and bytes. When full, a new tx evicts the lowest-fee txs (ties: the newest
  first) of other senders; evicting a tx also evicts the same sender's later nonces, which could
  no longer apply. If the lowest fee is not below the new tx's fee, the new tx is refused
  ("mempool_full").
- Reaping takes, among the next pending tx of every sender, the highest fee first (ties: the
  oldest first), so each sender's txs come out in nonce order.
- After a commit, `update` drops the included txs and re-checks the rest against the new state
  (nonce and balance; a signature never changes validity), dropping what became invalid.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Protocol

from node.ledger.app import CheckResult

# Aliases: inside Mempool, `bytes` names the method that reports the pool's size in bytes.
TxBytes = bytes
Address = bytes

DUPLICATE = "duplicate"
MEMPOOL_FULL = "mempool_full"
TOO_MANY_PENDING = "too_many_pending"
BAD_NONCE = "bad_nonce"
INSUFFICIENT_FUNDS = "insufficient_funds"

DEFAULT_MAX_TXS = 10_000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_TXS_PER_SENDER = 128


class AccountView(Protocol):
    @property
    def balance(self) -> int: ...

    @property
    def nonce(self) -> int: ...


class MempoolApp(Protocol):
    """What the mempool needs from the application (node.ledger.app.LedgerApp has it)."""

    def check_tx(self, tx_bytes: bytes) -> CheckResult: ...

    def account(self, address: bytes) -> AccountView | None: ...


@dataclass(eq=False)
class _Entry:
    tx: bytes
    hash: str
    sender: bytes
    nonce: int
    fee: int
    spend: int
    seq: int  # admission order: ties in eviction and reaping


@dataclass(eq=False)
class _Sender:
    entries: list[_Entry] = field(default_factory=list)  # consecutive nonces, ascending
    spend: int = 0

    @property
    def next_nonce(self) -> int:
        return self.entries[-1].nonce + 1


class Mempool:
    """Pending transactions, bounded by `max_txs` and `max_bytes` (sum of tx sizes)."""

    def __init__(self, app: MempoolApp, *, max_txs: int = DEFAULT_MAX_TXS,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 max_txs_per_sender: int = DEFAULT_MAX_TXS_PER_SENDER) -> None:
        if max_txs < 1 or max_bytes < 1 or max_txs_per_sender < 1:
            raise ValueError("mempool limits must be positive")
        self._app = app
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self.max_txs_per_sender = max_txs_per_sender
        self._by_hash: dict[str, _Entry] = {}
        self._senders: dict[Address, _Sender] = {}
        self._bytes = 0
        self._seq = 0
        self._height = 0
        # (fee, -seq, hash): lowest fee, then newest, on top. Entries of removed txs stay
        # until popped or until the heap is rebuilt (when it is twice the pool's size).
        self._evict_heap: list[tuple[int, int, str]] = []
        self._unannounced: dict[str, None] = {}  # insertion-ordered

    # ---- queries ----------------------------------------------------------------------------

    def size(self) -> int:
        return len(self._by_hash)

    def bytes(self) -> int:
        return self._bytes

    @property
    def height(self) -> int:
        """The height of the last commit passed to `update`."""
        return self._height

    def contains(self, tx_hash: str) -> bool:
        return tx_hash in self._by_hash

    def pending_nonce(self, sender: Address) -> int | None:
        """The nonce the sender's next tx must carry, if it has txs pending here."""
        s = self._senders.get(sender)
        return s.next_nonce if s else None

    # ---- admission --------------------------------------------------------------------------

    def add(self, tx_bytes: TxBytes, *, announce: bool = True) -> CheckResult:
        """Check `tx_bytes` and keep it if acceptable; the result says why not otherwise.

        `announce=False` is for txs that arrived by gossip and need not be re-announced.
        """
        tx_hash = hashlib.sha256(tx_bytes).hexdigest()
        if tx_hash in self._by_hash:
            return CheckResult(False, DUPLICATE, "transaction is already in the mempool",
                               tx_hash)
        res = self._app.check_tx(tx_bytes)
        if not res.ok:
            return res

        sender = self._senders.get(res.sender)
        account = self._app.account(res.sender)
        acc_nonce, balance = (account.nonce, account.balance) if account else (0, 0)
        expected = sender.next_nonce if sender else acc_nonce
        if res.nonce != expected:
            why = "is already pending" if res.nonce < expected else "would leave a gap"
            return _refuse(res, BAD_NONCE, f"nonce {res.nonce} {why}; the sender's next "
                                           f"acceptable nonce is {expected}")
        if sender and len(sender.entries) >= self.max_txs_per_sender:
            return _refuse(res, TOO_MANY_PENDING, f"the sender has {len(sender.entries)} txs "
                                                  f"pending, the most this mempool keeps")
        pending_spend = sender.spend if sender else 0
        if balance < pending_spend + res.spend:
            return _refuse(res, INSUFFICIENT_FUNDS,
                           f"balance {balance} does not cover pending spend {pending_spend} "
                           f"plus this tx's {res.spend}")

        size = len(tx_bytes)
        if size > self.max_bytes:
            return _refuse(res, MEMPOOL_FULL, f"transaction of {size} bytes exceeds the "
                                              f"mempool's {self.max_bytes}")
        if len(self._by_hash) + 1 > self.max_txs or self._bytes + size > self.max_bytes:
            victims = self._pick_victims(res.sender, res.fee, size)
            if victims is None:
                return _refuse(res, MEMPOOL_FULL, "mempool is full of transactions paying "
                                                  f"at least fee {res.fee}")
            for v in victims:
                if self._by_hash.get(v.hash) is v:  # not already gone with an earlier nonce
                    self._remove(v)

        entry = _Entry(tx_bytes, tx_hash, res.sender, res.nonce, res.fee, res.spend,
                       self._seq)
        self._seq += 1
        if sender is None:
            sender = self._senders[res.sender] = _Sender()
        sender.entries.append(entry)
        sender.spend += entry.spend
        self._by_hash[tx_hash] = entry
        self._bytes += size
        heapq.heappush(self._evict_heap, (entry.fee, -entry.seq, tx_hash))
        if announce:
            self._unannounced[tx_hash] = None
        return res

    def _pick_victims(self, new_sender: Address, new_fee: int, size: int) -> list[_Entry] | None:
        """The txs to evict so a tx of `size` bytes fits, or None if it may not evict enough.

        Pops candidates off the eviction heap; whatever is not evicted goes back.
        """
        need_txs = len(self._by_hash) + 1 - self.max_txs
        need_bytes = self._bytes + size - self.max_bytes
        victims: dict[str, _Entry] = {}
        kept: list[tuple[int, int, str]] = []
        heap = self._evict_heap
        while need_txs > 0 or need_bytes > 0:
            if not heap:
                break
            item = heapq.heappop(heap)
            fee, neg_seq, h = item
            entry = self._by_hash.get(h)
            if entry is None or entry.seq != -neg_seq:
                continue  # stale: that tx left the pool
            kept.append(item)
            if h in victims or entry.sender == new_sender:
                continue  # already going, or needed before the new tx
            if fee >= new_fee:
                break
            run = self._senders[entry.sender].entries
            for e in run[_run_index(run, entry):]:
                if e.hash not in victims:
                    victims[e.hash] = e
                    need_txs -= 1
                    need_bytes -= len(e.tx)
        for item in kept:
            if item[2] not in victims:
                heapq.heappush(heap, item)
        if need_txs > 0 or need_bytes > 0:
            return None
        return list(victims.values())

    # ---- removal ----------------------------------------------------------------------------

    def _remove(self, entry: _Entry) -> None:
        """Remove `entry` and the same sender's later nonces (they could no longer apply)."""
        sender = self._senders[entry.sender]
        i = _run_index(sender.entries, entry)
        for e in sender.entries[i:]:
            self._forget(e)
            sender.spend -= e.spend
        del sender.entries[i:]
        if not sender.entries:
            del self._senders[entry.sender]
        self._maybe_rebuild_heap()

    def _forget(self, e: _Entry) -> None:
        del self._by_hash[e.hash]
        self._bytes -= len(e.tx)
        self._unannounced.pop(e.hash, None)

    def _maybe_rebuild_heap(self) -> None:
        if len(self._evict_heap) > 2 * len(self._by_hash) + 64:
            self._evict_heap = [(e.fee, -e.seq, e.hash) for e in self._by_hash.values()]
            heapq.heapify(self._evict_heap)

    # ---- block building ---------------------------------------------------------------------

    def reap(self, max_bytes: int, max_txs: int) -> list[TxBytes]:
        """Up to `max_txs` txs totalling at most `max_bytes`, highest fee first, per sender in
        nonce order. The txs stay in the pool until `update` sees them committed."""
        out: list[TxBytes] = []
        total = 0
        heads: list[tuple[int, int, Address, int]] = []  # (-fee, seq, sender, index in run)
        for addr, s in self._senders.items():
            first = s.entries[0]
            heads.append((-first.fee, first.seq, addr, 0))
        heapq.heapify(heads)
        while heads and len(out) < max_txs:
            _, _, addr, i = heapq.heappop(heads)
            run = self._senders[addr].entries
            e = run[i]
            if total + len(e.tx) > max_bytes:
                continue  # this sender's later nonces cannot come before it: skip the sender
            out.append(e.tx)
            total += len(e.tx)
            if i + 1 < len(run):
                nxt = run[i + 1]
                heapq.heappush(heads, (-nxt.fee, nxt.seq, addr, i + 1))
        return out

    def update(self, height: int, committed_tx_bytes: list[TxBytes]) -> None:
        """After block `height` committed: drop its txs, re-check the rest against the state."""
        self._height = height
        committed = {hashlib.sha256(tx).hexdigest() for tx in committed_tx_bytes}
        for addr in list(self._senders):
            self._recheck_sender(addr, committed)
        self._maybe_rebuild_heap()

    def _recheck_sender(self, addr: Address, committed: set[str]) -> None:
        """Keep the sender's longest run that still applies to the committed state."""
        sender = self._senders[addr]
        account = self._app.account(addr)
        nonce, balance = (account.nonce, account.balance) if account else (0, 0)
        keep: list[_Entry] = []
        spend = 0
        for e in sender.entries:
            if e.nonce < nonce or e.hash in committed:
                # Included (even if it failed there), or its nonce went to another tx.
                self._forget(e)
                continue
            if e.nonce != nonce + len(keep) or spend + e.spend > balance:
                self._forget(e)  # a gap or unaffordable: it and all later nonces are dead
                continue
            keep.append(e)
            spend += e.spend
        if keep:
            sender.entries = keep
            sender.spend = spend
        else:
            del self._senders[addr]

    # ---- gossip -----------------------------------------------------------------------------

    def take_unannounced(self, max_count: int) -> list[TxBytes]:
        """Up to `max_count` txs added since the last call and not gossiped yet, oldest first."""
        out: list[TxBytes] = []
        while self._unannounced and len(out) < max_count:
            h = next(iter(self._unannounced))
            del self._unannounced[h]
            out.append(self._by_hash[h].tx)
        return out


def _run_index(run: list[_Entry], entry: _Entry) -> int:
    """Index of `entry` in its sender's run (nonces are consecutive)."""
    return entry.nonce - run[0].nonce


def _refuse(res: CheckResult, code: str, reason: str) -> CheckResult:
    return CheckResult(False, code, reason, res.tx_hash, res.sender, res.nonce, res.fee,
                       res.amount)
