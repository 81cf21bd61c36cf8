"""A seeded in-process network and simulated clock for the consensus simulator.

Every random choice (delay, drop, duplicate) comes from the one `random.Random` the network is
given, and events are ordered by (time, sequence number), so one seed gives one run. Messages
are Python objects handed over as they are: the simulator checks the protocol, not the codec.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Partition:
    """From start_ms to end_ms, nodes in different groups cannot reach each other.

    A node in no group is cut off from everyone.
    """

    start_ms: int
    end_ms: int
    groups: tuple[frozenset[int], ...]

    def separates(self, now_ms: int, a: int, b: int) -> bool:
        if not self.start_ms <= now_ms < self.end_ms:
            return False
        return not any(a in g and b in g for g in self.groups)


@dataclass(frozen=True)
class NetworkConfig:
    """Per-message delay (uniform in [min, max] ms, hence reordering), loss and duplication.

    Until `async_until_ms` the network is asynchronous: delays go up to `async_max_delay_ms`,
    far beyond the timeouts, so rounds end before their messages arrive.
    """

    min_delay_ms: int = 5
    max_delay_ms: int = 150
    drop: float = 0.0
    duplicate: float = 0.0
    partitions: tuple[Partition, ...] = ()
    async_until_ms: int = 0
    async_max_delay_ms: int = 0

    @property
    def heal_ms(self) -> int:
        """Global stabilisation time: the last partition has healed, delays are bounded."""
        return max([p.end_ms for p in self.partitions] + [self.async_until_ms])


@dataclass(frozen=True)
class Delivery:
    src: int
    dst: int
    message: Any


@dataclass
class NetworkStats:
    sent: int = 0
    dropped: int = 0
    cut: int = 0  # lost to a partition
    duplicated: int = 0
    delivered: int = 0


class EventQueue:
    """Simulated time: events run in (time, insertion) order; `now_ms` is the current event's."""

    def __init__(self) -> None:
        self.now_ms = 0
        self._heap: list[tuple[int, int, Any]] = []  # (time, seq, item): seq breaks ties
        self._seq = 0

    def at(self, time_ms: int, item: Any) -> None:
        if time_ms < self.now_ms:
            raise ValueError(f"cannot schedule in the past ({time_ms} < {self.now_ms})")
        self._seq += 1
        heapq.heappush(self._heap, (time_ms, self._seq, item))

    def after(self, delay_ms: int, item: Any) -> None:
        self.at(self.now_ms + delay_ms, item)

    def pop(self) -> Any:
        self.now_ms, _, item = heapq.heappop(self._heap)
        return item

    def __len__(self) -> int:
        return len(self._heap)

    def next_time_ms(self) -> int:
        return self._heap[0][0]


class Network:
    """Point-to-point sends with random delay, loss, duplication and timed partitions."""

    def __init__(self, config: NetworkConfig, rng: random.Random, queue: EventQueue) -> None:
        self.config = config
        self.rng = rng
        self.queue = queue
        self.stats = NetworkStats()

    def cut(self, now_ms: int, a: int, b: int) -> bool:
        for p in self.config.partitions:
            if p.separates(now_ms, a, b):
                return True
        return False

    def send(self, src: int, dst: int, message: Any) -> None:
        c = self.config
        self.stats.sent += 1
        if self.cut(self.queue.now_ms, src, dst):
            self.stats.cut += 1
            return
        if c.drop and self.rng.random() < c.drop:
            self.stats.dropped += 1
            return
        copies = 1
        if c.duplicate and self.rng.random() < c.duplicate:
            copies = 2
            self.stats.duplicated += 1
        longest = c.async_max_delay_ms if self.queue.now_ms < c.async_until_ms else c.max_delay_ms
        for _ in range(copies):
            delay = self.rng.randint(c.min_delay_ms, longest)
            self.queue.after(delay, Delivery(src, dst, message))

    def arrives(self, delivery: Delivery) -> bool:
        """Whether a message in flight survives to delivery (a partition may have started)."""
        if self.cut(self.queue.now_ms, delivery.src, delivery.dst):
            self.stats.cut += 1
            return False
        self.stats.delivered += 1
        return True
