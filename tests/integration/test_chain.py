"""The BFT chain on real processes: blocks, transfers, crashes, halts, catch-up, no double-sign."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path

import cbor2
import pytest

from node.crypto import read_key_file
from node.ledger.tx import Transfer
from tests.integration.conftest import cli, http_get, metric, pid_alive, wait_for

pytestmark = pytest.mark.slow


def chain(member: dict) -> dict | None:
    code, doc = http_get(f"{member['http_url']}/status")
    return doc["chain"] if code == 200 else None


def height(member: dict) -> int:
    c = chain(member)
    return c["height"] if c else -1


def block_id(member: dict, h: int) -> str | None:
    code, doc = http_get(f"{member['http_url']}/blocks/{h}")
    return doc["id"] if code == 200 else None


def assert_no_fork(members: list[dict], up_to: int) -> None:
    for h in range(1, up_to + 1):
        ids = {block_id(m, h) for m in members} - {None}
        assert len(ids) <= 1, f"fork at height {h}: {ids}"


def wait_height(members: list[dict], target: int, timeout: float) -> None:
    wait_for(lambda: all(height(m) >= target for m in members), timeout,
             f"height {target} on {[m['name'] for m in members]}")


def post_tx(member: dict, tx: bytes, wait: bool = False) -> tuple[int, dict]:
    url = f"{member['http_url']}/txs" + ("?wait=commit" if wait else "")
    req = urllib.request.Request(url, data=tx, method="POST",
                                 headers={"Content-Type": "application/cbor"})
    try:
        with urllib.request.urlopen(req, timeout=40) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post_batch(member: dict, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(f"{member['http_url']}/txs/batch", data=body, method="POST",
                                 headers={"Content-Type": "application/cbor"})
    try:
        with urllib.request.urlopen(req, timeout=40) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start_member(member: dict) -> None:
    """Restart one testnet node the way `testnet up` does, keeping its home."""
    from node.testnet import start_process

    member["pid"] = start_process(member["home"])


def test_chain_commits_transfers_and_rejects_bad_ones(testnet_factory):
    net = testnet_factory(4)
    net.up()
    members = net.members()
    wait_height(members, 2, 60)
    c = chain(members[0])
    assert len(c["validators"]) == 4 and c["voting_power"] == 10 and not c["catching_up"]

    # Idle, empty blocks come once per empty_block_interval_ms (5 s), not every
    # timeout_commit_ms (100 ms): each block's time is stamped by its proposer after the wait.
    wait_height(members, 5, 60)
    times = [http_get(f"{members[0]['http_url']}/blocks/{h}")[1]["header"]["time_ms"]
             for h in (2, 3, 4, 5)]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(g >= 4000 for g in gaps), f"empty blocks {gaps} ms apart"

    sender_home = Path(members[0]["home"])
    sender = read_key_file(sender_home / "keys" / "accounts" / "default.json")
    recipient = read_key_file(Path(members[1]["home"]) / "keys" / "accounts" / "default.json")
    before = http_get(f"{members[2]['http_url']}/accounts/{recipient.address}")[1]["balance"]

    out = cli("tx", "transfer", "--home", str(sender_home), "--to", recipient.address,
              "--amount", "1234", "--fee", "5", "--wait").stdout
    assert "committed at height" in out and ": ok" in out
    tx_height = int(out.split("committed at height ")[1].split(":")[0])
    wait_height(members, tx_height, 30)
    for m in members:  # every node applied it
        acct = http_get(f"{m['http_url']}/accounts/{recipient.address}")[1]
        assert acct["balance"] == before + 1234
        sent = http_get(f"{m['http_url']}/accounts/{sender.address}")[1]
        assert sent["nonce"] == 1
    query = json.loads(cli("query", "account", recipient.address, "--url",
                           members[3]["http_url"], "--json").stdout)
    assert query["balance"] == before + 1234
    block = json.loads(cli("query", "block", str(tx_height), "--url", members[2]["http_url"],
                           "--json").stdout)
    assert len(block["txs"]) >= 1 and len(block["commit"]["signatures"]) >= 3

    chain_id = c["chain_id"]
    good = Transfer.signed(sender, chain_id, recipient.address, 1, 0, 1)
    cases = {
        "bad_signature": Transfer(chain_id, good.sender, good.to, 2, 0, 1, b"\1" * 64).encode(),
        "wrong_chain": Transfer.signed(sender, "other-chain", recipient.address, 1, 0, 1).encode(),
        "bad_nonce": Transfer.signed(sender, chain_id, recipient.address, 1, 0, 0).encode(),
        "insufficient_funds": Transfer.signed(sender, chain_id, recipient.address,
                                              10**18, 0, 1).encode(),
        "bad_encoding": b"\xff\x00garbage",
    }
    for code, tx in cases.items():
        status, doc = post_tx(members[1], tx)
        assert status == 400 and doc["code"] == code, (code, status, doc)
    status, doc = post_tx(members[1], b"\x00" * (64 * 1024 + 100))
    assert status in (400, 413) and doc["code"] == "too_large"

    # A valid one still goes through on any node.
    status, doc = post_tx(members[3], good.encode(), wait=True)
    assert status == 200 and doc["ok"] and doc["height"] > tx_height
    # node0 may apply that block a moment after node3 answered.
    found = wait_for(lambda: http_get(f"{members[0]['http_url']}/txs/{good.hash}")[1]
                     if height(members[0]) >= doc["height"] else None, 15, "node0 to commit it")
    assert found["height"] == doc["height"]

    # A batch: each tx admitted or refused on its own, in order (nonces 2, 3, then a gap).
    batch = [Transfer.signed(sender, chain_id, recipient.address, 1, 0, n).encode()
             for n in (2, 3, 5)] + [cases["bad_signature"]]
    status, doc = post_batch(members[2], cbor2.dumps(batch))
    assert status == 202 and doc["accepted"] == 2 and doc["rejected"] == 2, doc
    assert [r["status"] for r in doc["results"]] == ["pending", "pending", "rejected",
                                                     "rejected"]
    assert [r.get("code") for r in doc["results"][2:]] == ["bad_nonce", "bad_signature"]
    last = doc["results"][1]["hash"]
    wait_for(lambda: http_get(f"{members[0]['http_url']}/txs/{last}")[1].get("status")
             == "committed", 30, "the batch's second tx to commit")
    for body, want in [(cbor2.dumps([]), 400), (cbor2.dumps([1, 2]), 400),
                       (b"\xff", 400), (cbor2.dumps([b"x"] * 1001), 400)]:
        status, doc = post_batch(members[2], body)
        assert status == want and doc["code"] == "bad_encoding", (status, doc)
    assert_no_fork(members, height(members[0]))


def test_crash_halt_resume_and_block_sync(testnet_factory):
    net = testnet_factory(4)
    net.up()
    members = net.members()
    wait_height(members, 2, 60)

    # kill -9 one validator of four: the other three keep committing.
    os.kill(members[3]["pid"], signal.SIGKILL)
    h = max(height(m) for m in members[:3])
    wait_height(members[:3], h + 3, 60)

    # kill a second one: two of four hold only half the power, so the chain halts.
    os.kill(members[2]["pid"], signal.SIGKILL)
    time.sleep(3)
    halted = max(height(m) for m in members[:2])
    time.sleep(6)
    assert max(height(m) for m in members[:2]) <= halted + 1
    stuck = max(height(m) for m in members[:2])
    assert_no_fork(members[:2], stuck)

    # One returns: three of four again, and the chain resumes.
    start_member(members[2])
    wait_height(members[:3], stuck + 3, 90)
    assert_no_fork(members[:3], stuck + 3)

    # The fourth comes back with its data wiped: block sync brings it to the others' height.
    shutil.rmtree(Path(members[3]["home"]) / "data")
    start_member(members[3])
    target = max(height(m) for m in members[:3])
    wait_height([members[3]], target, 90)
    assert_no_fork(members, target)
    wait_for(lambda: chain(members[3]) and not chain(members[3])["catching_up"], 30,
             "node3 to leave catching_up")
    for m in members:
        if not pid_alive(m["pid"]):
            start_member(m)
    (net.directory / "testnet.json").write_text(json.dumps(members))


async def test_validators_killed_mid_round_never_double_sign(testnet_factory):
    import trio

    from node.consensus import messages
    from tests.integration.test_bad_peers import _client

    net = testnet_factory(4)
    await trio.to_thread.run_sync(net.up)
    members = net.members()
    await trio.to_thread.run_sync(wait_height, members, 2, 60)
    chain_id = (await trio.to_thread.run_sync(chain, members[0]))["chain_id"]

    # A spy on the consensus topic records every vote that goes over the wire, so that a
    # second, different vote for one (validator, height, round, type) cannot go unseen.
    spy = _client(members[1]["p2p_addr"])
    on_wire: dict[tuple[bytes, int, int, int], set[bytes | None]] = {}

    async def record_votes() -> None:
        async for msg in spy.subscribe(messages.consensus_topic(chain_id)):
            try:
                decoded = messages.decode(msg.data)
            except Exception:
                continue
            if isinstance(decoded, messages.VoteMsg):
                v = decoded.vote
                on_wire.setdefault((v.validator, v.height, v.round, int(v.type)),
                                   set()).add(v.block_id)

    def kill_and_restart() -> int:
        for i in range(6):  # kill -9 and restart validators at arbitrary moments
            victim = members[i % 4]
            time.sleep(0.7 + 0.37 * i)
            os.kill(victim["pid"], signal.SIGKILL)
            time.sleep(0.3)
            start_member(victim)
        (net.directory / "testnet.json").write_text(json.dumps(members))
        final = max(height(m) for m in members) + 2
        wait_height(members, final, 120)
        return final

    async with trio.open_nursery() as nursery:
        await nursery.start(spy.run)
        nursery.start_soon(record_votes)
        final = await trio.to_thread.run_sync(kill_and_restart)
        nursery.cancel_scope.cancel()
    assert_no_fork(members, final)
    conflicting = {k: ids for k, ids in on_wire.items() if len(ids) > 1}
    assert conflicting == {}, conflicting
    assert len({k[0] for k in on_wire}) == 4, "the spy heard every validator vote"
    assert len({k[1] for k in on_wire}) >= final // 2, sorted({k[1] for k in on_wire})

    # Nobody saw an equivocation, and no block carries evidence.
    for m in members:
        assert metric(m, "dcloud_consensus_evidence_total") == 0
    for h in range(1, final + 1):
        doc = http_get(f"{members[0]['http_url']}/blocks/{h}")[1]
        assert doc["evidence"] == []

    # Every precommit a block's commit carries is the one its signer recorded before sending.
    recorded: dict[tuple[str, int, int], bytes] = {}
    for m in members:
        db = sqlite3.connect(Path(m["home"]) / "data" / "chain.db")
        address = read_key_file(Path(m["home"]) / "keys" / "validator_key.json").address
        for h, r, t, sig in db.execute("SELECT height, round, type, signature FROM signed_votes"):
            if t == 2:
                recorded[(address, h, r)] = bytes(sig)
        db.close()
    checked = 0
    for h in range(1, final + 1):
        commit = http_get(f"{members[1]['http_url']}/blocks/{h}")[1]["commit"]
        for s in commit["signatures"]:
            key = (s["validator"], commit["height"], commit["round"])
            assert recorded.get(key) == bytes.fromhex(s["signature"]), key
            checked += 1
    assert checked >= 3 * final


async def test_equivocation_is_detected_gossiped_and_included_as_evidence(testnet_factory):
    import trio

    from node.consensus import messages
    from node.consensus.types import Vote, VoteType
    from tests.integration.test_bad_peers import _client

    net = testnet_factory(4)
    await trio.to_thread.run_sync(net.up)
    members = net.members()
    await trio.to_thread.run_sync(wait_height, members, 1, 60)
    chain_id = (await trio.to_thread.run_sync(chain, members[0]))["chain_id"]
    byzantine = read_key_file(Path(members[3]["home"]) / "keys" / "validator_key.json")
    spy = _client(members[0]["p2p_addr"])
    topic = messages.consensus_topic(chain_id)

    def evidence_blocks() -> list[dict]:
        top = height(members[0])
        found = []
        for h in range(max(1, top - 30), top + 1):
            doc = http_get(f"{members[0]['http_url']}/blocks/{h}")[1]
            found += [e for e in doc.get("evidence", [])]
        return found

    async with trio.open_nursery() as nursery:
        await nursery.start(spy.run)
        found: list[dict] = []
        with trio.fail_after(90):
            while not found:
                # Node3 signs a prevote for some block at the next height; this forged
                # prevote for another block conflicts with it.
                h = await trio.to_thread.run_sync(height, members[0])
                for target in (h + 1, h + 2):
                    forged = Vote.signed(byzantine, chain_id, VoteType.PREVOTE, target, 0,
                                         os.urandom(32))
                    await spy.publish(topic, messages.encode(messages.VoteMsg(forged)))
                await trio.sleep(1.5)
                found = await trio.to_thread.run_sync(evidence_blocks)

        # Garbage, a vote with a bad signature and a vote by a non-validator are dropped
        # and cost the sender score; the chain carries on.
        h = await trio.to_thread.run_sync(height, members[0])
        good = Vote.signed(byzantine, chain_id, VoteType.PREVOTE, h + 1, 0, os.urandom(32))
        bad_sig = Vote(good.type, good.height, good.round, good.block_id, good.validator,
                       bytes(64))
        from node.crypto import Ed25519Key

        outsider = Vote.signed(Ed25519Key.generate(), chain_id, VoteType.PREVOTE, h + 1, 0,
                               None)
        for payload in (b"\xff\xfe garbage", messages.encode(messages.VoteMsg(bad_sig)),
                        messages.encode(messages.VoteMsg(outsider))):
            await spy.publish(topic, payload)

        def spy_score() -> int | None:
            peers = http_get(f"{members[0]['http_url']}/status")[1]["peers"]
            scores = [p["score"] for p in peers if p["peer_id"] == spy.peer_id]
            return scores[0] if scores and scores[0] <= -60 else None

        assert await trio.to_thread.run_sync(wait_for, spy_score, 20, "the spy's score to drop")
        await trio.to_thread.run_sync(wait_height, members, h + 2, 60)
        nursery.cancel_scope.cancel()
    assert {e["validator"] for e in found} == {byzantine.address}
    assert all(e["type"] == "prevote" for e in found)
    detected = [metric(m, "dcloud_consensus_evidence_total") for m in members]
    assert sum(1 for d in detected if d >= 1) >= 3, detected
