"""Emergent regional leaders in simulation: once the view converges every member names the
same leaders (the oldest live member of each region), a crashed leader is replaced by the
next oldest on every member within the detection bound, and it returns as the youngest.

Reproduce one run: SIM_SEED=3 pytest tests/sim/membership -k leader (-s shows the figures).
"""

from __future__ import annotations

from functools import partial

from tests.sim.membership.harness import MembershipSim, SimSpec, sim_seeds
from tests.sim.membership.test_failure_detection import PERIOD_MS, detection_bound_ms


def oldest_per_region(sim: MembershipSim) -> dict[str, str]:
    """The truth the members should agree on, from the cores' own records of the running
    members: region -> the running member with the smallest (joined_at, node_id)."""
    best: dict[str, tuple[int, str]] = {}
    for i in sim.running():
        m = sim.members[i]
        me = m.core.member(m.node_id)
        assert me is not None
        key = (me.joined_at_ms, m.node_id)
        if m.region not in best or key < best[m.region]:
            best[m.region] = key
    return {region: node_id for region, (_, node_id) in sorted(best.items())}


def agreed_leaders(sim: MembershipSim) -> dict[str, str] | None:
    """The leaders every running member computes, if they all compute the same."""
    views = [sim.leaders(i) for i in sim.running()]
    return views[0] if all(v == views[0] for v in views) else None


def leads(sim: MembershipSim, region: str, node_id: str) -> bool:
    """Every running member names `node_id` the leader of `region`."""
    agreed = agreed_leaders(sim)
    return agreed is not None and agreed.get(region) == node_id


def test_converged_members_agree_on_the_oldest_member_of_each_region_as_leader() -> None:
    for seed in sim_seeds(3):
        sim = MembershipSim(SimSpec(n=60), seed)
        sim.settle()
        agreed = agreed_leaders(sim)
        assert agreed is not None, f"members disagree on leaders: {sim.describe()}"
        assert set(agreed) == set(sim.spec.regions), sim.describe()
        assert agreed == oldest_per_region(sim), sim.describe()


def test_a_crashed_leader_is_replaced_by_the_next_oldest_everywhere_within_the_bound() -> None:
    n = 60
    bound = detection_bound_ms(n)
    for seed in sim_seeds(3):
        sim = MembershipSim(SimSpec(n=n), seed)
        sim.settle()
        before = agreed_leaders(sim)
        assert before is not None, sim.describe()
        region = sim.spec.regions[seed % len(sim.spec.regions)]
        leader = sim.by_id[before[region]]
        crashed_at = sim.now
        sim.crash(leader)
        successor = oldest_per_region(sim)[region]
        assert successor != before[region]

        at = sim.run_until_true(partial(leads, sim, region, successor),
                                crashed_at + 3 * bound, every_ms=50)
        assert at is not None, f"leader of {region} never replaced: {sim.describe()}"
        print(f"\nleader replaced n={n} seed {seed}: {(at - crashed_at) / PERIOD_MS:.1f} "
              f"periods (bound {bound / PERIOD_MS:.1f})")
        assert at - crashed_at <= bound, sim.describe()
        # The other regions kept their leaders throughout.
        after = agreed_leaders(sim)
        assert after is not None
        assert {r: v for r, v in after.items() if r != region} == \
            {r: v for r, v in before.items() if r != region}, sim.describe()


def test_a_leader_that_comes_back_rejoins_as_the_youngest_and_does_not_lead() -> None:
    n = 30
    for seed in sim_seeds(2):
        sim = MembershipSim(SimSpec(n=n), seed)
        sim.settle()
        before = agreed_leaders(sim)
        assert before is not None, sim.describe()
        region = sim.spec.regions[0]
        leader = sim.by_id[before[region]]
        sim.crash(leader)
        crashed_at = sim.now
        successor = oldest_per_region(sim)[region]
        assert sim.run_until_true(partial(leads, sim, region, successor),
                                  crashed_at + 3 * detection_bound_ms(n)) is not None
        sim.restart(leader)
        assert sim.run_until_true(sim.converged, sim.now + 60_000) is not None, sim.describe()
        agreed = agreed_leaders(sim)
        assert agreed is not None and agreed[region] == successor, sim.describe()
        back = sim.members[0 if leader else 1].core.member(before[region])
        assert back is not None and back.state == "alive"
        assert back.joined_at_ms == max(
            sim.members[i].core.member(sim.members[i].node_id).joined_at_ms  # type: ignore[union-attr]
            for i in sim.running()), sim.describe()


def test_the_same_seed_gives_the_same_run() -> None:
    """One seed is one run, byte for byte: a failing seed reproduces exactly."""

    def run(seed: int) -> str:
        sim = MembershipSim(SimSpec(n=30), seed)
        sim.settle()
        sim.crash(sim.by_id[agreed_leaders(sim)[sim.spec.regions[1]]])  # type: ignore[index]
        sim.run_until(sim.now + 20_000)
        return sim.digest()

    assert run(7) == run(7)
    assert run(7) != run(8)
