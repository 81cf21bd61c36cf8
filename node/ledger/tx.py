"""Ledger transactions: the signed `Transfer` of micro-units between accounts.

Encoding (hashed, signed, carried in blocks): canonical CBOR of the list

    ["transfer", chain_id, sender_pub(32), to(20), amount, fee, nonce, signature(64)]

Sign-bytes follow the rule of node.consensus.types (chain id first, then a domain tag):

    canonical CBOR of [chain_id, "dcloud/tx", "transfer", sender_pub, to, amount, fee, nonce]

so a signature cannot be replayed on another chain or as another kind of message. The tx hash
is sha256 of the encoded bytes, shown as hex. A decoder re-encodes what it read and rejects
anything that is not byte-for-byte the canonical encoding, so one transfer has one hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from node.codec import DecodeError, from_cbor, to_cbor
from node.crypto import Ed25519Key, verify

TX_TYPE_TRANSFER = "transfer"
SIGN_DOMAIN = "dcloud/tx"
PUBLIC_KEY_BYTES = 32
ADDRESS_BYTES = 20
SIGNATURE_BYTES = 64
MAX_CHAIN_ID_CHARS = 64
# Amounts, fees, balances and nonces are SQLite INTEGERs (signed 64-bit); the genesis total
# supply is capped at this value too, so no balance can ever overflow.
MAX_AMOUNT = 2**63 - 1
MAX_NONCE = 2**63 - 1
# A transfer is ~150-230 bytes; decoders refuse far more than that before parsing.
DEFAULT_MAX_TX_BYTES = 1024


class InvalidAmount(DecodeError):
    """A transfer whose amount is not > 0 or whose fee is not >= 0 (or either is too large)."""


def tx_hash(tx_bytes: bytes) -> str:
    """The id of an encoded transaction: sha256 of its bytes, hex."""
    return hashlib.sha256(tx_bytes).hexdigest()


def address_bytes(public_key: bytes) -> bytes:
    """Account address of a public key: first 20 bytes of sha256 (crypto.address_of, as bytes)."""
    return hashlib.sha256(public_key).digest()[:ADDRESS_BYTES]


def _check_int(value: Any, name: str, lo: int, hi: int, error: type[DecodeError]) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"{name} must be an integer")
    if not lo <= value <= hi:
        raise error(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _check_bytes(value: Any, name: str, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise DecodeError(f"{name} must be {size} bytes")
    return value


def _check_chain_id(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CHAIN_ID_CHARS:
        raise DecodeError(f"chain id must be a string of 1-{MAX_CHAIN_ID_CHARS} characters")
    return value


@dataclass(frozen=True)
class Transfer:
    """Move `amount` micro-units from the signer's account to `to`, paying `fee` to the proposer.

    `nonce` is the sender's next nonce (accounts start at 0; each applied transfer adds 1), so
    a transfer applies at most once and a sender's transfers apply in order.
    """

    chain_id: str
    sender: bytes  # ed25519 public key, 32 bytes
    to: bytes  # recipient address, 20 bytes
    amount: int
    fee: int
    nonce: int
    signature: bytes

    def __post_init__(self) -> None:
        # The same checks guard decode() and direct construction: no invalid Transfer exists.
        _check_chain_id(self.chain_id)
        _check_bytes(self.sender, "sender public key", PUBLIC_KEY_BYTES)
        _check_bytes(self.to, "recipient address", ADDRESS_BYTES)
        _check_int(self.amount, "amount", 1, MAX_AMOUNT, InvalidAmount)
        _check_int(self.fee, "fee", 0, MAX_AMOUNT, InvalidAmount)
        _check_int(self.nonce, "nonce", 0, MAX_NONCE, DecodeError)
        _check_bytes(self.signature, "signature", SIGNATURE_BYTES)

    # ---- identity ---------------------------------------------------------------------------

    @cached_property
    def sender_address(self) -> bytes:
        return address_bytes(self.sender)

    @cached_property
    def encoded(self) -> bytes:
        return to_cbor(self.to_list())

    @property
    def hash(self) -> str:
        return tx_hash(self.encoded)

    @property
    def spend(self) -> int:
        """What the sender's balance must cover: amount plus fee."""
        return self.amount + self.fee

    # ---- signing ----------------------------------------------------------------------------

    def sign_bytes(self) -> bytes:
        return transfer_sign_bytes(self.chain_id, self.sender, self.to, self.amount, self.fee,
                                   self.nonce)

    def verify_signature(self) -> bool:
        return verify(self.sender, self.sign_bytes(), self.signature)

    @classmethod
    def signed(cls, key: Ed25519Key, chain_id: str, to: bytes | str, amount: int, fee: int,
               nonce: int) -> Transfer:
        """Build and sign a transfer from `key`'s account; `to` is 20 bytes or their hex."""
        to_bytes = bytes.fromhex(to) if isinstance(to, str) else to
        pub = key.public_key
        sig = key.sign(transfer_sign_bytes(chain_id, pub, to_bytes, amount, fee, nonce))
        return cls(chain_id, pub, to_bytes, amount, fee, nonce, sig)

    # ---- CBOR -------------------------------------------------------------------------------

    def to_list(self) -> list[Any]:
        return [TX_TYPE_TRANSFER, self.chain_id, self.sender, self.to, self.amount, self.fee,
                self.nonce, self.signature]

    def encode(self) -> bytes:
        return self.encoded

    @classmethod
    def from_list(cls, raw: Any) -> Transfer:
        if not isinstance(raw, list) or not raw:
            raise DecodeError("a transaction is a non-empty CBOR list")
        if raw[0] != TX_TYPE_TRANSFER:
            raise DecodeError(f"unknown transaction type {str(raw[0])[:32]!r}")
        if len(raw) != 8:
            raise DecodeError(f"a transfer is a list of 8 items, got {len(raw)}")
        _, chain_id, sender, to, amount, fee, nonce, signature = raw
        return cls(chain_id, sender, to, amount, fee, nonce, signature)

    @classmethod
    def decode(cls, data: bytes, max_bytes: int = DEFAULT_MAX_TX_BYTES) -> Transfer:
        """Decode untrusted bytes; raise DecodeError (InvalidAmount for amounts) with a reason."""
        if not isinstance(data, bytes):
            raise DecodeError("a transaction must be bytes")
        # A transfer holds no nested containers: depth 2 is plenty and bounds the parser.
        tx = cls.from_list(from_cbor(data, max_bytes=max_bytes, max_depth=2))
        if tx.encoded != data:
            raise DecodeError("transaction is not in canonical CBOR encoding")
        return tx

    # ---- JSON (HTTP API) --------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The transfer as JSON: byte fields in lowercase hex, amounts as integers."""
        return {
            "type": TX_TYPE_TRANSFER,
            "chain_id": self.chain_id,
            "sender": self.sender.hex(),
            "to": self.to.hex(),
            "amount": self.amount,
            "fee": self.fee,
            "nonce": self.nonce,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, obj: Any) -> Transfer:
        """Parse the JSON form from an untrusted client; raise DecodeError with a reason."""
        if not isinstance(obj, dict):
            raise DecodeError("a transaction must be a JSON object")
        expected = {"type", "chain_id", "sender", "to", "amount", "fee", "nonce", "signature"}
        keys = set(obj)
        if keys != expected:
            missing, extra = sorted(expected - keys), sorted(str(k)[:32] for k in keys - expected)
            raise DecodeError(f"transaction fields: missing {missing}, unexpected {extra}")
        if obj["type"] != TX_TYPE_TRANSFER:
            raise DecodeError(f"unknown transaction type {str(obj['type'])[:32]!r}")
        return cls(
            obj["chain_id"],
            _from_hex(obj["sender"], "sender public key", PUBLIC_KEY_BYTES),
            _from_hex(obj["to"], "recipient address", ADDRESS_BYTES),
            obj["amount"],
            obj["fee"],
            obj["nonce"],
            _from_hex(obj["signature"], "signature", SIGNATURE_BYTES),
        )


def transfer_sign_bytes(chain_id: str, sender: bytes, to: bytes, amount: int, fee: int,
                        nonce: int) -> bytes:
    return to_cbor([chain_id, SIGN_DOMAIN, TX_TYPE_TRANSFER, sender, to, amount, fee, nonce])


def _from_hex(value: Any, name: str, size: int) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise DecodeError(f"{name} must be {2 * size} hex characters")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise DecodeError(f"{name} is not valid hex") from exc
