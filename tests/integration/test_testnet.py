"""The developers' one-command testnet: real processes, full mesh, DHT discovery, restarts."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import cli, http_get, pid_alive, wait_for

pytestmark = pytest.mark.slow


def _full_mesh(net) -> bool:
    members = net.members()
    ids = {m["peer_id"] for m in members}
    return all(net.peers_of(m) == ids - {m["peer_id"]} for m in members)


def test_four_node_testnet_mesh_discovery_restart_and_down(testnet_factory):
    net = testnet_factory(4)
    out = net.up().stdout
    members = net.members()
    assert [m["name"] for m in members] == ["node0", "node1", "node2", "node3"]
    for m in members:
        assert m["name"] in out and m["peer_id"] in out
        assert pid_alive(m["pid"])
        assert m["p2p_addr"].endswith(f"/p2p/{m['peer_id']}")
    assert _full_mesh(net)
    # `up` returned only once every node saw all four alive (membership), at once usable
    # (tests/unit/test_testnet_ready.py checks the rule itself).
    for m in members:
        doc = http_get(f"{m['http_url']}/members")[1]
        assert sum(x["state"] == "alive" for x in doc["members"]) == 4, (m["name"], doc)

    # Every node other than node0 was given node0 alone as bootstrap peer: the links
    # between them were found through the DHT.
    for m in members[1:]:
        config = (os.path.join(m["home"], "config.toml"))
        text = open(config).read()
        assert members[0]["peer_id"] in text
        for other in members[1:]:
            assert other["peer_id"] not in text
    assert members[2]["peer_id"] in net.peers_of(members[1])

    # Peers are pinged: every link gets a latency; traffic and peer count show in /metrics.
    def latencies_known() -> bool:
        docs = [http_get(f"{m['http_url']}/status")[1] for m in members]
        return all(p["latency_ms"] is not None and p["latency_ms"] >= 0
                   for d in docs for p in d["peers"])

    wait_for(latencies_known, 30, "latency of every peer")
    _, text = http_get(f"{members[1]['http_url']}/metrics")
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["dcloud_p2p_peers"] == 3
    assert samples["dcloud_p2p_sent_bytes_total"] > 0
    assert samples["dcloud_p2p_received_bytes_total"] > 0
    assert samples["dcloud_p2p_dials_total"] >= 1

    # Regions are spread over more than one name.
    regions = {http_get(f"{m['http_url']}/status")[1]["region"] for m in members}
    assert len(regions) >= 2

    lines = cli("testnet", "status", "--dir", str(net.directory)).stdout.strip().splitlines()
    assert len(lines) == 1 + 4 and all("ready" in line for line in lines[1:])

    # kill -9 one node: the others notice, and reconnect once it is back.
    victim = members[2]
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: all(victim["peer_id"] not in net.peers_of(m)
                         for m in members if m is not victim), 30,
             "the others to drop the killed node")
    net.up()  # restarts only the node that is down, waits for the full mesh again
    restarted = net.members()[2]
    assert restarted["pid"] != victim["pid"]
    assert [m["pid"] for i, m in enumerate(net.members()) if i != 2] == \
        [m["pid"] for i, m in enumerate(members) if i != 2]
    wait_for(lambda: _full_mesh(net), 30, "full mesh after the restart")

    pids = [m["pid"] for m in net.members()]
    out = net.down().stdout
    assert out.count("stopped") == 4
    for pid in pids:
        assert not pid_alive(pid), f"pid {pid} survived testnet down"
    assert all(m["pid"] is None for m in net.members())


def test_a_testnet_not_ready_in_time_fails_clearly_and_down_kills_after_the_grace(
        testnet_factory):
    net = testnet_factory(2)
    # Nobody starts, joins and sees its peer within a tenth of a second.
    proc = cli("testnet", "up", "--nodes", "2", "--dir", str(net.directory), "--base-port",
               str(net.base_port), "--timeout", "0.1", check=False, timeout=60)
    assert proc.returncode != 0
    assert "not ready after" in proc.stderr and "testnet down" in proc.stderr, proc.stderr
    pids = [m["pid"] for m in net.members()]
    assert all(pid_alive(pid) for pid in pids)  # they keep running, as the message says

    # With no grace at all, `down` does not wait for SIGTERM: it kills, and says so.
    stopped = cli("testnet", "down", "--dir", str(net.directory), "--grace", "0")
    assert stopped.stdout.count("sending SIGKILL") == 2, stopped.stdout
    assert not any(pid_alive(pid) for pid in pids)


def test_a_node_that_dies_during_up_takes_the_nodes_up_started_with_it(testnet_factory):
    net = testnet_factory(3)
    net.up()
    net.down()
    # node2 cannot start any more (its chunk store's directory is now a file), which only
    # the node process finds out, after `up` has started the others.
    broken = next(m for m in net.members() if m["name"] == "node2")
    chunks = os.path.join(broken["home"], "data", "chunks")
    shutil.rmtree(chunks)
    with open(chunks, "w") as f:
        f.write("not a directory")
    proc = cli("testnet", "up", "--nodes", "3", "--dir", str(net.directory), "--base-port",
               str(net.base_port), "--timeout", "60", check=False, timeout=120)
    assert proc.returncode != 0
    assert "node process exited during start-up: node2" in proc.stderr, proc.stderr
    assert "stopped the other nodes it started (node0, node1)" in proc.stderr, proc.stderr
    started = [int(line.split("pid ")[1].split()[0]) for line in proc.stdout.splitlines()
               if "started pid" in line]
    assert len(started) == 3, proc.stdout
    assert not any(pid_alive(pid) for pid in started)  # half a testnet is not left running
    assert "was not running" in net.down().stdout
