"""Structured logging: JSON lines (with node id) off a TTY, readable text on one."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

# Attributes every LogRecord has; anything else was passed through `extra=` and is data.
_STANDARD_ATTRS = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName",
}


class JsonFormatter(logging.Formatter):
    def __init__(self, static: dict[str, str]) -> None:
        super().__init__()
        self.static = static

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self.static,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value if isinstance(value, (str, int, float, bool, type(None),
                                                       list, dict)) else repr(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=repr)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = {k: v for k, v in vars(record).items()
                 if k not in _STANDARD_ATTRS and not k.startswith("_")}
        if extra:
            base += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return base


class _LibraryLevel(logging.Filter):
    """Drops libp2p records below `level`, whatever level its child loggers set themselves."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("libp2p") or record.levelno >= self.level


def setup_logging(*, level: str, fmt: str, log_file: Path | None,
                  static: dict[str, str]) -> None:
    """Send the node's and libp2p's records to stderr and, if set, to `log_file`.

    libp2p sets its logger to propagate=False on import (notes/libp2p.md, trap 9), so our
    handlers are attached to it explicitly as well as to the root logger.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handlers: list[logging.Handler] = []
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JsonFormatter(static) if use_json else TextFormatter())
    handlers.append(stderr)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        # The log file is read by tools, not people at a terminal: always JSON lines.
        file_handler.setFormatter(JsonFormatter(static))
        handlers.append(file_handler)

    numeric = getattr(logging, level.upper())
    # libp2p is chatty at info/warning (expected stream resets show up as warnings):
    # only its errors unless debugging.
    lib_level = numeric if level == "debug" else max(numeric, logging.ERROR)
    for h in handlers:
        h.addFilter(_LibraryLevel(lib_level))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(numeric)

    lib = logging.getLogger("libp2p")
    for h in list(lib.handlers):
        lib.removeHandler(h)
    for h in handlers:
        lib.addHandler(h)
    lib.propagate = False
    lib.setLevel(lib_level)
    for noisy in ("aiohttp.access", "multiaddr", "asyncio"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
