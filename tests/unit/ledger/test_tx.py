"""Transfers: canonical CBOR, sign-bytes, JSON form, and refusal of every malformed input."""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.codec import DecodeError, to_cbor
from node.crypto import Ed25519Key, address_of
from node.ledger.tx import (
    MAX_AMOUNT,
    InvalidAmount,
    Transfer,
    address_bytes,
    transfer_sign_bytes,
    tx_hash,
)

CHAIN = "dcloud-test"
ALICE = Ed25519Key(bytes([1]) * 32)
BOB = Ed25519Key(bytes([2]) * 32)
BOB_ADDR = bytes.fromhex(BOB.address)


def transfer(amount: int = 1_000_000, fee: int = 10, nonce: int = 0,
             chain_id: str = CHAIN) -> Transfer:
    return Transfer.signed(ALICE, chain_id, BOB_ADDR, amount, fee, nonce)


def raw_items(tx: Transfer) -> list[Any]:
    return tx.to_list()


# ---- round trips ----------------------------------------------------------------------------


def test_encoding_is_the_tagged_list_in_canonical_cbor() -> None:
    tx = transfer()
    assert tx.encode() == to_cbor(["transfer", CHAIN, ALICE.public_key, BOB_ADDR, 1_000_000, 10,
                                   0, tx.signature])
    assert Transfer.decode(tx.encode()) == tx


def test_hash_is_sha256_of_the_encoding_in_hex() -> None:
    tx = transfer()
    assert tx.hash == hashlib.sha256(tx.encode()).hexdigest() == tx_hash(tx.encode())


def test_sender_address_matches_crypto_address_of() -> None:
    tx = transfer()
    assert tx.sender_address.hex() == address_of(ALICE.public_key) == ALICE.address
    assert address_bytes(ALICE.public_key) == tx.sender_address


def test_signed_transfer_verifies_and_accepts_hex_recipient() -> None:
    tx = Transfer.signed(ALICE, CHAIN, BOB.address, 5, 0, 3)
    assert tx.to == BOB_ADDR
    assert tx.verify_signature()


def test_sign_bytes_bind_chain_and_domain_before_the_fields() -> None:
    tx = transfer()
    assert tx.sign_bytes() == to_cbor([CHAIN, "dcloud/tx", "transfer", ALICE.public_key,
                                       BOB_ADDR, 1_000_000, 10, 0])


@pytest.mark.parametrize("field,value", [
    ("chain_id", "other-chain"), ("to", bytes(20)), ("amount", 999), ("fee", 11), ("nonce", 1),
])
def test_changing_any_signed_field_breaks_the_signature(field: str, value: Any) -> None:
    fields = transfer().__dict__ | {field: value}
    fields = {k: fields[k] for k in ("chain_id", "sender", "to", "amount", "fee", "nonce",
                                     "signature")}
    assert not Transfer(**fields).verify_signature()


def test_signature_of_another_key_does_not_verify() -> None:
    tx = transfer()
    forged = Transfer(tx.chain_id, BOB.public_key, tx.to, tx.amount, tx.fee, tx.nonce,
                      tx.signature)
    assert not forged.verify_signature()


def test_json_round_trip_uses_hex_and_integers() -> None:
    tx = transfer()
    obj = tx.to_json()
    assert obj == {"type": "transfer", "chain_id": CHAIN, "sender": ALICE.public_key.hex(),
                   "to": BOB.address, "amount": 1_000_000, "fee": 10, "nonce": 0,
                   "signature": tx.signature.hex()}
    assert Transfer.from_json(obj) == tx


keys = st.sampled_from([ALICE, BOB, Ed25519Key(bytes([3]) * 32)])


@settings(max_examples=60, deadline=None)
@given(key=keys, chain=st.text(min_size=1, max_size=64), to=st.binary(min_size=20, max_size=20),
       amount=st.integers(1, MAX_AMOUNT), fee=st.integers(0, MAX_AMOUNT),
       nonce=st.integers(0, 2**63 - 1))
def test_any_valid_transfer_round_trips(key: Ed25519Key, chain: str, to: bytes, amount: int,
                                        fee: int, nonce: int) -> None:
    tx = Transfer.signed(key, chain, to, amount, fee, nonce)
    data = tx.encode()
    back = Transfer.decode(data, max_bytes=1024)
    assert back == tx and back.encode() == data and back.verify_signature()
    assert Transfer.from_json(tx.to_json()) == tx


# ---- rejection ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_bytes_raise_only_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Transfer.decode(data)


def test_garbage_and_wrong_shapes_are_refused_with_a_reason() -> None:
    tx = transfer()
    items = raw_items(tx)
    cases: list[tuple[bytes, str]] = [
        (b"", "malformed"),
        (b"\xff\x00garbage", "malformed"),
        (to_cbor({"amount": 1}), "non-empty CBOR list"),
        (to_cbor([]), "non-empty CBOR list"),
        (to_cbor(["stake", *items[1:]]), "unknown transaction type"),
        (to_cbor(items[:-1]), "list of 8 items"),
        (to_cbor([*items, 0]), "list of 8 items"),
        (to_cbor(["transfer", 7, *items[2:]]), "chain id"),
        (to_cbor(["transfer", "", *items[2:]]), "chain id"),
        (to_cbor(["transfer", "x" * 65, *items[2:]]), "chain id"),
        (to_cbor([*items[:2], bytes(31), *items[3:]]), "sender public key"),
        (to_cbor([*items[:3], bytes(21), *items[4:]]), "recipient address"),
        (to_cbor([*items[:3], BOB.address, *items[4:]]), "recipient address"),
        (to_cbor([*items[:4], "5", *items[5:]]), "amount must be an integer"),
        (to_cbor([*items[:4], True, *items[5:]]), "amount must be an integer"),
        (to_cbor([*items[:4], 1.5, *items[5:]]), "float is not allowed"),
        (to_cbor([*items[:6], -1, items[7]]), "nonce"),
        (to_cbor([*items[:6], 2**63, items[7]]), "nonce"),
        (to_cbor([*items[:7], bytes(63)]), "signature"),
        (to_cbor([*items[:7], [items[7]]]), "signature"),
    ]
    for data, reason in cases:
        with pytest.raises(DecodeError, match=reason):
            Transfer.decode(data)


@pytest.mark.parametrize("index,value,reason", [
    (4, 0, "amount"), (4, -5, "amount"), (4, MAX_AMOUNT + 1, "amount"),
    (5, -1, "fee"), (5, MAX_AMOUNT + 1, "fee"),
])
def test_out_of_range_amounts_raise_invalid_amount(index: int, value: int, reason: str) -> None:
    items = raw_items(transfer())
    items[index] = value
    with pytest.raises(InvalidAmount, match=reason):
        Transfer.decode(to_cbor(items))


def test_nested_containers_and_tags_are_refused() -> None:
    items = raw_items(transfer())
    deep = to_cbor([*items[:2], [[[1]]], *items[3:]])
    with pytest.raises(DecodeError):
        Transfer.decode(deep)
    # cbor2 decodes its built-in tags itself (a bignum becomes an int): the re-encoding check
    # is what refuses them; other tags are refused by the codec.
    bignum = cbor2.dumps([*items[:4], cbor2.CBORTag(2, b"\x01"), *items[5:]])
    with pytest.raises(DecodeError, match="canonical"):
        Transfer.decode(bignum)
    for tag in (cbor2.CBORTag(1, 5), cbor2.CBORTag(99, 1), cbor2.CBORTag(258, [1])):
        with pytest.raises(DecodeError):
            Transfer.decode(cbor2.dumps([*items[:4], tag, *items[5:]]))


def test_oversized_input_is_refused_before_parsing() -> None:
    data = transfer().encode()
    with pytest.raises(DecodeError, match="exceeds the limit"):
        Transfer.decode(data, max_bytes=len(data) - 1)
    assert Transfer.decode(data, max_bytes=len(data))


def test_non_canonical_encodings_are_refused() -> None:
    tx = transfer(nonce=5)
    canonical = tx.encode()
    items = raw_items(tx)
    enc = [cbor2.dumps(x) for x in items]
    # The same values, but the nonce 5 written as a 4-byte integer.
    long_int = b"\x88" + b"".join(enc[:6]) + b"\x1a\x00\x00\x00\x05" + enc[7]
    # The array length written in the one-byte-follows form.
    long_len = b"\x98\x08" + b"".join(enc)
    # An indefinite-length array.
    indefinite = b"\x9f" + b"".join(enc) + b"\xff"
    for data in (long_int, long_len, indefinite, canonical + b"\x00"):
        assert cbor2.loads(data) == items  # the same value...
        with pytest.raises(DecodeError):  # ...is not the same bytes
            Transfer.decode(data)
    assert Transfer.decode(canonical) == tx


def test_constructor_refuses_invalid_fields() -> None:
    tx = transfer()
    with pytest.raises(InvalidAmount):
        Transfer(CHAIN, tx.sender, tx.to, 0, 0, 0, tx.signature)
    with pytest.raises(DecodeError):
        Transfer(CHAIN, tx.sender[:31], tx.to, 1, 0, 0, tx.signature)
    with pytest.raises(DecodeError):
        Transfer.decode("not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("change,reason", [
    ({"fee": 1.0}, "fee must be an integer"),
    ({"amount": True}, "amount must be an integer"),
    ({"amount": "100"}, "amount must be an integer"),
    ({"sender": "zz" * 32}, "not valid hex"),
    ({"sender": "ab"}, "64 hex characters"),
    ({"to": None}, "40 hex characters"),
    ({"signature": "00" * 63}, "128 hex characters"),
    ({"type": "stake"}, "unknown transaction type"),
    ({"extra": 1}, "unexpected \\['extra'\\]"),
])
def test_json_refuses_malformed_fields(change: dict[str, Any], reason: str) -> None:
    obj = transfer().to_json() | change
    with pytest.raises(DecodeError, match=reason):
        Transfer.from_json(obj)


def test_json_refuses_missing_fields_and_non_objects() -> None:
    obj = transfer().to_json()
    del obj["nonce"]
    with pytest.raises(DecodeError, match="missing \\['nonce'\\]"):
        Transfer.from_json(obj)
    with pytest.raises(DecodeError, match="JSON object"):
        Transfer.from_json([1, 2])


def test_sign_bytes_helper_matches_the_method() -> None:
    tx = transfer()
    assert transfer_sign_bytes(CHAIN, tx.sender, tx.to, tx.amount, tx.fee, tx.nonce) == \
        tx.sign_bytes()
