"""Real `dcloud-node` processes on 127.0.0.1, driven only through their CLI, HTTP and libp2p."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ports import HOST, free_port_block, port_block_free  # noqa: F401 - used by tests


def http_get(url: str, timeout: float = 3.0) -> tuple[int, Any]:
    """(status, parsed JSON or text) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
            status = resp.status
            ctype = resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        body, status, ctype = exc.read(), exc.code, exc.headers.get("Content-Type", "")
    except (urllib.error.URLError, OSError):
        return 0, None
    if "json" in ctype:
        return status, json.loads(body)
    return status, body.decode()


def http_request(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(member: dict[str, Any], name: str) -> float:
    """The sum of the samples named `name` (e.g. `..._total`) in a node's /metrics."""
    _, text = http_get(f"{member['http_url']}/metrics")
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"dcloud-node {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class NodeProcess:
    """One `dcloud-node start` process this test started (and will stop)."""

    home: Path
    p2p_port: int
    http_port: int
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def start(self, env: dict[str, str] | None = None) -> NodeProcess:
        args = [sys.executable, "-m", "node", "start", "--home", str(self.home),
                "--p2p-listen-addrs", f"/ip4/{HOST}/tcp/{self.p2p_port}",
                "--api-listen", f"{HOST}:{self.http_port}", *self.extra]
        self.home.mkdir(parents=True, exist_ok=True)
        self.stderr_path = self.home / "test-stderr.log"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     env=env)
        return self

    def wait_healthy(self, timeout: float = 30) -> dict[str, Any]:
        def healthy() -> Any:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}: "
                                     f"{self.stderr_path.read_text()[-2000:]}")
            status, _ = http_get(f"{self.url}/health")
            return status == 200

        wait_for(healthy, timeout, f"{self.url}/health")
        return self.status()

    def status(self) -> dict[str, Any]:
        code, doc = http_get(f"{self.url}/status")
        assert code == 200, (code, doc)
        return doc  # type: ignore[no-any-return]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    started: list[NodeProcess] = []

    def make(name: str = "n0", extra: list[str] | None = None, init: bool = True) -> NodeProcess:
        base = free_port_block(2)
        home = tmp_path / name
        if init:
            cli("init", "--home", str(home), "--moniker", name, "--region", "test")
        node = NodeProcess(home, base, base + 1, extra or [])
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop(signal.SIGKILL if node.proc and node.proc.poll() is None else signal.SIGTERM)


@dataclass
class Testnet:
    directory: Path
    base_port: int
    nodes: int

    def members(self) -> list[dict[str, Any]]:
        return json.loads((self.directory / "testnet.json").read_text())  # type: ignore[no-any-return]

    def up(self, timeout: float = 90, *extra: str) -> subprocess.CompletedProcess[str]:
        return cli("testnet", "up", "--nodes", str(self.nodes), "--dir", str(self.directory),
                   "--base-port", str(self.base_port), "--timeout", str(timeout), *extra,
                   timeout=timeout + 30)

    def down(self) -> subprocess.CompletedProcess[str]:
        return cli("testnet", "down", "--dir", str(self.directory))

    def peers_of(self, member: dict[str, Any]) -> set[str]:
        code, doc = http_get(f"{member['http_url']}/status")
        if code != 200:
            return set()
        return {p["peer_id"] for p in doc["peers"]}


@pytest.fixture
def testnet_factory(tmp_path: Path) -> Iterator[Callable[[int], Testnet]]:
    made: list[Testnet] = []

    def make(nodes: int) -> Testnet:
        net = Testnet(tmp_path / f"testnet{len(made)}", free_port_block(10 * nodes + 2), nodes)
        made.append(net)
        return net

    yield make
    for net in made:
        if (net.directory / "testnet.json").exists():
            pids = [m["pid"] for m in net.members() if m["pid"]]
            cli("testnet", "down", "--dir", str(net.directory), "--grace", "5", check=False)
            for pid in pids:  # whatever survived `down` (a failed test) is ended here
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        # Nodes a test restarted by hand are not in testnet.json: find them by their home.
        for pid in _pids_with_arg(str(net.directory)):
            os.kill(pid, signal.SIGKILL)


def _pids_with_arg(fragment: str) -> list[int]:
    """PIDs of processes with a command-line argument under `fragment` (ours: tmp paths)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.decode(errors="replace").startswith(fragment) for a in args):
            found.append(int(entry))
    return found
