"""A single real node: HTTP endpoints, metrics, lifecycle, and the errors operators see."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    HOST,
    cli,
    free_port_block,
    http_get,
    http_request,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_solo_node_serves_health_ready_status_and_metrics(node_factory):
    node = node_factory("alpha").start()
    status = node.wait_healthy()

    assert http_get(f"{node.url}/health")[0] == 200
    code, ready = http_get(f"{node.url}/ready")
    assert code == 200 and ready["ready"] is True  # alone by config: no bootstrap peers

    keys = json.loads(cli("keys", "show", "--home", str(node.home), "--json").stdout)
    assert status["node_id"] == keys["peer_id"]
    assert status["moniker"] == "alpha"
    assert status["region"] == "test"
    assert status["version"]
    assert status["uptime_s"] >= 0
    assert status["peers"] == []
    assert status["listen_addrs"] == [
        f"/ip4/{HOST}/tcp/{node.p2p_port}/p2p/{status['node_id']}"
    ]

    code, text = http_get(f"{node.url}/metrics")
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("dcloud_p2p_peers", "dcloud_p2p_dials", "dcloud_p2p_dial_failures",
                 "dcloud_p2p_received_bytes", "dcloud_p2p_sent_bytes",
                 "dcloud_node_uptime_seconds", "dcloud_node_build_info"):
        assert name in families, f"{name} missing from /metrics"
    build = families["dcloud_node_build_info"].samples[0]
    assert build.labels["node_id"] == status["node_id"]
    assert families["dcloud_node_uptime_seconds"].samples[0].value > 0

    promtool = shutil.which("promtool")
    if promtool is None and os.environ.get("CI"):
        pytest.fail("promtool must be installed in CI (.ci/run installs prometheus)")
    if promtool is not None:
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                              text=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr

    table = cli("status", "--home", str(node.home)).stdout
    assert status["node_id"] in table and "alpha" in table
    assert json.loads(cli("status", "--url", node.url, "--json").stdout)["node_id"] == \
        status["node_id"]


def test_http_errors_are_json_with_the_right_status(node_factory):
    node = node_factory().start()
    node.wait_healthy()
    code, doc = http_get(f"{node.url}/no/such/path")
    assert code == 404 and "no such path" in doc["error"]
    code, doc = http_request("POST", f"{node.url}/status", b"{}")
    assert code == 405 and "not allowed" in doc["error"]
    code, doc = http_request("DELETE", f"{node.url}/health")
    assert code == 405 and doc["status"] == 405


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_shut_down_cleanly_within_five_seconds(node_factory, signum):
    node = node_factory().start()
    node.wait_healthy()
    assert node.proc is not None
    started = time.monotonic()
    node.proc.send_signal(signum)
    code = node.proc.wait(timeout=10)
    assert time.monotonic() - started < 5.0
    assert code == 0
    # The lock is released: the same home starts again.
    node.start().wait_healthy()


def test_second_start_on_the_same_home_is_refused(node_factory):
    node = node_factory().start()
    node.wait_healthy()
    ports = free_port_block(2)
    second = cli("start", "--home", str(node.home), "--p2p-listen-addrs",
                 f"/ip4/{HOST}/tcp/{ports}", "--api-listen", f"{HOST}:{ports + 1}",
                 check=False, timeout=30)
    assert second.returncode == 2
    assert "already running" in second.stderr and str(node.proc.pid) in second.stderr
    assert node.status()["node_id"]  # the first one is unharmed


def test_port_in_use_is_a_one_line_error(node_factory):
    holder = socket.socket()
    holder.bind((HOST, 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        node = node_factory()
        for flags in (["--p2p-listen-addrs", f"/ip4/{HOST}/tcp/{taken}"],
                      ["--api-listen", f"{HOST}:{taken}"]):
            args = ["start", "--home", str(node.home),
                    "--p2p-listen-addrs", f"/ip4/{HOST}/tcp/{node.p2p_port}",
                    "--api-listen", f"{HOST}:{node.http_port}", *flags]
            proc = cli(*args, check=False, timeout=30)
            assert proc.returncode == 2, proc.stderr
            # One line: the port is checked before any service starts (and logs).
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1, proc.stderr
            assert lines[0].startswith("dcloud-node: error: cannot listen on")
            assert str(taken) in lines[0] and "in use" in lines[0]
    finally:
        holder.close()


def test_bad_config_inputs_exit_2_naming_the_problem(node_factory, tmp_path):
    node = node_factory()
    home = str(node.home)
    cases = [
        (["--bootstrap", "/ip4/127.0.0.1/tcp/1"], {}, "/p2p/"),
        (["--bootstrap", "not-a-multiaddr"], {}, "malformed multiaddr"),
        ([], {"DCLOUD_P2P_TARGET_PEERZ": "3"}, "DCLOUD_P2P_TARGET_PEERZ"),
        (["--p2p-target-peers", "many"], {}, "p2p.target_peers"),
    ]
    for flags, env, needle in cases:
        proc = cli("start", "--home", home, *flags, env={**os.environ, **env}, check=False,
                   timeout=30)
        assert proc.returncode == 2, (flags, env, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (flags, env, proc.stderr)

    with open(node.home / "config.toml", "a") as f:
        f.write("\nwat = 1\n")  # the file ends with the [api] table
    proc = cli("start", "--home", home, check=False, timeout=30)
    assert proc.returncode == 2 and "unknown config key api.wat" in proc.stderr


def test_unreadable_key_file_exits_2(node_factory):
    node = node_factory()
    key = node.home / "keys" / "node_key.json"
    key.write_text("{not json")
    proc = cli("start", "--home", str(node.home), check=False, timeout=30)
    assert proc.returncode == 2
    assert str(key) in proc.stderr and "malformed" in proc.stderr


def test_unreachable_bootstrap_peer_is_retried_with_backoff(node_factory):
    ghost_ports = free_port_block(1)
    from node.crypto import Ed25519Key
    from node.p2p import peer_id_of

    ghost = f"/ip4/{HOST}/tcp/{ghost_ports}/p2p/{peer_id_of(Ed25519Key.generate())}"
    node = node_factory(extra=["--bootstrap", ghost, "--p2p-dial-backoff-initial-s", "0.2",
                               "--node-log-level", "info"]).start()
    node.wait_healthy()
    code, doc = http_get(f"{node.url}/ready")
    assert code == 503 and doc["ready"] is False
    log_file = node.home / "logs" / "node.log"

    def retries() -> list[dict]:
        if not log_file.exists():
            return []
        records = [json.loads(line) for line in log_file.read_text().splitlines()]
        found = [r for r in records if "unreachable" in r["msg"] and "retrying in" in r["msg"]]
        return found if len(found) >= 3 else []

    found = wait_for(retries, 30, "three logged bootstrap retries")
    delays = [float(r["msg"].rsplit("retrying in ", 1)[1].split()[0]) for r in found[:3]]
    assert delays[0] < delays[1] < delays[2], delays  # exponential backoff
    assert all(r["node_id"] == node.status()["node_id"] for r in found)


def test_log_file_is_json_lines_and_captures_libp2p_records(node_factory):
    node = node_factory(extra=["--node-log-level", "debug"]).start()
    node.wait_healthy()
    log_file = node.home / "logs" / "node.log"

    def libp2p_records() -> list[dict]:
        records = [json.loads(line) for line in log_file.read_text().splitlines() if line]
        return [r for r in records if r["logger"].startswith("libp2p")]

    assert wait_for(libp2p_records, 15, "libp2p records in the log file")
    records = [json.loads(line) for line in log_file.read_text().splitlines() if line]
    assert all({"ts", "level", "logger", "msg", "node_id"} <= set(r) for r in records)


def test_a_restarted_node_dials_the_peers_of_its_last_run(node_factory):
    a = node_factory("a").start()
    a_id = a.wait_healthy()["node_id"]
    a_addr = a.status()["listen_addrs"][0]
    b = node_factory("b", extra=["--bootstrap", a_addr]).start()
    b.wait_healthy()
    wait_for(lambda: a_id in {p["peer_id"] for p in b.status()["peers"]}, 30, "b to reach a")
    assert b.stop() == 0
    saved = json.loads((b.home / "data" / "peers.json").read_text())
    assert [e["peer_id"] for e in saved] == [a_id]

    # Without its bootstrap flag b still finds a again: through the saved peers.
    b.extra = []
    b.start().wait_healthy()
    wait_for(lambda: a_id in {p["peer_id"] for p in b.status()["peers"]}, 30,
             "b to redial a from its saved peers")
    assert b.stop() == 0

    # A damaged file is reported and ignored; the node still starts. (a is stopped first:
    # it would redial b, a peer it lost, and b would have a peer after all.)
    assert a.stop() == 0
    (b.home / "data" / "peers.json").write_text('[{"peer_id": "x", "addrs": ["/bad"]}, 7')
    b.start().wait_healthy()
    assert b.status()["peers"] == []
    records = [json.loads(line) for line in
               (b.home / "logs" / "node.log").read_text().splitlines()]
    assert any("ignoring saved peers" in r["msg"] for r in records)
