"""Emergent regional leaders: in each region, the oldest live member leads.

No election messages: every member computes the same leaders from the same membership view,
so once views converge (SWIM), leaders agree. Seniority is (joined_at_ms, node_id): the
member that joined first, ties broken by node id. A member declared dead that comes back
rejoins with a new joined_at_ms (node.gossip.swim), so it returns as the youngest and does
not take leadership back from the member that replaced it.

Suspect members still count as live here. Suspicion is transient and often wrong on lossy
links, and it reaches members at different times; dropping a suspect leader would make
leadership flap and members disagree on it for the length of every false suspicion. Dead and
left are final (every member reaches them and only a rejoin undoes them), so leadership changes
only on those and on rejoins.

Later, the ledger's provider registration height will take precedence over joined_at_ms:
pass `registered_at` (node id -> registration height) and registered members rank by
(height, joined_at_ms, node_id) ahead of every unregistered one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from node.gossip.swim import MemberView

LIVE_STATES = ("alive", "suspect")


def seniority(member: MemberView,
              registered_at: Mapping[str, int] | None = None) -> tuple[int, int, int, str]:
    """Sort key: smaller is older. Registration height (when known) first, then join time."""
    height = None if registered_at is None else registered_at.get(member.node_id)
    ranked = (0, height) if height is not None else (1, 0)
    return (*ranked, member.joined_at_ms, member.node_id)


def leaders(members: Iterable[MemberView],
            registered_at: Mapping[str, int] | None = None) -> dict[str, str]:
    """region -> node id of its leader, for every region with a live member."""
    best: dict[str, tuple[tuple[int, int, int, str], str]] = {}
    for m in members:
        if m.state not in LIVE_STATES:
            continue
        key = seniority(m, registered_at)
        held = best.get(m.region)
        if held is None or key < held[0]:
            best[m.region] = (key, m.node_id)
    return {region: node_id for region, (_, node_id) in sorted(best.items())}


def is_leader(self_id: str, region: str, members: Iterable[MemberView],
              registered_at: Mapping[str, int] | None = None) -> bool:
    return leaders(members, registered_at).get(region) == self_id
