"""node.p2p.breaker: a peer that keeps failing requests is not asked again for a while.

The state machine is driven with explicit times; `call` runs under trio's MockClock
(`autojump_clock` fixture of pytest-trio), so cool-downs pass instantly.
"""

from __future__ import annotations

import pytest
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from node.p2p.breaker import BreakerRegistry, CircuitBreaker, CircuitOpenError, call


def opened(at_ms: int = 0, **kwargs: int) -> CircuitBreaker:
    breaker = CircuitBreaker(**kwargs)
    for _ in range(breaker.failure_threshold):
        assert breaker.allow(at_ms)
        breaker.record_failure(at_ms)
    assert breaker.state == "open"
    return breaker


class PeerDown(Exception):
    pass


# --- the state machine ----------------------------------------------------------------


def test_a_new_breaker_is_closed_and_allows_calls() -> None:
    breaker = CircuitBreaker()
    assert breaker.state == "closed"
    assert all(breaker.allow(t) for t in range(100))
    assert breaker.rejections == 0


def test_it_opens_at_the_threshold_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3)
    breaker.record_failure(0)
    breaker.record_failure(1)
    assert breaker.state == "closed"
    breaker.record_failure(2)
    assert breaker.state == "open"
    assert breaker.opens == 1


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3)
    for t in range(10):
        breaker.record_failure(t)
        breaker.record_failure(t)
        breaker.record_success(t)
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0


def test_an_open_circuit_refuses_calls_until_the_cool_down_has_passed() -> None:
    breaker = opened(at_ms=1_000, cool_down_ms=500)
    assert not breaker.allow(1_000)
    assert breaker.retry_in_ms(1_000) == 500
    assert not breaker.allow(1_499)
    assert breaker.retry_in_ms(1_499) == 1
    assert breaker.rejections == 2
    assert breaker.allow(1_500)
    assert breaker.state == "half_open"


def test_half_open_admits_only_the_configured_number_of_probes() -> None:
    breaker = opened(cool_down_ms=100, half_open_max_calls=2)
    assert breaker.allow(100)
    assert breaker.allow(100)
    assert not breaker.allow(100)
    assert not breaker.allow(10_000)  # time does not free a probe slot; an outcome does
    assert breaker.state == "half_open"
    assert breaker.probes_in_flight == 2
    assert breaker.retry_in_ms(10_000) == 0


def test_a_successful_probe_closes_the_circuit() -> None:
    breaker = opened(cool_down_ms=100)
    assert breaker.allow(100)
    breaker.record_success(150)
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0
    assert all(breaker.allow(150) for _ in range(10))


def test_a_failed_probe_reopens_the_circuit_for_a_fresh_cool_down() -> None:
    breaker = opened(cool_down_ms=100)
    assert breaker.allow(100)
    breaker.record_failure(130)
    assert breaker.state == "open"
    assert breaker.opens == 2
    assert not breaker.allow(229)
    assert breaker.retry_in_ms(229) == 1
    assert breaker.allow(230)


def test_after_closing_it_takes_the_full_threshold_to_open_again() -> None:
    breaker = opened(cool_down_ms=0, failure_threshold=2)
    assert breaker.allow(0)
    breaker.record_success(0)
    breaker.record_failure(0)
    assert breaker.state == "closed"
    breaker.record_failure(0)
    assert breaker.state == "open"


def test_outcomes_while_open_change_nothing() -> None:
    breaker = opened(cool_down_ms=100)
    breaker.record_success(10)
    breaker.record_failure(50)  # would restart the cool-down if it counted
    assert breaker.state == "open"
    assert breaker.allow(100)


def test_an_outcome_from_an_older_generation_is_ignored() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cool_down_ms=100)
    assert breaker.allow(0)
    slow_call = breaker.generation
    breaker.record_failure(0)  # another call fails: open
    assert breaker.allow(100)  # probe
    breaker.record_success(120, generation=slow_call)
    assert breaker.state == "half_open"  # only the probe decides
    breaker.record_failure(130, generation=breaker.generation)
    assert breaker.state == "open"


def test_a_released_probe_slot_admits_another_probe() -> None:
    breaker = opened(cool_down_ms=0)
    assert breaker.allow(0)
    assert not breaker.allow(0)
    breaker.release_probe(generation=breaker.generation)
    assert breaker.state == "half_open"
    assert breaker.allow(0)


@pytest.mark.parametrize(
    "kwargs",
    [{"failure_threshold": 0}, {"cool_down_ms": -1}, {"half_open_max_calls": 0}],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)


class BreakerModel(RuleBasedStateMachine):
    """Random interleavings of time, admissions and outcomes against a reference model
    written as the rules of the brief, not as the implementation's code."""

    THRESHOLD = 3
    COOL_DOWN = 50
    PROBES = 2

    def __init__(self) -> None:
        super().__init__()
        self.breaker = CircuitBreaker(self.THRESHOLD, self.COOL_DOWN, self.PROBES)
        self.now = 0
        self.state = "closed"
        self.failures = 0
        self.reopen_at = 0
        self.probes = 0
        self.opens = 0
        self.rejections = 0

    def _open(self) -> None:
        self.state, self.reopen_at, self.failures = "open", self.now + self.COOL_DOWN, 0
        self.opens += 1

    @rule(ms=st.integers(min_value=0, max_value=80))
    def time_passes(self, ms: int) -> None:
        self.now += ms

    @rule()
    def ask(self) -> None:
        if self.state == "open" and self.now >= self.reopen_at:
            self.state, self.probes = "half_open", 0
        if self.state == "closed":
            expected = True
        elif self.state == "open":
            expected = False
        else:
            expected = self.probes < self.PROBES
            self.probes += expected
        self.rejections += not expected
        assert self.breaker.allow(self.now) is expected

    @rule()
    def succeed(self) -> None:
        self.breaker.record_success(self.now)
        if self.state in ("closed", "half_open"):
            self.state, self.failures = "closed", 0

    @rule()
    def fail(self) -> None:
        self.breaker.record_failure(self.now)
        if self.state == "closed":
            self.failures += 1
            if self.failures == self.THRESHOLD:
                self._open()
        elif self.state == "half_open":
            self._open()

    @precondition(lambda self: self.state == "half_open" and self.probes > 0)
    @rule()
    def cancel_a_probe(self) -> None:
        self.breaker.release_probe(generation=self.breaker.generation)
        self.probes -= 1

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.breaker.state == self.state
        assert self.breaker.consecutive_failures == self.failures
        assert self.breaker.opens == self.opens
        assert self.breaker.rejections == self.rejections
        if self.state == "half_open":
            assert self.breaker.probes_in_flight == self.probes <= self.PROBES
        if self.state == "open":
            assert self.breaker.retry_in_ms(self.now) == max(0, self.reopen_at - self.now)


TestBreakerModel = BreakerModel.TestCase
TestBreakerModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# --- call: the trio driver --------------------------------------------------------------


async def fail() -> None:
    raise PeerDown("no answer")


async def answer(value: int) -> int:
    return value


async def test_call_returns_the_answer_and_keeps_the_circuit_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = BreakerRegistry()
    assert await call(registry, "peer-a", answer, 7) == 7
    assert registry.get("peer-a").state == "closed"


async def test_call_counts_failures_reraises_them_and_then_fails_fast(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = BreakerRegistry(failure_threshold=2, cool_down_ms=5_000)
    for _ in range(2):
        with pytest.raises(PeerDown):
            await call(registry, "peer-a", fail)
    calls = 0

    async def counted() -> int:
        nonlocal calls
        calls += 1
        return 1

    start = trio.current_time()
    await trio.sleep(1)
    with pytest.raises(CircuitOpenError) as raised:
        await call(registry, "peer-a", counted)
    assert calls == 0
    assert trio.current_time() == start + 1  # it did not wait for anything
    assert raised.value.peer_id == "peer-a"
    assert raised.value.retry_in_ms == 4_000
    assert "peer-a" in str(raised.value)
    assert registry.opens == 1
    assert registry.rejections == 1
    # other peers are not affected
    assert await call(registry, "peer-b", counted) == 1


async def test_after_the_cool_down_a_probe_call_closes_the_circuit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = BreakerRegistry(failure_threshold=1, cool_down_ms=5_000)
    with pytest.raises(PeerDown):
        await call(registry, "peer-a", fail)
    await trio.sleep(5)
    assert await call(registry, "peer-a", answer, 1) == 1
    assert registry.get("peer-a").state == "closed"


async def test_only_one_probe_goes_out_while_half_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = BreakerRegistry(failure_threshold=1, cool_down_ms=1_000, half_open_max_calls=1)
    with pytest.raises(PeerDown):
        await call(registry, "peer-a", fail)
    await trio.sleep(1)
    refused: list[int] = []

    async def slow_answer() -> int:
        await trio.sleep(3)
        return 1

    async def second_caller() -> None:
        await trio.sleep(1)
        with pytest.raises(CircuitOpenError) as raised:
            await call(registry, "peer-a", answer, 2)
        refused.append(raised.value.retry_in_ms)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second_caller)
        assert await call(registry, "peer-a", slow_answer) == 1
    assert refused == [0]
    assert registry.get("peer-a").state == "closed"


async def test_a_cancelled_call_is_not_a_failure(autojump_clock: trio.testing.MockClock) -> None:
    registry = BreakerRegistry(failure_threshold=1)
    with trio.move_on_after(1):
        await call(registry, "peer-a", trio.sleep_forever)
    assert registry.get("peer-a").state == "closed"
    assert registry.get("peer-a").consecutive_failures == 0


async def test_a_cancelled_nursery_inside_the_call_is_not_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def fan_out() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)

    registry = BreakerRegistry(failure_threshold=1)
    with trio.move_on_after(1):
        await call(registry, "peer-a", fan_out)  # raises a group of Cancelled
    assert registry.get("peer-a").state == "closed"


async def test_a_timeout_inside_the_call_is_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def request() -> None:
        with trio.fail_after(2):
            await trio.sleep_forever()

    registry = BreakerRegistry(failure_threshold=1)
    with pytest.raises(trio.TooSlowError):
        await call(registry, "peer-a", request)
    assert registry.get("peer-a").state == "open"


async def test_a_cancelled_probe_gives_its_slot_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = BreakerRegistry(failure_threshold=1, cool_down_ms=1_000)
    with pytest.raises(PeerDown):
        await call(registry, "peer-a", fail)
    await trio.sleep(1)
    with trio.move_on_after(1):
        await call(registry, "peer-a", trio.sleep_forever)
    assert registry.get("peer-a").state == "half_open"
    assert await call(registry, "peer-a", answer, 3) == 3  # not stuck refusing everyone
    assert registry.get("peer-a").state == "closed"


async def test_call_reads_time_from_the_registry_clock() -> None:
    now = [0]
    registry = BreakerRegistry(failure_threshold=1, cool_down_ms=100, clock_ms=lambda: now[0])
    with pytest.raises(PeerDown):
        await call(registry, "peer-a", fail)
    now[0] = 99
    with pytest.raises(CircuitOpenError):
        await call(registry, "peer-a", answer, 1)
    now[0] = 100
    assert await call(registry, "peer-a", answer, 1) == 1


# --- the registry -----------------------------------------------------------------------


def test_the_registry_forgets_the_least_recently_used_idle_breaker() -> None:
    registry = BreakerRegistry(max_peers=3, failure_threshold=1)
    registry.get("a")
    registry.get("b").record_failure(0)  # open: not idle
    registry.get("c")
    registry.get("a")  # a is now more recently used than c
    registry.get("d")
    assert len(registry) == 3
    assert "c" not in registry
    assert {"a", "b", "d"} == {p for p in ("a", "b", "c", "d") if p in registry}
    assert registry.get("b").state == "open"  # the failing peer is remembered


def test_a_breaker_with_failures_counted_is_kept_over_an_idle_one() -> None:
    registry = BreakerRegistry(max_peers=2, failure_threshold=5)
    registry.get("a").record_failure(0)
    registry.get("b")
    registry.get("c")
    assert "a" in registry
    assert "b" not in registry


def test_when_no_breaker_is_idle_the_bound_still_holds() -> None:
    registry = BreakerRegistry(max_peers=2, failure_threshold=1)
    registry.get("a").record_failure(0)
    registry.get("b").record_failure(0)
    registry.get("c")
    assert len(registry) == 2
    assert "a" not in registry


def test_the_size_never_exceeds_the_bound() -> None:
    registry = BreakerRegistry(max_peers=16, failure_threshold=2)
    for i in range(1_000):
        breaker = registry.get(f"peer-{i}")
        if i % 3 == 0:
            breaker.record_failure(0)
        assert len(registry) <= 16


def test_peek_neither_creates_nor_touches() -> None:
    registry = BreakerRegistry(max_peers=2)
    assert registry.peek("a") is None
    assert len(registry) == 0
    registry.get("a")
    registry.get("b")
    registry.peek("a")
    registry.get("c")
    assert "a" not in registry


def test_counts_survive_eviction_and_stats_give_states() -> None:
    registry = BreakerRegistry(max_peers=2, failure_threshold=1, cool_down_ms=100)
    a = registry.get("a")
    a.record_failure(0)
    assert not a.allow(10)
    registry.get("b")
    registry.get("c")
    registry.get("d")  # each newcomer evicts the idle one (b, then c); "a" stays
    stats = registry.stats()
    assert stats.peers == 2
    assert (stats.closed, stats.open, stats.half_open) == (1, 1, 0)
    assert (stats.opens_total, stats.rejections_total) == (1, 1)
    registry.get("e").record_failure(0)  # evicts the idle one, then e opens
    registry.get("f")  # nothing idle: "a" (LRU) goes
    assert "a" not in registry
    assert (registry.opens, registry.rejections) == (2, 1)


def test_registry_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        BreakerRegistry(max_peers=0)
    with pytest.raises(ValueError):
        BreakerRegistry(failure_threshold=0)
