"""SWIM failure detection in simulation: crashes are detected by everyone within a bound,
random loss does not kill live members, partitions heal into one view, leaves are `left`.

Reproduce one run: SIM_SEED=3 pytest tests/sim/membership -k crash (-s shows the figures).
"""

from __future__ import annotations

from functools import partial

from tests.sim.membership.harness import (
    DEAD,
    LEFT,
    LOSSY,
    MembershipSim,
    SimSpec,
    sim_seeds,
    suspicion_timeout_ms,
)
from tests.sim.network import NetworkConfig, Partition

PERIOD_MS = SimSpec().swim.probe_interval_ms

# Detection of a crash, in protocol periods beyond the suspicion timeout:
# - some member probes the crashed one: each of the N members probes one member a period,
#   round robin over a shuffled list, so ~1 probe a period lands on it; the chance that none
#   does for k periods is ~e^-k. Allow 3 periods.
# - that probe fails (no direct or indirect ack) at the end of its period: 1 period.
# - the suspicion reaches everyone in O(log N) gossip rounds (200 ms each) and every member's
#   own timer starts; independent probers confirm it within a period or two each, which brings
#   the timer down to the minimum timeout (Lifeguard), which then declares the death: 1 period
#   for spreading and confirmations.
DETECTION_SLACK_PERIODS = 5


def detection_bound_ms(n: int) -> int:
    low, _ = suspicion_timeout_ms(SimSpec().swim, n)
    return low + DETECTION_SLACK_PERIODS * PERIOD_MS


def crash_detection(n: int, seed: int) -> tuple[int, MembershipSim]:
    sim = MembershipSim(SimSpec(n=n), seed)
    sim.settle()
    victim = sim.rng.randrange(n)
    crashed_at = sim.now
    sim.crash(victim)
    at = sim.run_until_true(partial(sim.all_see, victim, (DEAD,)),
                            crashed_at + 3 * detection_bound_ms(n), every_ms=50)
    assert at is not None, f"member {victim} never seen dead by all: {sim.describe()}"
    assert sim.false_events("MemberDead") == [], sim.describe()
    return at - crashed_at, sim


def test_a_crashed_member_is_declared_dead_by_every_member_within_the_bound() -> None:
    for n, count in ((100, 3), (50, 2)):
        bound = detection_bound_ms(n)
        for seed in sim_seeds(count):
            took, sim = crash_detection(n, seed)
            print(f"\ncrash detection n={n} seed {seed}: {took / PERIOD_MS:.1f} periods "
                  f"(bound {bound / PERIOD_MS:.1f})")
            assert took <= bound, f"took {took} ms > {bound} ms: {sim.describe()}"


def test_no_live_member_is_declared_dead_under_twenty_percent_loss() -> None:
    """20 % of messages lost (and 2 % duplicated): probes fail now and then and members get
    suspected, but every suspicion is refuted before its timeout. False deaths: zero over
    9,000 member-periods (3 seeds x 50 members x 60 periods)."""
    n, periods = 50, 60
    false_deaths = false_suspicions = member_periods = 0
    for seed in sim_seeds(3):
        sim = MembershipSim(SimSpec(n=n, network=LOSSY), seed)
        start = sim.settle(within_ms=60_000)
        sim.run_until(start + periods * PERIOD_MS)
        assert sim.converged(), sim.describe()
        deaths = sim.false_events("MemberDead")
        suspicions = [e for e in sim.false_events("MemberSuspected") if e[0] >= start]
        assert deaths == [], f"false deaths {deaths[:5]}: {sim.describe()}"
        false_deaths += len(deaths)
        false_suspicions += len(suspicions)
        member_periods += n * periods
    print(f"\n20% loss: {false_deaths} false deaths, {false_suspicions} false suspicion events "
          f"in {member_periods} member-periods: {false_deaths / member_periods:.5f} deaths and "
          f"{false_suspicions / member_periods:.3f} suspicions per member-period")
    assert member_periods >= n * periods


def test_a_partition_is_detected_on_both_sides_and_heals_into_one_view() -> None:
    """Two halves lose each other: each side declares the other dead. Once healed, the
    members held dead learn it, rejoin, and the view converges within the bound."""
    # The cut lasts the longest suspicion timeout (Lifeguard's max, for a member whose
    # suspicion gathers few confirmations: with half the cluster gone, suspicions of the
    # other half pile up and some start late) plus ten periods to be probed and suspected.
    n, cut_at = 60, 8_000
    heal_at = cut_at + suspicion_timeout_ms(SimSpec().swim, n)[1] + 10 * PERIOD_MS
    halves = (frozenset(range(0, n, 2)), frozenset(range(1, n, 2)))
    network = NetworkConfig(min_delay_ms=1, max_delay_ms=20,
                            partitions=(Partition(cut_at, heal_at, halves),))
    # Reconnect attempts (a push_pull with a member held dead) run about once per
    # reconnect interval per side, and a member contacted by one it holds dead tells it at
    # once; allow two intervals plus a suspicion timeout for stragglers.
    swim = SimSpec().swim
    bound = 2 * swim.reconnect_interval_ms + suspicion_timeout_ms(swim, n)[0]
    for seed in sim_seeds(2):
        sim = MembershipSim(SimSpec(n=n, network=network), seed)
        assert sim.settle() < cut_at, sim.describe()
        sim.run_until(heal_at - 1)
        for a in (0, 1):
            others = [i for i in range(n) if i % 2 != a]
            assert all(sim.state(a, i) == DEAD for i in others), sim.describe()
        same_side = [e for e in sim.false_events("MemberDead")
                     if e[1] % 2 == sim.by_id[e[3]] % 2]
        assert same_side == [], sim.describe()
        healed = sim.run_until_true(sim.converged, heal_at + 3 * bound)
        assert healed is not None, f"never converged after healing: {sim.describe()}"
        print(f"\npartition heal n={n} seed {seed}: converged "
              f"{(healed - heal_at) / PERIOD_MS:.1f} periods after healing "
              f"(bound {bound / PERIOD_MS:.0f})")
        assert healed - heal_at <= bound, sim.describe()


def test_a_member_that_leaves_is_marked_left_quickly_and_never_dead() -> None:
    """A graceful leave is told directly to a few members and gossiped: everyone marks the
    member `left` within two periods, without waiting for a suspicion timeout."""
    n, bound = 50, 2 * PERIOD_MS
    for seed in sim_seeds(2):
        sim = MembershipSim(SimSpec(n=n), seed)
        sim.settle()
        leaver = sim.rng.randrange(n)
        left_at = sim.now
        sim.leave(leaver)
        at = sim.run_until_true(partial(sim.all_see, leaver, (LEFT,)), left_at + 10 * bound,
                                every_ms=50)
        assert at is not None and at - left_at <= bound, sim.describe()
        sim.run_until(sim.now + suspicion_timeout_ms(sim.spec.swim, n)[1])
        subject = sim.members[leaver].node_id
        assert not [e for e in sim.trace if e[3] == subject and e[2] == "MemberDead"], \
            sim.describe()
        assert sim.all_see(leaver, (LEFT,)) and sim.converged(), sim.describe()
