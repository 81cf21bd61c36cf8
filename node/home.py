"""A node's home directory: config, keys, data, logs and the single-instance lock."""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from node.config import CONFIG_FILE, render_config_toml
from node.crypto import Ed25519Key, KeyFileError, write_key_file

DEFAULT_HOME = Path("~/.dcloud")
ACCOUNT_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# 1,000,000 tokens in micro-units for each funded dev/testnet account.
DEV_BALANCE = 1_000_000 * 1_000_000


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    """--home, else $DCLOUD_HOME, else ~/.dcloud."""
    if home is None:
        home = os.environ.get("DCLOUD_HOME") or DEFAULT_HOME
    return Path(home).expanduser().resolve()


class NodeLockedError(Exception):
    """Another dcloud-node process already runs on this home."""


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def node_key_file(self) -> Path:
        return self.root / "keys" / "node_key.json"

    @property
    def validator_key_file(self) -> Path:
        return self.root / "keys" / "validator_key.json"

    @property
    def genesis_file(self) -> Path:
        return self.root / "genesis.json"

    @property
    def accounts_dir(self) -> Path:
        return self.root / "keys" / "accounts"

    def account_key_file(self, name: str) -> Path:
        if not ACCOUNT_NAME_RE.match(name):
            raise KeyFileError(f"account name {name!r} must match {ACCOUNT_NAME_RE.pattern}")
        return self.accounts_dir / f"{name}.json"

    def account_names(self) -> list[str]:
        if not self.accounts_dir.is_dir():
            return []
        return sorted(p.stem for p in self.accounts_dir.glob("*.json"))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def lock_file(self) -> Path:
        return self.root / "node.lock"

    def is_initialised(self) -> bool:
        return self.config_file.exists() and self.node_key_file.exists()

    def init(self, *, moniker: str, region: str,
             settings: dict[tuple[str, str], Any] | None = None,
             genesis: Path | None = None) -> list[Path]:
        """Create config, node/validator/`default` account keys and a genesis.

        Without `genesis`, the genesis is a single-validator dev chain in which this node is
        the validator and its `default` account is funded. Refuses if any key already exists.
        Returns the files written.
        """
        from node.consensus.genesis import Genesis

        joined = Genesis.read(genesis) if genesis is not None else None
        for existing in (self.node_key_file, self.validator_key_file):
            if existing.exists():
                raise KeyFileError(
                    f"{existing} already exists: refusing to overwrite keys "
                    f"(this home is already initialised)"
                )
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        written = []
        if not self.config_file.exists():
            values = {("node", "moniker"): moniker, ("node", "region"): region, **(settings or {})}
            self.config_file.write_text(render_config_toml(values), encoding="utf-8")
            written.append(self.config_file)
        validator = Ed25519Key.generate()
        account = Ed25519Key.generate()
        write_key_file(self.node_key_file, Ed25519Key.generate())
        write_key_file(self.validator_key_file, validator)
        written += [self.node_key_file, self.validator_key_file]
        if not self.account_key_file("default").exists():
            write_key_file(self.account_key_file("default"), account)
            written.append(self.account_key_file("default"))
        if not self.genesis_file.exists():
            (joined or dev_genesis(moniker, validator, account)).write(self.genesis_file)
            written.append(self.genesis_file)
        return written


def dev_genesis(moniker: str, validator: Ed25519Key, account: Ed25519Key) -> Any:
    """A one-validator chain for a dev node: it validates alone and its account is funded.

    Its chain id names its validator (`dcloud-dev-<first 8 hex of its address>`): two dev
    nodes that meet run two chains, and a shared id would put both on one consensus topic,
    where each would take the other's votes for a non-validator's and ban it.
    """
    from node.consensus.genesis import Genesis, GenesisAccount, GenesisValidator

    return Genesis(
        chain_id=f"dcloud-dev-{validator.address[:8]}",
        genesis_time_ms=int(time.time() * 1000),
        validators=(GenesisValidator(moniker, validator.public_key, 10),),
        accounts=(GenesisAccount(bytes.fromhex(account.address), DEV_BALANCE),),
    )


def read_lock_info(path: Path) -> dict[str, Any]:
    """What a running node wrote into its lock file ({} if absent or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.loads(f.read(4096) or "{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


class HomeLock:
    """An exclusive flock on home/node.lock, held while a node runs on that home."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = read_lock_info(self.path).get("pid", "unknown")
            f.close()
            raise NodeLockedError(
                f"another dcloud-node (pid {holder}) is already running on {self.path.parent}"
            ) from exc
        self._file = f
        self._info: dict[str, Any] = {}
        self.update(pid=os.getpid())

    def update(self, **fields: Any) -> None:
        """Record facts about the running node (pid, API URL) for local tools to read."""
        assert self._file is not None
        self._info.update(fields)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps(self._info))
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
