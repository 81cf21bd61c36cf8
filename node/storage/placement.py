"""Where the shards of a segment live: rendezvous hashing over live members, spread by region.

Every node computes the same placement from the same inputs (a segment key and the live
member list), with no coordination. Rendezvous (highest random weight) hashing ranks every
member by sha256(key, node id); when a node joins or leaves, only the slots it wins or held
change, unlike hashing modulo the member count, which reshuffles almost everything.

Spread: regions are visited round-robin, each region's members in rank order; the order of
the regions is itself a rendezvous ranking of (key, region). A segment's k+m shards therefore
land in as many regions as there are (up to k+m), and losing a whole region costs at most
ceil((k+m) / regions) shards of a segment. Ranking regions by their own hash rather than by
their best member keeps the region order fixed when a member leaves, so a departure moves one
shard, not the region order.

`previous` keeps existing holders in their slots: repair fills only the vacant slots, with the
best-ranked members not already used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from node.gossip.swim_messages import is_node_id, is_region

PLACEMENT_DOMAIN = b"dcloud/placement/v1"
MAX_KEY_BYTES = 256


class PlacementError(Exception):
    """Shards cannot be placed as asked."""


class NotEnoughNodes(PlacementError):
    """Fewer distinct live nodes than shards per segment."""

    def __init__(self, needed: int, available: int) -> None:
        self.needed = needed
        self.available = available
        super().__init__(f"placing {needed} shards on distinct nodes needs {needed} live nodes, "
                         f"only {available} {'is' if available == 1 else 'are'} live")


@dataclass(frozen=True)
class Candidate:
    """A live member that may hold shards."""

    node_id: str
    region: str

    def __post_init__(self) -> None:
        if not is_node_id(self.node_id):
            raise PlacementError(f"{str(self.node_id)[:64]!r} is not a node id")
        if not is_region(self.region):
            raise PlacementError(f"{str(self.region)[:64]!r} is not a region name")


def _weight(key: bytes, kind: bytes, name: str) -> bytes:
    # Length-prefixed fields: no (key, name) pair can be confused with another.
    h = hashlib.sha256(PLACEMENT_DOMAIN)
    for part in (kind, key, name.encode()):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def ranking(key: bytes, candidates: Iterable[Candidate]) -> list[Candidate]:
    """All candidates in placement order for `key`: regions round-robin, by rank within each."""
    if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_BYTES:
        raise PlacementError(f"placement key must be 1-{MAX_KEY_BYTES} bytes")
    by_id: dict[str, Candidate] = {}
    for c in candidates:
        held = by_id.setdefault(c.node_id, c)
        if held.region != c.region:
            raise PlacementError(f"node {c.node_id} is listed in regions {held.region} and "
                                 f"{c.region}")
    regions: dict[str, list[Candidate]] = {}
    for c in by_id.values():
        regions.setdefault(c.region, []).append(c)
    queues = [
        sorted(members, key=lambda c: (_weight(key, b"node", c.node_id), c.node_id),
               reverse=True)
        for _, members in sorted(regions.items(),
                                 key=lambda item: (_weight(key, b"region", item[0]), item[0]),
                                 reverse=True)
    ]
    order: list[Candidate] = []
    depth = 0
    while len(order) < len(by_id):
        for queue in queues:
            if depth < len(queue):
                order.append(queue[depth])
        depth += 1
    return order


def place(key: bytes, candidates: Iterable[Candidate], count: int,
          previous: Sequence[str | None] | None = None) -> tuple[str, ...]:
    """Node ids for `count` shard slots of the segment with this key, all distinct.

    Without `previous`, slot i gets the i-th node of `ranking`. With `previous` (the current
    holder of each slot, None for a lost one), every holder that is still a candidate keeps
    its slot and only the other slots are filled, in ranking order, from unused candidates.
    Raises NotEnoughNodes when there are fewer candidates than `count`.
    """
    if type(count) is not int or count < 1:
        raise PlacementError("shard count must be >= 1")
    order = ranking(key, candidates)
    if len(order) < count:
        raise NotEnoughNodes(count, len(order))
    if previous is None:
        return tuple(c.node_id for c in order[:count])
    if len(previous) != count:
        raise PlacementError(f"previous placement has {len(previous)} slots, expected {count}")
    live = {c.node_id for c in order}
    slots: list[str | None] = []
    used: set[str] = set()
    for holder in previous:
        keep = holder is not None and holder in live and holder not in used
        slots.append(holder if keep else None)
        if keep:
            assert holder is not None
            used.add(holder)
    spare = iter(c.node_id for c in order if c.node_id not in used)
    return tuple(holder if holder is not None else next(spare) for holder in slots)
