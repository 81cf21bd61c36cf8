"""The ledger through its CLI and HTTP forms on a one-validator dev node: account keys, a
transfer signed by the CLI, the JSON form of POST /txs, and the latest block."""

from __future__ import annotations

import json
import urllib.request

import pytest

from node.crypto import read_key_file
from node.ledger.tx import Transfer
from tests.integration.conftest import cli, http_get, wait_for

pytestmark = pytest.mark.slow


def test_keys_transfers_json_txs_and_latest_block(node_factory):
    node = node_factory().start()
    node.wait_healthy()
    home = str(node.home)

    alice = cli("keys", "add", "alice", "--home", home).stdout.strip()
    assert len(alice) == 40 and int(alice, 16) >= 0
    listed = json.loads(cli("keys", "list", "--home", home, "--json").stdout)
    assert {"name": "alice", "address": alice} in listed
    assert {r["name"] for r in listed} >= {"alice", "default"}
    again = cli("keys", "add", "alice", "--home", home, check=False)
    assert again.returncode == 2 and "alice" in again.stderr  # never overwritten

    cli("tx", "transfer", "--home", home, "--from", "default", "--to", alice, "--amount", "700",
        "--fee", "1", "--wait", timeout=60)
    account = json.loads(cli("query", "account", alice, "--home", home, "--json").stdout)
    assert account["balance"] == 700

    # The JSON form of a signed transfer, from alice back to default.
    chain_id = node.status()["chain"]["chain_id"]
    default = read_key_file(node.home / "keys" / "accounts" / "default.json")
    alice_key = read_key_file(node.home / "keys" / "accounts" / "alice.json")
    tx = Transfer.signed(alice_key, chain_id, bytes.fromhex(default.address), 200, 1, 0)
    req = urllib.request.Request(f"{node.url}/txs?wait=commit", method="POST",
                                 data=json.dumps(tx.to_json()).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        done = json.loads(resp.read())
    assert resp.status == 200 and done["ok"] is True and done["height"] >= 1
    assert http_get(f"{node.url}/accounts/{alice}")[1]["balance"] == 700 - 201

    latest = wait_for(lambda: http_get(f"{node.url}/blocks/latest")[1], 10, "the latest block")
    assert latest["header"]["height"] >= done["height"]
    block = json.loads(cli("query", "block", str(done["height"]), "--home", home,
                           "--json").stdout)
    assert tx.hash in block["txs"]
