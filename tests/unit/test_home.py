"""node.home: initialising a home, the single-instance lock, and finding the home."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from node.config import load_config
from node.consensus.genesis import Genesis
from node.crypto import KeyFileError, read_key_file
from node.home import Home, HomeLock, NodeLockedError, read_lock_info, resolve_home


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---- Home.init ----------------------------------------------------------------------------------


def test_init_writes_config_keys_and_a_dev_genesis(tmp_path):
    home = Home(tmp_path / "home")
    written = home.init(moniker="alpha", region="eu")

    assert set(written) == {home.config_file, home.node_key_file, home.validator_key_file,
                            home.account_key_file("default"), home.genesis_file}
    assert mode_of(home.account_key_file("default")) == 0o600
    assert home.is_initialised()
    assert mode_of(home.node_key_file) == 0o600
    assert mode_of(home.validator_key_file) == 0o600
    assert mode_of(home.node_key_file.parent) == 0o700
    assert home.data_dir.is_dir()
    assert (home.root / "logs").is_dir()

    node_key = read_key_file(home.node_key_file)
    validator_key = read_key_file(home.validator_key_file)
    assert node_key != validator_key

    config = load_config(home.root, env={}, require_file=True)
    assert (config.node.moniker, config.node.region) == ("alpha", "eu")

    # The dev genesis: this node validates alone and its default account is funded.
    genesis = Genesis.read(home.genesis_file)
    assert [v.pub_key for v in genesis.validators] == [validator_key.public_key]
    account = read_key_file(home.account_key_file("default"))
    assert [(a.address.hex(), a.balance > 0) for a in genesis.accounts] == \
        [(account.address, True)]


def test_init_applies_extra_settings(tmp_path):
    home = Home(tmp_path)
    home.init(moniker="m", region="r", settings={("p2p", "target_peers"): 2,
                                                 ("api", "listen"): "127.0.0.1:1234"})
    config = load_config(tmp_path, env={})
    assert config.p2p.target_peers == 2
    assert config.api.listen == "127.0.0.1:1234"


def test_second_init_refuses_and_keeps_keys_and_config(tmp_path):
    home = Home(tmp_path)
    home.init(moniker="first", region="r")
    files = (home.node_key_file, home.validator_key_file, home.config_file)
    before = {p: p.read_bytes() for p in files}

    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        home.init(moniker="second", region="r")

    assert {p: p.read_bytes() for p in files} == before


def test_init_refuses_when_only_the_validator_key_exists(tmp_path):
    home = Home(tmp_path)
    home.validator_key_file.parent.mkdir(parents=True)
    home.validator_key_file.write_text("precious")
    with pytest.raises(KeyFileError, match="validator_key.json"):
        home.init(moniker="m", region="r")
    assert home.validator_key_file.read_text() == "precious"
    assert not home.node_key_file.exists()


def test_init_keeps_an_existing_config_file(tmp_path):
    home = Home(tmp_path)
    home.config_file.write_text('[node]\nmoniker = "hand-written"\n')
    written = home.init(moniker="ignored", region="r")
    assert home.config_file not in written
    assert load_config(tmp_path, env={}).node.moniker == "hand-written"


def test_empty_home_is_not_initialised(tmp_path):
    assert not Home(tmp_path).is_initialised()


# ---- HomeLock -----------------------------------------------------------------------------------


@pytest.fixture
def lock(tmp_path):
    held = HomeLock(tmp_path / "node.lock")
    held.acquire()
    yield held
    held.release()


def test_acquire_records_own_pid(lock):
    assert read_lock_info(lock.path) == {"pid": os.getpid()}


def test_second_lock_is_refused_naming_the_holder_pid(lock, tmp_path):
    lock.update(pid=424242)
    with pytest.raises(NodeLockedError) as excinfo:
        HomeLock(lock.path).acquire()
    assert "pid 424242" in str(excinfo.value)
    assert str(tmp_path) in str(excinfo.value)


def test_refused_acquire_does_not_clobber_holder_info(lock):
    lock.update(api_url="http://127.0.0.1:5")
    with pytest.raises(NodeLockedError):
        HomeLock(lock.path).acquire()
    assert read_lock_info(lock.path) == {"pid": os.getpid(), "api_url": "http://127.0.0.1:5"}


def test_update_merges_and_rewrites_json(lock):
    lock.update(api_url="http://127.0.0.1:26660")
    lock.update(api_url="http://127.0.0.1:1", moniker="x")
    text = lock.path.read_text()
    assert json.loads(text) == {"pid": os.getpid(), "api_url": "http://127.0.0.1:1",
                                "moniker": "x"}
    assert read_lock_info(lock.path) == json.loads(text)


def test_release_allows_reacquire(tmp_path):
    path = tmp_path / "node.lock"
    first = HomeLock(path)
    first.acquire()
    first.release()
    second = HomeLock(path)
    second.acquire()  # must not raise
    try:
        with pytest.raises(NodeLockedError):
            HomeLock(path).acquire()
    finally:
        second.release()


def test_acquire_creates_missing_parent(tmp_path):
    path = tmp_path / "new" / "home" / "node.lock"
    held = HomeLock(path)
    held.acquire()
    try:
        assert path.exists()
    finally:
        held.release()


@pytest.mark.parametrize("content", [None, "", "not json", "[1, 2]"])
def test_read_lock_info_is_empty_when_absent_or_garbage(tmp_path, content):
    path = tmp_path / "node.lock"
    if content is not None:
        path.write_text(content)
    assert read_lock_info(path) == {}


# ---- resolve_home -------------------------------------------------------------------------------


def test_explicit_home_wins_over_env(tmp_path, clean_env):
    clean_env.setenv("DCLOUD_HOME", str(tmp_path / "from-env"))
    assert resolve_home(tmp_path / "flag") == (tmp_path / "flag").resolve()
    assert resolve_home(str(tmp_path / "flag")) == (tmp_path / "flag").resolve()


def test_env_home_when_no_flag(tmp_path, clean_env):
    clean_env.setenv("DCLOUD_HOME", str(tmp_path / "from-env"))
    assert resolve_home(None) == (tmp_path / "from-env").resolve()


@pytest.mark.parametrize("env_value", [None, ""])
def test_default_home_is_dot_dcloud_in_user_home(tmp_path, clean_env, env_value):
    clean_env.setenv("HOME", str(tmp_path))
    if env_value is not None:
        clean_env.setenv("DCLOUD_HOME", env_value)
    assert resolve_home(None) == (tmp_path / ".dcloud").resolve()


def test_home_is_made_absolute_and_user_expanded(tmp_path, clean_env):
    clean_env.setenv("HOME", str(tmp_path / "user"))
    clean_env.chdir(tmp_path)
    assert resolve_home("rel/home") == (tmp_path / "rel" / "home").resolve()
    assert resolve_home("~/h") == (tmp_path / "user" / "h").resolve()
