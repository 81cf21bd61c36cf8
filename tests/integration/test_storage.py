"""Erasure-coded objects on a 6-process testnet (k=4, m=2), through the CLI and the HTTP API:
put on node0; kill -9 two shard holders and get it byte-identical from another node; the
responsible node repairs the lost shards; a shard corrupted on disk is found and rebuilt; an
interrupted put leaves nothing visible and, after GC, no chunk behind; delete unpins."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import (
    cli,
    http_get,
    http_request,
    metric,
    pid_alive,
    wait_for,
)

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
REPAIR_BOUND_S = 90  # death detected (~15 s) + an audit round (2 s here) + rebuild
GC_BOUND_S = 90  # the 30 s grace, then a GC round


# Fast audits and GC for the test, in every node's config.toml. The grace must outlast a
# put: chunks are pinned only once the object's record exists.
# 4 MiB segments (the default is 8): the 32 MiB objects below are 8 segments, enough that
# every node holds shards of several (the lying node data shards of some).
FAST = ("--set", "storage.audit_interval_s=2", "--set", "storage.gc_interval_s=2",
        "--set", "storage.gc_grace_s=30", "--set", "storage.segment_bytes=4194304")


def start(testnet_factory) -> list[dict]:
    """Six nodes, up and all alive in every node's membership view (placement needs it)."""
    net = testnet_factory(6)
    net.up(120, *FAST)
    members = net.members()
    wait_for(lambda: all(alive_seen_by(m) == 6 for m in members), 30,
             "six alive members on every node")
    return members


def status(member: dict, name: str) -> dict:
    code, doc = http_get(f"{member['http_url']}/objects/{name}/status", timeout=30)
    assert code == 200, doc
    return doc


def storage(member: dict) -> dict:
    return http_get(f"{member['http_url']}/status")[1]["storage"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


def alive_seen_by(member: dict) -> int:
    code, doc = http_get(f"{member['http_url']}/members")
    return sum(x["state"] == "alive" for x in doc["members"]) if code == 200 else -1


def restart_lying(member: dict) -> None:
    """Restart a testnet node, same home, as tests/integration/lying_node.py."""
    os.kill(member["pid"], signal.SIGTERM)
    wait_for(lambda: not pid_alive(member["pid"]), 15, f"{member['name']} to stop")
    root = Path(__file__).resolve().parents[2]
    with open(Path(member["home"]) / "logs" / "stdout.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.integration.lying_node", "start",
                                 "--home", member["home"]], cwd=root, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    member["pid"] = proc.pid


def holders(doc: dict) -> set[str]:
    return {h["node_id"] for seg in doc["segments"] for sh in seg["shards"]
            for h in sh["holders"]}


def fully_healthy(member: dict, name: str) -> dict | None:
    doc = status(member, name)
    return doc if doc["healthy_shards"] == doc["total_shards"] else None


def test_put_lose_two_nodes_get_repair_corruption_and_delete(testnet_factory, tmp_path):
    members = start(testnet_factory)
    node0, node5 = members[0], members[5]
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(32 * MIB))
    digest = sha256_file(data)

    put = json.loads(cli("object", "put", str(data), "--name", "backups/data.bin", "--json",
                         "--url", node0["http_url"], timeout=180).stdout)
    assert put["size"] == 32 * MIB and put["segments"] == 8 and (put["k"], put["m"]) == (4, 2)

    # Every node learns the name (gossip or index sync) and can list it.
    wait_for(lambda: all("backups/data.bin" in cli("object", "ls", "--url", m["http_url"]).stdout
                         for m in members), 30, "every node to list the object")
    doc = wait_for(lambda: fully_healthy(node5, "backups/data.bin"), 30,
                   "every holder to confirm its shards")
    assert doc["healthy_shards"] == doc["total_shards"] == 48
    assert len(holders(doc)) == 6  # k+m distinct nodes hold each segment

    # Every holder announces what it pinned as DHT provider records, and /status says how
    # far it has got: announced + pending = pinned, pending down to 0 once all went out.
    def all_announced() -> list[dict] | None:
        docs = [storage(m) for m in members]
        for d in docs:
            assert d["announced_chunks"] + d["announcements_pending"] == d["pinned_chunks"], d
        return docs if all(d["announcements_pending"] == 0 and d["announced_chunks"] > 0
                           for d in docs) else None
    wait_for(all_announced, 60, "every node to announce its pinned chunks")

    # HEAD: the size and the manifest id, no body.
    req = http.client.HTTPConnection(node5["http_url"].removeprefix("http://"), timeout=60)
    req.request("HEAD", "/objects/backups/data.bin")
    resp = req.getresponse()
    assert resp.status == 200 and resp.read() == b""
    assert resp.getheader("Content-Length") == str(32 * MIB)
    assert resp.getheader("ETag") == f'"{put["manifest_id"]}"'
    assert resp.getheader("X-Dcloud-Encrypted") == "false"
    req.close()

    # A get uses the shard it holds itself (data or parity) and fetches only k-1 others.
    mine = [sh for seg in doc["segments"] for sh in seg["shards"]
            if node5["peer_id"] in {h["node_id"] for h in sh["holders"]}]
    assert len(mine) == 8  # one per segment
    shard_file = Path(node5["home"]) / "data" / "chunks" / mine[0]["chunk_id"][:2] / \
        mine[0]["chunk_id"]
    before = metric(node5, "dcloud_storage_fetched_bytes_total")
    out = tmp_path / "back.bin"
    cli("object", "get", "backups/data.bin", "-o", str(out), "--url", node5["http_url"],
        timeout=180)
    assert sha256_file(out) == digest
    fetched = metric(node5, "dcloud_storage_fetched_bytes_total") - before
    assert fetched == 8 * 3 * shard_file.stat().st_size

    # kill -9 two shard holders (neither node0 nor node5): the object is whole from node5.
    victims = [m for m in members[1:5]][:2]
    for v in victims:
        os.kill(v["pid"], signal.SIGKILL)
    alive = [m for m in members if m not in victims]
    cli("object", "get", "backups/data.bin", "-o", str(out), "--url", node5["http_url"],
        timeout=180)
    assert sha256_file(out) == digest

    # A Range asks only for the segments it covers.
    req = http.client.HTTPConnection(node5["http_url"].removeprefix("http://"), timeout=60)
    req.request("GET", "/objects/backups/data.bin", headers={"Range": "bytes=5000000-5000099"})
    resp = req.getresponse()
    assert resp.status == 206 and resp.getheader("Content-Range") == \
        f"bytes 5000000-5000099/{32 * MIB}"
    with open(data, "rb") as f:
        f.seek(5_000_000)
        assert resp.read() == f.read(100)
    req.close()

    # The responsible node rebuilds the 16 lost shards onto live nodes; everyone takes the
    # repaired manifest.
    repaired = wait_for(lambda: fully_healthy(node5, "backups/data.bin"), REPAIR_BOUND_S,
                        "the lost shards to be repaired")
    assert repaired["manifest_id"] != put["manifest_id"]
    assert not holders(repaired) & {v["peer_id"] for v in victims}

    # Corrupt one shard file on a live holder's disk: scrub drops it, repair puts it back.
    seg = repaired["segments"][3]["shards"][1]
    holder = next(m for m in alive if m["peer_id"] == seg["holders"][0]["node_id"])
    path = Path(holder["home"]) / "data" / "chunks" / seg["chunk_id"][:2] / seg["chunk_id"]
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    wait_for(lambda: path.exists() and sha256_file(path) == seg["chunk_id"], REPAIR_BOUND_S,
             "the corrupted shard to be rebuilt")
    cli("object", "get", "backups/data.bin", "-o", str(out), "--url", alive[1]["http_url"],
        timeout=180)
    assert sha256_file(out) == digest

    # With 4 live nodes a k+m=6 put is refused before anything is written.
    before = [storage(m)["chunks"] for m in alive]
    code, err = http_request("PUT", f"{node0['http_url']}/objects/too-few", b"x" * 1000)
    assert code == 503 and err["code"] == "not_enough_nodes" and err["needed"] == 6
    assert [storage(m)["chunks"] for m in alive] == before

    # Delete through the node that put it: gone everywhere; its chunks are unpinned and GC'd.
    proc = cli("object", "rm", "backups/data.bin", "--url", alive[1]["http_url"], check=False)
    assert proc.returncode != 0 and "put through node" in proc.stderr
    cli("object", "rm", "backups/data.bin", "--url", node0["http_url"])
    wait_for(lambda: all(storage(m)["objects"] == 0 for m in alive), 30,
             "every node to drop the name")
    assert http_get(f"{node5['http_url']}/objects/backups/data.bin")[0] == 404
    wait_for(lambda: all(storage(m)["chunks"] == 0 for m in alive), GC_BOUND_S,
             "GC to remove the deleted object's chunks")


def test_interrupted_puts_leave_nothing_and_bad_requests_are_refused(testnet_factory,
                                                                     tmp_path):
    members = start(testnet_factory)
    node0 = members[0]
    host = node0["http_url"].removeprefix("http://")

    # A client that goes away half-way through its upload.
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.putrequest("PUT", "/objects/half.bin")
    conn.putheader("Content-Length", str(32 * MIB))
    conn.endheaders()
    for _ in range(12):
        conn.send(os.urandom(MIB))
    conn.sock.close()

    # A node killed in the middle of a put it coordinates.
    victim = members[1]
    conn = http.client.HTTPConnection(victim["http_url"].removeprefix("http://"), timeout=30)
    conn.putrequest("PUT", "/objects/killed.bin")
    conn.putheader("Content-Length", str(32 * MIB))
    conn.endheaders()
    for _ in range(12):
        conn.send(os.urandom(MIB))
    os.kill(victim["pid"], signal.SIGKILL)
    conn.close()
    alive = [m for m in members if m is not victim]

    # Neither is visible anywhere, and GC leaves no chunk behind (no unpinned leftovers).
    for m in alive:
        listed = http_get(f"{m['http_url']}/objects")[1]["objects"]
        assert listed == [], (m["name"], listed)
        assert http_get(f"{m['http_url']}/objects/half.bin")[0] == 404
    wait_for(lambda: all(storage(m)["chunks"] == 0 for m in alive), GC_BOUND_S,
             "GC to remove the chunks of the interrupted puts")

    # Bad names, bad coding, oversized bodies, encrypted objects without their key.
    for name in ("..", ".hidden", "a//b", "x%20y"):
        code, err = http_request("PUT", f"{node0['http_url']}/objects/{name}", b"data")
        assert code in (400, 404), (name, code, err)
    code, err = http_request("PUT", f"{node0['http_url']}/objects/ok.bin?k=0", b"data")
    assert code == 400 and err["code"] == "bad_request"
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.putrequest("PUT", "/objects/huge.bin")
    conn.putheader("Content-Length", str(2 * 1024 * MIB))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["code"] == "too_large"
    conn.close()

    key = tmp_path / "object.key"
    cli("object", "keygen", str(key))
    secret = tmp_path / "secret.txt"
    secret.write_bytes(os.urandom(3 * MIB + 5))
    cli("object", "put", str(secret), "--encrypt-key", str(key), "--url", node0["http_url"],
        "--k", "3", "--m", "2", timeout=120)
    code, err = http_get(f"{alive[2]['http_url']}/objects/secret.txt")
    assert code == 403 and err["code"] == "key_required"
    out = tmp_path / "secret.back"
    cli("object", "get", "secret.txt", "-o", str(out), "--decrypt-key", str(key),
        "--url", alive[2]["http_url"], timeout=120)
    assert out.read_bytes() == secret.read_bytes()
    # Storage nodes hold ciphertext only: no shard contains a plaintext block.
    probe = secret.read_bytes()[MIB:MIB + 64]
    for m in alive:
        chunks = Path(m["home"]) / "data" / "chunks"
        for f in chunks.glob("??/*"):
            assert probe not in f.read_bytes()

    # A node that serves corrupted shards: the getter detects every bad one by its hash,
    # penalises the peer, takes other shards and returns the object byte-identical; after
    # a few bad shards the liar is banned and disconnected.
    liar, getter = alive[3], alive[1]
    restart_lying(liar)
    wait_for(lambda: alive_seen_by(node0) == 5 and alive_seen_by(getter) == 5, 60,
             "the restarted node to be alive again")
    data = tmp_path / "lied.bin"
    data.write_bytes(os.urandom(32 * MIB))  # 8 segments: the liar holds data shards of some
    put = json.loads(cli("object", "put", str(data), "--k", "3", "--m", "2", "--json",
                         "--url", node0["http_url"], timeout=180).stdout)
    assert liar["peer_id"] in holders(status(node0, "lied.bin"))
    wait_for(lambda: "lied.bin" in cli("object", "ls", "--url", getter["http_url"]).stdout, 30,
             "the getter to learn the name")
    out = tmp_path / "lied.back"
    for _ in range(3):
        cli("object", "get", "lied.bin", "-o", str(out), "--url", getter["http_url"],
            timeout=180)
        assert sha256_file(out) == sha256_file(data)
        if liar["peer_id"] not in {p["peer_id"] for p in http_get(
                f"{getter['http_url']}/status")[1]["peers"]}:
            break
    assert metric(getter, "dcloud_storage_bad_chunks_total") >= 3, put
    wait_for(lambda: liar["peer_id"] not in {p["peer_id"] for p in http_get(
        f"{getter['http_url']}/status")[1]["peers"]}, 15, "the liar to be disconnected")
