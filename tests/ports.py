"""Free TCP ports on 127.0.0.1 for the test suite and the benchmarks (no pytest needed)."""

from __future__ import annotations

import random
import socket

HOST = "127.0.0.1"


def port_block_free(base: int, count: int) -> bool:
    for port in range(base, base + count):
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                return False
    return True


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out as source ports of outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port_block(count: int) -> int:
    """A base port such that base..base+count-1 are all free on 127.0.0.1, outside the
    kernel's ephemeral range: a port free when chosen but inside that range can become the
    source port of some outgoing connection (a node dialling a peer) before the process it
    was chosen for binds it ("Address already in use", seen starting a 6-node testnet)."""
    low, high = ephemeral_range()
    spans = [(lo, hi) for lo, hi in ((10000, low), (high + 1, 65536)) if hi - lo > count]
    if not spans:
        spans = [(1024, 65536)]
    for _ in range(200):
        lo, hi = random.choice(spans)
        base = random.randrange(lo, hi - count)
        if port_block_free(base, count):
            return base
    raise RuntimeError("no free block of ports on 127.0.0.1")
