"""What every dcloud-node subcommand shares: its error type, --home, and reaching a node's API."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from node.config import load_config
from node.home import Home, read_lock_info, resolve_home


class CliError(Exception):
    """An error the CLI reports as one line and exit code 2."""


def add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="node home directory (default: $DCLOUD_HOME or ~/.dcloud)")


def base_url(args: argparse.Namespace) -> str:
    return str(args.url).rstrip("/") if getattr(args, "url", None) else api_url_of_home(args.home)


def request_json(method: str, url: str, body: bytes | None = None,
                 content_type: str = "application/json", timeout: float = 60.0) -> Any:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return json.loads(resp.read(16 * 1024 * 1024))
    except urllib.error.HTTPError as exc:
        try:
            doc = json.loads(exc.read(65536))
        except ValueError:
            raise CliError(f"{url} answered HTTP {exc.code}") from exc
        code = f" ({doc['code']})" if isinstance(doc, dict) and doc.get("code") else ""
        message = doc.get("error") if isinstance(doc, dict) else doc
        raise CliError(f"rejected{code}: {message}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach the node at {url}: {getattr(exc, 'reason', exc)}") from exc


def api_url_of_home(home_arg: str | None) -> str:
    """The running node's API URL (from its lock file), else the one its config names."""
    root = resolve_home(home_arg)
    running = read_lock_info(Home(root).lock_file).get("api_url")
    if isinstance(running, str) and running.startswith("http://"):
        return running
    config = load_config(root, require_file=True)
    host, port = config.api_host_port
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def fetch_json(url: str, timeout: float = 5.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - operator's URL
            return json.loads(resp.read(16 * 1024 * 1024))
    except urllib.error.HTTPError as exc:
        body = exc.read(65536)
        try:
            return json.loads(body)
        except ValueError:
            raise CliError(f"{url} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the node at {url}: {reason}") from exc
    except ValueError as exc:
        raise CliError(f"{url} did not answer JSON") from exc
