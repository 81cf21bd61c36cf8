"""SWIM wire frames: every kind round-trips, and anything malformed is a DecodeError."""

from __future__ import annotations

import hashlib
import hmac
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.codec import DecodeError, pack, unpack
from node.gossip.swim_messages import (
    MAX_ADDR_LEN,
    MAX_ADDRS,
    MAX_ID_LEN,
    MAX_MESSAGE_BYTES,
    MAX_PUSH_PULL_BYTES,
    MAX_RECORDS,
    MAX_REGION_LEN,
    MAX_SEQ,
    MAX_SIGNATURE_LEN,
    MAX_UINT,
    MAX_UPDATES,
    Ack,
    Alive,
    Dead,
    Gossip,
    IndirectAck,
    Kind,
    Leave,
    Left,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    Update,
    UpdateKind,
    check_alive_fields,
    decode,
    encode,
    encoded_size,
)


def sign_as(node_id: str) -> Any:
    key = hashlib.sha256(node_id.encode()).digest()
    return lambda body: hmac.digest(key, body, "sha256")


ALIVE_A = Alive.signed(sign_as("node-a"), "node-a", 3, "eu-west", ("/ip4/127.0.0.1/tcp/4001",),
                       1_700_000_000_000)
LEFT_A = Left.signed(sign_as("node-a"), "node-a", 4)
SUSPECT_B = Suspect("node-b", 7, "node-a")
DEAD_B = Dead("node-b", 7, "node-c")
UPDATES: tuple[Update, ...] = (ALIVE_A, SUSPECT_B, DEAD_B, LEFT_A)

EVERY_KIND: list[Message] = [
    Ping(1, "node-b"),
    Ping(2, "node-b", suspected_inc=7, updates=UPDATES),
    Ack(3, 0),
    Ack(4, 9, UPDATES),
    PingReq(5, "node-c", UPDATES),
    IndirectAck(6, "node-c", UPDATES),
    Nack(7, "node-c", UPDATES),
    Gossip(),
    Gossip(UPDATES),
    PushPull(False),
    PushPull(True, UPDATES),
    Leave(LEFT_A),
]


def frame(*items: Any) -> bytes:
    return pack([1, *items])


# ---- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("msg", EVERY_KIND, ids=lambda m: type(m).__name__)
def test_every_message_kind_round_trips(msg: Message) -> None:
    assert decode(encode(msg)) == msg


def test_the_wire_layout_is_the_documented_array() -> None:
    assert unpack(encode(Ping(5, "node-b", 2)), max_bytes=1024) == [1, 0, 5, "node-b", 2, []]
    assert unpack(encode(Ack(5, 3)), max_bytes=1024) == [1, 1, 5, 3, []]
    assert unpack(encode(PushPull(True)), max_bytes=1024) == [1, 6, True, []]
    assert unpack(encode(Gossip((ALIVE_A,))), max_bytes=1024) == [1, 5, [[
        0, "node-a", 3, "eu-west", ["/ip4/127.0.0.1/tcp/4001"], 1_700_000_000_000,
        ALIVE_A.signature]]]
    assert unpack(encode(Leave(LEFT_A)), max_bytes=1024) == [1, 7, [3, "node-a", 4,
                                                                    LEFT_A.signature]]
    assert encoded_size(SUSPECT_B) == len(pack([1, "node-b", 7, "node-a"]))


def test_signed_bytes_are_the_documented_canonical_cbor() -> None:
    import cbor2

    assert cbor2.loads(ALIVE_A.signed_bytes()) == [
        "dcloud/swim/alive/v1", "node-a", 3, "eu-west", ["/ip4/127.0.0.1/tcp/4001"],
        1_700_000_000_000]
    assert cbor2.loads(LEFT_A.signed_bytes()) == ["dcloud/swim/left/v1", "node-a", 4]
    assert ALIVE_A.signature == sign_as("node-a")(ALIVE_A.signed_bytes())
    assert LEFT_A.signature == sign_as("node-a")(LEFT_A.signed_bytes())
    # Every signed field is covered: changing one changes the bytes.
    moved = Alive("node-a", 3, "eu-west", ("/ip4/127.0.0.2/tcp/4001",), 1_700_000_000_000,
                  ALIVE_A.signature)
    assert moved.signed_bytes() != ALIVE_A.signed_bytes()
    assert Left("node-a", 5, LEFT_A.signature).signed_bytes() != LEFT_A.signed_bytes()


def test_encoding_something_that_is_not_a_message_is_a_type_error() -> None:
    for update in UPDATES:
        with pytest.raises(TypeError, match="not a SWIM message"):
            encode(update)  # type: ignore[arg-type]


def test_the_largest_valid_fields_round_trip() -> None:
    alive = Alive("a" * MAX_ID_LEN, MAX_UINT, "r" * MAX_REGION_LEN,
                  tuple("~" * MAX_ADDR_LEN for _ in range(MAX_ADDRS)), MAX_UINT,
                  b"s" * MAX_SIGNATURE_LEN)
    suspect = Suspect("c" * MAX_ID_LEN, MAX_UINT, "d" * MAX_ID_LEN)
    msg = Ping(MAX_SEQ, "b" * MAX_ID_LEN, MAX_UINT, (alive,) + (suspect,) * (MAX_UPDATES - 1))
    data = encode(msg)
    assert len(data) <= MAX_MESSAGE_BYTES
    assert decode(data) == msg


def test_a_push_pull_may_exceed_the_message_limit_up_to_its_own() -> None:
    records = tuple(Alive(f"node-{i:05d}", i, "eu-west", ("/ip4/10.0.0.1/tcp/4001",) * 2, i,
                          b"s" * 64) for i in range(MAX_RECORDS))
    msg = PushPull(False, records)
    data = encode(msg)
    assert MAX_MESSAGE_BYTES < len(data) <= MAX_PUSH_PULL_BYTES
    assert decode(data) == msg


# ---- hypothesis round trips ---------------------------------------------------------------------

REGION_CHARS = string.ascii_letters + string.digits + "._-"
ids = st.text(REGION_CHARS + ":", min_size=1, max_size=MAX_ID_LEN)
regions = st.text(REGION_CHARS, min_size=1, max_size=MAX_REGION_LEN)
addrs = st.lists(st.text(string.printable.strip(" \t\n\r\x0b\x0c"), min_size=1,
                         max_size=MAX_ADDR_LEN), max_size=MAX_ADDRS)
uints = st.integers(0, MAX_UINT)
seqs = st.integers(0, MAX_SEQ)
sigs = st.binary(min_size=1, max_size=MAX_SIGNATURE_LEN)

updates_st: st.SearchStrategy[Update] = st.one_of(
    st.builds(Alive, ids, uints, regions, addrs.map(tuple), uints, sigs),
    st.builds(Suspect, ids, uints, ids),
    st.builds(Dead, ids, uints, ids),
    st.builds(Left, ids, uints, sigs),
)
piggyback = st.lists(updates_st, max_size=8).map(tuple)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, seqs, ids, st.none() | uints, piggyback),
    st.builds(Ack, seqs, uints, piggyback),
    st.builds(PingReq, seqs, ids, piggyback),
    st.builds(IndirectAck, seqs, ids, piggyback),
    st.builds(Nack, seqs, ids, piggyback),
    st.builds(Gossip, piggyback),
    st.builds(PushPull, st.booleans(), piggyback),
    st.builds(Leave, st.builds(Left, ids, uints, sigs)),
)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_any_valid_message_round_trips(msg: Message) -> None:
    assert decode(encode(msg)) == msg


@settings(max_examples=100, deadline=None)
@given(ids, uints, regions, addrs.map(tuple), uints)
def test_check_alive_fields_accepts_exactly_what_decodes(node_id: str, inc: int, region: str,
                                                         addresses: tuple[str, ...],
                                                         joined: int) -> None:
    check_alive_fields(node_id, inc, region, addresses, joined)
    alive = Alive(node_id, inc, region, addresses, joined, b"sig")
    assert decode(encode(Gossip((alive,)))) == Gossip((alive,))


@pytest.mark.parametrize("args", [
    ("", 0, "r", (), 0),
    ("a b", 0, "r", (), 0),
    ("a" * (MAX_ID_LEN + 1), 0, "r", (), 0),
    ("a", 0, "r:1", (), 0),
    ("a", 0, "r" * (MAX_REGION_LEN + 1), (), 0),
    ("a", 0, "r", ("has space",), 0),
    ("a", 0, "r", ("x",) * (MAX_ADDRS + 1), 0),
    ("a", 0, "r", ("x" * (MAX_ADDR_LEN + 1),), 0),
    ("a", -1, "r", (), 0),
    ("a", 0, "r", (), MAX_UINT + 1),
])
def test_check_alive_fields_refuses_what_peers_would_reject(
        args: tuple[str, int, str, tuple[str, ...], int]) -> None:
    with pytest.raises(ValueError):
        check_alive_fields(*args)


# ---- rejection ----------------------------------------------------------------------------------


def rejects(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


def decodes_cleanly_or_is_rejected(data: bytes) -> None:
    """The fuzz property: DecodeError, or a valid message that re-encodes to itself."""
    try:
        msg = decode(data)
    except DecodeError:
        return
    assert decode(encode(msg)) == msg


@pytest.mark.parametrize("msg", EVERY_KIND, ids=lambda m: type(m).__name__)
def test_every_truncation_is_rejected(msg: Message) -> None:
    data = encode(msg)
    for end in range(len(data)):
        rejects(data[:end])


@pytest.mark.parametrize("msg", EVERY_KIND, ids=lambda m: type(m).__name__)
def test_trailing_bytes_are_rejected(msg: Message) -> None:
    rejects(encode(msg) + b"\xc0")


def test_a_message_over_the_limit_is_rejected_before_decoding() -> None:
    big = Gossip(tuple(Alive(f"n{i}", 0, "r", ("x" * MAX_ADDR_LEN,) * MAX_ADDRS, 0, b"s")
                       for i in range(MAX_UPDATES)))
    data = encode(big)
    assert len(data) > MAX_MESSAGE_BYTES
    rejects(data)
    # A frame that only claims to be a ping, padded past the limit, never reaches the decoder.
    rejects(frame(Kind.PING, 1, "node-b", None, []) + b"\x00" * MAX_MESSAGE_BYTES)


def test_a_push_pull_over_its_own_limit_is_rejected() -> None:
    addr = "x" * MAX_ADDR_LEN
    records = tuple(Alive(f"node-{i:05d}", 0, "r", (addr,) * MAX_ADDRS, 0, b"s" * 64)
                    for i in range(2100))
    data = encode(PushPull(False, records))
    assert len(data) > MAX_PUSH_PULL_BYTES
    rejects(data)


def test_too_many_updates_or_records_are_rejected() -> None:
    rejects(encode(Gossip((SUSPECT_B,) * (MAX_UPDATES + 1))))
    rejects(encode(Ping(1, "node-b", None, (SUSPECT_B,) * (MAX_UPDATES + 1))))
    rejects(encode(PushPull(True, (SUSPECT_B,) * (MAX_RECORDS + 1))))
    assert decode(encode(Gossip((SUSPECT_B,) * MAX_UPDATES))) == \
        Gossip((SUSPECT_B,) * MAX_UPDATES)


def test_deep_nesting_is_rejected() -> None:
    rejects(b"\x91" * 5000 + b"\xc0")
    rejects(frame(Kind.GOSSIP, [[[[[[[[[]]]]]]]]]))
    rejects(pack([1, 5, [[0] + [[[[["deep"]]]]]]]))


ALIVE_WIRE = [0, "node-a", 1, "r", ["addr"], 5, b"sig"]


@pytest.mark.parametrize("data", [
    pack({"version": 1}),
    pack("ping"),
    pack(None),
    pack([]),
    pack([1, 0]),
    pack([2, Kind.GOSSIP, []]),  # unknown wire version
    pack([True, Kind.GOSSIP, []]),
    pack([1.0, Kind.GOSSIP, []]),
    frame(8, []),  # unknown kind
    frame(-1, []),
    frame(5.0, []),
    frame("gossip", []),
    frame(None, []),
    # wrong arity
    frame(Kind.PING, 1, "node-b", None),
    frame(Kind.PING, 1, "node-b", None, [], []),
    frame(Kind.ACK, 1, 0),
    frame(Kind.GOSSIP),
    frame(Kind.GOSSIP, [], []),
    frame(Kind.PUSH_PULL, True),
    frame(Kind.LEAVE),
    # bad field types and values
    frame(Kind.PING, -1, "node-b", None, []),
    frame(Kind.PING, MAX_SEQ + 1, "node-b", None, []),
    frame(Kind.PING, True, "node-b", None, []),
    frame(Kind.PING, 1.5, "node-b", None, []),
    frame(Kind.PING, "1", "node-b", None, []),
    frame(Kind.PING, 1, "", None, []),
    frame(Kind.PING, 1, "node b", None, []),
    frame(Kind.PING, 1, "n" * (MAX_ID_LEN + 1), None, []),
    frame(Kind.PING, 1, b"node-b", None, []),
    frame(Kind.PING, 1, "nöde", None, []),
    frame(Kind.PING, 1, "node-b", -1, []),
    frame(Kind.PING, 1, "node-b", False, []),
    frame(Kind.PING, 1, "node-b", None, {}),
    frame(Kind.PING, 1, "node-b", None, None),
    frame(Kind.ACK, 1, MAX_UINT + 1, []),
    frame(Kind.ACK, 1, -5, []),
    frame(Kind.PING_REQ, 1, 7, []),
    frame(Kind.INDIRECT_ACK, 1, None, []),
    frame(Kind.NACK, 1, "", []),
    frame(Kind.PUSH_PULL, 1, []),  # reply must be a boolean
    frame(Kind.PUSH_PULL, None, []),
    frame(Kind.PUSH_PULL, True, "records"),
    frame(Kind.LEAVE, SUSPECT_B.to_wire()),  # a leave carries a left
    frame(Kind.LEAVE, ALIVE_WIRE),
    frame(Kind.LEAVE, None),
    frame(Kind.LEAVE, [3, "node-a", 1]),
    # bad updates
    frame(Kind.GOSSIP, [[]]),
    frame(Kind.GOSSIP, [None]),
    frame(Kind.GOSSIP, [[4, "node-a", 1, "node-b"]]),
    frame(Kind.GOSSIP, [[True, "node-a", 1, "node-b"]]),
    frame(Kind.GOSSIP, [[1.0, "node-a", 1, "node-b"]]),
    frame(Kind.GOSSIP, [[UpdateKind.SUSPECT, "node-a", 1]]),
    frame(Kind.GOSSIP, [[UpdateKind.SUSPECT, "node-a", 1, "node-b", "extra"]]),
    frame(Kind.GOSSIP, [[UpdateKind.SUSPECT, "node-a", -1, "node-b"]]),
    frame(Kind.GOSSIP, [[UpdateKind.DEAD, "node-a", 1, ""]]),
    frame(Kind.GOSSIP, [[UpdateKind.DEAD, "", 1, "node-b"]]),
    frame(Kind.GOSSIP, [[UpdateKind.LEFT, "node-a", 1, b""]]),
    frame(Kind.GOSSIP, [[UpdateKind.LEFT, "node-a", 1, b"s" * (MAX_SIGNATURE_LEN + 1)]]),
    frame(Kind.GOSSIP, [[UpdateKind.LEFT, "node-a", 1, "sig"]]),
    frame(Kind.GOSSIP, [[0, "node-a", 1, "r", ["addr"], 5]]),
    frame(Kind.GOSSIP, [[0, "node-a", 1, "r", ["addr"], 5, b"sig", 0]]),
    frame(Kind.GOSSIP, [[0, "node-a", 1, "r:x", ["addr"], 5, b"sig"]]),
    frame(Kind.GOSSIP, [[0, "node-a", 1, "", ["addr"], 5, b"sig"]]),
    frame(Kind.GOSSIP, [[0, "node-a", 1, "r", "addr", 5, b"sig"]]),
    frame(Kind.GOSSIP, [[0, "node-a", 1, "r", ["a b"], 5, b"sig"]]),
    frame(Kind.GOSSIP, [[0, "node-a", 1, "r", [""], 5, b"sig"]]),
    frame(Kind.GOSSIP, [[0, "node-a", 1, "r", [7], 5, b"sig"]]),
    frame(Kind.GOSSIP, [[0, "node-a", 1, "r", ["a"] * (MAX_ADDRS + 1), 5, b"sig"]]),
    frame(Kind.GOSSIP, [[0, "node-a", 1, "r", ["a" * (MAX_ADDR_LEN + 1)], 5, b"sig"]]),
    frame(Kind.GOSSIP, [[0, "node-a", 1, "r", ["addr"], -5, b"sig"]]),
    frame(Kind.GOSSIP, [[0, "node-a", 1, "r", ["addr"], 5, None]]),
    frame(Kind.GOSSIP, [ALIVE_WIRE, [UpdateKind.SUSPECT, "node-a", "1", "node-b"]]),
    # non-plain msgpack: an extension type, a non-string map key
    b"\x93\x01\x05\xd4\x01x",  # [1, 5, ext(1, b"x")]
    pack([1, Kind.GOSSIP, {1: 2}]),
], ids=lambda d: d.hex()[:40])
def test_malformed_frames_are_rejected(data: bytes) -> None:
    rejects(data)


def test_a_valid_update_does_not_excuse_an_invalid_one() -> None:
    rejects(frame(Kind.PUSH_PULL, False, [ALIVE_WIRE, [UpdateKind.DEAD, "node-a", 1, "x y"]]))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_raise_decode_error_only(data: bytes) -> None:
    decodes_cleanly_or_is_rejected(data)


@settings(max_examples=250, deadline=None)
@given(messages, st.data())
def test_corrupted_frames_decode_or_raise_decode_error_only(msg: Message,
                                                            data: st.DataObject) -> None:
    raw = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    decodes_cleanly_or_is_rejected(bytes(raw))


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(list(Kind) + [8, 255]), st.lists(plain, max_size=6))
def test_well_formed_msgpack_of_any_shape_decodes_or_raises_decode_error_only(
        kind: int, fields: list[Any]) -> None:
    decodes_cleanly_or_is_rejected(frame(int(kind), *fields))
