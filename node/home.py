"""A node's home directory: config, keys, data, logs and the single-instance lock."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from node.config import CONFIG_FILE, render_config_toml
from node.crypto import Ed25519Key, KeyFileError, write_key_file

DEFAULT_HOME = Path("~/.dcloud")


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
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def lock_file(self) -> Path:
        return self.root / "node.lock"

    def is_initialised(self) -> bool:
        return self.config_file.exists() and self.node_key_file.exists()

    def init(self, *, moniker: str, region: str,
             settings: dict[tuple[str, str], Any] | None = None) -> list[Path]:
        """Create config and keys; refuse if any key already exists. Returns files written."""
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
        write_key_file(self.node_key_file, Ed25519Key.generate())
        write_key_file(self.validator_key_file, Ed25519Key.generate())
        written += [self.node_key_file, self.validator_key_file]
        return written


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
