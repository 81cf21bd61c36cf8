"""Wire encodings with limits: msgpack for non-consensus frames.

(Canonical CBOR for everything hashed or signed arrives with the consensus layer.)
"""

from __future__ import annotations

from typing import Any

import msgpack


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
