"""Storage throughput: erasure coding on one core, and (later) end-to-end put/get on a testnet.

Codec section: a random payload coded in fixed-size segments, RS(k, m) for each coding asked,
measured side by side in one run for
- pyeclib `isa_l_rs_cauchy`, the backend the node uses (raw codec calls),
- the node's `SegmentCoder` (the same codec plus sha256 of every shard on encode and the hash
  checks on decode: what a put or get actually pays),
- zfec (Tahoe-LAFS), the reference; "x zfec" is the ratio to it.
"decode" loses m data shards (the worst case: the most parity arithmetic). Every decode is
checked byte-exact. MB/s are of payload, median of --runs runs, one thread.

    .venv/bin/python bench/storage.py --skip-network [--payload-mib 64] [--segment-mib 4]
        [--codings 4,2 10,4] [--runs 7]

Each coding is measured twice in the same run: first with glibc's default malloc (every fresh
multi-MiB buffer is a new mmap whose pages fault in on first touch), then with the malloc
settings the node applies at start (node.storage.erasure.keep_freed_memory).

Network section: end-to-end put (on node0) and get (from node3) MB/s of one object over HTTP
on a 6-node loopback testnet (`dcloud-node testnet up`, RS(4,2), all processes on the same
2 cores), with the CPU each node spent per MiB during the get (from /proc), next to the raw
libp2p stream throughput between two processes measured in the same run (a bare host that
discards what it reads; 1 MiB frames written and read through node.p2p.Stream, as the chunk
exchange moves shards), measured before the testnet starts and after it stops (the reference is the
median of those quiet runs: the machine's speed drifts over minutes), and beside the idle
testnet for context. Each run puts new random bytes (a put of bytes already stored moves
nothing), and an untimed put and two gets of the same size warm the testnet up first.

    .venv/bin/python bench/storage.py --skip-codec [--payload-mib 64] [--net-runs 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zfec  # type: ignore[import-untyped]  # noqa: E402
from pyeclib.ec_iface import ECDriver  # noqa: E402

from node.storage.erasure import (  # noqa: E402
    BACKEND_ISA_L_RS_CAUCHY,
    SegmentCoder,
    keep_freed_memory,
)
from tests.ports import free_port_block  # noqa: E402

MIB = 1024 * 1024
TARGET_MB_S = 2000


@dataclass(frozen=True)
class Codec:
    """Encode a segment into k+m shards; decode a segment from the last k of them."""

    name: str
    encode: Callable[[bytes], list[bytes]]
    decode: Callable[[list[bytes], int], bytes]  # (all shards with m data ones dropped, size)


def pyeclib_codec(k: int, m: int) -> Codec:
    driver = ECDriver(k=k, m=m, ec_type=BACKEND_ISA_L_RS_CAUCHY)

    def decode(shards: list[bytes], size: int) -> bytes:
        return bytes(driver.decode(shards[m:]))

    return Codec("pyeclib isa_l_rs_cauchy", driver.encode, decode)


def segment_coder_codec(k: int, m: int) -> Codec:
    coder = SegmentCoder(k, m)
    hashes: dict[int, tuple[bytes, ...]] = {}

    def encode(segment: bytes) -> list[bytes]:
        encoded = coder.encode(segment)
        hashes[id(encoded.shards[0])] = encoded.shard_hashes
        return list(encoded.shards)

    def decode(shards: list[bytes], size: int) -> bytes:
        shard_hashes = hashes[id(shards[0])]
        return coder.decode({i: shards[i] for i in range(m, k + m)}, shard_hashes,
                            segment_size=size)

    return Codec("node SegmentCoder (+sha256)", encode, decode)


def zfec_codec(k: int, m: int) -> Codec:
    encoder, decoder = zfec.Encoder(k, k + m), zfec.Decoder(k, k + m)
    nums = tuple(range(m, k + m))

    def encode(segment: bytes) -> list[bytes]:
        block = -(-len(segment) // k)
        padded = segment + bytes(block * k - len(segment)) if len(segment) % k else segment
        view = memoryview(padded)
        return list(encoder.encode(tuple(view[i * block:(i + 1) * block] for i in range(k))))

    def decode(shards: list[bytes], size: int) -> bytes:
        blocks = decoder.decode(tuple(shards[m:]), nums)
        return b"".join(blocks)[:size]

    return Codec("zfec", encode, decode)


def measure(codec: Codec, segments: list[bytes], runs: int) -> tuple[float, float]:
    """Median encode and decode MB/s over `runs` passes over all segments."""
    total = sum(len(s) for s in segments)
    enc: list[float] = []
    dec: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        coded = [codec.encode(s) for s in segments]
        t1 = time.perf_counter()
        out = [codec.decode(shards, len(s)) for shards, s in zip(coded, segments, strict=True)]
        t2 = time.perf_counter()
        if out != segments:
            raise SystemExit(f"{codec.name}: decode is not byte-exact")
        del coded, out
        enc.append(total / MIB / (t1 - t0))
        dec.append(total / MIB / (t2 - t1))
    return statistics.median(enc), statistics.median(dec)


def codec_section(args: argparse.Namespace) -> None:
    payload = os.urandom(args.payload_mib * MIB)
    seg = args.segment_mib * MIB
    segments = [payload[i:i + seg] for i in range(0, len(payload), seg)]
    print(f"Erasure coding: {args.payload_mib} MiB random payload in {args.segment_mib} MiB "
          f"segments, one thread, median of {args.runs} runs, decode = m data shards lost. "
          f"MB/s of payload (MiB/s).")
    for malloc in ("default glibc malloc", "the node's malloc settings (keep_freed_memory)"):
        if malloc.startswith("the node") and not keep_freed_memory():
            print("(glibc refused the node's malloc settings: not measured)")
            break
        print(f"\n{malloc}:")
        print(f"{'(k,m)':<7} {'codec':<30} {'encode':>8} {'x zfec':>7} {'decode':>8} "
              f"{'x zfec':>7}")
        for k, m in args.codings:
            results = {}
            for make in (zfec_codec, pyeclib_codec, segment_coder_codec):
                codec = make(k, m)
                results[codec.name] = measure(codec, segments, args.runs)
            ref_enc, ref_dec = results["zfec"]
            for name, (e, d) in results.items():
                print(f"{f'({k},{m})':<7} {name:<30} {e:>8.0f} {e / ref_enc:>7.2f} "
                      f"{d:>8.0f} {d / ref_dec:>7.2f}")
    print(f"\ntarget: encode and decode above {TARGET_MB_S} MB/s per core")


RAW_PROTOCOL = "/dcloud/bench/raw/0.1.0"


async def _raw_server(port: int, ready_file: str) -> None:
    """Child process: a bare libp2p host that reads and discards every raw bench stream."""
    import trio
    from prometheus_client import CollectorRegistry

    from node.config import P2PSection, defaults
    from node.crypto import Ed25519Key
    from node.metrics import P2PMetrics
    from node.p2p import P2PNetwork

    cfg = dict(defaults()["p2p"])
    cfg.update(listen_addrs=[f"/ip4/127.0.0.1/tcp/{port}"], bootstrap=[])
    net = P2PNetwork(Ed25519Key.generate(), P2PSection(**cfg), P2PMetrics(CollectorRegistry()))

    async def sink(stream) -> None:
        total = 0
        while (parts := await stream.read_frame_parts()) is not None:
            total += sum(map(len, parts))
        await stream.write(str(total).encode())
        await stream.close()

    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        net.set_handler(RAW_PROTOCOL, sink)
        Path(ready_file).write_text(net.listen_addrs()[0])
        await trio.sleep_forever()


def raw_stream_mb_s(total_mib: int, runs: int) -> list[float]:
    """One-way libp2p stream throughput between two processes, moved as the chunk exchange
    moves shards: 1 MiB frames written and read through node.p2p.Stream (so the reference
    gets every receive-path change the exchange gets)."""
    import tempfile

    import trio
    from prometheus_client import CollectorRegistry

    from node.config import P2PSection, defaults
    from node.crypto import Ed25519Key
    from node.metrics import P2PMetrics
    from node.p2p import P2PNetwork

    port = free_port_block(1)
    ready = Path(tempfile.mkdtemp()) / "addr"
    child = subprocess.Popen([sys.executable, __file__, "--raw-server", str(port), str(ready)])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError("raw stream server did not start")
            time.sleep(0.1)
        addr = ready.read_text()
        results: list[float] = []

        async def client() -> None:
            cfg = dict(defaults()["p2p"])
            cfg.update(listen_addrs=[f"/ip4/127.0.0.1/tcp/{free_port_block(1)}"], bootstrap=[addr])
            net = P2PNetwork(Ed25519Key.generate(), P2PSection(**cfg),
                             P2PMetrics(CollectorRegistry()))
            peer = addr.rsplit("/p2p/", 1)[1]
            block = os.urandom(MIB)
            async with trio.open_nursery() as nursery:
                await nursery.start(net.run)
                with trio.fail_after(30):
                    while peer not in net.connected_peer_ids():
                        await trio.sleep(0.05)
                for _ in range(runs):
                    started = time.perf_counter()
                    stream = await net.open_stream(peer, RAW_PROTOCOL)
                    for _ in range(total_mib):
                        await stream.write_frame(block)
                    await stream.close()
                    echoed = await stream.read(64)
                    took = time.perf_counter() - started
                    assert int(echoed) == total_mib * MIB, echoed
                    results.append(total_mib * MIB / took / 1e6)
                nursery.cancel_scope.cancel()

        trio.run(client)
        return results
    finally:
        child.terminate()
        child.wait(10)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _http(url: str, method: str, path: str, body_file: Path | None = None,
          out: bool = False) -> tuple[int, int]:
    """(status, bytes received) of one streamed request."""
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=600)
    if body_file is not None:
        conn.putrequest(method, path)
        conn.putheader("Content-Length", str(body_file.stat().st_size))
        conn.endheaders()
        with open(body_file, "rb") as f:
            while block := f.read(MIB):
                conn.send(block)
    else:
        conn.request(method, path)
    resp = conn.getresponse()
    got = 0
    while block := resp.read(MIB):
        got += len(block)
    conn.close()
    return resp.status, got


def _random_file(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def network_section(args: argparse.Namespace) -> None:
    """End-to-end put/get on a 6-node loopback testnet vs raw libp2p stream throughput."""
    import tempfile

    size = args.payload_mib * MIB
    print(f"\nNetwork: raw libp2p stream between two processes, {args.payload_mib} MiB, "
          f"{args.net_runs} runs before the testnet starts and {args.net_runs} after it stops")
    raw = raw_stream_mb_s(args.payload_mib, args.net_runs)
    print("  raw stream MB/s (before): " + ", ".join(f"{x:.0f}" for x in raw))
    work = Path(tempfile.mkdtemp(prefix="dcloud-bench-storage-"))
    base = free_port_block(62)
    payload = work / "payload.bin"
    cli = [sys.executable, "-m", "node", "testnet"]
    print(f"  6-node testnet in {work}, base port {base}")
    # `up` returns once every node sees all six alive (placement needs live members).
    subprocess.run([*cli, "up", "--nodes", "6", "--dir", str(work / "net"), "--base-port",
                    str(base), "--timeout", "180"], check=True, stdout=subprocess.DEVNULL)
    try:
        members = json.loads((work / "net" / "testnet.json").read_text())
        pids = [m["pid"] for m in members]
        # Untimed first: one put and two gets of the same size. A node's first large get
        # grows its heap (~100 -> ~300 MiB resident, tens of thousands of page faults) and
        # opens its streams; a node that has served before finds all that ready.
        _random_file(payload, args.payload_mib)
        _http(members[0]["http_url"], "PUT", "/objects/bench-warm-up", payload)
        for _ in range(2):
            _http(members[3]["http_url"], "GET", "/objects/bench-warm-up")
        puts, gets = [], []
        for run in range(args.net_runs):
            _random_file(payload, args.payload_mib)  # new bytes: no chunk is already stored
            started = time.perf_counter()
            status, _ = _http(members[0]["http_url"], "PUT", f"/objects/bench-{run}", payload)
            put_s = time.perf_counter() - started
            if status != 201:
                print(f"  run {run}: put failed with HTTP {status}")
                continue
            cpu_before = [_cpu_s(pid) for pid in pids]
            started = time.perf_counter()
            status, got = _http(members[3]["http_url"], "GET", f"/objects/bench-{run}")
            get_s = time.perf_counter() - started
            cpu = [_cpu_s(pid) - b for pid, b in zip(pids, cpu_before, strict=True)]
            if status != 200 or got != size:
                print(f"  run {run}: get failed (HTTP {status}, {got} bytes)")
                continue
            puts.append(size / put_s / 1e6)
            gets.append(size / get_s / 1e6)
            per_mib = [c * 1000 / args.payload_mib for c in cpu]
            print(f"  run {run}: put {puts[-1]:.1f} MB/s, get {gets[-1]:.1f} MB/s; get CPU "
                  f"ms/MiB: getter {per_mib[3]:.1f}, all six {sum(per_mib):.1f} "
                  f"(node0-5: {', '.join(f'{x:.1f}' for x in per_mib)})")
        # The same raw stream with the six idle nodes running (context only).
        beside = raw_stream_mb_s(args.payload_mib, args.net_runs)
        print("  raw stream MB/s beside the idle testnet: " +
              ", ".join(f"{x:.0f}" for x in beside))
    finally:
        subprocess.run([*cli, "down", "--dir", str(work / "net")], stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    after = raw_stream_mb_s(args.payload_mib, args.net_runs)
    print("  raw stream MB/s (after): " + ", ".join(f"{x:.0f}" for x in after))
    # The machine's speed drifts over minutes: the reference is the median of the quiet
    # runs on both sides of the testnet's.
    ref = statistics.median(raw + after)
    print(f"\nEnd to end, RS(4,2) over 6 processes on 2 cores, {args.payload_mib} MiB object "
          f"(median of {len(gets)} runs); reference = raw stream {ref:.0f} MB/s (median of "
          f"{len(raw) + len(after)} quiet runs)")
    loaded = statistics.median(beside)
    print(f"{'':6}{'MB/s':>8}{'x raw':>8}{'x raw beside testnet':>22}")
    for label, values in (("put", puts), ("get", gets)):
        if values:
            v = statistics.median(values)
            print(f"{label:6}{v:8.1f}{v / ref:8.2f}{v / loaded:22.2f}")
    print(f"raw stream beside the idle testnet: {loaded:.0f} MB/s ({loaded / ref:.2f}x quiet)")
    print("target: get at least 0.5x raw")


def parse_coding(text: str) -> tuple[int, int]:
    k, m = (int(x) for x in text.split(","))
    return k, m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--payload-mib", type=int, default=64)
    parser.add_argument("--segment-mib", type=int, default=4)
    parser.add_argument("--codings", type=parse_coding, nargs="+",
                        default=[(4, 2), (10, 4)])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--skip-network", action="store_true",
                        help="only the codec section (no testnet)")
    parser.add_argument("--skip-codec", action="store_true")
    parser.add_argument("--net-runs", type=int, default=2, help="put/get runs on the testnet")
    parser.add_argument("--raw-server", nargs=2, metavar=("PORT", "READY_FILE"),
                        help=argparse.SUPPRESS)  # the raw stream reference's other process
    args = parser.parse_args()
    if args.raw_server:
        import trio

        trio.run(_raw_server, int(args.raw_server[0]), args.raw_server[1])
        return
    if not args.skip_codec:
        codec_section(args)
    if not args.skip_network:
        network_section(args)


if __name__ == "__main__":
    main()
