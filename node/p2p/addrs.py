"""Multiaddr parsing and checks, with errors an operator can act on."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import multiaddr
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr


class BadAddressError(ValueError):
    """A multiaddr is malformed or lacks a part it needs."""


@dataclass(frozen=True)
class PeerAddr:
    """A dialable peer: its id and one multiaddr ending in /p2p/<id>."""

    peer_id: str
    addr: str

    def to_peer_info(self) -> PeerInfo:
        return info_from_p2p_addr(multiaddr.Multiaddr(self.addr))


def probe_tcp_listen(ip: str, port: int) -> None:
    """Bind (ip, port) once and let go: raises OSError if it cannot be listened on.

    libp2p's listener sets SO_REUSEPORT, so a second node could silently share a port, and
    a listener that fails after others have started leaves a half-started node; this probe
    binds without SO_REUSEPORT, before anything starts.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((ip, port))


def parse_listen_addr(text: str) -> multiaddr.Multiaddr:
    try:
        maddr = multiaddr.Multiaddr(text)
    except Exception as exc:  # the multiaddr package raises several unrelated types
        raise BadAddressError(f"malformed listen multiaddr {text!r}: {exc}") from exc
    names = [p.name for p in maddr.protocols()]
    if len(names) < 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise BadAddressError(
            f"listen multiaddr {text!r} must look like /ip4/<addr>/tcp/<port>"
        )
    return maddr


def parse_peer_addr(text: str) -> PeerAddr:
    """Parse a bootstrap address such as /ip4/127.0.0.1/tcp/26656/p2p/12D3Koo..."""
    try:
        maddr = multiaddr.Multiaddr(text)
    except Exception as exc:
        raise BadAddressError(f"malformed multiaddr {text!r}: {exc}") from exc
    names = [p.name for p in maddr.protocols()]
    if "p2p" not in names:
        raise BadAddressError(f"multiaddr {text!r} must end in /p2p/<peer-id>")
    if not names or names[0] not in ("ip4", "ip6", "dns", "dns4", "dns6"):
        raise BadAddressError(f"multiaddr {text!r} must start with /ip4, /ip6 or /dns")
    if "tcp" not in names:
        raise BadAddressError(f"multiaddr {text!r} has no /tcp/<port> part")
    try:
        info = info_from_p2p_addr(maddr)
    except Exception as exc:
        raise BadAddressError(f"multiaddr {text!r} has a bad peer id: {exc}") from exc
    return PeerAddr(peer_id=info.peer_id.to_base58(), addr=str(maddr))


def public_key_of(peer_id: str) -> bytes | None:
    """The raw ed25519 public key embedded in a peer id (None for other or malformed ids).

    An ed25519 peer id is the identity multihash of the protobuf-encoded public key, so a
    signature by a node can be checked from its id alone.
    """
    from libp2p.crypto.keys import KeyType
    from libp2p.peer.id import ID

    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= 128:
        return None
    try:
        key = ID.from_base58(peer_id).extract_public_key()
    except Exception:
        return None
    if key is None or key.get_type() != KeyType.Ed25519:
        return None
    raw = key.to_bytes()
    return raw if len(raw) == 32 else None


def verify_by_node_id(node_id: str, message: bytes, signature: bytes) -> bool:
    """Is `signature` the node's ed25519 signature of `message` (key taken from its id)?"""
    from node.crypto import verify

    key = public_key_of(node_id)
    return key is not None and verify(key, message, signature)
