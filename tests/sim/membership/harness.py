"""Deterministic membership simulation: N `Membership` cores on the seeded network of
tests/sim, in simulated time, with crashes, pauses, restarts, graceful leaves, joins,
partitions and injected (forged) bytes.

A tiny driver does, in simulated time, what node.gossip.service does for real: it hands each
core the wire bytes that reach it (`on_message`), delivers the `Send`s it returns through the
network (random delay, loss, duplication, timed partitions), and calls `tick` when
`next_tick_ms()` says something is due, rounded up to the driver's tick period
(`tick_quantum_ms`, 50 ms like the service's loop). A crashed member gets nothing and sends
nothing. A member that leaves sends what `leave()` returns and stops, as the service does on
shutdown.

One seed determines everything: node ids and keys are fixed per index, every random choice
comes from `random.Random` instances derived from the seed, events run in (time, sequence)
order, and no set or hash-ordered collection is iterated.

Signatures: `crypto="ed25519"` uses real node keys, libp2p peer ids as node ids and
node.p2p.addrs.public_key_of to verify (each distinct verification done once per run, as the
results cannot change). `crypto="stand-in"` (the default, and what bench/membership.py uses for
1,000 members) replaces ed25519 with HMAC-SHA256 under a per-member secret that only the
simulation's keyring holds: as with real keys, nobody can sign for another member's id, at
about 1 us instead of 50-75 us per operation.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from node.crypto import Ed25519Key
from node.crypto import verify as ed25519_verify
from node.gossip.swim import ALIVE, DEAD, LEFT, SUSPECT, Membership, Send, SwimConfig
from node.gossip.swim_messages import Kind
from tests.sim.network import Delivery, EventQueue, Network, NetworkConfig

LAN = NetworkConfig(min_delay_ms=1, max_delay_ms=20)
LOSSY = NetworkConfig(min_delay_ms=1, max_delay_ms=40, drop=0.2, duplicate=0.02)


def sim_seeds(count: int) -> list[int]:
    """Seeds 0 .. count-1, or only SIM_SEED when it is set (to reproduce one run)."""
    wanted = os.environ.get("SIM_SEED")
    return [int(wanted)] if wanted else list(range(count))


def suspicion_timeout_ms(config: SwimConfig, n: int) -> tuple[int, int]:
    """(min, max) suspicion timeout in a cluster of `n`, as node.gossip.swim documents it:
    min = suspicion_mult * max(1, log10(n)) * probe_interval, max = suspicion_max_mult * min."""
    low = math.floor(config.suspicion_mult * max(1.0, math.log10(n)) * config.probe_interval_ms)
    return low, config.suspicion_max_mult * low


# ---- keys ---------------------------------------------------------------------------------------


class StandInKeys:
    """HMAC-SHA256 under a per-member secret held here: a cheap stand-in for ed25519."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._secrets: dict[str, bytes] = {}

    def node_id(self, index: int) -> str:
        node_id = f"sim-{index:04d}"
        self._secrets.setdefault(
            node_id, hashlib.sha256(f"stand-in key {self._seed}/{index}".encode()).digest())
        return node_id

    def signer(self, node_id: str) -> Callable[[bytes], bytes]:
        secret = self._secrets[node_id]
        return lambda message: hmac.digest(secret, message, "sha256")

    def verify(self, node_id: str, message: bytes, signature: bytes) -> bool:
        secret = self._secrets.get(node_id)
        return secret is not None and hmac.compare_digest(
            hmac.digest(secret, message, "sha256"), signature)


class Ed25519Keys:
    """Real node keys and libp2p peer ids; verification through the id's embedded key."""

    def __init__(self, seed: int) -> None:
        from node.p2p.addrs import public_key_of
        from node.p2p.host import peer_id_of

        self._seed = seed
        self._peer_id_of = peer_id_of
        self._public_key_of = public_key_of
        self._keys: dict[str, Ed25519Key] = {}
        self._ids: dict[int, str] = {}
        self._checked: dict[tuple[str, bytes, bytes], bool] = {}

    def node_id(self, index: int) -> str:
        node_id = self._ids.get(index)
        if node_id is None:
            key = Ed25519Key(hashlib.sha256(f"sim member {self._seed}/{index}".encode()).digest())
            node_id = self._ids[index] = self._peer_id_of(key)
            self._keys[node_id] = key
        return node_id

    def signer(self, node_id: str) -> Callable[[bytes], bytes]:
        return self._keys[node_id].sign

    def verify(self, node_id: str, message: bytes, signature: bytes) -> bool:
        k = (node_id, message, signature)
        ok = self._checked.get(k)
        if ok is None:
            public_key = self._public_key_of(node_id)
            ok = self._checked[k] = public_key is not None and ed25519_verify(
                public_key, message, signature)
        return ok


# ---- the simulation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SimSpec:
    n: int = 50
    regions: tuple[str, ...] = ("eu", "us", "ap")
    network: NetworkConfig = LAN
    swim: SwimConfig = SwimConfig()
    crypto: str = "stand-in"  # or "ed25519"
    join_spacing_ms: int = 20  # member i starts and joins at i * join_spacing_ms
    seeds: int = 3  # each joins through up to this many members already started
    tick_quantum_ms: int = 50
    core: type[Membership] = Membership


@dataclass(frozen=True)
class Tick:
    index: int
    generation: int


@dataclass(frozen=True)
class Injected:
    src: int
    dst: int
    data: bytes


@dataclass
class SimMember:
    index: int
    node_id: str
    region: str
    core: Membership
    running: bool = True
    generation: int = 0
    wake_ms: int = -1


@dataclass
class Observation:
    """When each member first saw each other member in each state (from the cores' events)."""

    at: dict[tuple[int, str, str], int] = field(default_factory=dict)  # (observer, subject, kind)

    def first(self, observer: int, subject: str, kind: str) -> int | None:
        return self.at.get((observer, subject, kind))


class MembershipSim:
    def __init__(self, spec: SimSpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed
        self.rng = random.Random(seed)
        self.keys: StandInKeys | Ed25519Keys = (
            Ed25519Keys(seed) if spec.crypto == "ed25519" else StandInKeys(seed))
        self.queue = EventQueue()
        self.network = Network(spec.network, random.Random(self.rng.getrandbits(64)), self.queue)
        self.members: list[SimMember] = []
        self.by_id: dict[str, int] = {}
        self.trace: list[tuple[int, int, str, str, int]] = []
        self.seen = Observation()
        self.down_since: dict[int, int] = {}  # crashed, paused or left -> since when
        self.went_down: dict[int, int] = {}  # -> the first time it did
        self.bytes_by_kind: dict[int, int] = {}
        self.events = 0
        for i in range(spec.n):
            self.queue.at(i * spec.join_spacing_ms, ("start", i))
            self._make(i)

    # ---- members ------------------------------------------------------------------------

    def _make(self, index: int, *, region: str | None = None) -> SimMember:
        node_id = self.keys.node_id(index)
        region = region or self.spec.regions[index % len(self.spec.regions)]
        core = self._core(index, node_id, region, joined_at_ms=self.queue.now_ms)
        if index < len(self.members):
            m = self.members[index]
            m.core, m.generation, m.wake_ms = core, m.generation + 1, -1
            m.region = region
        else:
            m = SimMember(index, node_id, region, core, running=False)
            self.members.append(m)
            self.by_id[node_id] = index
        return m

    def _core(self, index: int, node_id: str, region: str, joined_at_ms: int) -> Membership:
        return self.spec.core(
            self_id=node_id, region=region, addrs=(f"/ip4/10.0.{index // 250}.{index % 250}"
                                                   f"/tcp/4001/p2p/{node_id}",),
            joined_at_ms=joined_at_ms, config=self.spec.swim,
            rng=random.Random(f"{self.seed}/{index}/{self.queue.now_ms}"),
            sign=self.keys.signer(node_id), verify=self.keys.verify)

    def _start(self, index: int, seeds: list[int] | None = None) -> None:
        m = self.members[index]
        m.running = True
        self.down_since.pop(index, None)
        if seeds is None:
            started = [j for j in range(len(self.members))
                       if j != index and self.members[j].running]
            seeds = self.rng.sample(started, min(self.spec.seeds, len(started)))
        self._act(m, m.core.join([self.members[j].node_id for j in seeds], self.now))

    @property
    def now(self) -> int:
        return self.queue.now_ms

    def running(self) -> list[int]:
        return [m.index for m in self.members if m.running]

    def crash(self, index: int) -> None:
        """The member stops: it answers nothing and sends nothing, for good."""
        self.members[index].running = False
        self.down_since[index] = self.now
        self.went_down.setdefault(index, self.now)

    def pause(self, index: int) -> None:
        """Like a crash, but `resume` brings the same core back (a long GC pause, a cable)."""
        self.crash(index)

    def resume(self, index: int) -> None:
        m = self.members[index]
        m.running = True
        m.wake_ms = -1
        self.down_since.pop(index, None)
        self._schedule(m)

    def restart(self, index: int, seeds: list[int] | None = None) -> None:
        """A crashed member's process starts again: a new core, same key, joined now."""
        self._make(index, region=self.members[index].region)
        self._start(index, seeds)

    def leave(self, index: int) -> None:
        m = self.members[index]
        self._act(m, m.core.leave(self.now))
        m.running = False
        self.down_since[index] = self.now
        self.went_down.setdefault(index, self.now)

    def add(self, region: str | None = None, seeds: list[int] | None = None) -> int:
        """A new member joins now; returns its index."""
        index = len(self.members)
        self._make(index, region=region)
        self._start(index, seeds)
        return index

    def inject(self, src: int, dst: int, data: bytes, delay_ms: int = 0) -> None:
        """Bytes that `src` sends `dst` outside the protocol (a Byzantine member)."""
        self.queue.after(delay_ms, Injected(src, dst, data))

    # ---- the driver ---------------------------------------------------------------------

    def _act(self, m: SimMember, sends: list[Send]) -> None:
        for s in sends:
            dst = self.by_id.get(s.to)
            kind = s.data[2] if len(s.data) > 2 else -1
            self.bytes_by_kind[kind] = self.bytes_by_kind.get(kind, 0) + len(s.data)
            if dst is not None:
                self.network.send(m.index, dst, s.data)
        for ev in m.core.take_events():
            kind = type(ev).__name__
            self.trace.append((self.now, m.index, kind, ev.node_id, ev.incarnation))
            self.seen.at.setdefault((m.index, ev.node_id, kind), self.now)
        if m.running:
            self._schedule(m)

    def _schedule(self, m: SimMember) -> None:
        q = self.spec.tick_quantum_ms
        wake = max(m.core.next_tick_ms(), self.now + 1)
        if q > 1:
            wake = -(-wake // q) * q
        if m.wake_ms <= self.now or wake < m.wake_ms:
            m.wake_ms = wake
            self.queue.at(wake, Tick(m.index, m.generation))

    def _deliver(self, src: int, dst: int, data: bytes) -> None:
        m = self.members[dst]
        if m.running:
            self._act(m, m.core.on_message(self.members[src].node_id, data, self.now))

    def step(self) -> None:
        item = self.queue.pop()
        self.events += 1
        if isinstance(item, Delivery):
            if self.network.arrives(item):
                self._deliver(item.src, item.dst, item.message)
        elif isinstance(item, Tick):
            m = self.members[item.index]
            if m.running and item.generation == m.generation and m.wake_ms == self.now:
                m.wake_ms = -1
                self._act(m, m.core.tick(self.now))
        elif isinstance(item, Injected):
            self._deliver(item.src, item.dst, item.data)
        elif isinstance(item, tuple) and item[0] == "start":
            self._start(item[1], [] if item[1] == 0 else None)

    def run_until(self, t_ms: int) -> None:
        while len(self.queue) and self.queue.next_time_ms() <= t_ms:
            self.step()
        self.queue.now_ms = max(self.queue.now_ms, t_ms)

    def settle(self, within_ms: int = 30_000) -> int:
        """Run until every member has started and the view has converged; the time."""
        self.run_until(self.spec.n * self.spec.join_spacing_ms)
        at = self.run_until_true(self.converged, self.now + within_ms)
        assert at is not None, f"no convergence after start: {self.describe()}"
        return at

    def run_until_true(self, predicate: Callable[[], bool], deadline_ms: int,
                       every_ms: int = 100) -> int | None:
        """Run until `predicate()` holds (checked every `every_ms`); the time, or None."""
        while self.now <= deadline_ms:
            if predicate():
                return self.now
            self.run_until(self.now + every_ms)
        return None

    # ---- views and checks ---------------------------------------------------------------

    def state(self, observer: int, subject: int) -> str | None:
        v = self.members[observer].core.member(self.members[subject].node_id)
        return None if v is None else v.state

    def live_set(self, observer: int) -> tuple[str, ...]:
        return tuple(v.node_id for v in self.members[observer].core.members()
                     if v.state in (ALIVE, SUSPECT))

    def truth(self) -> tuple[str, ...]:
        return tuple(sorted(self.members[i].node_id for i in self.running()))

    def converged(self) -> bool:
        """Every running member holds exactly the running members alive or suspect."""
        want = self.truth()
        return all(self.live_set(i) == want for i in self.running())

    def all_see(self, subject: int, states: tuple[str, ...]) -> bool:
        return all(self.state(i, subject) in states for i in self.running() if i != subject)

    def leaders(self, observer: int) -> dict[str, str]:
        from node.gossip.leader import leaders

        return leaders(self.members[observer].core.members())

    def false_events(self, kind: str) -> list[tuple[int, int, str, str, int]]:
        """Events of `kind` (MemberDead, MemberSuspected) about members that had never
        crashed, paused or left by then."""
        out = []
        for e in self.trace:
            t, _, k, subject, _ = e
            down = self.went_down.get(self.by_id[subject])
            if k == kind and (down is None or t < down):
                out.append(e)
        return out

    def stats_total(self, name: str) -> int:
        return sum(getattr(m.core.stats, name) for m in self.members)

    def digest(self) -> str:
        """One string for the whole run, to compare two runs of a seed."""
        stats = [m.core.stats for m in self.members]
        h = hashlib.sha256(repr((self.trace, self.now, self.events, self.network.stats,
                                 stats, sorted(self.bytes_by_kind.items()))).encode())
        return h.hexdigest()

    def describe(self) -> str:
        return (f"seed {self.seed}, n={self.spec.n}, t={self.now} ms, {self.events} events, "
                f"{self.network.stats}; reproduce with SIM_SEED={self.seed}")

    def bytes_of(self, *kinds: Kind) -> int:
        return sum(self.bytes_by_kind.get(int(k), 0) for k in kinds)


STATES = (ALIVE, SUSPECT, DEAD, LEFT)
