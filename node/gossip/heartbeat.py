"""Signed heartbeats (what a node offers and has free) and regional summaries, on gossip.

A heartbeat is msgpack ["hb", body, signature]; topic dcloud/<chain-id>/heartbeats carries
batches ["hbs", [heartbeat, ...]] so that many heartbeats share one gossip message (gossip
costs milliseconds of CPU per message per node); topic dcloud/<chain-id>/regions carries
["summary", body, signature]. Every signature is its node's ed25519 signature over a domain
tag and the canonical body bytes, checked against the public key inside the claimed node id,
so a relay can carry other nodes' heartbeats but nobody can speak for another node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.codec import DecodeError, pack, unpack
from node.crypto import verify
from node.runtime.resources import HostResources, InvalidResources

MAX_HEARTBEAT_BYTES = 4096
MAX_SUMMARY_BYTES = 256 * 1024
MAX_REGION_MEMBERS = 1000
MAX_BATCH = 128  # heartbeats per gossip message (~200 bytes each)
MAX_BATCH_BYTES = MAX_BATCH * (MAX_HEARTBEAT_BYTES + 8)
RESOURCE_KEYS = tuple(HostResources.__dataclass_fields__)


def _resources(raw: Any) -> dict[str, int]:
    try:
        return HostResources.from_wire(raw).to_wire()
    except InvalidResources as exc:
        raise DecodeError(f"resources: {exc}") from exc


def _text(raw: Any, name: str, max_len: int = 128) -> str:
    if not isinstance(raw, str) or not 0 < len(raw) <= max_len:
        raise DecodeError(f"{name} must be 1-{max_len} characters")
    return raw


def _uint(raw: Any, name: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw < 2**63:
        raise DecodeError(f"{name} must be a non-negative integer")
    return raw


@dataclass(frozen=True)
class Heartbeat:
    node_id: str
    seq: int
    time_ms: int
    region: str
    version: str
    resources: dict[str, int]

    def body(self) -> list[Any]:
        return [self.node_id, self.seq, self.time_ms, self.region, self.version,
                [self.resources[k] for k in RESOURCE_KEYS]]


@dataclass(frozen=True)
class RegionSummary:
    leader: str
    region: str
    seq: int
    time_ms: int
    members: tuple[str, ...]
    free: dict[str, int]  # resources summed over the region's alive members

    def body(self) -> list[Any]:
        return [self.leader, self.region, self.seq, self.time_ms, list(self.members),
                [self.free[k] for k in RESOURCE_KEYS]]


def _sign_bytes(kind: str, body: list[Any]) -> bytes:
    return pack(["dcloud/" + kind, body])


def encode_heartbeat(hb: Heartbeat, sign: Callable[[bytes], bytes]) -> bytes:
    return pack(["hb", hb.body(), sign(_sign_bytes("heartbeat", hb.body()))])


def encode_summary(s: RegionSummary, sign: Callable[[bytes], bytes]) -> bytes:
    return pack(["summary", s.body(), sign(_sign_bytes("summary", s.body()))])


def _envelope(data: bytes, kind: str, max_bytes: int) -> tuple[list[Any], bytes]:
    raw = unpack(data, max_bytes=max_bytes, max_items=MAX_REGION_MEMBERS + 16)
    if not isinstance(raw, list) or len(raw) != 3 or raw[0] != kind or \
            not isinstance(raw[1], list) or not isinstance(raw[2], bytes) or len(raw[2]) != 64:
        raise DecodeError(f"{kind} must be [{kind!r}, body, 64-byte signature]")
    return raw[1], raw[2]


def _check_signature(node_id: str, kind: str, body: list[Any], signature: bytes,
                     public_key_of: Callable[[str], bytes | None]) -> None:
    key = public_key_of(node_id)
    if key is None or not verify(key, _sign_bytes(kind, body), signature):
        raise DecodeError(f"{kind} signature does not match node {node_id[:16]}...")


def decode_heartbeat(data: bytes, public_key_of: Callable[[str], bytes | None]) -> Heartbeat:
    body, sig = _envelope(data, "hb", MAX_HEARTBEAT_BYTES)
    if len(body) != 6 or not isinstance(body[5], list) or len(body[5]) != len(RESOURCE_KEYS):
        raise DecodeError("heartbeat body has the wrong shape")
    hb = Heartbeat(_text(body[0], "node id"), _uint(body[1], "seq"), _uint(body[2], "time"),
                   _text(body[3], "region", 64), _text(body[4], "version", 32),
                   _resources(dict(zip(RESOURCE_KEYS, body[5], strict=True))))
    _check_signature(hb.node_id, "heartbeat", body, sig, public_key_of)
    return hb


def encode_batch(heartbeats: list[bytes]) -> bytes:
    """One gossip message carrying already encoded (signed) heartbeats."""
    if not 0 < len(heartbeats) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1-{MAX_BATCH} heartbeats, not {len(heartbeats)}")
    return pack(["hbs", heartbeats])


def decode_batch(data: bytes, public_key_of: Callable[[str], bytes | None]) -> list[Heartbeat]:
    """Every heartbeat of a batch, each checked; one bad heartbeat rejects the whole batch
    (the relay checked them before batching, so a bad one means a bad relay)."""
    raw = unpack(data, max_bytes=MAX_BATCH_BYTES, max_items=MAX_BATCH)
    if not isinstance(raw, list) or len(raw) != 2 or raw[0] != "hbs" or \
            not isinstance(raw[1], list) or not 0 < len(raw[1]) <= MAX_BATCH or \
            not all(isinstance(item, bytes) for item in raw[1]):
        raise DecodeError(f"heartbeat batch must be ['hbs', [1-{MAX_BATCH} heartbeats]]")
    out = [decode_heartbeat(item, public_key_of) for item in raw[1]]
    if len({hb.node_id for hb in out}) != len(out):
        raise DecodeError("heartbeat batch holds two heartbeats of one node")
    return out


def decode_summary(data: bytes, public_key_of: Callable[[str], bytes | None]) -> RegionSummary:
    body, sig = _envelope(data, "summary", MAX_SUMMARY_BYTES)
    if len(body) != 6 or not isinstance(body[4], list) or len(body[4]) > MAX_REGION_MEMBERS \
            or not isinstance(body[5], list) or len(body[5]) != len(RESOURCE_KEYS):
        raise DecodeError("region summary body has the wrong shape")
    summary = RegionSummary(
        _text(body[0], "leader"), _text(body[1], "region", 64), _uint(body[2], "seq"),
        _uint(body[3], "time"), tuple(_text(m, "member") for m in body[4]),
        _resources(dict(zip(RESOURCE_KEYS, body[5], strict=True))))
    _check_signature(summary.leader, "summary", body, sig, public_key_of)
    return summary

