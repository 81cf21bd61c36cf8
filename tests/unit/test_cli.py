"""node.cli run in-process: exit codes, one-line errors, and what the commands print."""

from __future__ import annotations

import json

import pytest

import node.app
from node.cli import main
from node.config import Config
from node.crypto import read_key_file
from node.home import Home
from node.p2p import peer_id_of


@pytest.fixture
def home(tmp_path, clean_env):
    return tmp_path / "home"


@pytest.fixture
def started(monkeypatch):
    """Stands in for the node's run loop: records the config `start` would run with.

    If validation wrongly lets a bad config through, the test fails here instead of
    binding ports and running forever.
    """
    calls: list[Config] = []
    monkeypatch.setattr(node.app, "start_node", calls.append)
    return calls


@pytest.fixture
def initialised(home, capsys):
    assert main(["init", "--home", str(home)]) == 0
    capsys.readouterr()
    return home


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dcloud-node: error: ")
    return lines[0]


# ---- init and keys show -------------------------------------------------------------------------


def test_init_then_keys_show_json_reports_the_node_peer_id(home, capsys):
    assert main(["init", "--home", str(home), "--moniker", "alpha", "--region", "eu"]) == 0
    out = capsys.readouterr().out
    node_key = read_key_file(home / "keys" / "node_key.json")
    validator_key = read_key_file(home / "keys" / "validator_key.json")
    assert f"node id: {peer_id_of(node_key)}" in out
    assert f"wrote {home / 'config.toml'}" in out

    assert main(["keys", "show", "--home", str(home), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "peer_id": peer_id_of(node_key),
        "node_public_key": node_key.public_key.hex(),
        "validator_public_key": validator_key.public_key.hex(),
        "validator_address": validator_key.address,
    }


def test_keys_show_text_lists_the_same_facts(initialised, capsys):
    assert main(["keys", "show", "--home", str(initialised)]) == 0
    out = capsys.readouterr().out
    peer_id = peer_id_of(read_key_file(initialised / "keys" / "node_key.json"))
    assert any(line.split() == ["peer_id", peer_id] for line in out.splitlines())


def test_init_uses_dcloud_home_when_no_flag(home, capsys, clean_env):
    clean_env.setenv("DCLOUD_HOME", str(home))
    assert main(["init"]) == 0
    assert Home(home).is_initialised()


def test_init_twice_refuses_with_one_line_and_keeps_keys(initialised, capsys):
    key_file = initialised / "keys" / "node_key.json"
    before = key_file.read_bytes()
    assert main(["init", "--home", str(initialised)]) == 2
    assert "refusing to overwrite" in one_error_line(capsys)
    assert key_file.read_bytes() == before


def test_keys_show_on_an_empty_home(home, capsys):
    assert main(["keys", "show", "--home", str(home)]) == 2
    assert "does not exist" in one_error_line(capsys)


# ---- start: configuration errors are reported before the node runs ---------------------------


def test_start_with_malformed_bootstrap(initialised, capsys, started):
    code = main(["start", "--home", str(initialised), "--bootstrap", "/ip4/127.0.0.1/tcp/1"])
    assert code == 2
    assert "/p2p/<peer-id>" in one_error_line(capsys)
    assert started == []


def test_start_with_a_bootstrap_peer_id_that_is_garbage(initialised, capsys, started):
    code = main(["start", "--home", str(initialised),
                 "--bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/nonsense"])
    assert code == 2
    assert "nonsense" in one_error_line(capsys)
    assert started == []


def test_start_with_unknown_env_var(initialised, capsys, started, clean_env):
    clean_env.setenv("DCLOUD_P2P_TARGET_PEER", "3")
    assert main(["start", "--home", str(initialised)]) == 2
    assert "DCLOUD_P2P_TARGET_PEER" in one_error_line(capsys)
    assert started == []


def test_start_with_bad_target_peers_value(initialised, capsys, started):
    assert main(["start", "--home", str(initialised), "--p2p-target-peers", "lots"]) == 2
    line = one_error_line(capsys)
    assert "p2p.target_peers" in line and "--p2p-target-peers" in line
    assert started == []


def test_start_with_target_peers_above_max_peers(initialised, capsys, started):
    code = main(["start", "--home", str(initialised),
                 "--p2p-target-peers", "10", "--p2p-max-peers", "5"])
    assert code == 2
    assert "p2p.target_peers" in one_error_line(capsys)
    assert started == []


def test_start_with_bad_listen_addr(initialised, capsys, started):
    code = main(["start", "--home", str(initialised), "--p2p-listen-addrs", "/ip4/1.2.3.4/udp/1"])
    assert code == 2
    assert "/ip4/1.2.3.4/udp/1" in one_error_line(capsys)
    assert started == []


def test_start_with_bad_announce_addr(initialised, capsys, started, clean_env):
    clean_env.setenv("DCLOUD_P2P_ANNOUNCE_ADDRS", "/ip4/127.0.0.1/tcp/1,nonsense")
    assert main(["start", "--home", str(initialised)]) == 2
    assert "nonsense" in one_error_line(capsys)
    assert started == []


def test_start_runs_the_node_with_the_effective_config(initialised, capsys, started,
                                                      clean_env):
    (initialised / "config.toml").write_text(
        '[node]\nmoniker = "file"\nregion = "file-region"\n[p2p]\ntarget_peers = 1\n'
    )
    clean_env.setenv("DCLOUD_NODE_REGION", "env-region")
    clean_env.setenv("DCLOUD_P2P_TARGET_PEERS", "2")
    peer = peer_id_of(read_key_file(initialised / "keys" / "node_key.json"))
    bootstrap = f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}"
    code = main(["start", "--home", str(initialised), "--p2p-target-peers", "3",
                 "--bootstrap", bootstrap])
    assert code == 0
    [config] = started
    assert config.home == initialised.resolve()
    assert config.node.moniker == "file"
    assert config.node.region == "env-region"
    assert config.p2p.target_peers == 3
    assert config.p2p.bootstrap == [bootstrap]


def test_start_initialises_an_empty_home_first(home, capsys, started):
    assert main(["start", "--home", str(home), "--moniker", "fresh"]) == 0
    assert Home(home).is_initialised()
    assert "initialised a new node home" in capsys.readouterr().err
    [config] = started
    assert config.node.moniker == "fresh"


# ---- status ------------------------------------------------------------------------------------


def test_status_of_an_unreachable_node(capsys, clean_env):
    assert main(["status", "--url", "http://127.0.0.1:1"]) == 2
    line = one_error_line(capsys)
    assert "cannot reach" in line and "http://127.0.0.1:1" in line


def test_status_without_a_home_or_url(home, capsys):
    assert main(["status", "--home", str(home)]) == 2
    assert "init" in one_error_line(capsys)


# ---- argument errors ---------------------------------------------------------------------------


def test_unknown_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["start", "--p2p-no-such-option", "1"])
    assert excinfo.value.code == 2


def test_command_is_required(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main([])
    assert excinfo.value.code == 2
