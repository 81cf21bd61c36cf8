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
        [--codings 4,2 10,4] [--runs 7] [--tuned-malloc]

--tuned-malloc re-runs the process with glibc told to keep freed memory (fresh multi-MiB
buffers otherwise cost page faults on every segment), to show the codec's ceiling.

Network section: end-to-end put/get MB/s on a 6-node loopback testnet next to raw libp2p
stream throughput measured in the same run. Not written yet: `network_section` is its place.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zfec  # type: ignore[import-untyped]  # noqa: E402
from pyeclib.ec_iface import ECDriver  # noqa: E402

from node.storage.erasure import BACKEND_ISA_L_RS_CAUCHY, SegmentCoder  # noqa: E402

MIB = 1024 * 1024
TARGET_MB_S = 2000
TUNED_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(256 * MIB),
    "MALLOC_TRIM_THRESHOLD_": str(1024 * MIB),
    "MALLOC_TOP_PAD_": str(256 * MIB),
}


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
    malloc = "glibc tuned to keep freed memory" if args.tuned_malloc else "default malloc"
    print(f"Erasure coding: {args.payload_mib} MiB random payload in {args.segment_mib} MiB "
          f"segments, one thread, median of {args.runs} runs, decode = m data shards lost; "
          f"{malloc}. MB/s of payload (MiB/s).")
    print(f"{'(k,m)':<7} {'codec':<30} {'encode':>8} {'x zfec':>7} {'decode':>8} {'x zfec':>7}")
    for k, m in args.codings:
        results = {}
        for make in (zfec_codec, pyeclib_codec, segment_coder_codec):
            codec = make(k, m)
            results[codec.name] = measure(codec, segments, args.runs)
        ref_enc, ref_dec = results["zfec"]
        for name, (e, d) in results.items():
            print(f"{f'({k},{m})':<7} {name:<30} {e:>8.0f} {e / ref_enc:>7.2f} "
                  f"{d:>8.0f} {d / ref_dec:>7.2f}")
    print(f"target: encode and decode above {TARGET_MB_S} MB/s per core")


def network_section(args: argparse.Namespace) -> None:
    """End-to-end put/get on a 6-node loopback testnet vs raw libp2p stream throughput."""
    print("network section: not implemented yet (run with --skip-network)")


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
    parser.add_argument("--tuned-malloc", action="store_true",
                        help="re-run with glibc malloc keeping freed memory")
    args = parser.parse_args()
    if args.tuned_malloc and any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED_MALLOC})
    if not args.skip_codec:
        codec_section(args)
    if not args.skip_network:
        network_section(args)


if __name__ == "__main__":
    main()
