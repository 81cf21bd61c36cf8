"""The genesis file: chain id, start time, validators, initial balances, consensus params."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from node.codec import to_cbor
from node.consensus.messages import MAX_BLOCK_TXS_BYTES, MAX_CONSENSUS_MESSAGE_BYTES
from node.consensus.types import Validator, ValidatorSet, sha256

MAX_GENESIS_BYTES = 16 * 1024 * 1024
CHAIN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class GenesisError(Exception):
    """The genesis file is missing, malformed, or inconsistent."""


@dataclass(frozen=True)
class ConsensusParams:
    max_block_bytes: int = 768 * 1024  # of txs; at most messages.MAX_BLOCK_TXS_BYTES
    max_block_txs: int = 10_000
    max_tx_bytes: int = 16 * 1024
    timeout_propose_ms: int = 1000
    timeout_propose_delta_ms: int = 500
    timeout_vote_ms: int = 500
    timeout_vote_delta_ms: int = 250
    timeout_commit_ms: int = 100
    min_fee: int = 0
    # While nothing waits to be committed (no tx, no evidence, no peer already in the next
    # height), wait up to this long before starting the next height; 0 makes a block every
    # timeout_commit_ms whatever happens (CometBFT's create_empty_blocks_interval).
    empty_block_interval_ms: int = 5000

    def to_list(self) -> list[int]:
        return list(asdict(self).values())


@dataclass(frozen=True)
class GenesisValidator:
    name: str
    pub_key: bytes
    power: int


@dataclass(frozen=True)
class GenesisAccount:
    address: bytes
    balance: int


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    validators: tuple[GenesisValidator, ...]
    accounts: tuple[GenesisAccount, ...]
    params: ConsensusParams = field(default_factory=ConsensusParams)

    def validator_set(self) -> ValidatorSet:
        return ValidatorSet(tuple(Validator(v.pub_key, v.power) for v in self.validators))

    def hash(self) -> bytes:
        """Identifies the chain's starting point; peers on different genesis never agree."""
        return sha256(to_cbor([
            self.chain_id, self.genesis_time_ms,
            [[v.name, v.pub_key, v.power] for v in self.validators],
            [[a.address, a.balance] for a in self.accounts],
            self.params.to_list(),
        ]))

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "validators": [{"name": v.name, "pub_key": v.pub_key.hex(), "power": v.power}
                           for v in self.validators],
            "accounts": [{"address": a.address.hex(), "balance": a.balance}
                         for a in self.accounts],
            "params": asdict(self.params),
        }

    @classmethod
    def from_json(cls, doc: Any) -> Genesis:
        try:
            chain_id = doc["chain_id"]
            if not isinstance(chain_id, str) or not CHAIN_ID_RE.match(chain_id):
                raise GenesisError(f"chain_id {chain_id!r} must match {CHAIN_ID_RE.pattern}")
            validators = tuple(
                GenesisValidator(str(v["name"]), _hex(v["pub_key"], 32), _pos(v["power"]))
                for v in doc["validators"])
            accounts = tuple(GenesisAccount(_hex(a["address"], 20), _nonneg(a["balance"]))
                             for a in doc.get("accounts", []))
            params_doc = doc.get("params", {})
            known = set(ConsensusParams.__dataclass_fields__)
            unknown = set(params_doc) - known
            if unknown:
                raise GenesisError(f"unknown consensus params: {', '.join(sorted(unknown))}")
            params = ConsensusParams(**{k: _nonneg(v) for k, v in params_doc.items()})
            genesis = cls(chain_id, _nonneg(doc["genesis_time_ms"]), validators, accounts, params)
        except GenesisError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise GenesisError(f"malformed genesis: {exc!r}") from exc
        if not validators:
            raise GenesisError("genesis has no validators")
        if not 0 < params.max_block_bytes <= MAX_BLOCK_TXS_BYTES:
            raise GenesisError(f"max_block_bytes {params.max_block_bytes} must be between 1 and "
                               f"{MAX_BLOCK_TXS_BYTES}: a proposal carries its block in one "
                               f"gossip message of at most {MAX_CONSENSUS_MESSAGE_BYTES} bytes")
        if len({a.address for a in accounts}) != len(accounts):
            raise GenesisError("genesis lists an account twice")
        try:
            genesis.validator_set()
        except ValueError as exc:
            raise GenesisError(f"genesis validators: {exc}") from exc
        return genesis

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> Genesis:
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_GENESIS_BYTES + 1)
        except FileNotFoundError as exc:
            raise GenesisError(f"no genesis file at {path}") from exc
        except OSError as exc:
            raise GenesisError(f"cannot read genesis file {path}: {exc.strerror}") from exc
        if len(raw) > MAX_GENESIS_BYTES:
            raise GenesisError(f"genesis file {path} exceeds {MAX_GENESIS_BYTES} bytes")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise GenesisError(f"genesis file {path} is not JSON: {exc}") from exc
        return cls.from_json(doc)


def _hex(value: Any, size: int) -> bytes:
    raw = bytes.fromhex(value)
    if len(raw) != size:
        raise GenesisError(f"expected {size} bytes of hex, got {len(raw)}")
    return raw


def _nonneg(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise GenesisError(f"expected a non-negative integer, got {value!r}")
    return value


def _pos(value: Any) -> int:
    if _nonneg(value) == 0:
        raise GenesisError("voting power must be positive")
    return int(value)
