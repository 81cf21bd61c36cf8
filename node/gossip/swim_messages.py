"""SWIM wire messages: frozen dataclasses and their msgpack encoding, with strict validation.

Every message is a msgpack array `[1, kind, ...fields]` (1 is the wire version); membership
updates ride in a trailing array. Decoding bounds the size before reading, then checks every
field's type, range and length: anything else is a `DecodeError` and changes nothing.

| kind | array |
|---|---|
| 0 ping | `[1, 0, seq, target, suspected_inc or nil, updates]` |
| 1 ack | `[1, 1, seq, incarnation, updates]` |
| 2 ping_req | `[1, 2, seq, target, updates]` |
| 3 indirect_ack | `[1, 3, seq, target, updates]` |
| 4 nack | `[1, 4, seq, target, updates]` |
| 5 gossip | `[1, 5, updates]` |
| 6 push_pull | `[1, 6, reply, records]` |
| 7 leave | `[1, 7, left]` |

- ping: a direct probe; `suspected_inc` is set when the prober holds the target suspect at
  that incarnation (buddy system: the target refutes at once).
- ack: the answer to a ping; `incarnation` is the responder's, after any refutation.
- ping_req: probe `target` for me (indirect probe); indirect_ack: `target` answered the probe
  made on the requester's behalf; nack: it did not, in time (Lifeguard: the helper is alive).
- gossip: a gossip round's push of pending updates.
- push_pull: a full state exchange (join, anti-entropy, reconnect); `reply` false asks for
  the receiver's state in return. At most MAX_PUSH_PULL_BYTES; every other kind at most
  MAX_MESSAGE_BYTES with at most MAX_UPDATES piggybacked updates.
- leave: the sender's own signed `left`.

| update | array |
|---|---|
| alive | `[0, node_id, incarnation, region, [addrs], joined_at_ms, signature]` |
| suspect | `[1, node_id, incarnation, from_id]` |
| dead | `[2, node_id, incarnation, from_id]` |
| left | `[3, node_id, incarnation, signature]` |

`alive` and `left` carry the subject's own signature over `signed_bytes()`: canonical CBOR of
`["dcloud/swim/alive/v1", node_id, incarnation, region, [addrs], joined_at_ms]` or
`["dcloud/swim/left/v1", node_id, incarnation]`; nobody else can produce them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from node.codec import DecodeError, pack, to_cbor, unpack

WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024  # every kind but push_pull
MAX_PUSH_PULL_BYTES = 4 * 1024 * 1024
MAX_FRAME_BYTES = MAX_PUSH_PULL_BYTES  # what a transport must accept for one SWIM message
MAX_UPDATES = 64  # piggybacked on one message
MAX_MEMBERS = 4096
MAX_RECORDS = 2 * MAX_MEMBERS  # a push_pull holds an alive and at most one other per member
MAX_ID_LEN = 128
MAX_REGION_LEN = 64
MAX_ADDRS = 8
MAX_ADDR_LEN = 256
MAX_SIGNATURE_LEN = 128
MAX_UINT = 2**63 - 1
MAX_SEQ = 2**32 - 1

ALIVE_DOMAIN = "dcloud/swim/alive/v1"
LEFT_DOMAIN = "dcloud/swim/left/v1"

_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_REGION = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ADDR = re.compile(r"[\x21-\x7e]{1,256}")


class Kind(IntEnum):
    PING = 0
    ACK = 1
    PING_REQ = 2
    INDIRECT_ACK = 3
    NACK = 4
    GOSSIP = 5
    PUSH_PULL = 6
    LEAVE = 7


class UpdateKind(IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


# ---- field checks ----------------------------------------------------------------------------


def is_node_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def is_region(value: object) -> bool:
    return isinstance(value, str) and _REGION.fullmatch(value) is not None


def is_addr(value: object) -> bool:
    return isinstance(value, str) and _ADDR.fullmatch(value) is not None


def _uint(raw: Any, name: str, limit: int = MAX_UINT) -> int:
    if type(raw) is not int or not 0 <= raw <= limit:
        raise DecodeError(f"{name} must be an integer in [0, {limit}]")
    return raw


def _node_id(raw: Any, name: str) -> str:
    if not is_node_id(raw):
        raise DecodeError(f"{name} must be a node id (1-{MAX_ID_LEN} of [A-Za-z0-9._:-])")
    return str(raw)


def _region(raw: Any) -> str:
    if not is_region(raw):
        raise DecodeError(f"region must be 1-{MAX_REGION_LEN} of [A-Za-z0-9._-]")
    return str(raw)


def _addrs(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_ADDRS or not all(is_addr(a) for a in raw):
        raise DecodeError(f"addrs must be at most {MAX_ADDRS} printable strings of at most "
                          f"{MAX_ADDR_LEN} characters")
    return tuple(raw)


def _signature(raw: Any) -> bytes:
    if not isinstance(raw, bytes) or not 0 < len(raw) <= MAX_SIGNATURE_LEN:
        raise DecodeError(f"signature must be 1-{MAX_SIGNATURE_LEN} bytes")
    return raw


def _array(raw: Any, length: int, name: str) -> list[Any]:
    if not isinstance(raw, list) or len(raw) != length:
        raise DecodeError(f"{name} must be an array of {length} items")
    return raw


def check_alive_fields(node_id: str, incarnation: int, region: str, addrs: tuple[str, ...],
                       joined_at_ms: int) -> None:
    """Raise ValueError if a member's own description would not pass the wire checks."""
    if not is_node_id(node_id):
        raise ValueError(f"node id {node_id!r} is not 1-{MAX_ID_LEN} of [A-Za-z0-9._:-]")
    if not is_region(region):
        raise ValueError(f"region {region!r} is not 1-{MAX_REGION_LEN} of [A-Za-z0-9._-]")
    if len(addrs) > MAX_ADDRS or not all(is_addr(a) for a in addrs):
        raise ValueError(f"addrs {addrs!r}: at most {MAX_ADDRS} printable strings of at most "
                         f"{MAX_ADDR_LEN} characters")
    for name, value in (("incarnation", incarnation), ("joined_at_ms", joined_at_ms)):
        if not 0 <= value <= MAX_UINT:
            raise ValueError(f"{name} {value} out of range")


# ---- membership updates ----------------------------------------------------------------------


@dataclass(frozen=True)
class Alive:
    """The subject is alive at `incarnation`; signed by the subject itself."""

    node_id: str
    incarnation: int
    region: str
    addrs: tuple[str, ...]
    joined_at_ms: int
    signature: bytes

    @staticmethod
    def signed_bytes_of(node_id: str, incarnation: int, region: str, addrs: tuple[str, ...],
                        joined_at_ms: int) -> bytes:
        return to_cbor([ALIVE_DOMAIN, node_id, incarnation, region, list(addrs), joined_at_ms])

    @classmethod
    def signed(cls, sign: Callable[[bytes], bytes], node_id: str, incarnation: int, region: str,
               addrs: tuple[str, ...], joined_at_ms: int) -> Alive:
        body = cls.signed_bytes_of(node_id, incarnation, region, addrs, joined_at_ms)
        return cls(node_id, incarnation, region, addrs, joined_at_ms, sign(body))

    def signed_bytes(self) -> bytes:
        return self.signed_bytes_of(self.node_id, self.incarnation, self.region, self.addrs,
                                    self.joined_at_ms)

    def to_wire(self) -> list[Any]:
        return [UpdateKind.ALIVE, self.node_id, self.incarnation, self.region,
                list(self.addrs), self.joined_at_ms, self.signature]


@dataclass(frozen=True)
class Suspect:
    """`from_id` suspects the subject at `incarnation` (a claim, not signed)."""

    node_id: str
    incarnation: int
    from_id: str

    def to_wire(self) -> list[Any]:
        return [UpdateKind.SUSPECT, self.node_id, self.incarnation, self.from_id]


@dataclass(frozen=True)
class Dead:
    """`from_id` declared the subject dead at `incarnation` (a claim, not signed)."""

    node_id: str
    incarnation: int
    from_id: str

    def to_wire(self) -> list[Any]:
        return [UpdateKind.DEAD, self.node_id, self.incarnation, self.from_id]


@dataclass(frozen=True)
class Left:
    """The subject left gracefully at `incarnation`; signed by the subject itself."""

    node_id: str
    incarnation: int
    signature: bytes

    @staticmethod
    def signed_bytes_of(node_id: str, incarnation: int) -> bytes:
        return to_cbor([LEFT_DOMAIN, node_id, incarnation])

    @classmethod
    def signed(cls, sign: Callable[[bytes], bytes], node_id: str, incarnation: int) -> Left:
        return cls(node_id, incarnation, sign(cls.signed_bytes_of(node_id, incarnation)))

    def signed_bytes(self) -> bytes:
        return self.signed_bytes_of(self.node_id, self.incarnation)

    def to_wire(self) -> list[Any]:
        return [UpdateKind.LEFT, self.node_id, self.incarnation, self.signature]


Update = Alive | Suspect | Dead | Left


def update_from_wire(raw: Any) -> Update:
    if not isinstance(raw, list) or not raw:
        raise DecodeError("an update must be a non-empty array")
    kind = raw[0]
    if kind == UpdateKind.ALIVE and type(kind) is int:
        _, node_id, inc, region, addrs, joined, sig = _array(raw, 7, "alive")
        return Alive(_node_id(node_id, "alive node_id"), _uint(inc, "incarnation"),
                     _region(region), _addrs(addrs), _uint(joined, "joined_at_ms"),
                     _signature(sig))
    if kind in (UpdateKind.SUSPECT, UpdateKind.DEAD) and type(kind) is int:
        _, node_id, inc, from_id = _array(raw, 4, "suspect/dead")
        cls = Suspect if kind == UpdateKind.SUSPECT else Dead
        return cls(_node_id(node_id, "node_id"), _uint(inc, "incarnation"),
                   _node_id(from_id, "from_id"))
    if kind == UpdateKind.LEFT and type(kind) is int:
        _, node_id, inc, sig = _array(raw, 4, "left")
        return Left(_node_id(node_id, "left node_id"), _uint(inc, "incarnation"),
                    _signature(sig))
    raise DecodeError(f"unknown update kind {kind!r}")


def _updates(raw: Any, limit: int) -> tuple[Update, ...]:
    if not isinstance(raw, list) or len(raw) > limit:
        raise DecodeError(f"updates must be an array of at most {limit}")
    return tuple(update_from_wire(u) for u in raw)


# ---- messages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    seq: int
    target: str
    suspected_inc: int | None = None
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True)
class Ack:
    seq: int
    incarnation: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True)
class PingReq:
    seq: int
    target: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True)
class IndirectAck:
    seq: int
    target: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True)
class Nack:
    seq: int
    target: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True)
class Gossip:
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True)
class PushPull:
    reply: bool
    records: tuple[Update, ...] = ()


@dataclass(frozen=True)
class Leave:
    left: Left


Message = Ping | Ack | PingReq | IndirectAck | Nack | Gossip | PushPull | Leave


def _wire_updates(updates: tuple[Update, ...]) -> list[Any]:
    return [u.to_wire() for u in updates]


def encode(msg: Message) -> bytes:
    v = WIRE_VERSION
    body: list[Any]
    match msg:
        case Ping():
            body = [v, Kind.PING, msg.seq, msg.target, msg.suspected_inc,
                    _wire_updates(msg.updates)]
        case Ack():
            body = [v, Kind.ACK, msg.seq, msg.incarnation, _wire_updates(msg.updates)]
        case PingReq():
            body = [v, Kind.PING_REQ, msg.seq, msg.target, _wire_updates(msg.updates)]
        case IndirectAck():
            body = [v, Kind.INDIRECT_ACK, msg.seq, msg.target, _wire_updates(msg.updates)]
        case Nack():
            body = [v, Kind.NACK, msg.seq, msg.target, _wire_updates(msg.updates)]
        case Gossip():
            body = [v, Kind.GOSSIP, _wire_updates(msg.updates)]
        case PushPull():
            body = [v, Kind.PUSH_PULL, msg.reply, _wire_updates(msg.records)]
        case Leave():
            body = [v, Kind.LEAVE, msg.left.to_wire()]
        case _:  # an update is not a message: it rides in a gossip
            raise TypeError(f"not a SWIM message: {type(msg).__name__}")
    return pack(body)


def encoded_size(update: Update) -> int:
    return len(pack(update.to_wire()))


def _looks_like_push_pull(data: bytes) -> bool:
    """Our encoder writes a fixarray, the version and the kind as positive fixints."""
    return len(data) >= 3 and 0x90 <= data[0] <= 0x9F and data[1] == WIRE_VERSION \
        and data[2] == Kind.PUSH_PULL


def decode(data: bytes) -> Message:
    """Decode and validate one message from a peer; DecodeError for anything malformed."""
    if len(data) > MAX_MESSAGE_BYTES and not _looks_like_push_pull(data):
        raise DecodeError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    raw = unpack(data, max_bytes=MAX_PUSH_PULL_BYTES, max_items=MAX_RECORDS)
    if not isinstance(raw, list) or len(raw) < 3:
        raise DecodeError("a SWIM message must be an array [version, kind, ...]")
    if type(raw[0]) is not int or raw[0] != WIRE_VERSION:
        raise DecodeError(f"unsupported SWIM wire version {raw[0]!r}")
    kind = raw[1]
    if type(kind) is not int:
        raise DecodeError("message kind must be an integer")
    if kind == Kind.PING:
        _, _, seq, target, suspected, ups = _array(raw, 6, "ping")
        return Ping(_uint(seq, "seq", MAX_SEQ), _node_id(target, "target"),
                    None if suspected is None else _uint(suspected, "suspected_inc"),
                    _updates(ups, MAX_UPDATES))
    if kind == Kind.ACK:
        _, _, seq, inc, ups = _array(raw, 5, "ack")
        return Ack(_uint(seq, "seq", MAX_SEQ), _uint(inc, "incarnation"),
                   _updates(ups, MAX_UPDATES))
    if kind in (Kind.PING_REQ, Kind.INDIRECT_ACK, Kind.NACK):
        _, _, seq, target, ups = _array(raw, 5, Kind(kind).name.lower())
        fields = (_uint(seq, "seq", MAX_SEQ), _node_id(target, "target"),
                  _updates(ups, MAX_UPDATES))
        if kind == Kind.PING_REQ:
            return PingReq(*fields)
        return IndirectAck(*fields) if kind == Kind.INDIRECT_ACK else Nack(*fields)
    if kind == Kind.GOSSIP:
        _, _, ups = _array(raw, 3, "gossip")
        return Gossip(_updates(ups, MAX_UPDATES))
    if kind == Kind.PUSH_PULL:
        _, _, reply, records = _array(raw, 4, "push_pull")
        if not isinstance(reply, bool):
            raise DecodeError("push_pull reply must be a boolean")
        return PushPull(reply, _updates(records, MAX_RECORDS))
    if kind == Kind.LEAVE:
        _, _, left = _array(raw, 3, "leave")
        update = update_from_wire(left)
        if not isinstance(update, Left):
            raise DecodeError("leave must carry a left update")
        return Leave(update)
    raise DecodeError(f"unknown message kind {kind!r}")
