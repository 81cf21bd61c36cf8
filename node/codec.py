"""Encodings with limits: canonical CBOR for everything hashed or signed, msgpack for other
wire frames. Every decoder bounds size and depth, and rejects what the schema does not allow.
"""

from __future__ import annotations

from typing import Any

import cbor2
import msgpack

MAX_CBOR_DEPTH = 16


class DecodeError(ValueError):
    """Bytes from a peer or file that are not a valid, bounded encoding."""


def pack(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def unpack(data: bytes, *, max_bytes: int, max_items: int = 1024) -> Any:
    """Decode msgpack from an untrusted source, bounding size, container lengths and depth."""
    if len(data) > max_bytes:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=max_items,
            max_map_len=max_items,
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            TypeError, RecursionError) as exc:
        raise DecodeError(f"malformed msgpack: {exc.__class__.__name__} {exc}".strip()) from exc


def to_cbor(value: Any) -> bytes:
    """Canonical CBOR (RFC 8949 core deterministic encoding): one byte string per value."""
    return bytes(cbor2.dumps(value, canonical=True))


def _no_tags(decoder: Any, tag: Any) -> Any:
    raise DecodeError(f"CBOR tag {tag.tag} is not allowed")


def from_cbor(data: bytes, *, max_bytes: int, max_depth: int = MAX_CBOR_DEPTH) -> Any:
    """Decode CBOR from an untrusted source: bounded size and depth, no tags, no duplicate keys.

    Callers that hash or verify signatures re-encode what they decoded and compare, so a
    non-canonical encoding never passes for a canonical one.
    """
    if len(data) > max_bytes:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        value = cbor2.loads(data, max_depth=max_depth, allow_duplicate_keys=False,
                            tag_hook=_no_tags, allow_indefinite=False)
    except DecodeError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError,
            MemoryError) as exc:
        raise DecodeError(f"malformed CBOR: {exc.__class__.__name__} {exc}".strip()) from exc
    _check_plain(value)
    return value


_PLAIN = (str, bytes, bool, type(None))


def _check_plain(value: Any) -> None:
    """Only plain data: cbor2 turns its built-in tags (bignums, dates, sets, ...) into objects
    without calling the tag hook, so what came out is checked instead."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _PLAIN):
            continue
        if isinstance(item, int):
            if not -(2**64) <= item < 2**64:
                raise DecodeError("CBOR integer out of range (bignums are not allowed)")
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            raise DecodeError(f"CBOR value of type {type(item).__name__} is not allowed")
