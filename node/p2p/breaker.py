"""Per-peer circuit breakers: stop sending requests to a peer that keeps failing them.

A request/response protocol (chunk exchange, block sync, ...) asks a peer, waits, and may
time out. Without a breaker, a dead or overloaded peer costs every caller a full timeout.
With one, after `failure_threshold` consecutive failures the circuit opens and calls fail
fast with `CircuitOpenError`; after `cool_down_ms` up to `half_open_max_calls` probe calls
are let through, and their outcome closes the circuit again or reopens it for another
cool-down.

`CircuitBreaker` is sans-IO: no clock, no await; time comes in as `now_ms`. `BreakerRegistry`
holds one breaker per peer id, bounded in number, and `call` is the trio driver around an
awaited request.

Every state change starts a new *generation*. A call remembers the generation it was
admitted in and its outcome counts only while that generation lasts: a slow answer to a call
made before the circuit opened says nothing about what the probes found.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar, TypeVarTuple

import trio

BreakerState = Literal["closed", "open", "half_open"]

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_COOL_DOWN_MS = 10_000
DEFAULT_HALF_OPEN_MAX_CALLS = 1
DEFAULT_MAX_PEERS = 1024

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class CircuitOpenError(Exception):
    """The peer's circuit is open (or its probe calls are all taken): the call was not made."""

    def __init__(self, peer_id: str, retry_in_ms: int) -> None:
        self.peer_id = peer_id
        self.retry_in_ms = retry_in_ms
        if retry_in_ms > 0:
            detail = f"retry in {retry_in_ms} ms"
        else:
            detail = "probe calls are in flight; retry when they finish"
        super().__init__(f"circuit to peer {peer_id} is open after repeated failures: {detail}")


@dataclass
class BreakerTotals:
    """Counters shared by every breaker of a registry, so eviction loses no counts."""

    opens: int = 0
    rejections: int = 0


class CircuitBreaker:
    """The breaker of one peer: closed -> open -> half_open -> closed (or back to open)."""

    def __init__(
        self,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        cool_down_ms: int = DEFAULT_COOL_DOWN_MS,
        half_open_max_calls: int = DEFAULT_HALF_OPEN_MAX_CALLS,
        *,
        totals: BreakerTotals | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if cool_down_ms < 0:
            raise ValueError(f"cool_down_ms must be >= 0, got {cool_down_ms}")
        if half_open_max_calls < 1:
            raise ValueError(f"half_open_max_calls must be >= 1, got {half_open_max_calls}")
        self.failure_threshold = failure_threshold
        self.cool_down_ms = cool_down_ms
        self.half_open_max_calls = half_open_max_calls
        self._totals = totals if totals is not None else BreakerTotals()
        self._state: BreakerState = "closed"
        self._generation = 0
        self._consecutive_failures = 0
        self._open_until_ms = 0
        self._probes_admitted = 0
        self.opens = 0
        self.rejections = 0

    @property
    def state(self) -> BreakerState:
        """The state as of the last input; an open circuit whose cool-down has passed reads
        'open' until the next `allow` turns it half-open."""
        return self._state

    @property
    def generation(self) -> int:
        """Incremented on every state change; pass it back with an outcome (see module doc)."""
        return self._generation

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    @property
    def probes_in_flight(self) -> int:
        """Probe calls admitted in the current half-open state (0 in the other states)."""
        return self._probes_admitted

    def is_idle(self) -> bool:
        """Closed with nothing held against the peer: forgetting this breaker loses nothing."""
        return self._state == "closed" and self._consecutive_failures == 0

    def allow(self, now_ms: int) -> bool:
        """May a call to the peer start now? A True in half-open takes one probe slot."""
        if self._state == "open":
            if now_ms < self._open_until_ms:
                return self._reject()
            self._enter("half_open")
        if self._state == "half_open":
            if self._probes_admitted >= self.half_open_max_calls:
                return self._reject()
            self._probes_admitted += 1
        return True

    def retry_in_ms(self, now_ms: int) -> int:
        """How long until `allow` may say yes; 0 when it may now or when probes are out."""
        if self._state == "open":
            return max(0, self._open_until_ms - now_ms)
        return 0

    def record_success(self, now_ms: int, *, generation: int | None = None) -> None:
        """A call admitted by `allow` succeeded: a half-open circuit closes."""
        if self._is_stale(generation):
            return
        if self._state == "half_open":
            self._enter("closed")
        elif self._state == "closed":
            self._consecutive_failures = 0
        # open: no call was admitted, so this answers an older one; it proves nothing.

    def record_failure(self, now_ms: int, *, generation: int | None = None) -> None:
        """A call admitted by `allow` failed: count it; open the circuit at the threshold,
        or reopen it for a fresh cool-down if it was a probe."""
        if self._is_stale(generation):
            return
        if self._state == "closed":
            self._consecutive_failures += 1
            if self._consecutive_failures >= self.failure_threshold:
                self._open(now_ms)
        elif self._state == "half_open":
            self._open(now_ms)
        # open: a late failure of an older call; the cool-down already runs.

    def release_probe(self, *, generation: int | None = None) -> None:
        """A call admitted in half-open ended with no verdict (it was cancelled): give its
        probe slot back so the circuit cannot stay half-open with no probe out."""
        if self._is_stale(generation):
            return
        if self._state == "half_open" and self._probes_admitted > 0:
            self._probes_admitted -= 1

    def _is_stale(self, generation: int | None) -> bool:
        return generation is not None and generation != self._generation

    def _reject(self) -> bool:
        self.rejections += 1
        self._totals.rejections += 1
        return False

    def _open(self, now_ms: int) -> None:
        self._enter("open")
        self._open_until_ms = now_ms + self.cool_down_ms
        self.opens += 1
        self._totals.opens += 1

    def _enter(self, state: BreakerState) -> None:
        self._state = state
        self._generation += 1
        self._consecutive_failures = 0
        self._probes_admitted = 0


@dataclass(frozen=True)
class BreakerStats:
    """A registry's figures for metrics: breakers by state now, and lifetime counters."""

    peers: int
    closed: int
    open: int
    half_open: int
    opens_total: int
    rejections_total: int


def trio_clock_ms() -> int:
    """Milliseconds on trio's clock (a MockClock in tests)."""
    return int(trio.current_time() * 1000)


class BreakerRegistry:
    """One breaker per remote peer, at most `max_peers` of them.

    A new peer beyond the bound evicts the least recently used idle breaker (closed, no
    failures counted). Only if every breaker holds something against its peer is the least
    recently used one evicted anyway: the bound is what keeps a flood of peer ids from
    growing memory.
    """

    def __init__(
        self,
        *,
        max_peers: int = DEFAULT_MAX_PEERS,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        cool_down_ms: int = DEFAULT_COOL_DOWN_MS,
        half_open_max_calls: int = DEFAULT_HALF_OPEN_MAX_CALLS,
        clock_ms: Callable[[], int] = trio_clock_ms,
    ) -> None:
        if max_peers < 1:
            raise ValueError(f"max_peers must be >= 1, got {max_peers}")
        # Checks the other arguments now rather than at the first peer.
        CircuitBreaker(failure_threshold, cool_down_ms, half_open_max_calls)
        self.max_peers = max_peers
        self.failure_threshold = failure_threshold
        self.cool_down_ms = cool_down_ms
        self.half_open_max_calls = half_open_max_calls
        self.clock_ms = clock_ms
        self._totals = BreakerTotals()
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()

    def get(self, peer_id: str) -> CircuitBreaker:
        """The peer's breaker, created closed if unknown; marks the peer recently used."""
        breaker = self._breakers.get(peer_id)
        if breaker is not None:
            self._breakers.move_to_end(peer_id)
            return breaker
        if len(self._breakers) >= self.max_peers:
            self._evict_one()
        breaker = CircuitBreaker(
            self.failure_threshold, self.cool_down_ms, self.half_open_max_calls,
            totals=self._totals,
        )
        self._breakers[peer_id] = breaker
        return breaker

    def peek(self, peer_id: str) -> CircuitBreaker | None:
        """The peer's breaker if there is one; does not create it or mark it used."""
        return self._breakers.get(peer_id)

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._breakers

    @property
    def opens(self) -> int:
        """Times any breaker of this registry opened (evicted ones included)."""
        return self._totals.opens

    @property
    def rejections(self) -> int:
        """Calls refused without being made (evicted breakers included)."""
        return self._totals.rejections

    def stats(self) -> BreakerStats:
        by_state = {"closed": 0, "open": 0, "half_open": 0}
        for breaker in self._breakers.values():
            by_state[breaker.state] += 1
        return BreakerStats(
            peers=len(self._breakers), closed=by_state["closed"], open=by_state["open"],
            half_open=by_state["half_open"], opens_total=self._totals.opens,
            rejections_total=self._totals.rejections,
        )

    def _evict_one(self) -> None:
        for peer_id, breaker in self._breakers.items():
            if breaker.is_idle():
                del self._breakers[peer_id]
                return
        self._breakers.popitem(last=False)


def _is_failure(exc: BaseException) -> bool:
    """Only errors count against the peer; cancellation (also inside a group from a nursery),
    KeyboardInterrupt and the like say nothing about it."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_failure(inner) for inner in exc.exceptions)
    return isinstance(exc, Exception)


async def call(
    registry: BreakerRegistry,
    peer_id: str,
    fn: Callable[[*Ts], Awaitable[T]],
    *args: *Ts,
) -> T:
    """`await fn(*args)` through the peer's breaker.

    Raises CircuitOpenError at once, without calling fn, while the circuit is open. An
    exception from fn counts as a failure and is re-raised; a cancellation is no verdict.
    Put the request's timeout (`trio.fail_after`) inside fn so a hung peer counts as failed:
    a probe that never ends keeps a half-open circuit closed to everyone else.
    """
    breaker = registry.get(peer_id)
    now_ms = registry.clock_ms()
    if not breaker.allow(now_ms):
        raise CircuitOpenError(peer_id, breaker.retry_in_ms(now_ms))
    generation = breaker.generation
    try:
        result = await fn(*args)
    except BaseException as exc:
        if _is_failure(exc):
            breaker.record_failure(registry.clock_ms(), generation=generation)
        else:
            breaker.release_probe(generation=generation)
        raise
    breaker.record_success(registry.clock_ms(), generation=generation)
    return result
