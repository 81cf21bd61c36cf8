"""Signed heartbeats and region summaries: only the node named inside can have produced them."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.codec import DecodeError, pack, unpack
from node.crypto import Ed25519Key
from node.gossip.heartbeat import (
    MAX_BATCH,
    MAX_HEARTBEAT_BYTES,
    MAX_REGION_MEMBERS,
    MAX_SUMMARY_BYTES,
    RESOURCE_KEYS,
    Heartbeat,
    RegionSummary,
    decode_batch,
    decode_heartbeat,
    decode_summary,
    encode_batch,
    encode_heartbeat,
    encode_summary,
)
from node.p2p.addrs import public_key_of
from node.p2p.host import peer_id_of
from node.runtime.resources import HostResources

KEY_A = Ed25519Key(hashlib.sha256(b"heartbeat node a").digest())
KEY_B = Ed25519Key(hashlib.sha256(b"heartbeat node b").digest())
ID_A, ID_B = peer_id_of(KEY_A), peer_id_of(KEY_B)

RESOURCES = HostResources(
    cpu_millicores_total=8000, cpu_millicores_free=6500,
    memory_bytes_total=16 << 30, memory_bytes_free=9 << 30,
    storage_bytes_total=500 << 30, storage_bytes_free=120 << 30,
    gpus_total=2, gpus_free=1).to_wire()

HB = Heartbeat(ID_A, 42, 1_700_000_000_000, "eu-west", "0.1.0", RESOURCES)
SUMMARY = RegionSummary(ID_A, "eu-west", 7, 1_700_000_000_000, (ID_A, ID_B), RESOURCES)


def resign(body: list[Any], kind: str, key: Ed25519Key = KEY_A) -> bytes:
    """A frame with `body` as given, correctly signed by `key` (to reach the field checks)."""
    tag = {"hb": "dcloud/heartbeat", "summary": "dcloud/summary"}[kind]
    return pack([kind, body, key.sign(pack([tag, body]))])


# ---- heartbeats ----------------------------------------------------------------------------------


def test_a_heartbeat_round_trips_with_its_resources() -> None:
    decoded = decode_heartbeat(encode_heartbeat(HB, KEY_A.sign), public_key_of)
    assert decoded == HB
    assert decoded.resources["gpus_free"] == 1
    assert list(decoded.resources) == list(RESOURCE_KEYS)


def test_the_wire_layout_is_the_documented_one() -> None:
    kind, body, signature = unpack(encode_heartbeat(HB, KEY_A.sign), max_bytes=4096)
    assert kind == "hb"
    assert body == [ID_A, 42, 1_700_000_000_000, "eu-west", "0.1.0",
                    [RESOURCES[k] for k in RESOURCE_KEYS]]
    assert signature == KEY_A.sign(pack(["dcloud/heartbeat", body]))


def test_a_heartbeat_signed_by_another_key_is_rejected() -> None:
    with pytest.raises(DecodeError, match="signature"):
        decode_heartbeat(encode_heartbeat(HB, KEY_B.sign), public_key_of)


def test_a_node_cannot_claim_another_nodes_id() -> None:
    forged = Heartbeat(ID_B, 43, HB.time_ms, HB.region, HB.version, HB.resources)
    with pytest.raises(DecodeError, match="signature"):
        decode_heartbeat(encode_heartbeat(forged, KEY_A.sign), public_key_of)


def test_a_heartbeat_from_an_id_without_a_key_is_rejected() -> None:
    keyless = Heartbeat("not-a-peer-id", 1, 0, "eu", "0.1.0", RESOURCES)
    with pytest.raises(DecodeError, match="signature"):
        decode_heartbeat(encode_heartbeat(keyless, KEY_A.sign), public_key_of)


def test_any_change_to_a_signed_heartbeat_breaks_its_signature() -> None:
    kind, body, signature = unpack(encode_heartbeat(HB, KEY_A.sign), max_bytes=4096)
    changes: list[list[Any]] = [
        [ID_A, 43, *body[2:]],
        [*body[:2], body[2] + 1, *body[3:]],
        [*body[:3], "us-east", *body[4:]],
        [*body[:4], "0.2.0", body[5]],
        [*body[:5], [body[5][0], body[5][1] + 1, *body[5][2:]]],
    ]
    for changed in changes:
        with pytest.raises(DecodeError, match="signature"):
            decode_heartbeat(pack([kind, changed, signature]), public_key_of)


def test_an_oversized_heartbeat_is_rejected_before_decoding() -> None:
    data = encode_heartbeat(HB, KEY_A.sign)
    with pytest.raises(DecodeError, match="exceeds"):
        decode_heartbeat(data + b"\x00" * (MAX_HEARTBEAT_BYTES - len(data) + 1), public_key_of)


GOOD_BODY: list[Any] = list(HB.body())


def body_with(index: int, value: Any) -> list[Any]:
    body = list(GOOD_BODY)
    body[index] = value
    return body


def resources_with(key: str, value: Any) -> list[Any]:
    values = list(GOOD_BODY[5])
    values[RESOURCE_KEYS.index(key)] = value
    return body_with(5, values)


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",
    pack(None),
    pack(["hb", GOOD_BODY]),
    pack(["summary", GOOD_BODY, b"s" * 64]),
    pack(["hb", {"node": ID_A}, b"s" * 64]),
    pack(["hb", GOOD_BODY, b"s" * 63]),  # an ed25519 signature is 64 bytes
    pack(["hb", GOOD_BODY, "s" * 64]),
    pack(["hb", GOOD_BODY, b"s" * 64, b"extra"]),
    resign(GOOD_BODY[:5], "hb"),
    resign(GOOD_BODY + [0], "hb"),
    resign(body_with(0, ""), "hb"),
    resign(body_with(0, 7), "hb"),
    resign(body_with(0, "x" * 129), "hb"),
    resign(body_with(1, -1), "hb"),
    resign(body_with(1, True), "hb"),
    resign(body_with(1, 2**63), "hb"),
    resign(body_with(2, 1.5), "hb"),
    resign(body_with(3, ""), "hb"),
    resign(body_with(3, "r" * 65), "hb"),
    resign(body_with(4, "v" * 33), "hb"),
    resign(body_with(4, None), "hb"),
    resign(body_with(5, GOOD_BODY[5][:-1]), "hb"),
    resign(body_with(5, GOOD_BODY[5] + [0]), "hb"),
    resign(body_with(5, dict(RESOURCES)), "hb"),
    resign(resources_with("gpus_free", 3), "hb"),  # more free than total
    resign(resources_with("cpu_millicores_free", -1), "hb"),
    resign(resources_with("memory_bytes_total", "16G"), "hb"),
    resign(resources_with("storage_bytes_free", 1.0), "hb"),
    resign(resources_with("gpus_total", None), "hb"),
    pack(["hb", [[[[[[[[[[[]]]]]]]]]]], b"s" * 64]),
    b"\x93\xa2hb" + b"\x91" * 3000 + b"\xc0",
], ids=lambda d: d.hex()[:32])
def test_malformed_heartbeats_are_rejected(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_heartbeat(data, public_key_of)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    for decoder in (decode_heartbeat, decode_summary):
        try:
            decoder(data, public_key_of)
        except DecodeError:
            continue
        raise AssertionError("random bytes carried a valid signature")


resource_values = st.tuples(*(st.integers(0, 2**63 - 1) for _ in range(4))).map(
    lambda t: {"cpu_millicores": t[0], "memory_bytes": t[1], "storage_bytes": t[2],
               "gpus": t[3]})


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1),
       st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=32), resource_values,
       st.integers(0, 100))
def test_any_valid_heartbeat_round_trips(seq: int, time_ms: int, region: str, version: str,
                                         totals: dict[str, int], pct: int) -> None:
    resources = {}
    for kind, total in totals.items():
        resources[f"{kind}_total"] = total
        resources[f"{kind}_free"] = total * pct // 100
    hb = Heartbeat(ID_B, seq, time_ms, region, version,
                   {k: resources[k] for k in RESOURCE_KEYS})
    assert decode_heartbeat(encode_heartbeat(hb, KEY_B.sign), public_key_of) == hb


# ---- batches of heartbeats, relayed by a region's leader -----------------------------------------

HB_B = Heartbeat(ID_B, 9, 1_700_000_000_500, "eu-west", "0.1.0", RESOURCES)


def test_a_batch_carries_other_nodes_heartbeats_each_under_its_own_signature() -> None:
    batch = encode_batch([encode_heartbeat(HB, KEY_A.sign), encode_heartbeat(HB_B, KEY_B.sign)])
    assert unpack(batch, max_bytes=1 << 16)[0] == "hbs"
    assert decode_batch(batch, public_key_of) == [HB, HB_B]


def test_a_batch_holds_one_to_max_batch_heartbeats() -> None:
    one = encode_heartbeat(HB, KEY_A.sign)
    with pytest.raises(ValueError):
        encode_batch([])
    with pytest.raises(ValueError):
        encode_batch([one] * (MAX_BATCH + 1))
    with pytest.raises(DecodeError):
        decode_batch(pack(["hbs", []]), public_key_of)
    with pytest.raises(DecodeError):
        decode_batch(pack(["hbs", [one] * (MAX_BATCH + 1)]), public_key_of)


def test_one_bad_heartbeat_rejects_the_whole_batch() -> None:
    good = encode_heartbeat(HB, KEY_A.sign)
    forged = encode_heartbeat(HB_B, KEY_A.sign)  # B's id, A's key
    with pytest.raises(DecodeError, match="signature"):
        decode_batch(encode_batch([good, forged]), public_key_of)
    with pytest.raises(DecodeError):
        decode_batch(encode_batch([good, b"\xc1"]), public_key_of)


def test_a_batch_holds_at_most_one_heartbeat_per_node() -> None:
    older = Heartbeat(ID_A, 41, HB.time_ms - 5000, "eu-west", "0.1.0", RESOURCES)
    batch = encode_batch([encode_heartbeat(HB, KEY_A.sign), encode_heartbeat(older, KEY_A.sign)])
    with pytest.raises(DecodeError, match="two heartbeats"):
        decode_batch(batch, public_key_of)


@pytest.mark.parametrize("data", [
    b"",
    pack(None),
    pack(["hb", [encode_heartbeat(HB, KEY_A.sign)]]),
    pack(["hbs", encode_heartbeat(HB, KEY_A.sign)]),
    pack(["hbs", [encode_heartbeat(HB, KEY_A.sign)], 0]),
    pack(["hbs", [unpack(encode_heartbeat(HB, KEY_A.sign), max_bytes=4096)]]),  # not bytes
    pack(["hbs", ["text"]]),
    pack(["hbs", [b"x" * 100]]) + b"\x00" * (MAX_BATCH * (MAX_HEARTBEAT_BYTES + 8)),
])
def test_malformed_batches_are_rejected(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_batch(data, public_key_of)


# ---- region summaries ----------------------------------------------------------------------------


def test_a_region_summary_round_trips() -> None:
    assert decode_summary(encode_summary(SUMMARY, KEY_A.sign), public_key_of) == SUMMARY


def test_a_summary_is_checked_against_its_leaders_key() -> None:
    with pytest.raises(DecodeError, match="signature"):
        decode_summary(encode_summary(SUMMARY, KEY_B.sign), public_key_of)
    claimed = RegionSummary(ID_B, "eu-west", 7, 0, (ID_B,), RESOURCES)
    with pytest.raises(DecodeError, match="signature"):
        decode_summary(encode_summary(claimed, KEY_A.sign), public_key_of)


def test_a_heartbeat_is_not_a_summary_and_back() -> None:
    # Different domain tags: a signature for one kind never verifies as the other.
    hb_kind, hb_body, hb_sig = unpack(encode_heartbeat(HB, KEY_A.sign), max_bytes=4096)
    with pytest.raises(DecodeError):
        decode_summary(pack(["summary", hb_body, hb_sig]), public_key_of)
    _, s_body, s_sig = unpack(encode_summary(SUMMARY, KEY_A.sign), max_bytes=4096)
    with pytest.raises(DecodeError):
        decode_heartbeat(pack([hb_kind, s_body, s_sig]), public_key_of)


def test_a_summary_may_list_up_to_the_member_limit() -> None:
    members = tuple(f"member-{i:04d}" for i in range(MAX_REGION_MEMBERS))
    big = RegionSummary(ID_A, "eu-west", 1, 0, members, RESOURCES)
    data = encode_summary(big, KEY_A.sign)
    assert len(data) <= MAX_SUMMARY_BYTES
    assert decode_summary(data, public_key_of) == big
    too_many = RegionSummary(ID_A, "eu-west", 1, 0, (*members, "one-more"), RESOURCES)
    with pytest.raises(DecodeError):
        decode_summary(encode_summary(too_many, KEY_A.sign), public_key_of)


def test_an_oversized_summary_is_rejected() -> None:
    data = encode_summary(SUMMARY, KEY_A.sign)
    with pytest.raises(DecodeError, match="exceeds"):
        decode_summary(data + b"\x00" * MAX_SUMMARY_BYTES, public_key_of)


SUMMARY_BODY: list[Any] = list(SUMMARY.body())


def summary_with(index: int, value: Any) -> list[Any]:
    body = list(SUMMARY_BODY)
    body[index] = value
    return body


@pytest.mark.parametrize("body", [
    SUMMARY_BODY[:5],
    summary_with(0, ""),
    summary_with(1, "r" * 65),
    summary_with(2, -1),
    summary_with(3, "now"),
    summary_with(4, ID_A),
    summary_with(4, [ID_A, ""]),
    summary_with(4, [ID_A, 7]),
    summary_with(5, SUMMARY_BODY[5][:-1]),
    summary_with(5, [1] * (len(RESOURCE_KEYS) + 1)),
    summary_with(5, [0, 1, 0, 0, 0, 0, 0, 0]),  # free cpu above total
])
def test_malformed_summaries_are_rejected_even_when_signed(body: list[Any]) -> None:
    with pytest.raises(DecodeError):
        decode_summary(resign(body, "summary"), public_key_of)
