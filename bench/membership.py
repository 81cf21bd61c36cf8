"""Membership (SWIM + Lifeguard) as N grows: time for every member to learn of a death and of
a join, and membership bytes per member per second.

Two parts, each printing its figures next to their ratio to the smallest N of the same run
and to log(N)/log(N0), the growth SWIM promises for detection and dissemination time:

1. Simulation (tests/sim/membership/harness.py: N `Membership` cores on a seeded LAN-like
   network, 1-20 ms delays, no loss, simulated time, default SwimConfig). Per N and seed: the
   members join, the cluster converges and its gossip queues drain; a steady window measures
   SWIM bytes per member per second; then `--victims` members crash one after the other (time
   until every running member holds the victim dead) and one new member joins (time until
   every running member holds it alive). Bytes are counted per message kind as the cores send
   them (stand-in signatures: see the harness). push_pull (anti-entropy) is reported apart, as
   its expected rate: the size of a full state exchange (request + reply) over the push_pull
   interval, since its period (30-180 s) is longer than any affordable window.
2. Real processes (`dcloud-node testnet up` with N-1 validators on 127.0.0.1, plus one fresh
   non-validator node that joins through node0): time from the joiner's process start (and
   from its first HTTP answer) until every other node's /members holds it alive; time from
   its `kill -9` until every other node holds it dead; bytes each node's libp2p host sent per
   second over a quiet window, from /metrics. Those bytes are all of the node's traffic:
   SWIM, but also consensus (empty blocks and votes), heartbeats, region summaries, gossipsub
   control and pings. Repeated `--cycles` times with a new joiner each time.

    .venv/bin/python bench/membership.py [--sizes 10,30,100,300,1000] [--seeds 3]
        [--large-seeds 1] [--victims 2] [--real 3,5,8 | --no-real] [--cycles 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.crypto import Ed25519Key  # noqa: E402
from node.gossip.swim import ALIVE, DEAD, SwimConfig  # noqa: E402
from node.gossip.swim_messages import Alive, Kind, encoded_size  # noqa: E402
from node.p2p import peer_id_of  # noqa: E402
from tests.ports import free_port_block  # noqa: E402
from tests.sim.membership.harness import MembershipSim, SimSpec  # noqa: E402

HOST = "127.0.0.1"
QUIET_STEP_MS = 1000  # a step of simulated time with no gossip message: every queue is empty
EVENT_DEADLINE_MS = 180_000


def ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("nan")


def log_ratio(n: int, n0: int) -> float:
    return math.log(n) / math.log(n0) if n0 > 1 else float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    if not values:
        return "-"
    return f"{fmt.format(min(values) / scale)}-{fmt.format(max(values) / scale)}"


# ---- simulation -------------------------------------------------------------------------------


@dataclass
class SimRun:
    n: int
    seed: int
    converged_ms: int = 0
    suspect_ms: list[int] = field(default_factory=list)  # crash -> first suspicion anywhere
    dead_ms: list[int] = field(default_factory=list)  # crash -> dead on every running member
    join_ms: list[int] = field(default_factory=list)  # join -> alive on every running member
    steady_bytes_s: float = 0.0  # per member: every kind but push_pull
    push_pull_bytes_s: float = 0.0  # per member, expected: 2 * state size / interval
    state_bytes: int = 0
    push_pull_interval_ms: int = 0
    death_bytes: list[float] = field(default_factory=list)  # per member, above the steady rate
    join_bytes: list[float] = field(default_factory=list)
    cpu_s: float = 0.0


def protocol_bytes(sim: MembershipSim) -> int:
    """Bytes of every kind but push_pull sent so far (probes, gossip, leaves)."""
    return sum(v for k, v in sim.bytes_by_kind.items() if k != Kind.PUSH_PULL)


def run_until_quiet(sim: MembershipSim, limit_ms: int) -> bool:
    """Run until a whole step passes without a gossip message (all queues drained)."""
    deadline = sim.now + limit_ms
    while sim.now < deadline:
        before = sim.bytes_by_kind.get(Kind.GOSSIP, 0)
        sim.run_until(sim.now + QUIET_STEP_MS)
        if sim.bytes_by_kind.get(Kind.GOSSIP, 0) == before:
            return True
    return False


def last_sighting(sim: MembershipSim, subject: int, kind: str, since: int) -> int | None:
    """The time the last running member first saw `subject` as `kind`, minus `since`."""
    node_id = sim.members[subject].node_id
    times = []
    for i in sim.running():
        if i == subject:
            continue
        t = sim.seen.first(i, node_id, kind)
        if t is None or t < since:
            return None
        times.append(t)
    return max(times) - since if times else None


def first_sighting(sim: MembershipSim, subject: int, kind: str, since: int) -> int | None:
    node_id = sim.members[subject].node_id
    times = [t for (_, s, k), t in sim.seen.at.items() if s == node_id and k == kind
             and t >= since]
    return min(times) - since if times else None


def simulate(n: int, seed: int, victims: int, steady_ms: int, progress: bool) -> SimRun:
    started = time.process_time()
    run = SimRun(n, seed)
    spec = SimSpec(n=n)
    sim = MembershipSim(spec, seed)
    rng = random.Random(f"bench/{seed}")
    period = spec.swim.probe_interval_ms

    def say(what: str) -> None:
        if progress:
            print(f"    n={n} seed={seed} t={sim.now / 1000:.0f} s "
                  f"cpu={time.process_time() - started:.0f} s: {what}", file=sys.stderr,
                  flush=True)

    # Everyone has started (converged() is trivially true before that), then everyone holds
    # everyone alive, then the join storm's gossip has drained.
    sim.run_until(n * spec.join_spacing_ms + period)
    say("all started")
    check_every = 1000 if n <= 300 else 5000
    converged = sim.run_until_true(sim.converged, sim.now + 300_000, every_ms=check_every)
    if converged is None:
        raise RuntimeError(f"n={n} seed={seed}: no convergence; {sim.describe()}")
    run.converged_ms = converged
    say("converged")
    if not run_until_quiet(sim, 600_000):
        raise RuntimeError(f"n={n} seed={seed}: gossip never drained; {sim.describe()}")
    say("gossip drained")

    b0, t0 = protocol_bytes(sim), sim.now
    sim.run_until(t0 + steady_ms)
    run.steady_bytes_s = (protocol_bytes(sim) - b0) / n / (steady_ms / 1000)
    # A full state exchange costs a request and a reply of about this size; each member starts
    # one per interval and answers one per interval on average.
    cores = [sim.members[i].core for i in rng.sample(sim.running(), min(5, n))]
    run.state_bytes = round(statistics.mean(len(c._state_bytes(reply=False)) for c in cores))
    run.push_pull_interval_ms = cores[0]._push_pull_interval_ms()
    run.push_pull_bytes_s = 2 * run.state_bytes / (run.push_pull_interval_ms / 1000)
    say("steady window measured")

    def extra_bytes(before: int, since: int) -> float:
        """Bytes per member above the steady rate, from `since` until now."""
        elapsed_s = (sim.now - since) / 1000
        return (protocol_bytes(sim) - before - run.steady_bytes_s * n * elapsed_s) / n

    for _ in range(victims):
        victim = rng.choice([i for i in sim.running() if i != 0])
        before, t_crash = protocol_bytes(sim), sim.now
        sim.crash(victim)
        done = sim.run_until_true(lambda v=victim: sim.all_see(v, (DEAD,)),
                                  t_crash + EVENT_DEADLINE_MS)
        if done is None:
            raise RuntimeError(f"n={n} seed={seed}: crash of {victim} not detected everywhere; "
                               f"{sim.describe()}")
        run.dead_ms.append(last_sighting(sim, victim, "MemberDead", t_crash) or 0)
        run.suspect_ms.append(first_sighting(sim, victim, "MemberSuspected", t_crash) or 0)
        run_until_quiet(sim, 120_000)
        run.death_bytes.append(extra_bytes(before, t_crash))
        say(f"crash of {victim} everywhere after {run.dead_ms[-1]} ms")

    before, t_join = protocol_bytes(sim), sim.now
    joiner = sim.add()
    done = sim.run_until_true(lambda: sim.all_see(joiner, (ALIVE,)),
                              t_join + EVENT_DEADLINE_MS, every_ms=50)
    if done is None:
        raise RuntimeError(f"n={n} seed={seed}: join not seen everywhere; {sim.describe()}")
    run.join_ms.append(last_sighting(sim, joiner, "MemberJoined", t_join) or 0)
    run_until_quiet(sim, 120_000)
    run.join_bytes.append(extra_bytes(before, t_join))
    say(f"join everywhere after {run.join_ms[-1]} ms")
    run.cpu_s = time.process_time() - started
    return run


def record_sizes() -> tuple[int, int]:
    """Encoded size of one alive record in the simulation and with a real node's identity."""
    sim = MembershipSim(SimSpec(n=2), 0)
    stand_in = sim.members[1].core.member(sim.members[1].node_id)
    assert stand_in is not None
    sim_alive = Alive.signed(sim.keys.signer(sim.members[1].node_id), stand_in.node_id, 0,
                             stand_in.region, stand_in.addrs, stand_in.joined_at_ms)
    key = Ed25519Key.generate()
    node_id = peer_id_of(key)
    real = Alive.signed(key.sign, node_id, 0, "us-east",
                        (f"/ip4/203.0.113.7/tcp/26656/p2p/{node_id}",), int(time.time() * 1000))
    return encoded_size(sim_alive), encoded_size(real)


def simulation(sizes: list[int], seeds: int, large_seeds: int, victims: int,
               steady_ms: int) -> list[SimRun]:
    period = SwimConfig().probe_interval_ms
    runs: dict[int, list[SimRun]] = {}
    for n in sizes:
        count = seeds if n <= 300 else large_seeds
        runs[n] = []
        for seed in range(1, count + 1):
            run = simulate(n, seed, victims, steady_ms, progress=n >= 300)
            runs[n].append(run)
            print(f"  n={n:<5} seed={seed}: dead everywhere after "
                  f"{', '.join(str(t) for t in run.dead_ms)} ms, join after "
                  f"{run.join_ms[0]} ms, {run.steady_bytes_s:.0f} B/s steady, "
                  f"cpu {run.cpu_s:.0f} s", flush=True)

    n0 = sizes[0]

    def figures(n: int) -> dict[str, float]:
        rs = runs[n]
        return {
            "dead": median([t for r in rs for t in r.dead_ms]),
            "suspect": median([t for r in rs for t in r.suspect_ms]),
            "join": median([t for r in rs for t in r.join_ms]),
            "steady": statistics.mean(r.steady_bytes_s for r in rs),
            "push_pull": statistics.mean(r.push_pull_bytes_s for r in rs),
            "death_bytes": median([b for r in rs for b in r.death_bytes]),
            "join_bytes": median([b for r in rs for b in r.join_bytes]),
        }

    ref = figures(n0)
    print()
    print(f"Simulation: time until every member knows (medians over seeds x events; "
          f"period = {period} ms); ratio = figure / figure at N={n0}")
    print(f"{'N':>5} {'events':>6} {'1st suspect':>11} {'all dead ms':>11} {'range':>11} "
          f"{'periods':>7} {'ratio':>5} {'all alive ms':>12} {'range':>9} {'periods':>7} "
          f"{'ratio':>5} {'lnN/lnN0':>8}")
    for n in sizes:
        f = figures(n)
        rs = runs[n]
        deaths = [float(t) for r in rs for t in r.dead_ms]
        joins = [float(t) for r in rs for t in r.join_ms]
        print(f"{n:>5} {len(deaths):>3}+{len(joins):<2} {f['suspect']:>11.0f} "
              f"{f['dead']:>11.0f} {spread(deaths):>11} {f['dead'] / period:>7.1f} "
              f"{f['dead'] / ref['dead']:>5.2f} {f['join']:>12.0f} {spread(joins):>9} "
              f"{f['join'] / period:>7.1f} {f['join'] / ref['join']:>5.2f} "
              f"{log_ratio(n, n0):>8.2f}")

    sim_size, real_size = record_sizes()
    print()
    print("Simulation: SWIM bytes sent per member per second; steady = probes and acks with an "
          "idle cluster;")
    print("push_pull = 2 x full state / interval; per death / per join = bytes per member "
          "above steady to spread one event")
    print(f"{'N':>5} {'steady B/s':>10} {'ratio':>5} {'state KiB':>9} {'pp every':>8} "
          f"{'push_pull B/s':>13} {'total B/s':>9} {'ratio':>5} {'per death B':>11} "
          f"{'ratio':>5} {'per join B':>10} {'ratio':>5} {'lnN/lnN0':>8}")
    for n in sizes:
        f = figures(n)
        rs = runs[n]
        total, ref_total = f["steady"] + f["push_pull"], ref["steady"] + ref["push_pull"]
        state = statistics.mean(r.state_bytes for r in rs) / 1024
        interval = rs[0].push_pull_interval_ms / 1000
        print(f"{n:>5} {f['steady']:>10.0f} {f['steady'] / ref['steady']:>5.2f} "
              f"{state:>9.1f} {interval:>7.0f}s {f['push_pull']:>13.0f} {total:>9.0f} "
              f"{total / ref_total:>5.2f} {f['death_bytes']:>11.0f} "
              f"{f['death_bytes'] / ref['death_bytes']:>5.2f} {f['join_bytes']:>10.0f} "
              f"{f['join_bytes'] / ref['join_bytes']:>5.2f} {log_ratio(n, n0):>8.2f}")
    print(f"(an alive record is {sim_size} B in the simulation, {real_size} B with a real peer "
          f"id, address and ed25519 signature: real push_pulls are ~{real_size / sim_size:.1f}x "
          f"larger)")
    return [r for rs in runs.values() for r in rs]


# ---- real processes ---------------------------------------------------------------------------


def cli(*args: str, timeout: float = 180) -> str:
    return subprocess.run([sys.executable, "-m", "node", *args], check=True,
                          capture_output=True, text=True, timeout=timeout).stdout


def http_get(url: str, timeout: float = 2.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            return resp.read() if resp.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


def member_states(url: str) -> dict[str, str]:
    body = http_get(f"{url}/members")
    if body is None:
        return {}
    return {m["node_id"]: m["state"] for m in json.loads(body)["members"]}


METRIC = re.compile(r"^(dcloud_[a-z0-9_]+_total)(?:\{[^}]*\})? ([0-9.e+]+)$", re.M)


def counters(url: str) -> dict[str, float]:
    body = http_get(f"{url}/metrics")
    out: dict[str, float] = {}
    for name, value in METRIC.findall(body.decode() if body else ""):
        out[name] = out.get(name, 0.0) + float(value)
    return out


@dataclass
class RealCycle:
    join_from_start_s: float
    join_from_ready_s: float
    dead_s: float
    first_suspect_s: float


@dataclass
class RealRun:
    n: int
    cycles: list[RealCycle] = field(default_factory=list)
    sent_bytes_s: float = 0.0  # per node, all libp2p traffic
    probes_s: float = 0.0  # per node


class Joiner:
    """A fresh non-validator node started by this bench (and only ever stopped by it)."""

    def __init__(self, directory: Path, name: str, p2p_port: int, http_port: int,
                 bootstrap: str, peers: int) -> None:
        self.home = directory / name
        cli("init", "--home", str(self.home), "--moniker", name, "--region", "us-east",
            "--genesis", str(directory / "genesis.json"))
        self.url = f"http://{HOST}:{http_port}"
        self.args = [sys.executable, "-m", "node", "start", "--home", str(self.home),
                     "--p2p-listen-addrs", f"/ip4/{HOST}/tcp/{p2p_port}",
                     "--api-listen", f"{HOST}:{http_port}", "--bootstrap", bootstrap,
                     "--p2p-target-peers", str(peers), "--node-log-format", "json"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.node_id = ""

    def start(self) -> float:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DCLOUD_")}
        started = time.monotonic()
        with open(self.home / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, env=env)
        return started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def poll_until(urls: list[str], pool: ThreadPoolExecutor, subject: str, state: str,
               timeout_s: float, extra: dict[str, Any] | None = None) -> tuple[float, float]:
    """Poll every node's /members until all hold `subject` in `state`; (the time of the last
    node's first such answer, the first time any node held it suspect), monotonic."""
    first: dict[str, float] = {}
    suspect = float("nan")
    deadline = time.monotonic() + timeout_s
    while len(first) < len(urls):
        if time.monotonic() > deadline:
            held = [member_states(u).get(subject, "unknown") for u in urls]
            raise RuntimeError(f"{subject[:16]}... not {state} on every node after "
                               f"{timeout_s:.0f} s (held: {held})")
        if extra is not None and extra.get("ready") is None and http_get(
                f"{extra['url']}/health", timeout=0.5) is not None:
            extra["ready"] = time.monotonic()
        views = list(pool.map(member_states, urls))
        now = time.monotonic()
        for url, view in zip(urls, views, strict=True):
            if view.get(subject) == state:
                first.setdefault(url, now)
            if view.get(subject) == "suspect" and math.isnan(suspect):
                suspect = now
        time.sleep(0.1)
    return max(first.values()), suspect


def real_run(n: int, cycles: int, quiet_s: float) -> RealRun:
    if n < 3:
        raise ValueError("real runs need N >= 3 (N-1 validators and a joiner)")
    run = RealRun(n)
    validators = n - 1
    directory = Path(tempfile.mkdtemp(prefix="dcloud-bench-membership-"))
    base = free_port_block(10 * (validators + cycles) + 2)
    joiners: list[Joiner] = []
    print(f"  N={n}: testnet of {validators} validators in {directory}, base port {base}",
          flush=True)
    try:
        cli("testnet", "up", "--nodes", str(validators), "--dir", str(directory),
            "--base-port", str(base), "--timeout", "120")
        members = json.loads((directory / "testnet.json").read_text())
        urls = [m["http_url"] for m in members]
        ids = {m["peer_id"] for m in members}
        with ThreadPoolExecutor(max_workers=n) as pool:
            deadline = time.monotonic() + 60
            while not all(set(v) == ids and set(v.values()) == {ALIVE}
                          for v in pool.map(member_states, urls)):
                if time.monotonic() > deadline:
                    raise RuntimeError("the testnet's members never all saw each other alive")
                time.sleep(0.2)
            for c in range(cycles):
                p2p, http = base + 10 * (validators + c), base + 10 * (validators + c) + 1
                joiner = Joiner(directory, f"joiner{c}", p2p, http, members[0]["p2p_addr"],
                                validators)
                joiners.append(joiner)
                joiner.node_id = peer_id_of_home(joiner.home)
                marks: dict[str, Any] = {"url": joiner.url, "ready": None}
                started = joiner.start()
                try:
                    alive_at, _ = poll_until(urls, pool, joiner.node_id, ALIVE, 120, marks)
                except RuntimeError as exc:
                    exited = joiner.proc is not None and joiner.proc.poll() is not None
                    log = (joiner.home / "stderr.log").read_text(errors="replace")[-600:]
                    raise RuntimeError(f"{exc}; joiner {'exited' if exited else 'running'}, "
                                       f"its stderr ends: {log!r}") from exc
                ready = marks["ready"] if marks["ready"] is not None else alive_at
                if c == 0:
                    time.sleep(5)  # the join's gossip and gossipsub mesh changes settle
                    everyone = [*urls, joiner.url]
                    before = list(pool.map(counters, everyone))
                    t0 = time.monotonic()
                    time.sleep(quiet_s)
                    after = list(pool.map(counters, everyone))
                    elapsed = time.monotonic() - t0
                    sent = [a.get("dcloud_p2p_sent_bytes_total", 0.0)
                            - b.get("dcloud_p2p_sent_bytes_total", 0.0)
                            for a, b in zip(after, before, strict=True)]
                    probes = [a.get("dcloud_membership_probes_total", 0.0)
                              - b.get("dcloud_membership_probes_total", 0.0)
                              for a, b in zip(after, before, strict=True)]
                    run.sent_bytes_s = statistics.mean(sent) / elapsed
                    run.probes_s = statistics.mean(probes) / elapsed
                else:
                    time.sleep(3)
                held = [str(v.get(joiner.node_id)) for v in pool.map(member_states, urls)]
                killed = time.monotonic()
                joiner.kill()
                dead_at, suspect_at = poll_until(urls, pool, joiner.node_id, DEAD, 180)
                run.cycles.append(RealCycle(alive_at - started, alive_at - ready,
                                            dead_at - killed, suspect_at - killed))
                cyc = run.cycles[-1]
                print(f"    cycle {c}: alive everywhere {cyc.join_from_start_s:.2f} s after "
                      f"start ({cyc.join_from_ready_s:.2f} s after ready), dead everywhere "
                      f"{cyc.dead_s:.2f} s after kill -9 (held {'/'.join(sorted(set(held)))} "
                      f"just before the kill)", flush=True)
    finally:
        for joiner in joiners:
            joiner.kill()
        try:
            cli("testnet", "down", "--dir", str(directory), "--grace", "10")
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return run


def peer_id_of_home(home: Path) -> str:
    from node.crypto import read_key_file
    from node.home import Home

    return peer_id_of(read_key_file(Home(home).node_key_file))


def real_processes(sizes: list[int], cycles: int, quiet_s: float) -> list[RealRun]:
    runs = []
    for n in sizes:
        try:
            runs.append(real_run(n, cycles, quiet_s))
        except (RuntimeError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stdout", "") or ""
            print(f"  N={n}: no figures, this machine did not hold it: {exc} {detail[-300:]}",
                  flush=True)
        time.sleep(2)
    if not runs:
        return runs
    n0, ref = runs[0].n, runs[0]

    def med(r: RealRun, attr: str) -> float:
        return median([getattr(c, attr) for c in r.cycles])

    print()
    print(f"Real processes on {HOST} ({os.cpu_count()} cores shared by every node): N-1 "
          f"validators + 1 joiner, medians of {cycles} join/kill cycles; ratio = figure / "
          f"figure at N={n0}")
    print(f"{'N':>4} {'join from start s':>17} {'from ready s':>12} {'ratio':>5} "
          f"{'1st suspect s':>13} {'all dead s':>10} {'range':>9} {'ratio':>5} "
          f"{'sent B/s/node':>13} {'ratio':>5} {'probes/s':>8} {'lnN/lnN0':>8}")
    for r in runs:
        deaths = [c.dead_s for c in r.cycles]
        print(f"{r.n:>4} {med(r, 'join_from_start_s'):>17.2f} "
              f"{med(r, 'join_from_ready_s'):>12.2f} "
              f"{med(r, 'join_from_ready_s') / med(ref, 'join_from_ready_s'):>5.2f} "
              f"{med(r, 'first_suspect_s'):>13.2f} {med(r, 'dead_s'):>10.2f} "
              f"{spread(deaths, fmt='{:.1f}'):>9} "
              f"{med(r, 'dead_s') / med(ref, 'dead_s'):>5.2f} {r.sent_bytes_s:>13.0f} "
              f"{ratio(r.sent_bytes_s, ref.sent_bytes_s):>5.2f} {r.probes_s:>8.2f} "
              f"{log_ratio(r.n, n0):>8.2f}")
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,30,100,300",
                        help="simulated cluster sizes, the first is the reference (1,000 "
                             "members: ~8 min of CPU, mostly the join storm's gossip draining)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per size up to 300 members")
    parser.add_argument("--large-seeds", type=int, default=1,
                        help="seeds per size above 300 members (1,000 costs minutes of CPU)")
    parser.add_argument("--victims", type=int, default=2, help="crashes per seed")
    parser.add_argument("--steady-s", type=float, default=10.0,
                        help="simulated seconds of the steady window")
    parser.add_argument("--real", default="3,5,8",
                        help="real cluster sizes N (N-1 validators + 1 joiner)")
    parser.add_argument("--no-real", action="store_true", help="skip the real processes")
    parser.add_argument("--no-sim", action="store_true", help="skip the simulation")
    parser.add_argument("--cycles", type=int, default=2, help="join/kill cycles per real size")
    parser.add_argument("--quiet-s", type=float, default=20.0,
                        help="seconds of the real quiet window measuring bytes")
    args = parser.parse_args()
    if not args.no_sim:
        sizes = [int(s) for s in args.sizes.split(",")]
        print(f"Simulation: sizes {sizes}, {args.seeds} seed(s) (N > 300: {args.large_seeds}), "
              f"{args.victims} crash(es) and 1 join per seed", flush=True)
        simulation(sizes, args.seeds, args.large_seeds, args.victims,
                   int(args.steady_s * 1000))
    if not args.no_real:
        sizes = [int(s) for s in args.real.split(",")]
        print(f"\nReal processes: sizes {sizes}", flush=True)
        real_processes(sizes, args.cycles, args.quiet_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
