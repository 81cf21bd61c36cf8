"""Typed node configuration: shipped defaults < config.toml < environment < command line."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

ENV_PREFIX = "DCLOUD_"
CONFIG_FILE = "config.toml"


class ConfigError(Exception):
    """A configuration value or file is wrong; the message names the culprit."""


@dataclass(frozen=True)
class NodeSection:
    moniker: str
    region: str
    log_level: str
    log_format: str
    log_file: str


@dataclass(frozen=True)
class P2PSection:
    listen_addrs: list[str]
    announce_addrs: list[str]
    bootstrap: list[str]
    target_peers: int
    max_peers: int
    allow_solo: bool
    dial_backoff_initial_s: float
    dial_backoff_max_s: float
    dial_timeout_s: float
    discovery_interval_s: float
    ping_interval_s: float
    max_frame_bytes: int


@dataclass(frozen=True)
class GossipSection:
    heartbeat_interval_s: float
    summary_interval_s: float
    probe_interval_ms: int
    probe_timeout_ms: int
    suspicion_mult: int


@dataclass(frozen=True)
class StorageSection:
    enabled: bool
    quota_bytes: int
    max_object_bytes: int
    segment_bytes: int
    k: int
    m: int
    gc_interval_s: float
    gc_grace_s: float
    audit_interval_s: float


@dataclass(frozen=True)
class ApiSection:
    enabled: bool
    listen: str
    max_body_bytes: int


SECTIONS: dict[str, type] = {"node": NodeSection, "p2p": P2PSection, "gossip": GossipSection,
                             "storage": StorageSection, "api": ApiSection}


@dataclass(frozen=True)
class Config:
    home: Path
    node: NodeSection
    p2p: P2PSection
    gossip: GossipSection
    storage: StorageSection
    api: ApiSection

    @property
    def api_host_port(self) -> tuple[str, int]:
        return split_host_port(self.api.listen)


def default_toml_text() -> str:
    """The shipped defaults, with their comments: what `init` writes as config.toml."""
    return resources.files("node").joinpath("defaults/config.toml").read_text(encoding="utf-8")


def defaults() -> dict[str, dict[str, Any]]:
    return tomllib.loads(default_toml_text())


def option_names() -> list[tuple[str, str]]:
    """Every (section, key) pair the node understands."""
    return [(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def env_var_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def flag_name(section: str, key: str) -> str:
    return f"--{section}-{key.replace('_', '-')}"


def _field_type(section: str, key: str) -> Any:
    hints = typing.get_type_hints(SECTIONS[section])
    return hints[key]


def coerce(section: str, key: str, value: Any, *, source: str) -> Any:
    """Convert `value` (from TOML, or a string from env/flags) to the option's type."""
    where = f"{section}.{key} (from {source})"
    typ = _field_type(section, key)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if typing.get_origin(typ) is list:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{where}: unsupported option type {typ!r}")  # pragma: no cover


def _merge_file(merged: dict[str, dict[str, Any]], data: Mapping[str, Any], source: str) -> None:
    for section, table in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown config section [{section}]")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key, value in table.items():
            if key not in merged[section]:
                raise ConfigError(f"{source}: unknown config key {section}.{key}")
            merged[section][key] = coerce(section, key, value, source=source)


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def load_config(
    home: Path,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
    require_file: bool = False,
) -> Config:
    """Build the effective config of the node whose home is `home`.

    `overrides` are command-line values keyed by (section, key); they win over the
    environment, which wins over `home/config.toml`, which wins over the defaults.
    """
    env = os.environ if env is None else env
    merged: dict[str, dict[str, Any]] = {s: dict(t) for s, t in defaults().items()}
    path = home / CONFIG_FILE
    if path.exists():
        _merge_file(merged, read_config_file(path), str(path))
    elif require_file:
        raise ConfigError(f"no {CONFIG_FILE} in {home}: run `dcloud-node init --home {home}` first")

    known = {env_var_name(s, k): (s, k) for s, k in option_names()}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == "DCLOUD_HOME":
            continue
        if name not in known:
            raise ConfigError(f"unknown config variable {name} in the environment")
        section, key = known[name]
        merged[section][key] = coerce(section, key, value, source=f"environment {name}")

    for (section, key), value in (overrides or {}).items():
        if (section, key) not in known.values():
            raise ConfigError(f"unknown config option {section}.{key}")
        merged[section][key] = coerce(section, key, value, source=flag_name(section, key))

    config = Config(
        home=home,
        node=NodeSection(**merged["node"]),
        p2p=P2PSection(**merged["p2p"]),
        gossip=GossipSection(**merged["gossip"]),
        storage=StorageSection(**merged["storage"]),
        api=ApiSection(**merged["api"]),
    )
    validate(config)
    return config


def split_host_port(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"expected HOST:PORT, got {value!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ConfigError(f"an IPv6 address needs brackets, as in [::1]:26660, got {value!r}")
    try:
        port = int(port_text)
    except ValueError as exc:
        raise ConfigError(f"bad port in {value!r}") from exc
    if not 0 <= port <= 65535:
        raise ConfigError(f"port out of range in {value!r}")
    return host.strip("[]"), port


def validate(config: Config) -> None:
    if config.node.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"node.log_level must be debug, info, warning or error, "
                          f"got {config.node.log_level!r}")
    if config.node.log_format not in ("auto", "json", "text"):
        raise ConfigError(f"node.log_format must be auto, json or text, "
                          f"got {config.node.log_format!r}")
    if not config.node.moniker or len(config.node.moniker) > 64:
        raise ConfigError("node.moniker must be 1 to 64 characters")
    if not config.node.region or len(config.node.region) > 64:
        raise ConfigError("node.region must be 1 to 64 characters")
    p2p = config.p2p
    if p2p.target_peers < 0 or p2p.max_peers < 1 or p2p.target_peers > p2p.max_peers:
        raise ConfigError("p2p.target_peers must be between 0 and p2p.max_peers (>= 1)")
    for name in ("dial_backoff_initial_s", "dial_backoff_max_s", "dial_timeout_s",
                 "discovery_interval_s", "ping_interval_s"):
        value = getattr(p2p, name)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"p2p.{name} must be a finite number > 0, got {value}")
    g = config.gossip
    for name in ("heartbeat_interval_s", "summary_interval_s"):
        value = getattr(g, name)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"gossip.{name} must be a finite number > 0, got {value}")
    if not 10 <= g.probe_timeout_ms < g.probe_interval_ms:
        raise ConfigError("gossip.probe_timeout_ms must be >= 10 and below probe_interval_ms")
    if not 1 <= g.suspicion_mult <= 100:
        raise ConfigError("gossip.suspicion_mult must be between 1 and 100")
    st = config.storage
    if st.quota_bytes < 0 or st.max_object_bytes < 0:
        raise ConfigError("storage.quota_bytes and storage.max_object_bytes must be >= 0")
    if not 64 * 1024 <= st.segment_bytes <= 64 * 1024 * 1024:
        raise ConfigError("storage.segment_bytes must be between 65536 and 67108864")
    if not (1 <= st.k <= 32 and 1 <= st.m <= 32):
        raise ConfigError("storage.k and storage.m must each be between 1 and 32")
    for name in ("gc_interval_s", "audit_interval_s"):
        value = getattr(st, name)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"storage.{name} must be a finite number > 0, got {value}")
    if not math.isfinite(st.gc_grace_s) or st.gc_grace_s < 0:
        raise ConfigError(f"storage.gc_grace_s must be a finite number >= 0, got {st.gc_grace_s}")
    if p2p.max_frame_bytes < 1024:
        raise ConfigError("p2p.max_frame_bytes must be at least 1024")
    if config.api.max_body_bytes < 1024:
        raise ConfigError("api.max_body_bytes must be at least 1024")
    split_host_port(config.api.listen)
    # Multiaddr syntax is checked by node.p2p (the only package that knows multiaddrs).


def render_config_toml(values: Mapping[tuple[str, str], Any]) -> str:
    """The documented default config file with `values` ((section, key) -> value) filled in."""
    import tomli_w

    unknown = set(values) - set(option_names())
    if unknown:
        names = ", ".join(sorted(f"{s}.{k}" for s, k in unknown))
        raise ConfigError(f"unknown config option(s): {names}")
    seen: set[tuple[str, str]] = set()
    lines = []
    section = ""
    for line in default_toml_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
        is_option = "=" in stripped and not stripped.startswith("#")
        key = stripped.split("=", 1)[0].strip() if is_option else ""
        if (section, key) in values:
            seen.add((section, key))
            value = coerce(section, key, values[(section, key)], source="init")
            line = tomli_w.dumps({key: value}).strip()
        lines.append(line)
    return "\n".join(lines) + "\n"
