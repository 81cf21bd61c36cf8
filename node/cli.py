"""dcloud-node: the command line (init, start, keys, status, object, testnet)."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from node import __version__
from node.codec import DecodeError
from node.config import (
    Config,
    ConfigError,
    flag_name,
    load_config,
    option_names,
)
from node.crypto import Ed25519Key, KeyFileError, read_key_file, write_key_file
from node.home import Home, NodeLockedError, read_lock_info, resolve_home

EXIT_USAGE = 2


class CliError(Exception):
    """An error the CLI reports as one line and exit code 2."""


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="node home directory (default: $DCLOUD_HOME or ~/.dcloud)")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("config overrides (each also DCLOUD_<SECTION>_<KEY>)")
    for section, key in option_names():
        group.add_argument(flag_name(section, key), dest=f"cfg__{section}__{key}", metavar="VALUE",
                           help=argparse.SUPPRESS if section == "p2p" and key == "bootstrap"
                           else None)
    p.add_argument("--bootstrap", action="append", default=None, metavar="MULTIADDR",
                   help="bootstrap peer (repeatable; comma-separated also accepted)")
    p.add_argument("--moniker", help="shortcut for --node-moniker")
    p.add_argument("--region", help="shortcut for --node-region")


def _overrides(args: argparse.Namespace) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for name, value in vars(args).items():
        if name.startswith("cfg__") and value is not None:
            _, section, key = name.split("__")
            out[(section, key)] = value
    if getattr(args, "bootstrap", None):
        out[("p2p", "bootstrap")] = ",".join(args.bootstrap)
    if getattr(args, "moniker", None):
        out[("node", "moniker")] = args.moniker
    if getattr(args, "region", None):
        out[("node", "region")] = args.region
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcloud-node",
        description="A node of the dcloud decentralized cloud.",
    )
    parser.add_argument("--version", action="version", version=f"dcloud-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a node home: config.toml, node key, validator key")
    _add_home(p)
    p.add_argument("--moniker", default="dcloud-node", help="node name (default: dcloud-node)")
    p.add_argument("--region", default="default", help="node region (default: default)")
    p.add_argument("--genesis", help="genesis file of the network to join (default: a new "
                   "single-validator dev chain)")

    p = sub.add_parser("start", help="run the node (initialises the home first if it is empty)")
    _add_home(p)
    _add_config_flags(p)

    p = sub.add_parser("keys", help="show the node's keys")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    show = keys_sub.add_parser("show", help="print the peer id and public keys")
    _add_home(show)
    show.add_argument("--json", action="store_true", help="print JSON")
    add = keys_sub.add_parser("add", help="create an account key and print its address")
    add.add_argument("name")
    _add_home(add)
    lst = keys_sub.add_parser("list", help="list account keys with their addresses")
    _add_home(lst)
    lst.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("tx", help="sign and submit a transaction")
    tx_sub = p.add_subparsers(dest="tx_command", required=True, metavar="TX_COMMAND")
    tr = tx_sub.add_parser("transfer", help="transfer micro-units to an address")
    tr.add_argument("--from", dest="from_key", default="default",
                    help="account key name in the home (default: default)")
    tr.add_argument("--to", required=True, help="recipient address (40 hex characters)")
    tr.add_argument("--amount", required=True, type=int, help="micro-units to send")
    tr.add_argument("--fee", type=int, default=0, help="fee in micro-units (default 0)")
    tr.add_argument("--wait", action="store_true", help="wait until the tx is committed")
    _add_home(tr)
    tr.add_argument("--url", help="node API URL (default: the node running on --home)")
    tr.add_argument("--json", action="store_true", help="print the JSON answer")

    p = sub.add_parser("query", help="read chain state from a node")
    q_sub = p.add_subparsers(dest="query_command", required=True, metavar="QUERY_COMMAND")
    qa = q_sub.add_parser("account", help="balance and nonce of an address")
    qa.add_argument("address")
    qb = q_sub.add_parser("block", help="a block (default: the latest)")
    qb.add_argument("height", nargs="?", default="latest")
    for q in (qa, qb):
        _add_home(q)
        q.add_argument("--url", help="node API URL (default: the node running on --home)")
        q.add_argument("--json", action="store_true", help="print raw JSON")

    p = sub.add_parser("status", help="print a running node's status")
    _add_home(p)
    p.add_argument("--url", help="node API URL, e.g. http://127.0.0.1:26660 (instead of --home)")
    p.add_argument("--json", action="store_true", help="print the raw JSON status")

    p = sub.add_parser("members", help="the cluster's members, their state and region leaders")
    _add_home(p)
    p.add_argument("--url", help="node API URL (default: the node running on --home)")
    p.add_argument("--json", action="store_true", help="print raw JSON")

    _add_object_commands(sub)

    p = sub.add_parser("testnet", help="a local multi-node network on 127.0.0.1")
    tsub = p.add_subparsers(dest="testnet_command", required=True, metavar="TESTNET_COMMAND")
    up = tsub.add_parser("up", help="create (if missing) and start N nodes, wait for a full mesh")
    up.add_argument("--nodes", type=int, default=4, help="number of nodes (default 4)")
    up.add_argument("--dir", required=True, help="directory holding the node homes")
    up.add_argument("--base-port", type=int, default=26656,
                    help="first port; node i uses base+10*i (p2p) and base+10*i+1 (HTTP)")
    up.add_argument("--regions", default=",".join(["us-east", "eu-west", "ap-south"]),
                    help="comma-separated regions, assigned to nodes in turn")
    up.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a config option for every node, written into its config.toml "
                    "(repeatable), e.g. --set storage.audit_interval_s=5")
    up.add_argument("--timeout", type=float, default=90.0,
                    help="seconds to wait for every node to be ready (default 90)")
    down = tsub.add_parser("down", help="stop the testnet's nodes")
    down.add_argument("--dir", required=True)
    down.add_argument("--grace", type=float, default=10.0,
                      help="seconds between SIGTERM and SIGKILL (default 10)")
    st = tsub.add_parser("status", help="one line per testnet node")
    st.add_argument("--dir", required=True)
    return parser


def _add_object_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("object", help="store, fetch and inspect objects (erasure-coded files)")
    o_sub = p.add_subparsers(dest="object_command", required=True, metavar="OBJECT_COMMAND")
    put = o_sub.add_parser("put", help="upload a file as an object")
    put.add_argument("file", metavar="FILE")
    put.add_argument("--name", help="object name (default: the file's base name)")
    put.add_argument("--k", type=int, help="data shards per segment (default: the node's)")
    put.add_argument("--m", type=int, help="parity shards per segment (default: the node's)")
    put.add_argument("--encrypt-key", metavar="KEYFILE",
                     help="seal the object with this key (see `object keygen`)")
    get = o_sub.add_parser("get", help="download an object to a file or stdout")
    get.add_argument("name", metavar="NAME")
    get.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    get.add_argument("--decrypt-key", metavar="KEYFILE", help="the key the object was put with")
    ls = o_sub.add_parser("ls", help="list the objects")
    rm = o_sub.add_parser("rm", help="delete an object")
    rm.add_argument("name", metavar="NAME")
    st = o_sub.add_parser("status", help="where an object's shards are and which are healthy")
    st.add_argument("name", metavar="NAME")
    for q in (put, get):
        q.add_argument("--progress", action="store_true",
                       help="draw a progress bar on stderr (default: only on a terminal, "
                       f"above {PROGRESS_AUTO_BYTES // MIB} MiB)")
    for q in (put, get, ls, rm, st):
        _add_home(q)
        q.add_argument("--url", help="node API URL (default: the node running on --home)")
    for q in (put, ls, rm, st):
        q.add_argument("--json", action="store_true", help="print the raw JSON answer")
    kg = o_sub.add_parser("keygen", help="create a new encryption key file (mode 0600)")
    kg.add_argument("keyfile", metavar="KEYFILE")


# ---- commands ----------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    home = Home(resolve_home(args.home))
    written = home.init(moniker=args.moniker, region=args.region,
                        genesis=Path(args.genesis) if args.genesis else None)
    for path in written:
        print(f"wrote {path}")
    print(f"node id: {_peer_id(home)}")
    return 0


def _peer_id(home: Home) -> str:
    from node.p2p import peer_id_of

    return peer_id_of(read_key_file(home.node_key_file))


def cmd_start(args: argparse.Namespace) -> int:
    root = resolve_home(args.home)
    home = Home(root)
    overrides = _overrides(args)
    if not home.config_file.exists() and not home.node_key_file.exists():
        # Check the flags and environment before writing anything into an empty home.
        _check_addresses(load_config(root, overrides=overrides))
        home.init(moniker=overrides.get(("node", "moniker"), "dcloud-node"),
                  region=overrides.get(("node", "region"), "default"))
        print(f"initialised a new node home at {root}", file=sys.stderr)
    config = load_config(root, overrides=overrides, require_file=True)
    _check_addresses(config)
    from node.app import start_node

    start_node(config)
    return 0


def _check_addresses(config: Config) -> None:
    """Check what a typo can break before anything binds a port."""
    from node.p2p import parse_listen_addr, parse_peer_addr

    for addr in config.p2p.listen_addrs + config.p2p.announce_addrs:
        parse_listen_addr(addr)
    for addr in config.p2p.bootstrap:
        parse_peer_addr(addr)


def cmd_keys(args: argparse.Namespace) -> int:
    home = Home(resolve_home(args.home))
    if args.keys_command == "add":
        path = home.account_key_file(args.name)
        key = Ed25519Key.generate()
        write_key_file(path, key)
        print(key.address)
        return 0
    if args.keys_command == "list":
        rows = [{"name": n, "address": read_key_file(home.account_key_file(n)).address}
                for n in home.account_names()]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['name']:<20} {r['address']}")
        return 0
    return cmd_keys_show(args)


def _base_url(args: argparse.Namespace) -> str:
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


def cmd_tx(args: argparse.Namespace) -> int:
    from node.ledger.tx import Transfer

    home = Home(resolve_home(args.home))
    key = read_key_file(home.account_key_file(args.from_key))
    base = _base_url(args)
    chain_id = fetch_json(f"{base}/status")["chain"]["chain_id"]
    account = fetch_json(f"{base}/accounts/{key.address}")
    try:
        tx = Transfer.signed(key, chain_id, args.to, args.amount, args.fee,
                              account["next_nonce"])
    except (ValueError, DecodeError) as exc:
        raise CliError(f"bad transfer: {exc}") from exc
    url = f"{base}/txs" + ("?wait=commit" if args.wait else "")
    doc = request_json("POST", url, tx.encode(), content_type="application/cbor")
    if args.json:
        print(json.dumps(doc, indent=2))
    elif doc.get("status") == "committed":
        state = "ok" if doc.get("ok") else f"FAILED ({doc.get('code')}: {doc.get('reason')})"
        print(f"{doc['hash']} committed at height {doc['height']}: {state}")
    else:
        print(f"{doc['hash']} {doc.get('status', '')}")
    return 0 if doc.get("ok", True) else 1


def cmd_query(args: argparse.Namespace) -> int:
    base = _base_url(args)
    if args.query_command == "account":
        doc = fetch_json(f"{base}/accounts/{args.address}")
        if isinstance(doc, dict) and "error" in doc:
            raise CliError(doc["error"])
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print(f"address  {doc['address']}\nbalance  {doc['balance']}\n"
                  f"nonce    {doc['nonce']}\nheight   {doc['height']}")
        return 0
    doc = fetch_json(f"{base}/blocks/{args.height}")
    if isinstance(doc, dict) and "error" in doc:
        raise CliError(doc["error"])
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        h = doc["header"]
        print(f"height    {h['height']}\nid        {doc['id']}\ntime_ms   {h['time_ms']}\n"
              f"proposer  {h['proposer']}\ntxs       {len(doc['txs'])}\n"
              f"app_hash  {h['app_hash']}\nsigners   {len(doc['commit']['signatures'])}")
    return 0


def cmd_members(args: argparse.Namespace) -> int:
    doc = fetch_json(f"{_base_url(args)}/members")
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    leaders = set(doc.get("leaders", {}).values())
    print(f"{'NODE ID':<54} {'REGION':<10} {'STATE':<8} {'INC':>4} {'HB AGE':>7}  "
          f"{'CPU FREE':>9} {'MEM FREE':>10}")
    for m in doc.get("members", []):
        res = m.get("resources") or {}
        hb = "-" if m.get("last_heartbeat_s") is None else f"{m['last_heartbeat_s']:.1f}s"
        mark = " *" if m["node_id"] in leaders else ""
        print(f"{m['node_id']:<54} {m['region']:<10} {m['state']:<8} {m['incarnation']:>4} "
              f"{hb:>7}  {res.get('cpu_millicores_free', 0):>8}m "
              f"{res.get('memory_bytes_free', 0) // 2**20:>8}Mi{mark}")
    print("* region leader")
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    home = Home(resolve_home(args.home))
    node_key = read_key_file(home.node_key_file)
    validator_key = read_key_file(home.validator_key_file)
    doc = {
        "peer_id": _peer_id(home),
        "node_public_key": node_key.public_key.hex(),
        "validator_public_key": validator_key.public_key.hex(),
        "validator_address": validator_key.address,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        width = max(map(len, doc))
        for k, v in doc.items():
            print(f"{k:<{width}}  {v}")
    return 0


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


def cmd_status(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/") if args.url else api_url_of_home(args.home)
    doc = fetch_json(f"{base}/status")
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(format_status(doc))
    return 0


def format_status(doc: dict[str, Any]) -> str:
    rows = [
        ("node id", doc.get("node_id")),
        ("moniker", doc.get("moniker")),
        ("region", doc.get("region")),
        ("version", doc.get("version")),
        ("uptime", f"{doc.get('uptime_s', 0):.0f} s"),
        ("ready", doc.get("ready")),
    ]
    lines = [f"{k:<10} {v}" for k, v in rows]
    for i, addr in enumerate(doc.get("listen_addrs", [])):
        lines.append(f"{'listen' if i == 0 else '':<10} {addr}")
    peers = doc.get("peers", [])
    lines.append(f"{'peers':<10} {len(peers)}")
    if peers:
        lines.append("")
        lines.append(f"  {'PEER ID':<54} {'MONIKER':<14} {'REGION':<12} {'LATENCY':>9}  ADDRESS")
        for p in peers:
            lat = "-" if p.get("latency_ms") is None else f"{p['latency_ms']:.1f} ms"
            addr = (p.get("addrs") or ["-"])[0]
            lines.append(f"  {p['peer_id']:<54} {str(p.get('moniker') or '-'):<14} "
                         f"{str(p.get('region') or '-'):<12} {lat:>9}  {addr}")
    return "\n".join(lines)


# ---- object ------------------------------------------------------------------------------------

MIB = 2**20
TRANSFER_BLOCK_BYTES = MIB
# Without --progress, only transfers above this size on a terminal get a progress bar.
PROGRESS_AUTO_BYTES = 8 * MIB
PROGRESS_REDRAW_S = 0.1
PROGRESS_BAR_CHARS = 24
# A per-socket-operation limit, not a whole-transfer one: GiB objects take as long as they take,
# and after the last byte of a put the node still codes and places the final segment.
OBJECT_IO_TIMEOUT_S = 120.0
OBJECT_KEY_HEADER = "X-Dcloud-Key"
MAX_ERROR_BODY_BYTES = 65536
MAX_JSON_BODY_BYTES = 16 * MIB


def format_size(n: int) -> str:
    """A byte count for people: 512 B, 1.5 KiB, 12.0 MiB, ..."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _format_duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_progress(done: int, total: int | None, elapsed_s: float) -> str:
    """One progress line: bar, percent, MiB done/total, average rate and ETA.

    `total` is None when the node did not say how long the body is; a zero total is complete.
    """
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    speed = f"{rate / MIB:.1f} MiB/s" if elapsed_s > 0 else "-- MiB/s"
    if total is None:
        return f"{done / MIB:.1f} MiB  {speed}"
    fraction = 1.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    filled = int(fraction * PROGRESS_BAR_CHARS)
    bar = "#" * filled + "-" * (PROGRESS_BAR_CHARS - filled)
    remaining = max(total - done, 0)
    if remaining == 0:
        eta = "0:00"
    elif rate > 0:
        eta = _format_duration(remaining / rate)
    else:
        eta = "--:--"
    return (f"[{bar}] {100 * fraction:5.1f}%  {done / MIB:.1f}/{total / MIB:.1f} MiB  "
            f"{speed}  ETA {eta}")


class TransferProgress:
    """A progress line on `stream`, redrawn in place at most once per `interval_s`."""

    def __init__(self, stream: TextIO, total: int | None, *,
                 clock: Callable[[], float] = time.monotonic,
                 interval_s: float = PROGRESS_REDRAW_S) -> None:
        self.total = total
        self.done = 0
        self._stream = stream
        self._clock = clock
        self._interval_s = interval_s
        self._start = clock()
        self._last_draw: float | None = None
        self._width = 0
        self._closed = False

    def advance(self, n: int) -> None:
        self.done += n
        now = self._clock()
        if self._last_draw is None or now - self._last_draw >= self._interval_s:
            self._draw(now)

    def close(self) -> None:
        """Draw the final state and end the line, so what is printed next starts on its own."""
        if self._closed:
            return
        self._closed = True
        self._draw(self._clock())
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self, now: float) -> None:
        line = format_progress(self.done, self.total, now - self._start)
        # Pad over the previous line: '\r' returns the cursor but does not erase.
        self._stream.write("\r" + line + " " * max(self._width - len(line), 0))
        self._stream.flush()
        self._width = len(line)
        self._last_draw = now


def _progress_for(args: argparse.Namespace, total: int | None) -> TransferProgress | None:
    if getattr(args, "json", False):
        return None
    if args.progress or (total is not None and total > PROGRESS_AUTO_BYTES
                         and sys.stderr.isatty()):
        return TransferProgress(sys.stderr, total)
    return None


def object_path(name: str, suffix: str = "", query: dict[str, int] | None = None) -> str:
    """The API path of object `name`; the name is one path segment even if it holds '/'."""
    path = "/objects/" + urllib.parse.quote(name, safe="") + suffix
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _node_error(status: int, body: bytes, url: str, name: str | None = None) -> CliError:
    """The one-line error for an HTTP error answer (JSON {"error", "status", "code"})."""
    if status == 404 and name is not None:
        return CliError(f"object {name!r} does not exist")
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or "error" not in doc:
        return CliError(f"{url} answered HTTP {status}")
    code = f", {doc['code']}" if doc.get("code") else ""
    return CliError(f"rejected (HTTP {status}{code}): {_one_line(doc['error'])}")


def _json_body(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise CliError(f"{url} did not answer JSON") from exc


def _unreachable(base: str, exc: BaseException) -> CliError:
    return CliError(f"cannot reach the node at {base}: {getattr(exc, 'reason', exc)}")


def _object_json(method: str, base: str, path: str, name: str | None = None) -> Any:
    """A bodyless request whose answer is small JSON (ls, rm, status)."""
    url = base + path
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=OBJECT_IO_TIMEOUT_S) as resp:  # noqa: S310
            body = resp.read(MAX_JSON_BODY_BYTES)
    except urllib.error.HTTPError as exc:
        raise _node_error(exc.code, exc.read(MAX_ERROR_BODY_BYTES), url, name) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(base, exc) from exc
    return _json_body(body, url)


def _connect(base: str) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the node at `base` and the path prefix its URL carries."""
    parts = urllib.parse.urlsplit(base)
    try:
        port = parts.port
    except ValueError as exc:
        raise CliError(f"node URL {base} has a bad port") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"node URL {base} must look like http://HOST:PORT")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, port, timeout=OBJECT_IO_TIMEOUT_S)
    try:
        conn.connect()
    except OSError as exc:
        raise _unreachable(base, exc) from exc
    return conn, parts.path.rstrip("/")


def _response(conn: http.client.HTTPConnection, base: str) -> http.client.HTTPResponse:
    try:
        return conn.getresponse()
    except TimeoutError as exc:
        raise CliError(f"the node at {base} did not answer within "
                       f"{OBJECT_IO_TIMEOUT_S:.0f} s") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise CliError(f"lost the connection to the node at {base}: {exc}") from exc


def _read_object_key(path: str) -> bytes:
    from node.storage.sealing import KeyFileInvalid
    from node.storage.sealing import read_key_file as read_object_key

    try:
        return read_object_key(Path(path))
    except KeyFileInvalid as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"cannot read encryption key file {path}: {exc.strerror}") from exc


def _upload(base: str, path: str, headers: dict[str, str], source: BinaryIO, size: int,
            progress: TransferProgress | None) -> tuple[int, bytes]:
    """PUT `size` bytes of `source` in TRANSFER_BLOCK_BYTES blocks; the answer's status, body."""
    conn, prefix = _connect(base)
    try:
        sent = 0
        try:
            conn.putrequest("PUT", prefix + path, skip_accept_encoding=True)
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            while sent < size:
                try:
                    block = source.read(min(TRANSFER_BLOCK_BYTES, size - sent))
                except OSError as exc:
                    raise CliError(f"cannot read the file after {sent} bytes: "
                                   f"{exc.strerror}") from exc
                if not block:
                    raise CliError(f"the file shrank to {sent} bytes while it was being sent")
                conn.send(block)
                sent += len(block)
                if progress is not None:
                    progress.advance(len(block))
        except OSError as exc:
            # A node refusing a put (bad k/m, no space, bad key) may answer and close before
            # reading the whole body; its answer says why, so use it if it arrived.
            try:
                resp = conn.getresponse()
                return resp.status, resp.read(MAX_ERROR_BODY_BYTES)
            except (OSError, http.client.HTTPException):
                raise CliError(f"the node at {base} closed the connection after {sent} of "
                               f"{size} bytes: {exc}") from exc
        finally:
            if progress is not None:
                progress.close()
        resp = _response(conn, base)
        try:
            return resp.status, resp.read(MAX_JSON_BODY_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            raise CliError(f"lost the connection to the node at {base}: {exc}") from exc
    finally:
        conn.close()


def _download(resp: http.client.HTTPResponse, sink: BinaryIO, sink_name: str, base: str,
              progress: TransferProgress | None) -> int:
    """Copy the body to `sink` in TRANSFER_BLOCK_BYTES blocks; error if it is cut short."""
    total = resp.length  # None without a Content-Length (a chunked body ends explicitly)
    got = 0
    try:
        while True:
            try:
                block = resp.read(TRANSFER_BLOCK_BYTES)
            except TimeoutError as exc:
                raise CliError(f"the node at {base} stopped sending after {got} bytes") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise CliError(f"the download broke after {got} bytes: {exc}") from exc
            if not block:
                break
            sink.write(block)
            got += len(block)
            if progress is not None:
                progress.advance(len(block))
    finally:
        if progress is not None:
            progress.close()
    # http.client returns b"" at a premature close of a Content-Length body instead of raising.
    if total is not None and got != total:
        raise CliError(f"the node sent {got} of {total} bytes; {sink_name} is incomplete")
    return got


def cmd_object(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "put": cmd_object_put,
        "get": cmd_object_get,
        "ls": cmd_object_ls,
        "rm": cmd_object_rm,
        "status": cmd_object_status,
        "keygen": cmd_object_keygen,
    }
    return handlers[args.object_command](args)


def cmd_object_put(args: argparse.Namespace) -> int:
    path = Path(args.file)
    name = path.name if args.name is None else args.name
    if not name:
        raise CliError(f"cannot name an object after {args.file!r}: give --name")
    # Everything local is checked before the node is contacted.
    try:
        source = open(path, "rb")
    except FileNotFoundError as exc:
        raise CliError(f"{path} does not exist") from exc
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    with source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CliError(f"{path} is not a regular file")
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Length": str(info.st_size)}
        if args.encrypt_key:
            # The node seals the segments, so it needs the key; keep --url on a trusted link.
            headers[OBJECT_KEY_HEADER] = _read_object_key(args.encrypt_key).hex()
        query = {q: v for q, v in (("k", args.k), ("m", args.m)) if v is not None}
        base = _base_url(args)
        req_path = object_path(name, query=query)
        status, body = _upload(base, req_path, headers, source, info.st_size,
                               _progress_for(args, info.st_size))
    if status not in (200, 201):
        raise _node_error(status, body, base + req_path)
    doc = _json_body(body, base + req_path)
    print(json.dumps(doc, indent=2) if args.json else format_put_summary(doc))
    return 0


def format_put_summary(doc: dict[str, Any]) -> str:
    sealed = ", encrypted" if doc.get("encrypted") else ""
    segments = doc.get("segments")
    return (f"stored {doc.get('name')}: {format_size(int(doc.get('size', 0)))}, "
            f"{segments} segment{'' if segments == 1 else 's'}, "
            f"k+m={doc.get('k')}+{doc.get('m')}{sealed}\n"
            f"manifest {doc.get('manifest_id')}")


def cmd_object_get(args: argparse.Namespace) -> int:
    headers = {}
    if args.decrypt_key:
        headers[OBJECT_KEY_HEADER] = _read_object_key(args.decrypt_key).hex()
    out = Path(args.output) if args.output else None
    if out is not None and out.is_dir():
        raise CliError(f"{out} is a directory: give a file name to -o")
    base = _base_url(args)
    conn, prefix = _connect(base)
    try:
        try:
            conn.request("GET", prefix + object_path(args.name), headers=headers)
        except OSError as exc:
            raise _unreachable(base, exc) from exc
        resp = _response(conn, base)
        if resp.status != 200:
            raise _node_error(resp.status, resp.read(MAX_ERROR_BODY_BYTES),
                              base + object_path(args.name), args.name)
        progress = _progress_for(args, resp.length)
        if out is None:
            _download_to_stdout(resp, base, progress)
        else:
            _download_to_file(resp, out, base, progress)
    finally:
        conn.close()
    return 0


def _download_to_file(resp: http.client.HTTPResponse, out: Path, base: str,
                      progress: TransferProgress | None) -> None:
    # Written beside the target and renamed, so FILE is either the whole object or untouched.
    part = out.with_name(out.name + ".part")
    try:
        try:
            sink = open(part, "wb")
        except OSError as exc:
            raise CliError(f"cannot write {part}: {exc.strerror}") from exc
        with sink:
            try:
                _download(resp, sink, str(out), base, progress)
                sink.flush()
                os.fsync(sink.fileno())
            except OSError as exc:
                raise CliError(f"cannot write {part}: {exc.strerror}") from exc
        try:
            os.replace(part, out)
        except OSError as exc:
            raise CliError(f"cannot rename {part} to {out}: {exc.strerror}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _download_to_stdout(resp: http.client.HTTPResponse, base: str,
                        progress: TransferProgress | None) -> None:
    try:
        _download(resp, sys.stdout.buffer, "stdout", base, progress)
        sys.stdout.buffer.flush()
    except BrokenPipeError as exc:
        # The reader went away (`| head`): point stdout at /dev/null so the interpreter's
        # final flush does not print a traceback after our one-line error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise CliError("stdout was closed before the whole object was written") from exc
    except OSError as exc:
        raise CliError(f"cannot write to stdout: {exc.strerror}") from exc


def cmd_object_ls(args: argparse.Namespace) -> int:
    doc = _object_json("GET", _base_url(args), "/objects")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_object_table(doc.get("objects", []) if isinstance(doc, dict) else []))
    return 0


def _format_time_ms(ms: object) -> str:
    if type(ms) is not int:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_object_table(objects: list[dict[str, Any]]) -> str:
    if not objects:
        return "no objects"
    width = max(4, *(len(str(o.get("name", ""))) for o in objects))
    lines = [f"{'NAME':<{width}}  {'SIZE':>10}  {'CREATED':<20}  {'MANIFEST':<16}  ENCRYPTED"]
    for o in objects:
        size = o.get("size")
        lines.append(f"{str(o.get('name', '')):<{width}}  "
                     f"{format_size(size) if type(size) is int else '-':>10}  "
                     f"{_format_time_ms(o.get('created_ms')):<20}  "
                     f"{str(o.get('manifest_id', ''))[:16]:<16}  "
                     f"{'yes' if o.get('encrypted') else 'no'}")
    return "\n".join(lines)


def cmd_object_rm(args: argparse.Namespace) -> int:
    doc = _object_json("DELETE", _base_url(args), object_path(args.name), args.name)
    print(json.dumps(doc, indent=2) if args.json else f"deleted {args.name}")
    return 0


def cmd_object_status(args: argparse.Namespace) -> int:
    doc = _object_json("GET", _base_url(args), object_path(args.name, "/status"), args.name)
    print(json.dumps(doc, indent=2) if args.json else format_object_status(doc))
    return 0


def format_object_status(doc: dict[str, Any]) -> str:
    """A summary line, then what is wrong: segments short of k, and every unhealthy shard."""
    k = doc.get("k")
    segments = doc.get("segments", [])
    pending = doc.get("repairs_pending", 0)
    lines = [f"{doc.get('name')}: {doc.get('healthy_shards')}/{doc.get('total_shards')} shards "
             f"healthy, k+m={k}+{doc.get('m')}, {len(segments)} segments, "
             f"{format_size(int(doc.get('size', 0)))}, {pending} repairs pending",
             f"manifest {doc.get('manifest_id')}"]
    for seg in segments:
        shards = seg.get("shards", [])
        healthy = sum(1 for sh in shards if sh.get("healthy"))
        if type(k) is int and healthy < k:
            lines.append(f"  segment {seg.get('index')}: {healthy} healthy shards, fewer than "
                         f"the k={k} needed to read it")
        for sh in shards:
            if sh.get("healthy"):
                continue
            holders = ", ".join(
                f"{h.get('node_id')} ({h.get('state')}, "
                f"{'has chunk' if h.get('has') else 'no chunk'})"
                for h in sh.get("holders", [])) or "no holders"
            lines.append(f"  segment {seg.get('index')} shard {sh.get('index')}: {holders}")
    return "\n".join(lines)


def cmd_object_keygen(args: argparse.Namespace) -> int:
    from node.storage.sealing import KeyFileInvalid
    from node.storage.sealing import write_key_file as write_object_key

    path = Path(args.keyfile)
    try:
        write_object_key(path)
    except KeyFileInvalid as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"cannot create key file {path}: {exc.strerror}") from exc
    print(f"wrote {path}")
    return 0


def _parse_settings(items: list[str]) -> dict[tuple[str, str], Any]:
    """`--set section.key=value` options, checked and typed like any config override."""
    from node.config import coerce, option_names

    known = set(option_names())
    out: dict[tuple[str, str], Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or (section, key) not in known:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE with a known option "
                              "(see docs/configuration.md)")
        out[(section, key)] = coerce(section, key, value, source="--set")
    return out


def cmd_testnet(args: argparse.Namespace) -> int:
    from node import testnet

    directory = Path(args.dir).expanduser().resolve()
    if args.testnet_command == "up":
        regions = [r.strip() for r in args.regions.split(",") if r.strip()]
        return testnet.up(directory, nodes=args.nodes, base_port=args.base_port,
                          timeout=args.timeout, regions=regions,
                          overrides=_parse_settings(args.set))
    if args.testnet_command == "down":
        return testnet.down(directory, grace=args.grace)
    return testnet.status(directory)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "init": cmd_init,
        "start": cmd_start,
        "keys": cmd_keys,
        "tx": cmd_tx,
        "query": cmd_query,
        "members": cmd_members,
        "status": cmd_status,
        "object": cmd_object,
        "testnet": cmd_testnet,
    }
    from node.api.http import ApiStartError
    from node.consensus.genesis import GenesisError
    from node.ledger.state import GenesisError as LedgerGenesisError
    from node.ledger.store import StoreError
    from node.p2p import BadAddressError, P2PStartError
    from node.testnet import TestnetError

    try:
        return handlers[args.command](args)
    except (ConfigError, KeyFileError, NodeLockedError, CliError, BadAddressError,
            P2PStartError, ApiStartError, TestnetError, GenesisError, LedgerGenesisError,
            StoreError) as exc:
        print(f"dcloud-node: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130

