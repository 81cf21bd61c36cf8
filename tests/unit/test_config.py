"""node.config: defaults < home/config.toml < DCLOUD_* environment < command line."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.cli import _overrides, build_parser
from node.config import (
    SECTIONS,
    ConfigError,
    default_toml_text,
    defaults,
    env_var_name,
    flag_name,
    load_config,
    option_names,
    render_config_toml,
    split_host_port,
)


def write_config(home: Path, text: str) -> Path:
    path = home / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ---- the option set -----------------------------------------------------------------------------


def test_every_shipped_default_is_a_section_field_and_vice_versa():
    in_file = {(section, key) for section, table in defaults().items() for key in table}
    in_dataclasses = {
        (section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
    }
    assert in_file == in_dataclasses
    assert set(option_names()) == in_file
    assert len(option_names()) == len(in_file)  # no duplicates


def test_defaults_alone_load_and_validate(tmp_path):
    config = load_config(tmp_path, env={})
    shipped = defaults()
    for section, key in option_names():
        assert getattr(getattr(config, section), key) == shipped[section][key], (section, key)
    assert config.home == tmp_path
    assert config.p2p.target_peers == 8
    assert config.api_host_port == ("127.0.0.1", 26660)


def test_env_var_and_flag_names():
    assert env_var_name("p2p", "target_peers") == "DCLOUD_P2P_TARGET_PEERS"
    assert flag_name("p2p", "target_peers") == "--p2p-target-peers"


def test_every_option_has_a_start_flag():
    parser = build_parser()
    for section, key in option_names():
        args = parser.parse_args(["start", flag_name(section, key), "x"])
        assert _overrides(args)[(section, key)] == "x", (section, key)


# ---- precedence ---------------------------------------------------------------------------------


def test_file_overrides_defaults(tmp_path):
    write_config(tmp_path, '[node]\nmoniker = "from-file"\n[p2p]\ntarget_peers = 3\n')
    config = load_config(tmp_path, env={})
    assert config.node.moniker == "from-file"
    assert config.p2p.target_peers == 3
    assert config.p2p.max_peers == 64  # untouched options keep their defaults


def test_env_overrides_file(tmp_path):
    write_config(tmp_path, '[node]\nmoniker = "from-file"\n[p2p]\ntarget_peers = 3\n')
    config = load_config(tmp_path, env={"DCLOUD_NODE_MONIKER": "from-env"})
    assert config.node.moniker == "from-env"
    assert config.p2p.target_peers == 3


def test_overrides_win_over_env_and_file(tmp_path):
    write_config(tmp_path, '[node]\nmoniker = "from-file"\n')
    config = load_config(
        tmp_path,
        env={"DCLOUD_NODE_MONIKER": "from-env", "DCLOUD_NODE_REGION": "env-region"},
        overrides={("node", "moniker"): "from-cli"},
    )
    assert config.node.moniker == "from-cli"
    assert config.node.region == "env-region"


def test_full_precedence_chain_through_real_cli_flags(tmp_path):
    write_config(
        tmp_path,
        '[node]\nmoniker = "file"\nregion = "file-region"\nlog_level = "debug"\n'
        "[p2p]\ntarget_peers = 2\nmax_peers = 20\n",
    )
    env = {"DCLOUD_NODE_REGION": "env-region", "DCLOUD_P2P_TARGET_PEERS": "4",
           "DCLOUD_P2P_MAX_PEERS": "30"}
    args = build_parser().parse_args([
        "start", "--home", str(tmp_path),
        "--p2p-target-peers", "6",
        "--moniker", "cli",
        "--p2p-allow-solo", "false",
        "--p2p-listen-addrs", "/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2",
        "--bootstrap", "/dns4/a/tcp/1/p2p/x,/dns4/b/tcp/1/p2p/y",
        "--bootstrap", "/dns4/c/tcp/1/p2p/z",
    ])
    config = load_config(tmp_path, env=env, overrides=_overrides(args))
    assert config.node.moniker == "cli"              # flag > file
    assert config.node.region == "env-region"        # env > file
    assert config.node.log_level == "debug"          # file > default
    assert config.node.log_format == "auto"          # default
    assert config.p2p.target_peers == 6              # flag > env > file
    assert config.p2p.max_peers == 30                # env > file
    assert config.p2p.allow_solo is False
    assert config.p2p.listen_addrs == ["/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2"]
    assert config.p2p.bootstrap == [
        "/dns4/a/tcp/1/p2p/x", "/dns4/b/tcp/1/p2p/y", "/dns4/c/tcp/1/p2p/z",
    ]


def test_moniker_shortcut_beats_long_flag():
    args = build_parser().parse_args(
        ["start", "--node-moniker", "long", "--moniker", "short", "--region", "eu"]
    )
    assert _overrides(args)[("node", "moniker")] == "short"
    assert _overrides(args)[("node", "region")] == "eu"


def test_absent_flags_are_not_overrides():
    args = build_parser().parse_args(["start"])
    assert _overrides(args) == {}


def test_load_config_reads_os_environ_by_default(tmp_path, clean_env):
    clean_env.setenv("DCLOUD_P2P_MAX_PEERS", "77")
    assert load_config(tmp_path).p2p.max_peers == 77


# ---- coercion of environment strings ------------------------------------------------------------


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " On "])
def test_env_true_values(tmp_path, text):
    assert load_config(tmp_path, env={"DCLOUD_API_ENABLED": text}).api.enabled is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "off"])
def test_env_false_values(tmp_path, text):
    assert load_config(tmp_path, env={"DCLOUD_API_ENABLED": text}).api.enabled is False


def test_env_numbers_and_lists_are_coerced(tmp_path):
    config = load_config(tmp_path, env={
        "DCLOUD_P2P_TARGET_PEERS": " 12 ",
        "DCLOUD_P2P_MAX_FRAME_BYTES": "2048",
        "DCLOUD_P2P_DIAL_TIMEOUT_S": "0.25",
        "DCLOUD_P2P_PING_INTERVAL_S": "3",
        "DCLOUD_P2P_LISTEN_ADDRS": "/ip4/0.0.0.0/tcp/1, /ip4/0.0.0.0/tcp/2,,",
        "DCLOUD_P2P_ANNOUNCE_ADDRS": "",
    })
    assert config.p2p.target_peers == 12 and type(config.p2p.target_peers) is int
    assert config.p2p.max_frame_bytes == 2048
    assert config.p2p.dial_timeout_s == 0.25
    assert config.p2p.ping_interval_s == 3.0 and type(config.p2p.ping_interval_s) is float
    assert config.p2p.listen_addrs == ["/ip4/0.0.0.0/tcp/1", "/ip4/0.0.0.0/tcp/2"]
    assert config.p2p.announce_addrs == []


def test_file_int_is_widened_to_float(tmp_path):
    write_config(tmp_path, "[p2p]\ndial_timeout_s = 7\n")
    value = load_config(tmp_path, env={}).p2p.dial_timeout_s
    assert value == 7.0 and type(value) is float


@pytest.mark.parametrize(
    ("var", "value", "option"),
    [
        ("DCLOUD_P2P_TARGET_PEERS", "eight", "p2p.target_peers"),
        ("DCLOUD_P2P_TARGET_PEERS", "1.5", "p2p.target_peers"),
        ("DCLOUD_P2P_DIAL_TIMEOUT_S", "soon", "p2p.dial_timeout_s"),
        ("DCLOUD_P2P_ALLOW_SOLO", "maybe", "p2p.allow_solo"),
        ("DCLOUD_API_ENABLED", "", "api.enabled"),
    ],
)
def test_bad_env_value_names_option_and_variable(tmp_path, var, value, option):
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path, env={var: value})
    assert option in str(excinfo.value)
    assert var in str(excinfo.value)


def test_bad_override_value_names_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"p2p\.max_peers \(from --p2p-max-peers\)"):
        load_config(tmp_path, env={}, overrides={("p2p", "max_peers"): "many"})


# ---- unknown names and bad files ----------------------------------------------------------------


def test_unknown_env_var_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="DCLOUD_P2P_TARGET_PEER"):
        load_config(tmp_path, env={"DCLOUD_P2P_TARGET_PEER": "3"})  # typo: PEER, not PEERS


def test_dcloud_home_is_not_a_config_variable(tmp_path):
    config = load_config(tmp_path, env={"DCLOUD_HOME": "/somewhere/else"})
    assert config.home == tmp_path


def test_non_dcloud_env_vars_are_ignored(tmp_path):
    config = load_config(tmp_path, env={"PATH": "/bin", "P2P_TARGET_PEERS": "1", "dcloud_x": "1"})
    assert config.p2p.target_peers == 8


def test_unknown_override_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"p2p\.nope"):
        load_config(tmp_path, env={}, overrides={("p2p", "nope"): "1"})


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = write_config(tmp_path, "[p2p]\ntarget_peer = 3\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path, env={})
    assert "p2p.target_peer" in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_unknown_section_in_file(tmp_path):
    write_config(tmp_path, "[warehouse]\nsize = 3\n")
    with pytest.raises(ConfigError, match=r"\[warehouse\]"):
        load_config(tmp_path, env={})


def test_section_that_is_not_a_table(tmp_path):
    write_config(tmp_path, "node = 5\n")
    with pytest.raises(ConfigError, match=r"\[node\] must be a table"):
        load_config(tmp_path, env={})


@pytest.mark.parametrize(
    ("body", "option"),
    [
        ('[p2p]\ntarget_peers = "eight"\n', "p2p.target_peers"),
        ("[p2p]\ntarget_peers = 8.5\n", "p2p.target_peers"),
        ("[p2p]\ntarget_peers = true\n", "p2p.target_peers"),
        ('[p2p]\ndial_timeout_s = "x"\n', "p2p.dial_timeout_s"),
        ("[node]\nmoniker = 5\n", "node.moniker"),
        ("[p2p]\nbootstrap = [1, 2]\n", "p2p.bootstrap"),
        ("[api]\nenabled = 2\n", "api.enabled"),
    ],
)
def test_wrong_type_in_file_names_the_option(tmp_path, body, option):
    write_config(tmp_path, body)
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        load_config(tmp_path, env={})


def test_invalid_toml_is_a_config_error(tmp_path):
    path = write_config(tmp_path, "[p2p\ntarget_peers = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as excinfo:
        load_config(tmp_path, env={})
    assert str(path) in str(excinfo.value)


def test_require_file_without_a_file(tmp_path):
    with pytest.raises(ConfigError, match="init"):
        load_config(tmp_path, env={}, require_file=True)


# ---- validate() ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DCLOUD_P2P_TARGET_PEERS": "10", "DCLOUD_P2P_MAX_PEERS": "5"}, "p2p.target_peers"),
        ({"DCLOUD_P2P_TARGET_PEERS": "6", "DCLOUD_P2P_MAX_PEERS": "5"}, "p2p.target_peers"),
        ({"DCLOUD_P2P_TARGET_PEERS": "-1"}, "p2p.target_peers"),
        ({"DCLOUD_P2P_TARGET_PEERS": "0", "DCLOUD_P2P_MAX_PEERS": "0"}, "p2p.target_peers"),
        ({"DCLOUD_NODE_LOG_LEVEL": "verbose"}, "node.log_level"),
        ({"DCLOUD_NODE_LOG_LEVEL": "INFO"}, "node.log_level"),
        ({"DCLOUD_NODE_LOG_FORMAT": "xml"}, "node.log_format"),
        ({"DCLOUD_NODE_MONIKER": ""}, "node.moniker"),
        ({"DCLOUD_NODE_MONIKER": "m" * 65}, "node.moniker"),
        ({"DCLOUD_NODE_REGION": ""}, "node.region"),
        ({"DCLOUD_P2P_DIAL_TIMEOUT_S": "0"}, "p2p.dial_timeout_s"),
        ({"DCLOUD_P2P_PING_INTERVAL_S": "-1"}, "p2p.ping_interval_s"),
        ({"DCLOUD_P2P_DIAL_BACKOFF_INITIAL_S": "0"}, "p2p.dial_backoff_initial_s"),
        ({"DCLOUD_P2P_MAX_FRAME_BYTES": "1023"}, "p2p.max_frame_bytes"),
        ({"DCLOUD_API_MAX_BODY_BYTES": "10"}, "api.max_body_bytes"),
        ({"DCLOUD_API_LISTEN": "localhost"}, "HOST:PORT"),
        ({"DCLOUD_API_LISTEN": ":8080"}, "HOST:PORT"),
        ({"DCLOUD_API_LISTEN": "localhost:http"}, "bad port"),
        ({"DCLOUD_API_LISTEN": "localhost:65536"}, "out of range"),
        ({"DCLOUD_API_LISTEN": "localhost:-1"}, "out of range"),
    ],
)
def test_validate_rejects(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path, env=env)


def test_validate_accepts_boundaries(tmp_path):
    config = load_config(tmp_path, env={
        "DCLOUD_P2P_TARGET_PEERS": "5", "DCLOUD_P2P_MAX_PEERS": "5",
        "DCLOUD_P2P_MAX_FRAME_BYTES": "1024", "DCLOUD_API_MAX_BODY_BYTES": "1024",
        "DCLOUD_NODE_MONIKER": "m" * 64, "DCLOUD_API_LISTEN": "[::1]:0",
    })
    assert config.p2p.target_peers == config.p2p.max_peers == 5
    assert config.api_host_port == ("::1", 0)


@pytest.mark.parametrize("value", ["nan", "NaN"])
def test_validate_rejects_nan_durations(tmp_path, value):
    with pytest.raises(ConfigError, match="p2p.dial_timeout_s"):
        load_config(tmp_path, env={"DCLOUD_P2P_DIAL_TIMEOUT_S": value})


def test_validate_rejects_bare_ipv6_listen(tmp_path):
    with pytest.raises(ConfigError):
        load_config(tmp_path, env={"DCLOUD_API_LISTEN": "::1"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:26660", ("::1", 26660)),
     ("0.0.0.0:0", ("0.0.0.0", 0)), ("node.example:65535", ("node.example", 65535))],
)
def test_split_host_port(text, expected):
    assert split_host_port(text) == expected


# ---- render_config_toml -------------------------------------------------------------------------


def test_render_without_values_is_the_shipped_file():
    assert render_config_toml({}) == default_toml_text().rstrip("\n") + "\n"


def test_rendered_file_loads_back_with_the_given_values(tmp_path):
    values = {
        ("node", "moniker"): 'we"ird \\ name',
        ("node", "region"): "eu-west",
        ("p2p", "listen_addrs"): ["/ip4/0.0.0.0/tcp/1", "/ip4/0.0.0.0/tcp/2"],
        ("p2p", "bootstrap"): "/dns4/a/tcp/1/p2p/x,/dns4/b/tcp/1/p2p/y",  # comma string form
        ("p2p", "target_peers"): 3,
        ("p2p", "allow_solo"): False,
        ("p2p", "dial_timeout_s"): 7,
        ("api", "listen"): "127.0.0.1:9999",
        ("api", "enabled"): "off",
    }
    write_config(tmp_path, render_config_toml(values))
    config = load_config(tmp_path, env={})
    assert config.node.moniker == 'we"ird \\ name'
    assert config.node.region == "eu-west"
    assert config.p2p.listen_addrs == ["/ip4/0.0.0.0/tcp/1", "/ip4/0.0.0.0/tcp/2"]
    assert config.p2p.bootstrap == ["/dns4/a/tcp/1/p2p/x", "/dns4/b/tcp/1/p2p/y"]
    assert config.p2p.target_peers == 3
    assert config.p2p.allow_solo is False
    assert config.p2p.dial_timeout_s == 7.0
    assert config.api.listen == "127.0.0.1:9999"
    assert config.api.enabled is False
    assert config.p2p.max_peers == 64  # not given: still the default


def test_rendered_file_keeps_every_comment():
    rendered = render_config_toml({("node", "moniker"): "x", ("p2p", "target_peers"): 1})
    comments = [ln for ln in default_toml_text().splitlines() if ln.lstrip().startswith("#")]
    assert comments
    rendered_lines = rendered.splitlines()
    for comment in comments:
        assert comment in rendered_lines
    # and the comment still sits right above its option
    i = rendered_lines.index("# Number of peers the node tries to stay connected to.")
    assert rendered_lines[i + 1] == "target_peers = 1"


def test_render_rejects_a_badly_typed_value():
    with pytest.raises(ConfigError, match=r"p2p\.target_peers"):
        render_config_toml({("p2p", "target_peers"): "many"})


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    moniker=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=64),
    peers=st.integers(min_value=0, max_value=1000),
)
def test_render_round_trips_any_moniker(tmp_path, moniker, peers):
    text = render_config_toml({("node", "moniker"): moniker, ("p2p", "max_peers"): peers + 1,
                               ("p2p", "target_peers"): peers})
    doc = tomllib.loads(text)
    assert doc["node"]["moniker"] == moniker
    write_config(tmp_path, text)
    config = load_config(tmp_path, env={})
    assert config.node.moniker == moniker
    assert config.p2p.target_peers == peers
