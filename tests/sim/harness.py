"""Deterministic consensus simulation: N validators (drivers around ConsensusCore, some of them
Byzantine) on the seeded network, with the agreement and termination checks.

One seed determines everything: keys are fixed per index, every random choice comes from
`random.Random` instances derived from the seed, events run in (time, sequence) order, and no
set or hash-ordered collection is ever iterated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass, field

from node.consensus.core import ConsensusCore, Decide
from node.consensus.timeouts import TimeoutParams
from node.consensus.types import Validator, ValidatorSet
from tests.sim.byzantine import BEHAVIOURS, Adversary
from tests.sim.driver import Crypto, Driver, StartHeight, Tick, Timer, validator_key
from tests.sim.network import Delivery, EventQueue, Network, NetworkConfig, NetworkStats, Partition


@dataclass(frozen=True)
class Stabilised:
    """Global stabilisation time: from here on, every honest validator must keep deciding."""


@dataclass(frozen=True)
class Scenario:
    """What one simulation family varies; a seed then picks delays, drops, Byzantine slots."""

    name: str
    n: int = 4
    powers: tuple[int, ...] | None = None
    byzantine: tuple[str, ...] = ()  # behaviours (byzantine.BEHAVIOURS), one validator each
    network: NetworkConfig = NetworkConfig()
    partition_ms: tuple[int, int] | None = None  # a random two-way split, during [start, end)
    timeouts: TimeoutParams = TimeoutParams()
    retransmit_ms: int = 400
    heights_after_gst: int = 5
    liveness_ms: int = 60_000  # after stabilisation, everyone must decide that many heights
    max_byzantine_power_fraction: tuple[int, int] = (1, 3)  # strictly below this fraction
    core: type[ConsensusCore] = ConsensusCore
    catchup: bool = True  # honest drivers send decided heights to peers still working on them
    stop_on_violation: bool = False


@dataclass
class SimResult:
    scenario: str
    seed: int
    honest: list[int]
    byzantine: dict[int, str]
    decisions: dict[int, dict[int, bytes]]  # honest node -> height -> decided block id
    violations: list[str]
    live: bool
    stall: str
    end_ms: int
    events: int
    stats: NetworkStats
    trace: list[tuple[int, int, int, int, str]] = field(default_factory=list)

    def digest(self) -> str:
        """One string for the whole run, to compare two runs of a seed."""
        h = hashlib.sha256(repr((self.trace, self.end_ms, self.events, self.stats)).encode())
        return h.hexdigest()

    def describe(self) -> str:
        heights = {i: max(d, default=0) for i, d in self.decisions.items()}
        return (f"scenario {self.scenario} seed {self.seed}: byzantine {self.byzantine}, "
                f"decided heights {heights}, t={self.end_ms} ms, {self.events} events, "
                f"{self.stats}; reproduce with SIM_SEED={self.seed} SIM_SCENARIO={self.scenario}")


class Simulation:
    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self.seed = seed
        self.rng = random.Random(seed)
        powers = scenario.powers or (1,) * scenario.n
        self.keys = [validator_key(i) for i in range(scenario.n)]
        self.validators = ValidatorSet(tuple(Validator(k.public_key, p)
                                             for k, p in zip(self.keys, powers, strict=True)))
        self.validators_hash = self.validators.hash()
        self.crypto = Crypto(self.validators)
        self.queue = EventQueue()
        network = scenario.network
        if scenario.partition_ms is not None:
            nodes = list(range(scenario.n))
            self.rng.shuffle(nodes)
            cut = self.rng.randint(1, scenario.n - 1)
            start, end = scenario.partition_ms
            split = Partition(start, end, (frozenset(nodes[:cut]), frozenset(nodes[cut:])))
            network = dataclasses.replace(network, partitions=network.partitions + (split,))
        self.network = Network(network, random.Random(self.rng.getrandbits(64)), self.queue)
        self.gst_ms = network.heal_ms
        self.byzantine = self._place_byzantine(powers)
        self.honest = [i for i in range(scenario.n) if i not in self.byzantine]
        self.adversary = Adversary(self, self.honest, sorted(self.byzantine))
        self.drivers: list[Driver] = [
            BEHAVIOURS[self.byzantine[i]](self, i) if i in self.byzantine else Driver(self, i)
            for i in range(scenario.n)]
        self._peers = [tuple(j for j in range(scenario.n) if j != i) for i in range(scenario.n)]
        self.violations: list[str] = []
        self.bad_signatures = 0
        self.decisions: dict[int, dict[int, bytes]] = {i: {} for i in self.honest}
        self.first_decider: dict[int, tuple[int, bytes]] = {}  # height -> (node, block id)
        self.trace: list[tuple[int, int, int, int, str]] = []
        self.base: dict[int, int] | None = None  # decided heights at stabilisation
        self.done = False

    def _place_byzantine(self, powers: tuple[int, ...]) -> dict[int, str]:
        behaviours = self.scenario.byzantine
        if not behaviours:
            return {}
        num, den = self.scenario.max_byzantine_power_fraction
        total = sum(powers)
        for _ in range(1000):
            chosen = self.rng.sample(range(self.scenario.n), len(behaviours))
            if sum(powers[i] for i in chosen) * den < total * num:
                return dict(zip(chosen, behaviours, strict=True))
        raise ValueError(f"scenario {self.scenario.name}: no placement of {behaviours} keeps "
                         f"the Byzantine power below {num}/{den}")

    def peers(self, index: int) -> tuple[int, ...]:
        return self._peers[index]

    def on_decide(self, driver: Driver, d: Decide) -> None:
        if driver.index not in self.decisions:
            return
        block_id = d.block.id
        self.decisions[driver.index][d.height] = block_id
        self.trace.append((self.queue.now_ms, driver.index, d.height, d.round,
                           block_id.hex()[:16]))
        first = self.first_decider.setdefault(d.height, (driver.index, block_id))
        if first[1] != block_id:
            self.violations.append(
                f"agreement violated at height {d.height}: node {first[0]} decided "
                f"{first[1].hex()[:16]}, node {driver.index} decided {block_id.hex()[:16]}")
        if self.base is not None:
            self.done = all(len(self.decisions[i]) >= self.base[i]
                            + self.scenario.heights_after_gst for i in self.honest)

    def run(self) -> SimResult:
        for d in self.drivers:
            d.start()
        self.queue.at(self.gst_ms, Stabilised())
        deadline = self.gst_ms + self.scenario.liveness_ms
        events = 0
        while len(self.queue) and self.queue.next_time_ms() <= deadline:
            item = self.queue.pop()
            events += 1
            if isinstance(item, Delivery):
                if self.network.arrives(item):
                    self.drivers[item.dst].receive(item.src, item.message)
            elif isinstance(item, Timer):
                self.drivers[item.node].timer(item)
            elif isinstance(item, Tick):
                self.drivers[item.node].tick()
            elif isinstance(item, StartHeight):
                self.drivers[item.node].start_height(item.height)
            elif isinstance(item, Stabilised):
                self.base = {i: len(self.decisions[i]) for i in self.honest}
            if self.done or (self.violations and self.scenario.stop_on_violation):
                break
        stall = "" if self.done else self._stall_report()
        return SimResult(self.scenario.name, self.seed, self.honest, self.byzantine,
                         self.decisions, self.violations + self._check_agreement(), self.done,
                         stall, self.queue.now_ms, events, self.network.stats, self.trace)

    def _check_agreement(self) -> list[str]:
        """Every pair of honest validators, every height: the same block (agreement)."""
        out = []
        heights = sorted({h for d in self.decisions.values() for h in d})
        for h in heights:
            ids = {d[h] for d in self.decisions.values() if h in d}
            if len(ids) > 1:
                out.append(f"height {h}: honest validators decided {len(ids)} different blocks")
        for i, d in self.decisions.items():
            if sorted(d) != list(range(1, len(d) + 1)):
                out.append(f"node {i} decided heights {sorted(d)}: not contiguous from 1")
        return out

    def _stall_report(self) -> str:
        parts = []
        for i in self.honest:
            c = self.drivers[i].core
            parts.append(f"node {i}: h={c.height} r={c.round} step={c.step.name} "
                         f"locked={c.locked_round} valid={c.valid_round} "
                         f"decided={c.decision is not None}")
        return "; ".join(parts)


def run(scenario: Scenario, seed: int) -> SimResult:
    return Simulation(scenario, seed).run()
