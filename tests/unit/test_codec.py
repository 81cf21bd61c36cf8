"""node.codec: msgpack decoding of untrusted bytes is bounded."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.codec import DecodeError, pack, unpack

LIMIT = 64 * 1024


def test_round_trip_of_a_typical_message():
    message = {"type": "hello", "peers": ["a", "b"], "n": 3, "ok": True, "blob": b"\x00\x01",
               "none": None, "ratio": 0.5, "nested": {"x": [1, {"y": -2}]}}
    assert unpack(pack(message), max_bytes=LIMIT) == message


def test_bytes_and_str_stay_distinct():
    assert unpack(pack([b"ab", "ab"]), max_bytes=LIMIT) == [b"ab", "ab"]


def test_input_larger_than_max_bytes_is_refused():
    data = pack("x" * 100)
    assert unpack(data, max_bytes=len(data)) == "x" * 100
    with pytest.raises(DecodeError, match="exceeds the limit"):
        unpack(data, max_bytes=len(data) - 1)


def test_array_longer_than_max_items():
    assert unpack(pack(list(range(10))), max_bytes=LIMIT, max_items=10) == list(range(10))
    with pytest.raises(DecodeError):
        unpack(pack(list(range(11))), max_bytes=LIMIT, max_items=10)


def test_map_longer_than_max_items():
    ok = {str(i): i for i in range(10)}
    assert unpack(pack(ok), max_bytes=LIMIT, max_items=10) == ok
    with pytest.raises(DecodeError):
        unpack(pack({str(i): i for i in range(11)}), max_bytes=LIMIT, max_items=10)


def test_default_max_items_is_1024():
    assert len(unpack(pack([0] * 1024), max_bytes=LIMIT)) == 1024
    with pytest.raises(DecodeError):
        unpack(pack([0] * 1025), max_bytes=LIMIT)


def test_huge_announced_array_length_in_a_tiny_message():
    # array32 header claiming 4 billion elements, no elements: must not allocate or hang
    with pytest.raises(DecodeError):
        unpack(b"\xdd\xff\xff\xff\xff", max_bytes=LIMIT)


@pytest.mark.parametrize(
    "data",
    [
        b"",                      # nothing
        b"\xc1",                  # the one byte msgpack never uses
        b"\x92\x01",              # array of 2 with one element
        b"\xa5abc",               # str of 5 with 3 bytes
        b"\xa2\xff\xfe",          # str that is not UTF-8
        pack({1: "int key"}),     # non-str map keys are refused
        msgpack.packb(msgpack.ExtType(1, b"abcd")),   # ext types are refused
        msgpack.packb(msgpack.Timestamp(1, 0)),
    ],
    ids=["empty", "c1", "short-array", "short-str", "bad-utf8", "int-key", "ext", "timestamp"],
)
def test_invalid_bytes(data):
    with pytest.raises(DecodeError, match="malformed msgpack"):
        unpack(data, max_bytes=LIMIT)


def test_trailing_data_after_the_value():
    with pytest.raises(DecodeError):
        unpack(pack({"a": 1}) + b"\x00", max_bytes=LIMIT)


def test_deep_nesting_is_refused():
    deep = b"\x91" * 5000 + b"\xc0"  # [[[[...None...]]]] 5000 levels, 5 KB
    with pytest.raises(DecodeError):
        unpack(deep, max_bytes=LIMIT)


def test_moderate_nesting_is_fine():
    value: object = None
    for _ in range(100):
        value = [value]
    assert unpack(pack(value), max_bytes=LIMIT) == value


def test_decode_error_is_a_value_error():
    assert issubclass(DecodeError, ValueError)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=50) | st.binary(max_size=50),
    lambda children: st.lists(children, max_size=8)
    | st.dictionaries(st.text(max_size=10), children, max_size=8),
    max_leaves=30,
)


@given(json_like)
def test_round_trip_within_limits(value):
    assert unpack(pack(value), max_bytes=LIMIT) == value
