"""Peer-to-peer networking: the only package that imports libp2p.

Import this package (not libp2p) from the rest of the node: it sets the environment
py-libp2p reads at import time before libp2p is loaded.
"""

import os

# yamux sends a window update per read unless this is off before import (notes/libp2p.md, trap 7).
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")

from node.p2p.addrs import (  # noqa: E402
    BadAddressError,
    PeerAddr,
    parse_listen_addr,
    parse_peer_addr,
    probe_tcp_listen,
)
from node.p2p.host import DialError, Message, P2PNetwork, P2PStartError, peer_id_of  # noqa: E402
from node.p2p.peers import PeerSnapshot  # noqa: E402
from node.p2p.stream import FrameTooLarge, MalformedFrame, Stream, StreamError  # noqa: E402

__all__ = [
    "BadAddressError", "DialError", "FrameTooLarge", "MalformedFrame", "Message", "P2PNetwork",
    "P2PStartError", "PeerAddr", "PeerSnapshot", "Stream", "StreamError", "parse_listen_addr",
    "parse_peer_addr", "peer_id_of", "probe_tcp_listen",
]
