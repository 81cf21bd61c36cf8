"""Consensus data types: validators, votes, proposals, blocks and commits.

Everything hashed or signed is canonical CBOR (node.codec.to_cbor) of plain lists, never
dicts of optional fields, so one value has one encoding. Sign-bytes always start with the
chain id and a domain tag, then height, round and type, so a signature cannot be replayed on
another chain, height, round or message kind.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from node.codec import DecodeError, from_cbor, to_cbor
from node.crypto import Ed25519Key, address_of, verify

ADDRESS_BYTES = 20
HASH_BYTES = 32
MAX_VOTE_BYTES = 512
NIL = None  # a vote for no block


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class VoteType(IntEnum):
    PREVOTE = 1
    PRECOMMIT = 2


def _int(value: Any, name: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise DecodeError(f"{name} must be an integer in [{lo}, {hi}]")
    return value


def _bytes(value: Any, name: str, size: int | None = None, max_size: int = 1 << 20) -> bytes:
    if not isinstance(value, bytes) or (size is not None and len(value) != size) or \
            len(value) > max_size:
        want = f"{size} bytes" if size is not None else f"at most {max_size} bytes"
        raise DecodeError(f"{name} must be {want}")
    return value


def _opt_hash(value: Any, name: str) -> bytes | None:
    return None if value is None else _bytes(value, name, HASH_BYTES)


def _list(value: Any, name: str, max_len: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > max_len:
        raise DecodeError(f"{name} must be a list of at most {max_len} items")
    return value


# ---- validators -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Validator:
    pub_key: bytes
    power: int

    @property
    def address(self) -> bytes:
        return bytes.fromhex(address_of(self.pub_key))

    def to_list(self) -> list[Any]:
        return [self.pub_key, self.power]

    @classmethod
    def from_list(cls, raw: Any) -> Validator:
        pub, power = _list(raw, "validator", 2)
        return cls(_bytes(pub, "validator public key", 32), _int(power, "voting power", 1, 2**40))


@dataclass(frozen=True)
class ValidatorSet:
    """Validators in address order; voting power decides quorums and proposers."""

    validators: tuple[Validator, ...]
    _by_address: dict[bytes, Validator] = field(init=False, repr=False, compare=False)
    _reduced: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _cycle: int = field(init=False, repr=False, compare=False)
    _proposers: dict[int, Validator] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.validators, key=lambda v: v.address))
        object.__setattr__(self, "validators", ordered)
        object.__setattr__(self, "_by_address", {v.address: v for v in ordered})
        if not ordered:
            raise ValueError("a validator set needs at least one validator")
        if len(self._by_address) != len(ordered):
            raise ValueError("duplicate validator")
        divisor = math.gcd(*(v.power for v in ordered))
        object.__setattr__(self, "_reduced", tuple(v.power // divisor for v in ordered))
        object.__setattr__(self, "_cycle", sum(self._reduced))
        object.__setattr__(self, "_proposers", {})

    @property
    def total_power(self) -> int:
        return sum(v.power for v in self.validators)

    @property
    def quorum(self) -> int:
        """Smallest power strictly above 2/3 of the total (2f+1 when powers are equal)."""
        return self.total_power * 2 // 3 + 1

    @property
    def one_third(self) -> int:
        """Smallest power strictly above 1/3 of the total (f+1)."""
        return self.total_power // 3 + 1

    def get(self, address: bytes) -> Validator | None:
        return self._by_address.get(address)

    def power_of(self, address: bytes) -> int:
        v = self._by_address.get(address)
        return v.power if v else 0

    def proposer(self, height: int, round_: int) -> Validator:
        """Weighted round robin, interleaved: slot (height + round) mod total power.

        Every node computes the same proposer from the set alone. A validator with power p
        holds p slots of every cycle of `total_power` slots, spread evenly over the cycle
        (Sainte-Lague order: with powers reduced by their gcd to p_i, validator i's j-th
        slot falls at time (2j + 1) / (2 p_i) of the cycle; equal times go in address
        order). So equal powers take turns one height each, and a validator that is down
        costs one failed round in every n heights, not a run of p of them.
        """
        slot = (height + round_) % self._cycle  # the cycle of the gcd-reduced powers
        cached = self._proposers.get(slot)
        if cached is None:
            cached = self._proposers[slot] = self._slot_owner(slot)
            if len(self._proposers) > 4096:
                self._proposers.clear()
                self._proposers[slot] = cached
        return cached

    def _slot_owner(self, slot: int) -> Validator:
        # Times scaled by 2L (L = lcm of the reduced powers) are integers: validator i's
        # j-th slot is at (2j + 1) * L / p_i. count(x) = slots at times <= x.
        powers = self._reduced
        lcm = math.lcm(*powers)

        def count(x: int) -> int:
            return sum((x * p // lcm + 1) // 2 for p in powers)

        lo, hi = 0, 2 * lcm - 1  # smallest x with count(x) > slot
        while lo < hi:
            mid = (lo + hi) // 2
            if count(mid) > slot:
                hi = mid
            else:
                lo = mid + 1
        tied = [v for v, p in zip(self.validators, powers, strict=True)
                if lo * p % lcm == 0 and (lo * p // lcm) % 2 == 1]
        return tied[slot - count(lo - 1)]

    def hash(self) -> bytes:
        return sha256(to_cbor([v.to_list() for v in self.validators]))

    def to_list(self) -> list[Any]:
        return [v.to_list() for v in self.validators]


# ---- votes and proposals --------------------------------------------------------------------


def vote_sign_bytes(chain_id: str, vote_type: VoteType, height: int, round_: int,
                    block_id: bytes | None) -> bytes:
    return to_cbor([chain_id, "dcloud/vote", height, round_, int(vote_type), block_id])


@dataclass(frozen=True)
class Vote:
    type: VoteType
    height: int
    round: int
    block_id: bytes | None  # None: nil
    validator: bytes  # address
    signature: bytes

    def sign_bytes(self, chain_id: str) -> bytes:
        return vote_sign_bytes(chain_id, self.type, self.height, self.round, self.block_id)

    def verify(self, chain_id: str, validators: ValidatorSet) -> bool:
        v = validators.get(self.validator)
        return v is not None and verify(v.pub_key, self.sign_bytes(chain_id), self.signature)

    @classmethod
    def signed(cls, key: Ed25519Key, chain_id: str, vote_type: VoteType, height: int,
               round_: int, block_id: bytes | None) -> Vote:
        sig = key.sign(vote_sign_bytes(chain_id, vote_type, height, round_, block_id))
        return cls(vote_type, height, round_, block_id, bytes.fromhex(key.address), sig)

    def to_list(self) -> list[Any]:
        return [int(self.type), self.height, self.round, self.block_id, self.validator,
                self.signature]

    @classmethod
    def from_list(cls, raw: Any) -> Vote:
        t, h, r, bid, val, sig = _list(raw, "vote", 6)
        if t not in (1, 2):
            raise DecodeError("vote type must be 1 (prevote) or 2 (precommit)")
        return cls(VoteType(t), _int(h, "height", 1), _int(r, "round", 0, 2**31),
                   _opt_hash(bid, "block id"), _bytes(val, "validator", ADDRESS_BYTES),
                   _bytes(sig, "signature", 64))


def proposal_sign_bytes(chain_id: str, height: int, round_: int, pol_round: int,
                        block_id: bytes) -> bytes:
    return to_cbor([chain_id, "dcloud/proposal", height, round_, pol_round, block_id])


@dataclass(frozen=True)
class Proposal:
    height: int
    round: int
    pol_round: int  # the paper's validRound; -1 when none
    block: Block
    proposer: bytes
    signature: bytes

    @property
    def block_id(self) -> bytes:
        return self.block.id

    def sign_bytes(self, chain_id: str) -> bytes:
        return proposal_sign_bytes(chain_id, self.height, self.round, self.pol_round,
                                   self.block_id)

    def verify(self, chain_id: str, validators: ValidatorSet) -> bool:
        v = validators.get(self.proposer)
        return v is not None and verify(v.pub_key, self.sign_bytes(chain_id), self.signature)

    @classmethod
    def signed(cls, key: Ed25519Key, chain_id: str, height: int, round_: int, pol_round: int,
               block: Block) -> Proposal:
        sig = key.sign(proposal_sign_bytes(chain_id, height, round_, pol_round, block.id))
        return cls(height, round_, pol_round, block, bytes.fromhex(key.address), sig)

    def to_list(self) -> list[Any]:
        return [self.height, self.round, self.pol_round, self.block.to_list(), self.proposer,
                self.signature]

    @classmethod
    def from_list(cls, raw: Any) -> Proposal:
        h, r, pol, block, proposer, sig = _list(raw, "proposal", 6)
        return cls(_int(h, "height", 1), _int(r, "round", 0, 2**31),
                   _int(pol, "pol round", -1, 2**31), Block.from_list(block),
                   _bytes(proposer, "proposer", ADDRESS_BYTES), _bytes(sig, "signature", 64))


# ---- blocks and commits ---------------------------------------------------------------------


@dataclass(frozen=True)
class CommitSig:
    validator: bytes
    signature: bytes


@dataclass(frozen=True)
class Commit:
    """+2/3 precommits for `block_id` at (height, round): the proof a block was decided."""

    height: int
    round: int
    block_id: bytes
    signatures: tuple[CommitSig, ...]

    def to_list(self) -> list[Any]:
        return [self.height, self.round, self.block_id,
                [[s.validator, s.signature] for s in self.signatures]]

    @classmethod
    def from_list(cls, raw: Any, max_validators: int = 1000) -> Commit:
        h, r, bid, sigs = _list(raw, "commit", 4)
        out = []
        for item in _list(sigs, "commit signatures", max_validators):
            val, sig = _list(item, "commit signature", 2)
            out.append(CommitSig(_bytes(val, "validator", ADDRESS_BYTES),
                                 _bytes(sig, "signature", 64)))
        return cls(_int(h, "height", 1), _int(r, "round", 0, 2**31),
                   _bytes(bid, "block id", HASH_BYTES), tuple(out))

    def verify(self, chain_id: str, validators: ValidatorSet) -> None:
        """Raise InvalidCommit unless +2/3 of `validators`' power signed this block."""
        seen: set[bytes] = set()
        power = 0
        msg = vote_sign_bytes(chain_id, VoteType.PRECOMMIT, self.height, self.round,
                              self.block_id)
        for s in self.signatures:
            v = validators.get(s.validator)
            if v is None:
                raise InvalidCommit(f"commit signed by non-validator {s.validator.hex()}")
            if s.validator in seen:
                raise InvalidCommit(f"commit has two signatures of {s.validator.hex()}")
            if not verify(v.pub_key, msg, s.signature):
                raise InvalidCommit(f"bad commit signature of {s.validator.hex()}")
            seen.add(s.validator)
            power += v.power
        if power < validators.quorum:
            raise InvalidCommit(f"commit has power {power}, needs {validators.quorum}")


class InvalidCommit(Exception):
    """A commit does not prove its block (bad signature, unknown signer, too little power)."""


@dataclass(frozen=True)
class Header:
    chain_id: str
    height: int
    time_ms: int
    prev_block_id: bytes | None  # None at height 1
    txs_hash: bytes
    app_hash: bytes  # state after the previous block
    validators_hash: bytes
    proposer: bytes
    evidence_hash: bytes

    def to_list(self) -> list[Any]:
        return [self.chain_id, self.height, self.time_ms, self.prev_block_id, self.txs_hash,
                self.app_hash, self.validators_hash, self.proposer, self.evidence_hash]

    @classmethod
    def from_list(cls, raw: Any) -> Header:
        chain, h, t, prev, txs, app, vals, proposer, ev = _list(raw, "header", 9)
        if not isinstance(chain, str) or not 0 < len(chain) <= 64:
            raise DecodeError("chain id must be 1-64 characters")
        return cls(chain, _int(h, "height", 1), _int(t, "time", 0), _opt_hash(prev, "prev id"),
                   _bytes(txs, "txs hash", HASH_BYTES), _bytes(app, "app hash", HASH_BYTES),
                   _bytes(vals, "validators hash", HASH_BYTES),
                   _bytes(proposer, "proposer", ADDRESS_BYTES),
                   _bytes(ev, "evidence hash", HASH_BYTES))

    def id(self) -> bytes:
        return sha256(to_cbor(self.to_list()))


def txs_hash(txs: tuple[bytes, ...]) -> bytes:
    return sha256(to_cbor([sha256(tx) for tx in txs]))


@dataclass(frozen=True)
class DuplicateVoteEvidence:
    """Two conflicting votes signed by one validator for the same height, round and type."""

    vote_a: Vote
    vote_b: Vote

    def to_list(self) -> list[Any]:
        a, b = sorted([self.vote_a, self.vote_b], key=lambda v: to_cbor(v.to_list()))
        return [a.to_list(), b.to_list()]

    @classmethod
    def from_list(cls, raw: Any) -> DuplicateVoteEvidence:
        a, b = _list(raw, "evidence", 2)
        return cls(Vote.from_list(a), Vote.from_list(b))

    def check(self, chain_id: str, validators: ValidatorSet) -> None:
        a, b = self.vote_a, self.vote_b
        if (a.type, a.height, a.round, a.validator) != (b.type, b.height, b.round, b.validator):
            raise DecodeError("evidence votes are not for the same height/round/type/validator")
        if a.block_id == b.block_id:
            raise DecodeError("evidence votes do not conflict")
        if not (a.verify(chain_id, validators) and b.verify(chain_id, validators)):
            raise DecodeError("evidence vote signature invalid")

    def hash(self) -> bytes:
        return sha256(to_cbor(self.to_list()))


def evidence_hash(evidence: tuple[DuplicateVoteEvidence, ...]) -> bytes:
    return sha256(to_cbor([e.to_list() for e in evidence]))


@dataclass(frozen=True)
class Block:
    header: Header
    txs: tuple[bytes, ...]
    last_commit: Commit | None  # None at height 1
    evidence: tuple[DuplicateVoteEvidence, ...] = ()

    @property
    def id(self) -> bytes:
        return self.header.id()

    @property
    def height(self) -> int:
        return self.header.height

    def to_list(self) -> list[Any]:
        return [self.header.to_list(), list(self.txs),
                None if self.last_commit is None else self.last_commit.to_list(),
                [e.to_list() for e in self.evidence]]

    def to_cbor(self) -> bytes:
        return to_cbor(self.to_list())

    @classmethod
    def from_list(cls, raw: Any, max_txs: int = 100_000, max_tx_bytes: int = 1 << 20) -> Block:
        header, txs, commit, evidence = _list(raw, "block", 4)
        tx_list = tuple(_bytes(t, "tx", max_size=max_tx_bytes)
                        for t in _list(txs, "txs", max_txs))
        return cls(Header.from_list(header), tx_list,
                   None if commit is None else Commit.from_list(commit),
                   tuple(DuplicateVoteEvidence.from_list(e)
                         for e in _list(evidence, "evidence", 100)))

    @classmethod
    def from_cbor(cls, data: bytes, max_bytes: int) -> Block:
        return cls.from_list(from_cbor(data, max_bytes=max_bytes))

    def check_structure(self) -> None:
        """Raise DecodeError if the header does not commit to this block's contents."""
        if self.header.txs_hash != txs_hash(self.txs):
            raise DecodeError("header txs hash does not match the txs")
        if self.header.evidence_hash != evidence_hash(self.evidence):
            raise DecodeError("header evidence hash does not match the evidence")
        if (self.header.height == 1) != (self.last_commit is None):
            raise DecodeError("only the first block has no last commit")
        if self.last_commit is not None:
            if self.last_commit.height != self.header.height - 1 or \
                    self.last_commit.block_id != self.header.prev_block_id:
                raise DecodeError("last commit is not for the previous block")
