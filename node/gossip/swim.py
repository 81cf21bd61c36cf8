"""SWIM membership and failure detection with Lifeguard, as a sans-IO core.

SWIM (Das, Gupta, Motivala, DSN 2002) as HashiCorp memberlist practises it, with Lifeguard
(Dadgar, Phillips, Currey, 2018). `Membership` never sends, sleeps, reads a clock or draws
its own random numbers: the driver hands it wire bytes, the time and a seeded `random.Random`,
and delivers the `Send`s it returns (one-way datagrams; any may be lost).

Failure detection, once per protocol period (`probe_interval_ms`, stretched by local health):
- probe the next member of a shuffled round-robin list with a ping; no ack within
  `probe_timeout_ms` -> ask `indirect_checks` random members to probe it (ping_req); they
  relay its ack (indirect_ack), or answer `nack` if it stays silent (Lifeguard);
- no ack by the end of the period -> the target becomes *suspect*. A suspicion turns into
  *dead* only if not refuted before its timeout; the timeout starts at
  `suspicion_max_mult * min` and shrinks towards `min = suspicion_mult *
  max(1, log10(N)) * probe_interval` as independent suspicions of the same member arrive
  (Lifeguard's dynamic suspicion; memberlist's formula, with max(1, .) so small clusters get
  one period of slack per multiple).
- Lifeguard local health: a prober whose probes fail although helpers were asked and did not
  even nack (or who had to refute a suspicion of itself) is probably the slow one, so its
  health score rises and its probe timeout and period stretch by (score + 1), up to
  `awareness_max_multiplier`; every successful probe lowers the score.
- Buddy system: a ping to a member we hold suspect says so, and the member refutes at once;
  its ack carries its new incarnation and, first among the piggybacked updates, the
  refutation (or, if it refuted that suspicion already, its current alive).
- Doubts are answered directly: a member we hold suspect, dead or left that talks to us is
  told so; a member that passes us a suspicion or death of ours gets our latest alive back
  (each at most once a period per member), so a member that missed every copy of a
  refutation is repaired before its suspicion times out.

Dissemination: every message piggybacks the pending updates that were sent least often
(newest first), at most `max_updates_per_message` / `max_piggyback_bytes`; each update is
sent `retransmit_mult * ceil(log10(N + 1))` times, and a newer update about a member replaces
the older one. While updates are pending, every `gossip_interval_ms` a gossip round pushes
them to `gossip_nodes` random members, including members that died less than
`gossip_to_the_dead_ms` ago (so a wrongly declared member hears it). Every
`push_pull_interval_ms` (times ceil(N / 32) beyond 32 members, so that its bytes per member
stay flat; memberlist scales it with log2 N) a full state
exchange with one random alive member repairs divergence; joining is a push_pull with seeds,
and two periods after the first answer our alive is gossiped again (a second epidemic: the
first misses a member now and then). A member that hears from a stranger (a member it never
heard of) exchanges state with it, at most once a period in all.

Precedence (per member; `i`, `j` incarnations; only the member raises its own):
| held \\ heard | alive(i) | suspect(i) | dead(i) | left(i) |
|---|---|---|---|---|
| alive(j)   | i > j           | i == j: suspect        | i == j: suspect  | i >= j: left |
| suspect(j) | i > j: alive    | i == j: confirmation   | i == j: confirm. | i >= j: left |
| dead(j)    | i > j and newer joined_at: rejoined | - | - | i >= j: left |
| left(j)    | i > j and newer joined_at: rejoined | - | - | - |
Suspect and dead are unsigned claims: a dead heard from others (gossip, piggyback or state
exchange) only makes the member suspect here, as a confirmation from its declarer, and only
our own suspicion timeout declares a death, so a liar cannot kill a live member. Suspect and
dead at an incarnation other than the one held are ignored (stale, or unknown: nobody but the
member can know a higher one). Alive and left must carry the subject's
signature (`verify(node_id, signed_bytes, signature)`), checked before anything changes; a
message carrying one bad signature is rejected whole and counted.

About ourselves: suspect(i >= ours) -> refute with alive(i + 1). Dead (i >= the incarnation
we joined with) told directly by its declarer, who holds us dead, or a left at such an
incarnation (signed by us, so from a previous life) -> rejoin: alive(i + 1) with a new
`joined_at_ms`, so a member that was declared dead comes back as the youngest. A dead
relayed by others (i >= ours) is only refuted, keeping our age: a liar cannot make a leader
the youngest by passing round a claim. A member contacted by one it holds dead (or left)
tells it so, so the rejoin happens even when nobody gossips to it any more. After a
partition, each side also push_pulls with a random member it holds dead every
`reconnect_interval_ms` (serf's reconnect), so the halves find each other again.

Robustness: every message is decoded with limits (swim_messages); each sender gets a token
bucket (`rate_limit_per_s`, burst `rate_limit_burst`, a push_pull costs `push_pull_cost`);
excess is dropped and counted; the member table holds at most `max_members` entries, and
dead/left entries are forgotten after `tombstone_ms`.

Time: `now_ms` may be monotonic; `joined_at_ms` is wall-clock milliseconds, and a rejoin
stamps `joined_at_ms + (now_ms - first now_ms seen)`. Determinism: the only randomness is the
given `rng`, and no set or hash-ordered collection is ever iterated.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from node.codec import DecodeError
from node.gossip.swim_messages import (
    MAX_MEMBERS,
    MAX_MESSAGE_BYTES,
    MAX_PUSH_PULL_BYTES,
    MAX_SEQ,
    MAX_UINT,
    MAX_UPDATES,
    Ack,
    Alive,
    Dead,
    Gossip,
    IndirectAck,
    Leave,
    Left,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    Update,
    check_alive_fields,
    decode,
    encode,
    encoded_size,
    is_node_id,
)

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
LEFT = "left"

Sign = Callable[[bytes], bytes]
Verify = Callable[[str, bytes, bytes], bool]


@dataclass(frozen=True)
class SwimConfig:
    """Protocol knobs in integer milliseconds; memberlist's LAN defaults (notes/swim.md)."""

    probe_interval_ms: int = 1000
    probe_timeout_ms: int = 500
    indirect_checks: int = 3
    retransmit_mult: int = 4
    suspicion_mult: int = 4
    suspicion_max_mult: int = 6
    gossip_interval_ms: int = 200
    gossip_nodes: int = 3
    push_pull_interval_ms: int = 30_000
    max_updates_per_message: int = 16
    max_piggyback_bytes: int = 4096
    awareness_max_multiplier: int = 8  # Lifeguard: timeouts stretch at most this much
    nack_at_pct: int = 80  # a helper nacks after this share of the probe timeout
    gossip_to_the_dead_ms: int = 30_000
    reconnect_interval_ms: int = 10_000
    join_retry_ms: int = 2_000
    leave_fanout: int = 8  # members told directly of a graceful leave
    tombstone_ms: int = 3_600_000
    max_members: int = MAX_MEMBERS
    max_relays: int = 256  # indirect probes served at once
    rate_limit_per_s: int = 50
    rate_limit_burst: int = 100
    push_pull_cost: int = 10  # tokens of the sender's bucket a push_pull takes

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if type(value) is not int or value < 0:
                raise ValueError(f"swim config {name} must be a non-negative integer")
        for name in ("probe_interval_ms", "probe_timeout_ms", "retransmit_mult",
                     "suspicion_mult", "suspicion_max_mult", "gossip_interval_ms",
                     "push_pull_interval_ms", "max_updates_per_message", "max_piggyback_bytes",
                     "awareness_max_multiplier", "reconnect_interval_ms", "join_retry_ms",
                     "rate_limit_per_s", "rate_limit_burst", "push_pull_cost"):
            if getattr(self, name) == 0:
                raise ValueError(f"swim config {name} must be positive")
        if self.probe_timeout_ms > self.probe_interval_ms:
            raise ValueError("swim config probe_timeout_ms must not exceed probe_interval_ms")
        if not 2 <= self.max_members <= MAX_MEMBERS:
            raise ValueError(f"swim config max_members must be in [2, {MAX_MEMBERS}]")
        if self.max_updates_per_message > MAX_UPDATES:
            raise ValueError(f"swim config max_updates_per_message must be <= {MAX_UPDATES}")
        if self.max_piggyback_bytes > MAX_MESSAGE_BYTES // 2:
            raise ValueError("swim config max_piggyback_bytes must be <= "
                             f"{MAX_MESSAGE_BYTES // 2}")
        if self.push_pull_cost > self.rate_limit_burst:
            raise ValueError("swim config push_pull_cost must not exceed rate_limit_burst")
        if not 0 < self.nack_at_pct <= 100:
            raise ValueError("swim config nack_at_pct must be in (0, 100]")


# ---- what the core hands out -------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Deliver `data` to node `to` (a datagram: it may be lost, and nobody waits for it)."""

    to: str
    data: bytes


@dataclass(frozen=True)
class MemberView:
    node_id: str
    region: str
    addrs: tuple[str, ...]
    state: str  # 'alive' | 'suspect' | 'dead' | 'left'
    incarnation: int
    joined_at_ms: int
    state_since_ms: int


@dataclass(frozen=True)
class MemberJoined:
    """A member we did not hold alive is alive: new, or rejoined after dead/left."""

    node_id: str
    at_ms: int
    incarnation: int


@dataclass(frozen=True)
class MemberSuspected:
    node_id: str
    at_ms: int
    incarnation: int


@dataclass(frozen=True)
class MemberDead:
    node_id: str
    at_ms: int
    incarnation: int


@dataclass(frozen=True)
class MemberLeft:
    node_id: str
    at_ms: int
    incarnation: int


@dataclass(frozen=True)
class MemberAlive:
    """A suspect member refuted the suspicion."""

    node_id: str
    at_ms: int
    incarnation: int


Event = MemberJoined | MemberSuspected | MemberDead | MemberLeft | MemberAlive


@dataclass
class SwimStats:
    probes_sent: int = 0
    probes_failed: int = 0
    indirect_probes: int = 0  # ping_reqs we sent
    suspicions: int = 0  # members that became suspect in our view
    deaths: int = 0  # members that became dead in our view
    refutations: int = 0  # suspicions of ourselves we refuted
    rejoins: int = 0  # times we heard we were dead (or left) and rejoined as the youngest
    push_pulls: int = 0  # state exchanges we started (joins, anti-entropy, reconnects)
    bytes_sent: int = 0
    messages_sent: int = 0
    rejected_messages: int = 0  # malformed, misaddressed or carrying a bad signature
    rejected_updates: int = 0  # bad signatures; new members beyond max_members
    rate_limited: int = 0  # messages dropped by a sender's token bucket


# ---- internals ---------------------------------------------------------------------------------


@dataclass
class _Member:
    alive: Alive  # latest accepted signed record
    state: str
    incarnation: int
    since_ms: int
    left: Left | None = None
    accuser: str = ""  # who raised the suspicion or declared the death we hold

    def view(self) -> MemberView:
        a = self.alive
        return MemberView(a.node_id, a.region, a.addrs, self.state, self.incarnation,
                          a.joined_at_ms, self.since_ms)


@dataclass
class _Suspicion:
    """Lifeguard's dynamic suspicion timer: `k` independent confirmations bring the timeout
    from `max_ms` down to `min_ms`, logarithmically (memberlist's suspicion.go)."""

    first_from: str
    started_ms: int
    min_ms: int
    max_ms: int
    k: int
    confirmations: list[str] = field(default_factory=list)

    @property
    def deadline_ms(self) -> int:
        if self.k < 1:
            return self.started_ms + self.min_ms
        frac = math.log(len(self.confirmations) + 1) / math.log(self.k + 1)
        timeout = math.floor(self.max_ms - frac * (self.max_ms - self.min_ms))
        return self.started_ms + max(self.min_ms, timeout)

    def confirm(self, from_id: str) -> bool:
        if len(self.confirmations) >= self.k or from_id == self.first_from \
                or from_id in self.confirmations:
            return False
        self.confirmations.append(from_id)
        return True


@dataclass
class _Probe:
    target: str
    incarnation: int
    seq: int
    timeout_at_ms: int
    deadline_ms: int
    helpers: tuple[str, ...] = ()
    nacks: list[str] = field(default_factory=list)
    indirect_sent: bool = False


@dataclass
class _Relay:
    """A probe we make on `requester`'s behalf (we answer its ping_req)."""

    requester: str
    seq: int  # the requester's
    target: str
    nack_at_ms: int
    expires_at_ms: int
    nacked: bool = False


@dataclass
class _Broadcast:
    update: Update
    size: int
    seq: int
    transmits: int = 0


class _TransmitQueue:
    """memberlist's TransmitLimitedQueue: fewest transmits first, newest first among equals;
    one pending update per member (a newer one replaces it)."""

    def __init__(self) -> None:
        self._pending: dict[str, _Broadcast] = {}
        self._heap: list[tuple[int, int, _Broadcast]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, update: Update) -> None:
        self._seq += 1
        b = _Broadcast(update, encoded_size(update), self._seq)
        self._pending[update.node_id] = b
        heapq.heappush(self._heap, (0, -b.seq, b))

    def take(self, max_count: int, max_bytes: int, limit: int) -> tuple[Update, ...]:
        out: list[Update] = []
        used = 0
        again: list[_Broadcast] = []
        while self._heap and len(out) < max_count:
            transmits, _, b = self._heap[0]
            if self._pending.get(b.update.node_id) is not b or b.transmits != transmits:
                heapq.heappop(self._heap)  # replaced, or queued again since
                continue
            if out and used + b.size > max_bytes:
                break
            heapq.heappop(self._heap)
            b.transmits += 1
            out.append(b.update)
            used += b.size
            if b.transmits >= limit:
                del self._pending[b.update.node_id]
            else:
                again.append(b)
        for b in again:
            heapq.heappush(self._heap, (b.transmits, -b.seq, b))
        return tuple(out)


class _IdSet:
    """Node ids with O(1) add, discard and random sampling, in a deterministic order."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._index

    def add(self, node_id: str) -> None:
        if node_id not in self._index:
            self._index[node_id] = len(self.items)
            self.items.append(node_id)

    def discard(self, node_id: str) -> None:
        i = self._index.pop(node_id, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self._index[last] = i

    def sample(self, rng: random.Random, k: int, exclude: Sequence[str] = ()) -> list[str]:
        n = len(self.items)
        if k <= 0 or n == 0:
            return []
        if k + len(exclude) >= n:
            pool = [x for x in self.items if x not in exclude]
            rng.shuffle(pool)
            return pool[:k]
        return [x for x in rng.sample(self.items, k + len(exclude)) if x not in exclude][:k]


class _RateLimiter:
    """A token bucket per sender, in milli-tokens so integer milliseconds refill exactly."""

    def __init__(self, per_s: int, burst: int, max_senders: int) -> None:
        self.per_s = per_s
        self.full = burst * 1000
        self.max_senders = max_senders
        self._buckets: dict[str, tuple[int, int]] = {}

    def allow(self, sender: str, now_ms: int, cost: int = 1) -> bool:
        tokens, last = self._buckets.get(sender, (self.full, now_ms))
        tokens = min(self.full, tokens + max(0, now_ms - last) * self.per_s)
        ok = tokens >= cost * 1000
        self._buckets[sender] = (tokens - cost * 1000 if ok else tokens, now_ms)
        if len(self._buckets) > self.max_senders:
            self._forget_idle(now_ms)
        return ok

    def _forget_idle(self, now_ms: int) -> None:
        """A bucket that has refilled holds no information: forget it (a flood of distinct
        senders cannot grow the table without bound)."""
        self._buckets = {s: (t, last) for s, (t, last) in self._buckets.items()
                         if t + max(0, now_ms - last) * self.per_s < self.full}
        if len(self._buckets) > self.max_senders:
            self._buckets = {}


# ---- the core ----------------------------------------------------------------------------------


class Membership:
    """One member's view of the cluster and its part in SWIM; see the module docstring."""

    def __init__(self, *, self_id: str, region: str, addrs: tuple[str, ...], joined_at_ms: int,
                 config: SwimConfig, rng: random.Random, sign: Sign, verify: Verify) -> None:
        check_alive_fields(self_id, 0, region, tuple(addrs), joined_at_ms)
        self.self_id = self_id
        self.region = region
        self.addrs = tuple(addrs)
        self.config = config
        self.stats = SwimStats()
        self._rng = rng
        self._sign = sign
        self._verify = verify
        self._incarnation = 0
        self._joined_at_ms = joined_at_ms
        self._joined_inc = 0  # incarnation of our latest (re)join: older deaths are history
        self._wall_offset: int | None = None  # joined_at_ms - first now_ms
        self._members: dict[str, _Member] = {}
        self._live = _IdSet()  # alive or suspect, not us
        self._recent_dead: dict[str, int] = {}  # dead or left -> since (gossip to the dead)
        self._suspicions: dict[str, _Suspicion] = {}
        self._queue = _TransmitQueue()
        self._events: list[Event] = []
        self._limiter = _RateLimiter(config.rate_limit_per_s, config.rate_limit_burst,
                                     4 * config.max_members)
        self._health = 0  # Lifeguard local health score, 0 .. awareness_max_multiplier - 1
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._probe_pos = 0
        self._relays: dict[int, _Relay] = {}
        self._noticed: dict[str, int] = {}  # member we told it is suspect or dead -> when
        self._answered: dict[str, int] = {}  # member that doubted us, sent our alive -> when
        self._seeds: list[str] = []
        self._joined = True
        self._leaving = False
        self._started = False
        self._now_ms = 0
        self._next_probe_ms = 0
        self._next_gossip_ms = 0
        self._next_push_pull_ms = 0
        self._next_reconnect_ms = 0
        self._next_join_retry_ms = 0
        self._next_reap_ms = 0
        self._next_stranger_ms = 0
        self._reannounce_ms: int | None = None
        self._alive = Alive.signed(sign, self_id, 0, region, self.addrs, joined_at_ms)
        self._members[self_id] = _Member(self._alive, ALIVE, 0, 0)

    # ---- the driver's interface ------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def local_health(self) -> int:
        """Lifeguard's score: probe timeouts and the period are stretched by (score + 1)."""
        return self._health

    def join(self, seeds: list[str], now_ms: int) -> list[Send]:
        """Exchange state with `seeds` (node ids the driver can reach); retried by `tick`
        every `join_retry_ms` until one answers."""
        self._clock(now_ms)
        self._seeds = [s for s in dict.fromkeys(seeds) if s != self.self_id and is_node_id(s)]
        self._joined = not self._seeds
        out: list[Send] = []
        self._push_pull_seeds(now_ms, out)
        return out

    def tick(self, now_ms: int) -> list[Send]:
        """Run what is due at `now_ms`. Call it at least every 50-100 ms (or at
        `next_tick_ms()`, and again after every other call)."""
        self._clock(now_ms)
        out: list[Send] = []
        c = self.config
        if self._leaving:
            self._gossip_round(now_ms, out)
            return out
        if not self._joined and now_ms >= self._next_join_retry_ms:
            self._push_pull_seeds(now_ms, out)
        if self._reannounce_ms is not None and now_ms >= self._reannounce_ms:
            # A second wave of our join: an epidemic misses a member now and then, and the
            # member that missed it would not hear of us until the next state exchange.
            self._reannounce_ms = None
            self._queue.push(self._alive)
        self._tick_probe(now_ms, out)
        self._tick_relays(now_ms, out)
        for node_id in [n for n, s in self._suspicions.items() if now_ms >= s.deadline_ms]:
            self._declare_dead(self._members[node_id], now_ms)
        self._gossip_round(now_ms, out)
        if now_ms >= self._next_push_pull_ms:
            self._next_push_pull_ms = now_ms + self._push_pull_interval_ms()
            alive = [n for n in self._live.sample(self._rng, 3)
                     if self._members[n].state == ALIVE]
            if alive:
                self.stats.push_pulls += 1
                self._send_bytes(out, alive[0], self._state_bytes(reply=False))
        if now_ms >= self._next_reconnect_ms:
            self._next_reconnect_ms = now_ms + c.reconnect_interval_ms
            self._reconnect(now_ms, out)
        if now_ms >= self._next_reap_ms:
            self._next_reap_ms = now_ms + 10 * c.probe_interval_ms
            self._reap(now_ms)
        return out

    def on_message(self, from_id: str, data: bytes, now_ms: int) -> list[Send]:
        """Handle wire bytes from `from_id` (authenticated by the transport)."""
        self._clock(now_ms)
        if from_id == self.self_id or not is_node_id(from_id):
            self.stats.rejected_messages += 1
            return []
        if not self._limiter.allow(from_id, now_ms):
            self.stats.rate_limited += 1
            return []
        try:
            msg = decode(data)
        except DecodeError:
            self.stats.rejected_messages += 1
            return []
        if isinstance(msg, PushPull) and \
                not self._limiter.allow(from_id, now_ms, self.config.push_pull_cost - 1):
            self.stats.rate_limited += 1
            return []
        out: list[Send] = []
        if self._leaving:  # still answer probes (the ack carries our `left`), nothing else
            if isinstance(msg, Ping) and msg.target == self.self_id:
                self._send(out, from_id, Ack(msg.seq, self._incarnation, self._piggyback()))
            return out
        if isinstance(msg, Ping) and msg.target != self.self_id or \
                isinstance(msg, Leave) and msg.left.node_id != from_id:
            self.stats.rejected_messages += 1  # misaddressed, or a leave relayed by another
            return []
        updates = msg.records if isinstance(msg, PushPull) else (msg.left,) \
            if isinstance(msg, Leave) else msg.updates
        forged = sum(1 for u in updates if not self._authentic(u))
        if forged:
            self.stats.rejected_messages += 1
            self.stats.rejected_updates += forged
            return []
        for u in updates:
            self._apply(from_id, u, now_ms)
        self._handle(from_id, msg, now_ms, out)
        if any(isinstance(u, Suspect | Dead) and u.node_id == self.self_id for u in updates):
            self._answer_doubt(from_id, now_ms, out)
        self._tell_if_doubted(from_id, now_ms, out)
        self._meet_stranger(from_id, msg, now_ms, out)
        return out

    def leave(self, now_ms: int) -> list[Send]:
        """Leave gracefully: a signed `left`, told directly to `leave_fanout` members and
        gossiped by `tick` while the driver keeps calling it; others mark us left at once."""
        self._clock(now_ms)
        if self._leaving:
            return []
        self._leaving = True
        left = Left.signed(self._sign, self.self_id, self._incarnation)
        me = self._members[self.self_id]
        me.left, me.state, me.since_ms = left, LEFT, now_ms
        self._probe = None
        self._relays.clear()
        self._queue.push(left)
        out: list[Send] = []
        for node_id in self._live.sample(self._rng, self.config.leave_fanout):
            self._send(out, node_id, Leave(left))
        return out

    def members(self) -> list[MemberView]:
        """Every member we know, ourselves included, by node id."""
        return sorted((m.view() for m in self._members.values()), key=lambda v: v.node_id)

    def member(self, node_id: str) -> MemberView | None:
        m = self._members.get(node_id)
        return None if m is None else m.view()

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def next_tick_ms(self) -> int:
        """The earliest time `tick` has something to do (it may be called earlier)."""
        times = [self._next_reap_ms, self._next_push_pull_ms, self._next_reconnect_ms]
        if self._leaving:  # only gossip rounds, while our `left` is still being spread
            return self._next_gossip_ms if len(self._queue) else self._now_ms + 60_000
        if not self._joined:
            times.append(self._next_join_retry_ms)
        if self._reannounce_ms is not None:
            times.append(self._reannounce_ms)
        if len(self._queue):
            times.append(self._next_gossip_ms)
        p = self._probe
        if p is None:
            times.append(self._next_probe_ms)
        else:
            times.append(p.deadline_ms if p.indirect_sent else p.timeout_at_ms)
        times.extend(s.deadline_ms for s in self._suspicions.values())
        for r in self._relays.values():
            times.append(r.expires_at_ms if r.nacked else r.nack_at_ms)
        return min(times)

    # ---- time and sending ------------------------------------------------------------------

    def _clock(self, now_ms: int) -> None:
        self._now_ms = now_ms
        if self._started:
            return
        self._started = True
        c, rng = self.config, self._rng
        self._wall_offset = self._joined_at_ms - now_ms
        self._next_probe_ms = now_ms + rng.randrange(c.probe_interval_ms)
        self._next_gossip_ms = now_ms + rng.randrange(c.gossip_interval_ms)
        self._next_push_pull_ms = now_ms + c.push_pull_interval_ms \
            + rng.randrange(c.push_pull_interval_ms)
        self._next_reconnect_ms = now_ms + c.reconnect_interval_ms \
            + rng.randrange(c.reconnect_interval_ms)
        self._next_reap_ms = now_ms + 10 * c.probe_interval_ms

    def _send(self, out: list[Send], to: str, msg: Message) -> None:
        self._send_bytes(out, to, encode(msg))

    def _send_bytes(self, out: list[Send], to: str, data: bytes) -> None:
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(data)
        out.append(Send(to, data))

    def _piggyback(self) -> tuple[Update, ...]:
        c = self.config
        n = len(self._live) + 1
        limit = c.retransmit_mult * math.ceil(math.log10(n + 1))
        return self._queue.take(c.max_updates_per_message, c.max_piggyback_bytes, limit)

    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < MAX_SEQ else 1
        return self._seq

    def _scale(self) -> int:
        return self._health + 1

    def _adjust_health(self, delta: int) -> None:
        top = self.config.awareness_max_multiplier - 1
        self._health = min(top, max(0, self._health + delta))

    # ---- probing ---------------------------------------------------------------------------

    def _tick_probe(self, now_ms: int, out: list[Send]) -> None:
        p = self._probe
        if p is not None and not p.indirect_sent and now_ms >= p.timeout_at_ms:
            p.indirect_sent = True
            p.helpers = tuple(self._live.sample(self._rng, self.config.indirect_checks,
                                                exclude=(p.target,)))
            for helper in p.helpers:
                self.stats.indirect_probes += 1
                self._send(out, helper, PingReq(p.seq, p.target, self._piggyback()))
        if p is not None and now_ms >= p.deadline_ms:
            self._probe = None
            self._probe_failed(p, now_ms)
        if self._probe is None and now_ms >= self._next_probe_ms:
            self._start_probe(now_ms, out)

    def _start_probe(self, now_ms: int, out: list[Send]) -> None:
        c = self.config
        scale = self._scale()
        self._next_probe_ms = now_ms + c.probe_interval_ms * scale
        target = self._next_probe_target()
        if target is None:
            return
        m = self._members[target]
        seq = self._next_seq()
        self._probe = _Probe(target, m.incarnation, seq, now_ms + c.probe_timeout_ms * scale,
                             now_ms + c.probe_interval_ms * scale)
        self.stats.probes_sent += 1
        suspected = m.incarnation if m.state == SUSPECT else None
        self._send(out, target, Ping(seq, target, suspected, self._piggyback()))

    def _next_probe_target(self) -> str | None:
        """Round robin over a shuffled list, reshuffled each time round (SWIM's bound on the
        time until every member is probed)."""
        for _ in range(len(self._probe_order) + 1):
            if self._probe_pos >= len(self._probe_order):
                self._probe_order = list(self._live.items)
                self._rng.shuffle(self._probe_order)
                self._probe_pos = 0
                if not self._probe_order:
                    return None
            node_id = self._probe_order[self._probe_pos]
            self._probe_pos += 1
            if node_id in self._live:
                return node_id
        return None

    def _probe_failed(self, p: _Probe, now_ms: int) -> None:
        self.stats.probes_failed += 1
        # Lifeguard: helpers that did not even nack point at us (or at our links).
        self._adjust_health(len(p.helpers) - len(p.nacks) if p.helpers else 1)
        m = self._members.get(p.target)
        if m is not None and m.state in (ALIVE, SUSPECT) and m.incarnation == p.incarnation:
            self._on_suspect(Suspect(p.target, p.incarnation, self.self_id), now_ms)

    def _probe_succeeded(self) -> None:
        self._probe = None
        self._adjust_health(-1)

    def _tick_relays(self, now_ms: int, out: list[Send]) -> None:
        for seq, r in list(self._relays.items()):
            if now_ms >= r.expires_at_ms:
                del self._relays[seq]
            elif not r.nacked and now_ms >= r.nack_at_ms:
                r.nacked = True
                self._send(out, r.requester, Nack(r.seq, r.target, self._piggyback()))

    # ---- dissemination ---------------------------------------------------------------------

    def _gossip_round(self, now_ms: int, out: list[Send]) -> None:
        c = self.config
        if now_ms < self._next_gossip_ms:
            return
        self._next_gossip_ms = now_ms + c.gossip_interval_ms
        if not len(self._queue):
            return
        for node_id, since in list(self._recent_dead.items()):
            if now_ms - since > c.gossip_to_the_dead_ms:
                del self._recent_dead[node_id]
        live, dead = self._live.items, list(self._recent_dead)
        total = len(live) + len(dead)
        picks = self._rng.sample(range(total), min(c.gossip_nodes, total))
        for i in picks:
            node_id = live[i] if i < len(live) else dead[i - len(live)]
            updates = self._piggyback()
            if not updates:
                break
            self._send(out, node_id, Gossip(updates))

    def _state_bytes(self, *, reply: bool) -> bytes:
        """Our whole view as an encoded push_pull: live members first, then tombstones."""
        records: list[Update] = []
        tombstones: list[Update] = []
        for node_id, m in self._members.items():
            if m.state == ALIVE:
                records.append(m.alive)
            elif m.state == SUSPECT:
                records += [m.alive, Suspect(node_id, m.incarnation, m.accuser or self.self_id)]
            else:
                tombstones.append(m.alive)
                tombstones.append(m.left if m.left is not None
                                  else Dead(node_id, m.incarnation, m.accuser or self.self_id))
        data = encode(PushPull(reply, tuple(records + tombstones)))
        if len(data) <= MAX_PUSH_PULL_BYTES:
            return data
        kept: list[Update] = []  # huge addresses: send what fits, live members first
        used = 64
        for u in records + tombstones:
            used += encoded_size(u)
            if used > MAX_PUSH_PULL_BYTES:
                break
            kept.append(u)
        return encode(PushPull(reply, tuple(kept)))

    def _push_pull_seeds(self, now_ms: int, out: list[Send]) -> None:
        self._next_join_retry_ms = now_ms + self.config.join_retry_ms
        for seed in self._seeds:
            self.stats.push_pulls += 1
            self._send_bytes(out, seed, self._state_bytes(reply=False))

    def _reconnect(self, now_ms: int, out: list[Send]) -> None:
        """serf's reconnect: now and then, exchange state with a member we hold dead, with a
        probability that keeps the cluster-wide rate near one attempt per interval."""
        dead = [n for n, m in self._members.items()
                if m.state == DEAD and now_ms - m.since_ms < self.config.tombstone_ms]
        if not dead:
            return
        if self._rng.random() * (len(self._live) + 1) >= len(dead):
            return
        self.stats.push_pulls += 1
        self._send_bytes(out, self._rng.choice(dead), self._state_bytes(reply=False))

    def _tell_if_doubted(self, from_id: str, now_ms: int, out: list[Send]) -> None:
        """A member we hold suspect, dead or left talks to us: tell it (at most once a
        period), so it refutes or rejoins, or answers with the refutation we missed."""
        m = self._members.get(from_id)
        if m is None or m.state == ALIVE:
            return
        last = self._noticed.get(from_id)
        if last is not None and now_ms - last < self.config.probe_interval_ms:
            return
        self._noticed[from_id] = now_ms
        notice: Update
        if m.state == SUSPECT:
            notice = Suspect(from_id, m.incarnation, self.self_id)
        elif m.left is not None:
            notice = m.left
        else:
            notice = Dead(from_id, m.incarnation, self.self_id)
        self._send(out, from_id, Gossip((notice,)))

    def _answer_doubt(self, from_id: str, now_ms: int, out: list[Send]) -> None:
        """`from_id` passed on a suspicion or death of ours (maybe one we refuted long ago):
        send it our latest alive directly (at most once a period), so its view is repaired
        even if it missed every copy of the refutation."""
        last = self._answered.get(from_id)
        if self._leaving or last is not None and now_ms - last < self.config.probe_interval_ms:
            return
        self._answered[from_id] = now_ms
        self._send(out, from_id, Gossip((self._alive,)))

    def _meet_stranger(self, from_id: str, msg: Message, now_ms: int,
                       out: list[Send]) -> None:
        """A member we never heard of talks to us (we missed every copy of its join):
        exchange state with it, at most once per probe interval in all (no amplification)."""
        if from_id in self._members or isinstance(msg, PushPull) \
                or now_ms < self._next_stranger_ms:
            return
        self._next_stranger_ms = now_ms + self.config.probe_interval_ms
        self.stats.push_pulls += 1
        self._send_bytes(out, from_id, self._state_bytes(reply=False))

    def _reap(self, now_ms: int) -> None:
        c = self.config
        for node_id, m in list(self._members.items()):
            if m.state in (DEAD, LEFT) and node_id != self.self_id \
                    and now_ms - m.since_ms > c.tombstone_ms:
                del self._members[node_id]
                self._noticed.pop(node_id, None)
                self._recent_dead.pop(node_id, None)
        for sent in (self._noticed, self._answered):
            for node_id, when in list(sent.items()):
                if now_ms - when > c.probe_interval_ms:
                    del sent[node_id]

    # ---- messages --------------------------------------------------------------------------

    def _handle(self, from_id: str, msg: Message, now_ms: int, out: list[Send]) -> None:
        p = self._probe
        match msg:
            case Ping():
                if msg.suspected_inc is not None and msg.suspected_inc >= self._incarnation:
                    self._refute(msg.suspected_inc)  # buddy system: the ack carries it
                elif msg.suspected_inc is not None:
                    self._queue.push(self._alive)  # refuted already: the prober missed it
                self._send(out, from_id, Ack(msg.seq, self._incarnation, self._piggyback()))
            case Ack():
                if p is not None and p.seq == msg.seq and p.target == from_id:
                    self._probe_succeeded()
                    return
                r = self._relays.get(msg.seq)
                if r is not None and r.target == from_id:
                    del self._relays[msg.seq]
                    self._send(out, r.requester, IndirectAck(r.seq, r.target, self._piggyback()))
            case IndirectAck():
                if p is not None and p.seq == msg.seq and p.target == msg.target \
                        and from_id in p.helpers:
                    self._probe_succeeded()
            case Nack():
                if p is not None and p.seq == msg.seq and p.target == msg.target \
                        and from_id in p.helpers and from_id not in p.nacks:
                    p.nacks.append(from_id)
            case PingReq():
                self._serve_ping_req(from_id, msg, now_ms, out)
            case PushPull():
                if msg.reply and not self._joined:
                    self._joined = True
                    self._reannounce_ms = now_ms + 2 * self.config.probe_interval_ms
                else:
                    self._send_bytes(out, from_id, self._state_bytes(reply=True))
            case Gossip() | Leave():
                pass

    def _serve_ping_req(self, from_id: str, msg: PingReq, now_ms: int,
                        out: list[Send]) -> None:
        c = self.config
        if msg.target in (self.self_id, from_id) or len(self._relays) >= c.max_relays:
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(from_id, msg.seq, msg.target,
                                   now_ms + c.probe_timeout_ms * c.nack_at_pct // 100,
                                   now_ms + c.probe_interval_ms)
        m = self._members.get(msg.target)
        suspected = m.incarnation if m is not None and m.state == SUSPECT else None
        self._send(out, msg.target, Ping(seq, msg.target, suspected, self._piggyback()))

    # ---- updates ---------------------------------------------------------------------------

    def _authentic(self, u: Update) -> bool:
        """False only for an alive or left that would change our state and whose signature
        does not verify (those that change nothing are not worth a verification)."""
        if isinstance(u, Alive):
            if not self._alive_is_news(u):
                return True
            return self._verify(u.node_id, u.signed_bytes(), u.signature)
        if isinstance(u, Left):
            if not self._left_is_news(u):
                return True
            return self._verify(u.node_id, u.signed_bytes(), u.signature)
        return True

    def _alive_is_news(self, a: Alive) -> bool:
        if a.node_id == self.self_id:
            return not self._leaving and a.incarnation >= self._incarnation and a != self._alive
        m = self._members.get(a.node_id)
        if m is None:
            return True
        if a.incarnation <= m.incarnation or a.joined_at_ms < m.alive.joined_at_ms:
            return False
        # A member back from dead or left must rejoin as the youngest.
        return m.state in (ALIVE, SUSPECT) or a.joined_at_ms > m.alive.joined_at_ms

    def _left_is_news(self, left: Left) -> bool:
        if left.node_id == self.self_id:
            return not self._leaving and left.incarnation >= self._joined_inc
        m = self._members.get(left.node_id)
        return m is not None and m.state != LEFT and left.incarnation >= m.incarnation

    def _apply(self, from_id: str, u: Update, now_ms: int) -> None:
        match u:
            case Alive():
                self._on_alive(u, now_ms)
            case Suspect():
                self._on_suspect(u, now_ms)
            case Dead() if u.node_id == self.self_id:
                self._on_dead_about_self(from_id, u, now_ms)
            case Dead():
                # Another's claim that a member is dead only makes it suspect here (the
                # claim is unsigned: a liar must not kill), and counts as a confirmation;
                # our own suspicion timeout declares the death.
                self._on_suspect(Suspect(u.node_id, u.incarnation, u.from_id), now_ms)
            case Left():
                self._on_left(u, now_ms)

    def _on_alive(self, a: Alive, now_ms: int) -> None:
        if not self._alive_is_news(a):
            return
        if a.node_id == self.self_id:
            # Our own key signed it, in a previous life of this node: outbid it.
            if a.joined_at_ms >= self._joined_at_ms:
                self._joined_at_ms = a.joined_at_ms + 1
            self._refute(a.incarnation)
            return
        m = self._members.get(a.node_id)
        if m is None:
            if len(self._members) >= self.config.max_members:
                self.stats.rejected_updates += 1
                return
            self._members[a.node_id] = _Member(a, ALIVE, a.incarnation, now_ms)
            self._became_live(a.node_id)
            self._events.append(MemberJoined(a.node_id, now_ms, a.incarnation))
        else:
            old = m.state
            m.alive, m.incarnation, m.left, m.accuser = a, a.incarnation, None, ""
            if old != ALIVE:
                m.state, m.since_ms = ALIVE, now_ms
                self._suspicions.pop(a.node_id, None)
                event = MemberAlive if old == SUSPECT else MemberJoined
                self._events.append(event(a.node_id, now_ms, a.incarnation))
            if old in (DEAD, LEFT):
                self._recent_dead.pop(a.node_id, None)
                self._became_live(a.node_id)
        self._queue.push(a)

    def _became_live(self, node_id: str) -> None:
        self._live.add(node_id)
        # At a random place in what is left of this round, so it is probed within the round.
        order = self._probe_order
        order.insert(self._rng.randint(min(self._probe_pos, len(order)), len(order)), node_id)

    def _on_suspect(self, s: Suspect, now_ms: int) -> None:
        if s.node_id == self.self_id:
            if not self._leaving and s.incarnation >= self._incarnation:
                self._refute(s.incarnation)
            return
        m = self._members.get(s.node_id)
        if m is None or s.incarnation != m.incarnation:
            return
        if m.state == SUSPECT:
            known = s.from_id in self._members and s.from_id != s.node_id
            if known and self._suspicions[s.node_id].confirm(s.from_id):
                self._queue.push(s)  # Lifeguard: pass independent confirmations on
            return
        if m.state != ALIVE:
            return
        m.state, m.since_ms, m.accuser = SUSPECT, now_ms, s.from_id
        self._suspicions[s.node_id] = self._new_suspicion(s.from_id, now_ms)
        self.stats.suspicions += 1
        self._events.append(MemberSuspected(s.node_id, now_ms, s.incarnation))
        self._queue.push(s)

    def _new_suspicion(self, from_id: str, now_ms: int) -> _Suspicion:
        c = self.config
        n = len(self._live) + 1
        min_ms = math.floor(c.suspicion_mult * max(1.0, math.log10(n)) * c.probe_interval_ms)
        k = c.suspicion_mult - 2 if n - 2 >= c.suspicion_mult - 2 else 0
        return _Suspicion(from_id, now_ms, min_ms, c.suspicion_max_mult * min_ms, k)

    def _declare_dead(self, m: _Member, now_ms: int) -> None:
        """Our suspicion of `m` timed out unrefuted."""
        node_id = m.alive.node_id
        self._bury(m, DEAD, now_ms)
        m.accuser = self.self_id
        self.stats.deaths += 1
        self._events.append(MemberDead(node_id, now_ms, m.incarnation))
        self._queue.push(Dead(node_id, m.incarnation, self.self_id))

    def _on_left(self, left: Left, now_ms: int) -> None:
        if not self._left_is_news(left):
            return
        if left.node_id == self.self_id:
            self._rejoin(left.incarnation, now_ms)
            return
        m = self._members[left.node_id]
        self._bury(m, LEFT, now_ms)
        m.incarnation, m.left = left.incarnation, left
        self._events.append(MemberLeft(left.node_id, now_ms, left.incarnation))
        self._queue.push(left)

    def _bury(self, m: _Member, state: str, now_ms: int) -> None:
        node_id = m.alive.node_id
        if m.state in (ALIVE, SUSPECT):
            self._recent_dead[node_id] = now_ms
        m.state, m.since_ms = state, now_ms
        self._live.discard(node_id)
        self._suspicions.pop(node_id, None)

    # ---- about ourselves -------------------------------------------------------------------

    def _publish_self(self) -> None:
        self._alive = Alive.signed(self._sign, self.self_id, self._incarnation, self.region,
                                   self.addrs, self._joined_at_ms)
        me = self._members[self.self_id]
        me.alive, me.incarnation = self._alive, self._incarnation
        self._queue.push(self._alive)

    def _on_dead_about_self(self, from_id: str, d: Dead, now_ms: int) -> None:
        """Told directly by a member that holds us dead (`from_id` declared it): only a
        rejoin brings us back into its view. A death relayed by others is only a claim:
        refute it, keeping our age (a liar must not make a leader the youngest)."""
        if self._leaving or d.incarnation < self._joined_inc:
            return
        if d.from_id == from_id:
            self._rejoin(d.incarnation, now_ms)
        elif d.incarnation >= self._incarnation:
            self._refute(d.incarnation)

    def _refute(self, incarnation: int) -> None:
        """Someone suspects us at `incarnation`: announce alive at a higher one."""
        self._incarnation = min(MAX_UINT, max(self._incarnation, incarnation) + 1)
        self.stats.refutations += 1
        self._adjust_health(1)  # Lifeguard: being suspected hints that we are the slow one
        self._publish_self()

    def _rejoin(self, incarnation: int, now_ms: int) -> None:
        """Someone holds us dead (or left): come back as a new, youngest member."""
        self._incarnation = min(MAX_UINT, max(self._incarnation, incarnation) + 1)
        wall = now_ms + (self._wall_offset or 0)
        self._joined_at_ms = max(wall, self._joined_at_ms + 1)
        self._joined_inc = self._incarnation
        self.stats.rejoins += 1
        self._publish_self()

    def _push_pull_interval_ms(self) -> int:
        # A push_pull carries the whole state, which grows with N; stretching its period in
        # proportion to N beyond 32 members keeps its cost per member flat (memberlist
        # stretches it with log2 N only, so its bytes per member grow as N / log N).
        # Anti-entropy is the backstop; updates themselves spread by gossip.
        n = len(self._live) + 1
        return self.config.push_pull_interval_ms * max(1, math.ceil(n / 32))
