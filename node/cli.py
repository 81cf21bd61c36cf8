"""dcloud-node: the command line (init, start, keys, status, object, testnet)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node import __version__
from node.cli_common import (  # noqa: F401 - CliError and the helpers are the CLI's API too
    CliError,
    add_home,
    api_url_of_home,
    base_url,
    fetch_json,
    request_json,
)
from node.cli_objects import (  # noqa: F401 - re-exported for callers of node.cli
    MIB,
    TransferProgress,
    add_object_commands,
    cmd_object,
    format_object_status,
    format_object_table,
    format_progress,
    format_put_summary,
    format_size,
    object_path,
)
from node.codec import DecodeError
from node.config import (
    Config,
    ConfigError,
    flag_name,
    load_config,
    option_names,
)
from node.crypto import Ed25519Key, KeyFileError, read_key_file, write_key_file
from node.home import Home, NodeLockedError, resolve_home

EXIT_USAGE = 2


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
    add_home(p)
    p.add_argument("--moniker", default="dcloud-node", help="node name (default: dcloud-node)")
    p.add_argument("--region", default="default", help="node region (default: default)")
    p.add_argument("--genesis", help="genesis file of the network to join (default: a new "
                   "single-validator dev chain)")

    p = sub.add_parser("start", help="run the node (initialises the home first if it is empty)")
    add_home(p)
    _add_config_flags(p)

    p = sub.add_parser("keys", help="show the node's keys")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    show = keys_sub.add_parser("show", help="print the peer id and public keys")
    add_home(show)
    show.add_argument("--json", action="store_true", help="print JSON")
    add = keys_sub.add_parser("add", help="create an account key and print its address")
    add.add_argument("name")
    add_home(add)
    lst = keys_sub.add_parser("list", help="list account keys with their addresses")
    add_home(lst)
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
    add_home(tr)
    tr.add_argument("--url", help="node API URL (default: the node running on --home)")
    tr.add_argument("--json", action="store_true", help="print the JSON answer")

    p = sub.add_parser("query", help="read chain state from a node")
    q_sub = p.add_subparsers(dest="query_command", required=True, metavar="QUERY_COMMAND")
    qa = q_sub.add_parser("account", help="balance and nonce of an address")
    qa.add_argument("address")
    qb = q_sub.add_parser("block", help="a block (default: the latest)")
    qb.add_argument("height", nargs="?", default="latest")
    for q in (qa, qb):
        add_home(q)
        q.add_argument("--url", help="node API URL (default: the node running on --home)")
        q.add_argument("--json", action="store_true", help="print raw JSON")

    p = sub.add_parser("status", help="print a running node's status")
    add_home(p)
    p.add_argument("--url", help="node API URL, e.g. http://127.0.0.1:26660 (instead of --home)")
    p.add_argument("--json", action="store_true", help="print the raw JSON status")

    p = sub.add_parser("members", help="the cluster's members, their state and region leaders")
    add_home(p)
    p.add_argument("--url", help="node API URL (default: the node running on --home)")
    p.add_argument("--json", action="store_true", help="print raw JSON")

    add_object_commands(sub)

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


def cmd_tx(args: argparse.Namespace) -> int:
    from node.ledger.tx import Transfer

    home = Home(resolve_home(args.home))
    key = read_key_file(home.account_key_file(args.from_key))
    base = base_url(args)
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
    base = base_url(args)
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
    doc = fetch_json(f"{base_url(args)}/members")
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

