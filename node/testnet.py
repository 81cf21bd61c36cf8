"""`dcloud-node testnet`: a local multi-node network of real processes on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from node.crypto import read_key_file
from node.home import Home

REGIONS = ["us-east", "eu-west", "ap-south"]
TESTNET_FILE = "testnet.json"
HOST = "127.0.0.1"


class TestnetError(Exception):
    """The testnet could not be brought up, inspected or stopped; the message says why."""


@dataclass
class TestnetNode:
    name: str
    home: str
    peer_id: str
    p2p_addr: str
    http_url: str
    pid: int | None


def ports(base_port: int, index: int) -> tuple[int, int]:
    return base_port + 10 * index, base_port + 10 * index + 1


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our exited child not yet reaped) is not alive.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _is_our_node(pid: int, home: str) -> bool:
    """True if `pid` is a dcloud-node started on `home` (guards against reused PIDs)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return home.encode() in args and any(b"node" in a for a in args)


def load(directory: Path) -> list[TestnetNode]:
    path = directory / TESTNET_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return [TestnetNode(**entry) for entry in doc]
    except FileNotFoundError as exc:
        raise TestnetError(f"no testnet in {directory} (missing {TESTNET_FILE})") from exc
    except (ValueError, TypeError) as exc:
        raise TestnetError(f"{path} is not a valid testnet file: {exc}") from exc


def save(directory: Path, nodes: list[TestnetNode]) -> None:
    tmp = directory / (TESTNET_FILE + ".tmp")
    tmp.write_text(json.dumps([asdict(n) for n in nodes], indent=2) + "\n", encoding="utf-8")
    tmp.replace(directory / TESTNET_FILE)


def plan(directory: Path, count: int, base_port: int,
         regions: list[str] | None = None,
         overrides: dict[tuple[str, str], Any] | None = None) -> list[TestnetNode]:
    """Create missing homes and return the testnet's nodes (not yet started). `overrides`
    ((section, key) -> value) go into every node's config.toml."""
    regions = regions or REGIONS
    nodes: list[TestnetNode] = []
    homes = [Home(directory / f"node{i}") for i in range(count)]
    for i, home in enumerate(homes):
        if not home.node_key_file.exists():
            home.init(moniker=f"node{i}", region=regions[i % len(regions)])
    from node.p2p import peer_id_of

    peer_ids = [peer_id_of(read_key_file(h.node_key_file)) for h in homes]
    _share_genesis(directory, homes)
    p2p0, _ = ports(base_port, 0)
    bootstrap = f"/ip4/{HOST}/tcp/{p2p0}/p2p/{peer_ids[0]}"
    for i, home in enumerate(homes):
        p2p_port, http_port = ports(base_port, i)
        settings = {
            ("p2p", "listen_addrs"): [f"/ip4/{HOST}/tcp/{p2p_port}"],
            ("p2p", "bootstrap"): [] if i == 0 else [bootstrap],
            ("p2p", "target_peers"): max(count - 1, 1),
            ("p2p", "max_peers"): max(count + 8, 16),
            ("api", "listen"): f"{HOST}:{http_port}",
            ("node", "log_format"): "json",
            **(overrides or {}),
        }
        _write_testnet_config(home, f"node{i}", regions[i % len(regions)], settings)
        nodes.append(TestnetNode(
            name=f"node{i}", home=str(home.root), peer_id=peer_ids[i],
            p2p_addr=f"/ip4/{HOST}/tcp/{p2p_port}/p2p/{peer_ids[i]}",
            http_url=f"http://{HOST}:{http_port}", pid=None,
        ))
    return nodes


def _share_genesis(directory: Path, homes: list[Home]) -> None:
    """One genesis for the whole testnet: every node validates, every `default` account is funded.

    Written once (DIR/genesis.json) and copied into each home; a later `up` keeps it, so a
    testnet's chain survives restarts. Homes that already hold chain data for another
    genesis are refused rather than silently forked.
    """
    from node.consensus.genesis import Genesis, GenesisAccount, GenesisValidator
    from node.home import DEV_BALANCE

    shared = directory / "genesis.json"
    if shared.exists():
        genesis = Genesis.read(shared)
        if len(genesis.validators) != len(homes):
            raise TestnetError(f"{shared} has {len(genesis.validators)} validators but "
                               f"--nodes is {len(homes)}: use a new --dir")
    else:
        genesis = Genesis(
            chain_id=f"dcloud-testnet-{os.urandom(3).hex()}",
            genesis_time_ms=int(time.time() * 1000),
            validators=tuple(
                GenesisValidator(f"node{i}", read_key_file(h.validator_key_file).public_key, 10)
                for i, h in enumerate(homes)),
            accounts=tuple(
                GenesisAccount(bytes.fromhex(read_key_file(h.account_key_file("default")).address),
                               DEV_BALANCE)
                for h in homes),
        )
        for h in homes:
            if (h.data_dir / "chain.db").exists() and h.genesis_file.exists() and \
                    Genesis.read(h.genesis_file).hash() != genesis.hash():
                raise TestnetError(f"{h.root} holds chain data of another genesis: "
                                   f"use a new --dir")
        genesis.write(shared)
    for h in homes:
        genesis.write(h.genesis_file)


def _write_testnet_config(home: Home, moniker: str, region: str,
                          settings: dict[tuple[str, str], Any]) -> None:
    """(Re)write the node's config.toml so that `start --home` alone restarts it identically."""
    from node.config import SECTIONS, load_config, render_config_toml

    values: dict[tuple[str, str], Any] = {("node", "moniker"): moniker, ("node", "region"): region}
    if home.config_file.exists():
        # Keep what an operator changed by hand; the testnet's own settings win.
        current = load_config(home.root, env={})
        for section in tuple(SECTIONS):
            for key, value in asdict(getattr(current, section)).items():
                values[(section, key)] = value
    values.update(settings)
    home.config_file.write_text(render_config_toml(values), encoding="utf-8")


def start_process(home: str) -> int:
    log_dir = Path(home) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_dir / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCLOUD_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "start", "--home", home],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True, env=env, close_fds=True,
    )
    out.close()
    return proc.pid


def fetch_status(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """A node's /status, or None while it cannot answer. That includes an answer that is not
    HTTP: a connect to a local port nobody listens on yet can, within the ephemeral range,
    connect the socket to itself and read back its own request."""
    try:
        with urllib.request.urlopen(f"{url}/status", timeout=timeout) as resp:  # noqa: S310
            doc = json.loads(resp.read(4 * 1024 * 1024))
            return doc if isinstance(doc, dict) else None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return None


def up(directory: Path, *, nodes: int, base_port: int, timeout: float,
       regions: list[str] | None = None,
       overrides: dict[tuple[str, str], Any] | None = None) -> int:
    if nodes < 1 or nodes > 64:
        raise TestnetError("--nodes must be between 1 and 64")
    if not 1024 <= base_port <= 65535 - 10 * nodes:
        raise TestnetError("--base-port leaves no room for that many nodes")
    directory.mkdir(parents=True, exist_ok=True)
    previous = {}
    if (directory / TESTNET_FILE).exists():
        previous = {n.name: n for n in load(directory)}
    members = plan(directory, nodes, base_port, regions, overrides)
    for node in members:
        old = previous.get(node.name)
        if old and pid_alive(old.pid) and _is_our_node(old.pid or 0, node.home):
            node.pid = old.pid
            print(f"{node.name}: already running (pid {node.pid})")
            continue
        for port in ports(base_port, int(node.name[4:])):
            if not _port_free(port):
                raise TestnetError(f"port {port} on {HOST} is in use: choose another --base-port "
                                   f"or stop what holds it")
    started = []
    for node in members:
        if node.pid is None:
            node.pid = start_process(node.home)
            started.append(node)
            print(f"{node.name}: started pid {node.pid} ({node.http_url})")
    save(directory, members)

    print(f"waiting up to {timeout:.0f} s for {nodes} node(s) to be ready, with {nodes - 1} "
          f"peer(s) each and all {nodes} alive in every node's membership view...")
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        statuses = [fetch_status(n.http_url) for n in members]
        done = [_ready(s, nodes) for s in statuses]
        dead = [n for n in members if not pid_alive(n.pid)]
        if dead:
            names = ", ".join(f"{n.name} (see {n.home}/logs/stdout.log)" for n in dead)
            # Half a testnet is of no use and would hold its ports and CPU unseen: the
            # nodes this call started go too (ones already running before it stay).
            stopping = [n for n in started if n not in dead]
            _stop(stopping, grace=10.0)
            save(directory, members)
            also = (f"; stopped the other nodes it started ({', '.join(n.name for n in stopping)})"
                    if stopping else "")
            raise TestnetError(f"node process exited during start-up: {names}{also}")
        if all(done):
            break
        now = time.monotonic()
        if now > deadline:
            waiting = ", ".join(n.name for n, ok in zip(members, done, strict=True) if not ok)
            raise TestnetError(f"not ready after {timeout:.0f} s: {waiting} "
                               f"(nodes keep running; see their logs, or `testnet down`)")
        if now - last_report > 5:
            print(f"  {sum(done)}/{nodes} ready")
            last_report = now
        time.sleep(0.3)
    print(format_table(members, statuses))
    return 0


def _ready(status: dict[str, Any] | None, nodes: int) -> bool:
    """Ready, connected to every other node and, where membership runs, seeing all of them
    alive: what a put (which places shards on live members) needs right after `up`."""
    if status is None or not status.get("ready") or len(status.get("peers", [])) < nodes - 1:
        return False
    membership = status.get("membership")
    if not isinstance(membership, dict) or not isinstance(membership.get("members"), list):
        return True
    alive = sum(1 for m in membership["members"]
                if isinstance(m, dict) and m.get("state") == "alive")
    return alive >= nodes


def format_table(members: list[TestnetNode], statuses: list[dict[str, Any] | None]) -> str:
    lines = [f"{'NAME':<8} {'PID':>7} {'STATE':<8} {'PEERS':>5} {'REGION':<10} "
             f"{'HTTP':<24} P2P"]
    for node, st in zip(members, statuses, strict=True):
        alive = pid_alive(node.pid)
        state = "down" if not alive else ("ready" if st and st.get("ready") else
                                          ("starting" if st is None else "waiting"))
        peers = len(st.get("peers", [])) if st else 0
        region = st.get("region", "-") if st else "-"
        lines.append(f"{node.name:<8} {node.pid or '-':>7} {state:<8} {peers:>5} {region:<10} "
                     f"{node.http_url:<24} {node.p2p_addr}")
    return "\n".join(lines)


def down(directory: Path, *, grace: float) -> int:
    members = load(directory)
    running = [n for n in members if pid_alive(n.pid) and _is_our_node(n.pid or 0, n.home)]
    _stop(running, grace=grace)
    for node in members:
        print(f"{node.name}: stopped" if node in running else f"{node.name}: was not running")
        node.pid = None
    save(directory, members)
    return 0


def _stop(running: list[TestnetNode], *, grace: float) -> None:
    """SIGTERM each node, SIGKILL those still running after `grace` s; wait for all."""
    for node in running:
        os.kill(node.pid or 0, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(n.pid) for n in running):
        _reap()
        time.sleep(0.1)
    for node in running:
        if pid_alive(node.pid):
            print(f"{node.name}: still running after {grace:.0f} s, sending SIGKILL")
            os.kill(node.pid or 0, signal.SIGKILL)
    for node in running:
        while pid_alive(node.pid):
            _reap()
            time.sleep(0.05)
        node.pid = None


def _reap() -> None:
    """Collect exited children (when `up` and `down` run in one process, as in tests)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def status(directory: Path) -> int:
    members = load(directory)
    statuses = [fetch_status(n.http_url) if pid_alive(n.pid) else None for n in members]
    print(format_table(members, statuses))
    return 0
