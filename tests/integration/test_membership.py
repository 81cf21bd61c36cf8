"""Membership on real processes: one view, the same regional leaders everywhere, fast
detection of a killed leader, `left` on a graceful stop, and a returning leader as youngest."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest

from tests.integration.conftest import http_get, wait_for

pytestmark = pytest.mark.slow

# A killed member is suspected within a probe period or two and declared dead after the
# suspicion timeout (4 * log10(5) * 1 s ~ 2.8 s, stretched by Lifeguard); see docs/protocol.md.
DETECT_BOUND_S = 20
LEAVE_BOUND_S = 5
HEARTBEAT_INTERVAL_S = 5  # gossip.heartbeat_interval_s default


def metric(member: dict, name: str) -> float:
    with urllib.request.urlopen(f"{member['http_url']}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in {member['name']}'s metrics")


def view(member: dict) -> dict | None:
    code, doc = http_get(f"{member['http_url']}/members")
    return doc if code == 200 else None


def states(member: dict) -> dict[str, str]:
    doc = view(member)
    return {m["node_id"]: m["state"] for m in doc["members"]} if doc else {}


def leaders(member: dict) -> dict[str, str]:
    doc = view(member)
    return doc["leaders"] if doc else {}


def test_membership_leaders_failure_detection_and_leave(testnet_factory):
    net = testnet_factory(5)
    net.up(90, "--regions", "north,south")
    members = net.members()
    ids = {m["peer_id"] for m in members}

    def everyone_alive() -> bool:
        return all(states(m) == {i: "alive" for i in ids} for m in members)

    wait_for(everyone_alive, 30, "every node to see five alive members")

    def agreed_leaders() -> dict[str, str] | None:
        seen = [leaders(m) for m in members]
        return seen[0] if seen[0] and all(s == seen[0] for s in seen) else None

    first = wait_for(agreed_leaders, 15, "all nodes to agree on leaders")
    assert set(first) == {"north", "south"}
    doc = view(members[0])
    by_age = sorted(doc["members"], key=lambda m: (m["joined_at"], m["node_id"]))
    for region, leader in first.items():
        oldest = next(m["node_id"] for m in by_age if m["region"] == region)
        assert leader == oldest

    # Heartbeats carry resources; the leaders publish region summaries.
    def heartbeats_in() -> bool:
        doc = view(members[1])
        return all(m["resources"] and m["resources"]["cpu_millicores_total"] > 0
                   and m["last_heartbeat_s"] is not None for m in doc["members"])

    wait_for(heartbeats_in, 20, "heartbeats from every member")

    # Heartbeats share gossip messages: the two leaders publish their regions' heartbeats
    # in batches, so over several intervals the cluster publishes about two messages per
    # interval, not five (a member publishes its own only while its leader fails it).
    def batches() -> dict[str, float]:
        return {m["peer_id"]: metric(m, "dcloud_membership_heartbeat_batches_total")
                for m in members}

    intervals = 4
    before = batches()
    time.sleep(intervals * HEARTBEAT_INTERVAL_S)
    after = batches()
    published = {node: after[node] - before[node] for node in after}
    unbatched = len(members) * intervals  # 20: one message per node per interval
    assert sum(published.values()) <= len(first) * (intervals + 1) + 2 < unbatched, published
    assert all(published[node] >= intervals - 1 for node in first.values()), (published, first)

    def summaries() -> bool:
        code, regions = http_get(f"{members[2]['http_url']}/regions")
        return code == 200 and all(r["summary"] and r["summary"]["members"]
                                   for r in regions.values())

    wait_for(summaries, 20, "a summary from each region's leader")
    status = http_get(f"{members[0]['http_url']}/status")[1]["membership"]
    assert status["leaders"] == first

    # kill -9 the north leader: everyone else names the next oldest north member.
    north_leader = first["north"]
    victim = next(m for m in members if m["peer_id"] == north_leader)
    rest = [m for m in members if m is not victim]
    next_oldest = next(m["node_id"] for m in by_age
                       if m["region"] == "north" and m["node_id"] != north_leader)
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: all(leaders(m).get("north") == next_oldest for m in rest),
             DETECT_BOUND_S, "the next oldest north member to lead north on every node")
    wait_for(lambda: all(states(m).get(north_leader) == "dead" for m in rest),
             DETECT_BOUND_S, "the killed leader to be declared dead everywhere")

    # SIGTERM a south member that is not the leader: it leaves; others see `left` at once.
    leaving = next(m for m in rest if m["peer_id"] not in first.values()
                   and states(m).get(m["peer_id"]) == "alive"
                   and m["peer_id"] in [x["node_id"] for x in by_age if x["region"] == "south"])
    others = [m for m in rest if m is not leaving]
    os.kill(leaving["pid"], signal.SIGTERM)
    wait_for(lambda: all(states(m).get(leaving["peer_id"]) == "left" for m in others),
             LEAVE_BOUND_S, "the stopped member to be seen as left")

    # The old leader returns: it rejoins as the youngest and does not take back the lead.
    net.up(90, "--regions", "north,south")
    wait_for(lambda: all(states(m).get(north_leader) == "alive" for m in others), 30,
             "the old leader to be alive again")
    assert all(leaders(m).get("north") == next_oldest for m in others)
    doc = view(others[0])
    rejoined = next(m for m in doc["members"] if m["node_id"] == north_leader)
    stayed = {m["peer_id"] for m in others}  # never stopped (the leaver restarted too)
    assert rejoined["joined_at"] > max(m["joined_at"] for m in doc["members"]
                                       if m["node_id"] in stayed)
