"""Emergent regional leaders: the oldest live member of each region leads, ties by node id."""

from __future__ import annotations

import hashlib
import hmac
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from node.gossip.leader import is_leader, leaders, seniority
from node.gossip.swim import Membership, MemberView, SwimConfig
from node.gossip.swim_messages import Dead, Gossip, Suspect, encode


def member(node_id: str, joined_at_ms: int, region: str = "eu", state: str = "alive",
           incarnation: int = 0) -> MemberView:
    return MemberView(node_id, region, (), state, incarnation, joined_at_ms, 0)


def test_the_oldest_alive_member_of_each_region_leads() -> None:
    view = [member("a", 300), member("b", 100), member("c", 200),
            member("x", 50, region="us"), member("y", 20, region="us")]
    assert leaders(view) == {"eu": "b", "us": "y"}
    assert is_leader("b", "eu", view)
    assert not is_leader("a", "eu", view)
    assert not is_leader("y", "eu", view)  # leads us, not eu


def test_equal_join_times_are_broken_by_node_id() -> None:
    assert leaders([member("node-b", 100), member("node-a", 100), member("node-c", 100)]) \
        == {"eu": "node-a"}


def test_dead_and_left_members_do_not_lead() -> None:
    view = [member("a", 100, state="dead"), member("b", 200, state="left"), member("c", 300)]
    assert leaders(view) == {"eu": "c"}


def test_a_region_without_a_live_member_has_no_leader() -> None:
    view = [member("a", 100, region="us", state="dead"), member("b", 200)]
    assert leaders(view) == {"eu": "b"}
    assert not is_leader("a", "us", view)
    assert leaders([]) == {}


def test_a_suspect_member_keeps_leading() -> None:
    # Suspicion is transient and often wrong: leadership changes only on dead, left, rejoin.
    assert leaders([member("a", 100, state="suspect"), member("b", 200)]) == {"eu": "a"}


def test_registration_height_ranks_ahead_of_join_time() -> None:
    view = [member("a", 100), member("b", 200), member("c", 300), member("d", 400)]
    assert leaders(view, {"c": 7, "d": 5}) == {"eu": "d"}
    assert leaders(view, {"c": 5, "d": 5}) == {"eu": "c"}  # same height: older join wins
    assert leaders(view, {}) == {"eu": "a"}
    assert seniority(view[3], {"d": 5}) < seniority(view[0], {"d": 5})


def test_the_result_is_sorted_by_region() -> None:
    view = [member("a", 1, region="us"), member("b", 2, region="ap"), member("c", 3)]
    assert list(leaders(view)) == ["ap", "eu", "us"]


# ---- a rejoined member comes back as the youngest, through the membership core ------------------


def key(node_id: str) -> bytes:
    return hashlib.sha256(node_id.encode()).digest()


def node(node_id: str, joined_at_ms: int) -> Membership:
    return Membership(
        self_id=node_id, region="eu", addrs=(), joined_at_ms=joined_at_ms, config=SwimConfig(),
        rng=random.Random(node_id),
        sign=lambda body: hmac.digest(key(node_id), body, "sha256"),
        verify=lambda who, body, sig: hmac.compare_digest(
            hmac.digest(key(who), body, "sha256"), sig))


def exchange(a: Membership, b: Membership, now_ms: int) -> None:
    """b joins through a (push_pull both ways)."""
    for send in b.join([a.self_id], now_ms):
        for reply in a.on_message(b.self_id, send.data, now_ms):
            b.on_message(a.self_id, reply.data, now_ms)


def test_a_member_declared_dead_rejoins_as_the_youngest_and_does_not_lead_again() -> None:
    old, second, third = node("old", 1_000), node("second", 2_000), node("third", 3_000)
    exchange(old, second, 0)
    exchange(old, third, 0)
    exchange(second, third, 0)
    assert leaders(third.members()) == {"eu": "old"}

    # `third` suspects `old`, which stays leader until the suspicion times out: then
    # `second` takes over. `old` hears from `third` that it is dead, and rejoins.
    third.on_message("second", encode(Gossip((Suspect("old", 0, "second"),))), 10_000)
    assert leaders(third.members()) == {"eu": "old"}
    third.tick(70_000)
    assert third.member("old").state == "dead"  # type: ignore[union-attr]
    assert leaders(third.members()) == {"eu": "second"}
    old.on_message("third", encode(Gossip((Dead("old", 0, "third"),))), 70_000)
    assert old.member("old").joined_at_ms > 3_000  # type: ignore[union-attr]

    # Its new alive record reaches the others: alive again, but the youngest.
    exchange(third, old, 70_001)
    assert third.member("old").state == "alive"  # type: ignore[union-attr]
    assert leaders(third.members()) == {"eu": "second"}
    assert leaders(old.members()) == {"eu": "second"}


# ---- properties ---------------------------------------------------------------------------------

views = st.lists(
    st.builds(member, st.sampled_from([f"n{i}" for i in range(12)]), st.integers(0, 5),
              st.sampled_from(["eu", "us", "ap"]),
              st.sampled_from(["alive", "suspect", "dead", "left"])),
    max_size=20, unique_by=lambda m: m.node_id)


@settings(max_examples=200, deadline=None)
@given(views, st.randoms(use_true_random=False))
def test_leaders_do_not_depend_on_the_order_of_the_view(view: list[MemberView],
                                                        rnd: random.Random) -> None:
    shuffled = list(view)
    rnd.shuffle(shuffled)
    assert leaders(shuffled) == leaders(view)


@settings(max_examples=200, deadline=None)
@given(views)
def test_each_leader_is_the_most_senior_live_member_of_its_region(
        view: list[MemberView]) -> None:
    result = leaders(view)
    live = [m for m in view if m.state in ("alive", "suspect")]
    assert set(result) == {m.region for m in live}
    for region, leader_id in result.items():
        candidates = [m for m in live if m.region == region]
        best = min(candidates, key=lambda m: (m.joined_at_ms, m.node_id))
        assert leader_id == best.node_id
