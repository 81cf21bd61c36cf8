"""Gossipsub RPCs carry the sender's signed peer record: verified once per peer and record
bytes (node.p2p.host), not on every RPC; a bad or foreign record is still refused."""

from __future__ import annotations

import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.pb import rpc_pb2

from node.p2p import host as p2p_host


def rpc_with_record(record: bytes) -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC()
    rpc.senderRecord = record
    return rpc


async def test_a_record_is_verified_once_then_accepted_again_until_it_changes(
        monkeypatch) -> None:
    sender, receiver, other = (new_host(key_pair=create_new_key_pair()) for _ in range(3))
    record, _ = env_to_send_in_RPC(sender)
    checked: list[bytes] = []
    real = p2p_host._consume_signed_record

    def spy(msg, host, peer_id):
        checked.append(msg.senderRecord)
        return real(msg, host, peer_id)

    monkeypatch.setattr(p2p_host, "_consume_signed_record", spy)
    sender_id = sender.get_id()
    for _ in range(3):
        assert p2p_host._consume_signed_record_once(rpc_with_record(record), receiver, sender_id)
    assert checked == [record]  # verified the first time only

    # Someone else's record under the sender's id, or garbage: refused, every time.
    foreign, _ = env_to_send_in_RPC(other)
    for bad in (foreign, b"\x01garbage"):
        for _ in range(2):
            assert not p2p_host._consume_signed_record_once(rpc_with_record(bad), receiver,
                                                            sender_id)
    assert checked.count(foreign) == 2
    # An RPC without a record is fine, and a record is checked again after RECORD_RECHECK_S.
    assert p2p_host._consume_signed_record_once(rpc_pb2.RPC(), receiver, sender_id)
    monkeypatch.setattr(p2p_host, "RECORD_RECHECK_S", 0.0)
    await trio.sleep(0.01)
    assert p2p_host._consume_signed_record_once(rpc_with_record(record), receiver, sender_id)
    assert checked.count(record) == 2


async def test_our_own_record_is_built_once_per_ttl(monkeypatch) -> None:
    host = new_host(key_pair=create_new_key_pair())
    calls = []
    real = p2p_host._own_record

    def spy(h):
        calls.append(h)
        return real(h)

    monkeypatch.setattr(p2p_host, "_own_record", spy)
    first, _ = p2p_host._own_record_cached(host)
    assert [p2p_host._own_record_cached(host)[0] for _ in range(5)] == [first] * 5
    assert len(calls) == 1
    monkeypatch.setattr(p2p_host, "OWN_RECORD_TTL_S", 0.0)
    await trio.sleep(0.01)
    assert p2p_host._own_record_cached(host)[0] == first  # same addresses: same record
    assert len(calls) == 2
