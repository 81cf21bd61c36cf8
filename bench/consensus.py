"""Consensus throughput and latency on a 4-node loopback testnet (real processes).

Drives signed transfers at rising offered rates through POST /txs, spread over the nodes,
and prints, per rate: sustained committed tx/s, p50/p99 latency from submit to commit (the
moment a block holding the tx is first seen on node0), and the mean block interval. The
reference in the same run is the offered rate itself (committed/offered ratio).

    .venv/bin/python bench/consensus.py [--rates 100,300,600,1000] [--seconds 10]
                                        [--batch-ms 50]

With --batch-ms, each node's client sends the txs due in each window as one
POST /txs/batch (in schedule order, so each sender's nonces stay in order) instead of one
POST /txs per tx; both modes can run in one invocation with --modes single,batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import cbor2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.crypto import Ed25519Key, read_key_file  # noqa: E402
from node.ledger.tx import Transfer  # noqa: E402

# Senders: a sender's pending txs must be consecutive and the mempool holds at most 128 per
# sender, so the load is spread over many funded accounts.
SENDERS = 256


def cli(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "node", *args], check=True,
                          capture_output=True, text=True).stdout


async def watch_blocks(session: aiohttp.ClientSession, url: str, seen: dict[str, float],
                       intervals: list[float], stop: asyncio.Event) -> None:
    height = 0
    async with session.get(f"{url}/blocks/latest") as r:
        height = (await r.json())["header"]["height"] if r.status == 200 else 0
    last_time = None
    while not stop.is_set():
        async with session.get(f"{url}/blocks/{height + 1}") as r:
            if r.status != 200:
                await asyncio.sleep(0.02)
                continue
            doc = await r.json()
        now = time.monotonic()
        height += 1
        for h in doc["txs"]:
            seen.setdefault(h, now)
        t = doc["header"]["time_ms"] / 1000
        if last_time is not None:
            intervals.append(t - last_time)
        last_time = t


async def run_rate(members: list[dict], txs: list[tuple[int, bytes, str, int]], rate: int,
                   seconds: float, batch_ms: int = 0) -> dict[str, float]:
    seen: dict[str, float] = {}
    intervals: list[float] = []
    submitted: dict[str, float] = {}
    stop = asyncio.Event()
    rejected = 0
    codes: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        watcher = asyncio.create_task(
            watch_blocks(session, members[0]["http_url"], seen, intervals, stop))
        start = time.monotonic()
        count = min(len(txs), int(rate * seconds))

        async def submit(i: int) -> None:
            nonlocal rejected
            node, tx, h, _ = txs[i]
            submitted[h] = time.monotonic()
            async with session.post(f"{members[node]['http_url']}/txs", data=tx,
                                    headers={"Content-Type": "application/cbor"}) as r:
                if r.status >= 300:
                    rejected += 1
                    codes[(await r.json()).get("code", str(r.status))] += 1

        # One worker per sender submits its txs in nonce order, each when its slot in the
        # overall schedule comes (a real client does not race its own nonces).
        by_sender: dict[int, list[int]] = {}
        for i in range(count):
            by_sender.setdefault(txs[i][3], []).append(i)

        async def worker(indices: list[int]) -> None:
            for i in indices:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await submit(i)

        async def batcher(node: int, indices: list[int]) -> None:
            nonlocal rejected
            pos = 0
            while pos < len(indices):
                now = time.monotonic()
                due = pos
                while due < len(indices) and start + indices[due] / rate <= now:
                    due += 1
                if due == pos:
                    await asyncio.sleep(batch_ms / 1000)
                    continue
                chunk = indices[pos:due][:1000]
                pos += len(chunk)
                for i in chunk:
                    submitted[txs[i][2]] = time.monotonic()
                body = cbor2.dumps([txs[i][1] for i in chunk])
                async with session.post(f"{members[node]['http_url']}/txs/batch", data=body,
                                        headers={"Content-Type": "application/cbor"}) as r:
                    doc = await r.json()
                for res in doc.get("results", []):
                    if res["status"] != "pending":
                        rejected += 1
                        codes[res.get("code", "?")] += 1
                await asyncio.sleep(batch_ms / 1000)

        if batch_ms:
            by_node: dict[int, list[int]] = {}
            for i in range(count):
                by_node.setdefault(txs[i][0], []).append(i)
            await asyncio.gather(*(batcher(n, ix) for n, ix in by_node.items()))
        else:
            await asyncio.gather(*(worker(ix) for ix in by_sender.values()))
        send_done = time.monotonic()
        deadline = send_done + 30
        while time.monotonic() < deadline and len([h for h in submitted if h in seen]) < \
                len(submitted) - rejected:
            await asyncio.sleep(0.1)
        stop.set()
        await watcher
    committed = [seen[h] - submitted[h] for h in submitted if h in seen]
    last_commit = max((seen[h] for h in submitted if h in seen), default=send_done)
    lat = sorted(committed)
    return {
        "offered_tx_s": count / (send_done - start),
        "committed_tx_s": len(committed) / max(last_commit - start, 1e-9),
        "committed": len(committed), "submitted": count, "rejected": rejected,
        "p50_s": statistics.median(lat) if lat else float("nan"),
        "p99_s": lat[int(len(lat) * 0.99) - 1] if lat else float("nan"),
        "block_interval_s": statistics.mean(intervals) if intervals else float("nan"),
        "codes": dict(codes),
    }


def fund_senders(members: list[dict], chain_id: str) -> list[Ed25519Key]:
    """Create SENDERS accounts, funded from the nodes' default accounts, and wait for it."""
    funders = [read_key_file(Path(m["home"]) / "keys" / "accounts" / "default.json")
               for m in members]
    senders = [Ed25519Key.generate() for _ in range(SENDERS)]
    txs = []
    for i, key in enumerate(senders):
        funder = funders[i % len(funders)]
        txs.append((i % len(members),
                    Transfer.signed(funder, chain_id, key.address, 10**9, 0, i // len(funders))))

    async def submit() -> None:
        async with aiohttp.ClientSession() as session:
            for node, tx in txs:
                async with session.post(f"{members[node]['http_url']}/txs", data=tx.encode(),
                                        headers={"Content-Type": "application/cbor"}) as r:
                    assert r.status < 300, await r.text()
            last = txs[-1][1]
            while True:
                async with session.get(f"{members[0]['http_url']}/txs/{last.hash}") as r:
                    if r.status == 200 and (await r.json()).get("status") == "committed":
                        return
                await asyncio.sleep(0.2)

    asyncio.run(submit())
    return senders


def make_txs(members: list[dict], chain_id: str, count: int, keys: list[Ed25519Key],
             nonces: dict[str, int]) -> list[tuple[int, bytes, str, int]]:
    out = []
    for i in range(count):
        n = i % len(keys)
        key = keys[n]
        to = keys[(n + 1) % len(keys)].address
        nonce = nonces[key.address]
        nonces[key.address] += 1
        tx = Transfer.signed(key, chain_id, to, 1, 1, nonce)
        # All of a sender's txs go to one node: a later nonce arriving at another node before
        # gossip brings the earlier one would be refused as a nonce gap.
        out.append((n % len(members), tx.encode(), tx.hash, n))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="100,300,600,1000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--base-port", type=int, default=36656)
    parser.add_argument("--modes", default="single,batch",
                        help="single (one POST /txs per tx), batch (POST /txs/batch)")
    parser.add_argument("--batch-ms", type=int, default=50,
                        help="batch mode: each node's client posts the txs due every N ms")
    args = parser.parse_args()
    modes = args.modes.split(",")
    rates = [int(r) for r in args.rates.split(",")]
    directory = Path(tempfile.mkdtemp(prefix="dcloud-bench-"))
    cli("testnet", "up", "--nodes", "4", "--dir", str(directory), "--base-port",
        str(args.base_port))
    try:
        members = json.loads((directory / "testnet.json").read_text())
        status = json.loads(cli("status", "--url", members[0]["http_url"], "--json"))
        chain_id = status["chain"]["chain_id"]
        senders = fund_senders(members, chain_id)
        nonces = {k.address: 0 for k in senders}
        print(f"4 validators on 127.0.0.1, chain {chain_id}, {args.seconds:.0f} s per rate")
        print(f"{'mode':>6} {'offered':>8} {'committed':>10} {'ratio':>6} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'block s':>8} {'rejected':>8}")
        for rate, mode in [(r, m) for r in rates for m in modes]:
            txs = make_txs(members, chain_id, int(rate * args.seconds), senders, nonces)
            batch_ms = args.batch_ms if mode == "batch" else 0
            r = asyncio.run(run_rate(members, txs, rate, args.seconds, batch_ms))
            print(f"{mode:>6} {r['offered_tx_s']:8.0f} {r['committed_tx_s']:10.0f} "
                  f"{r['committed_tx_s'] / r['offered_tx_s']:6.2f} {r['p50_s'] * 1000:8.0f} "
                  f"{r['p99_s'] * 1000:8.0f} {r['block_interval_s']:8.2f} {r['rejected']:8d} "
                  f"{r['codes'] or ''}",
                  flush=True)
            time.sleep(2)
    finally:
        cli("testnet", "down", "--dir", str(directory))
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
