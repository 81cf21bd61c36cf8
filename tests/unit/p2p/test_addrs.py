"""node.p2p.addrs: multiaddrs an operator types (bootstrap peers, listen addresses)."""

from __future__ import annotations

import pytest

from node.crypto import Ed25519Key
from node.p2p import BadAddressError, parse_listen_addr, parse_peer_addr, peer_id_of
from node.p2p.addrs import PeerAddr


@pytest.fixture(scope="module")
def peer_id() -> str:
    return peer_id_of(Ed25519Key.generate())


def test_peer_id_of_is_stable_for_a_key():
    key = Ed25519Key(bytes(range(32)))
    assert peer_id_of(key) == peer_id_of(Ed25519Key(bytes(range(32))))
    assert peer_id_of(key).startswith("12D3KooW")  # identity-hashed ed25519 key
    assert peer_id_of(key) != peer_id_of(Ed25519Key.generate())


@pytest.mark.parametrize(
    "prefix",
    ["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4001", "/dns4/node.example/tcp/26656",
     "/dns/node.example/tcp/1"],
)
def test_parse_peer_addr_accepts_dialable_addresses(peer_id, prefix):
    text = f"{prefix}/p2p/{peer_id}"
    parsed = parse_peer_addr(text)
    assert parsed == PeerAddr(peer_id=peer_id, addr=text)
    assert parsed.to_peer_info().peer_id.to_base58() == peer_id


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("/ip4/127.0.0.1/tcp/4001", "/p2p/<peer-id>"),
        ("/ip4/127.0.0.1/p2p/{pid}", "/tcp/<port>"),
        ("/ip4/127.0.0.1/udp/4001/p2p/{pid}", "/tcp/<port>"),
        ("/p2p/{pid}", "must start with"),
        ("garbage", "malformed"),
        ("", "/p2p/<peer-id>"),
        ("127.0.0.1:4001", "malformed"),
        ("/ip4/127.0.0.1/tcp/4001/p2p/notapeerid", "4001/p2p/notapeerid"),
        ("/ip4/127.0.0.1/tcp/4001/p2p/{pid_truncated}", "/ip4/127.0.0.1/tcp/4001/p2p/"),
        ("/ip4/300.0.0.1/tcp/4001/p2p/{pid}", "malformed"),
        ("/ip4/127.0.0.1/tcp/99999/p2p/{pid}", "malformed"),
    ],
)
def test_parse_peer_addr_rejects(peer_id, template, message):
    text = template.format(pid=peer_id, pid_truncated=peer_id[:-4])
    with pytest.raises(BadAddressError) as excinfo:
        parse_peer_addr(text)
    assert message in str(excinfo.value)
    assert repr(text) in str(excinfo.value)  # the operator sees what they typed


def test_bad_address_error_is_a_value_error():
    assert issubclass(BadAddressError, ValueError)


@pytest.mark.parametrize(
    "text", ["/ip4/127.0.0.1/tcp/0", "/ip4/0.0.0.0/tcp/26656", "/ip6/::/tcp/26656"]
)
def test_parse_listen_addr_accepts_ip_tcp(text):
    assert str(parse_listen_addr(text)) == text


@pytest.mark.parametrize(
    "text",
    ["/ip4/1.2.3.4/udp/1", "garbage", "", "/ip4/127.0.0.1", "/dns4/node.example/tcp/1",
     "/tcp/1", "/ip4/1.2.3.4/tcp/70000", "/ip4/999.1.1.1/tcp/1"],
)
def test_parse_listen_addr_rejects(text):
    with pytest.raises(BadAddressError) as excinfo:
        parse_listen_addr(text)
    assert repr(text) in str(excinfo.value)
