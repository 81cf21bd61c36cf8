"""The simulated worlds the consensus core must survive, and how many seeds each gets in CI."""

from __future__ import annotations

from tests.sim.harness import Scenario
from tests.sim.network import NetworkConfig

LOSSY = NetworkConfig(min_delay_ms=5, max_delay_ms=150, drop=0.2, duplicate=0.05)
ROUGH = NetworkConfig(min_delay_ms=1, max_delay_ms=400, drop=0.1, duplicate=0.1)
# Asynchronous for the first 8 s: delays up to 1.5 s, longer than the first rounds' timeouts.
ASYNC = NetworkConfig(min_delay_ms=5, max_delay_ms=150, drop=0.1, duplicate=0.05,
                      async_until_ms=8000, async_max_delay_ms=1500)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    # Honest validators only: loss, duplication, reordering, a partition with no quorum side.
    Scenario("n4-lossy", n=4, network=LOSSY),
    Scenario("n4-partition", n=4, network=ROUGH, partition_ms=(500, 6000)),
    # f = 1 of 4, one behaviour each, on a lossy network that is also cut for a while.
    Scenario("n4-equivocator", n=4, network=LOSSY, partition_ms=(1000, 4000),
             byzantine=("equivocator",)),
    Scenario("n4-silent", n=4, network=LOSSY, partition_ms=(1000, 4000),
             byzantine=("silent",)),
    Scenario("n4-invalid", n=4, network=LOSSY, partition_ms=(1000, 4000),
             byzantine=("invalid",)),
    Scenario("n4-random", n=4, network=ROUGH, partition_ms=(1000, 4000),
             byzantine=("random",)),
    Scenario("n4-async-mirror", n=4, network=ASYNC, byzantine=("mirror",)),
    # f = 2 of 7, colluding.
    Scenario("n7-equivocators", n=7, network=LOSSY, partition_ms=(1000, 4000),
             byzantine=("equivocator", "equivocator")),
    Scenario("n7-mixed", n=7, network=ROUGH, partition_ms=(1000, 4000),
             byzantine=("equivocator", "random")),
    Scenario("n7-async-mirrors", n=7, network=ASYNC, byzantine=("mirror", "equivocator")),
    Scenario("n7-silent-invalid", n=7, network=LOSSY, partition_ms=(1000, 4000),
             byzantine=("silent", "invalid")),
    # Unequal voting power: the Byzantine validator is placed with less than 1/3 of it.
    Scenario("weighted-equivocator", n=4, powers=(1, 2, 3, 4), network=LOSSY,
             partition_ms=(1000, 4000), byzantine=("equivocator",)),
    Scenario("weighted-n5-mixed", n=5, powers=(5, 3, 2, 1, 1), network=ROUGH,
             partition_ms=(1000, 3000), byzantine=("random", "silent")),
]}

# Seeds per scenario in the slow sweep (CI): 1,910 runs in all, about 60 s on 2 cores.
SWEEP_SEEDS: dict[str, int] = {
    "n4-lossy": 250,
    "n4-partition": 200,
    "n4-equivocator": 250,
    "n4-silent": 200,
    "n4-invalid": 150,
    "n4-random": 150,
    "n4-async-mirror": 150,
    "n7-equivocators": 80,
    "n7-mixed": 80,
    "n7-async-mirrors": 60,
    "n7-silent-invalid": 70,
    "weighted-equivocator": 150,
    "weighted-n5-mixed": 120,
}
