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


def free_port_block(count: int) -> int:
    """A base port such that base..base+count-1 are all free on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(30000, 60000 - count)
        if port_block_free(base, count):
            return base
    raise RuntimeError("no free block of ports on 127.0.0.1")
