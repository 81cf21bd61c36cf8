"""Timeout arithmetic for the Tendermint round machine: how long each step may wait.

The paper (arXiv:1807.04938, section 4) only needs the timeouts to grow with the round, so that
after global stabilisation every correct process eventually spends long enough in one round for
the messages of the others to arrive. We grow them linearly: base + round * delta. All values
are integer milliseconds (no floats in consensus state).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

MAX_TIMEOUT_MS = 24 * 3600 * 1000  # a timeout longer than a day is a configuration mistake


@dataclass(frozen=True)
class TimeoutParams:
    """Per-step timeouts of one height: base + round * delta milliseconds, and the commit delay."""

    propose_ms: int = 1000
    propose_delta_ms: int = 500
    prevote_ms: int = 500
    prevote_delta_ms: int = 250
    precommit_ms: int = 500
    precommit_delta_ms: int = 250
    commit_ms: int = 100  # after Decide, before start_height(h + 1): collect more precommits

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or \
                    not 0 <= value <= MAX_TIMEOUT_MS:
                raise ValueError(f"timeout {f.name} must be an integer number of milliseconds "
                                 f"in [0, {MAX_TIMEOUT_MS}], got {value!r}")

    def propose(self, round_: int) -> int:
        """timeoutPropose(round) of L21: how long a non-proposer waits for the proposal."""
        return self._grow(self.propose_ms, self.propose_delta_ms, round_)

    def prevote(self, round_: int) -> int:
        """timeoutPrevote(round) of L35: wait after +2/3 prevotes of any kind."""
        return self._grow(self.prevote_ms, self.prevote_delta_ms, round_)

    def precommit(self, round_: int) -> int:
        """timeoutPrecommit(round) of L48: wait after +2/3 precommits of any kind."""
        return self._grow(self.precommit_ms, self.precommit_delta_ms, round_)

    @staticmethod
    def _grow(base: int, delta: int, round_: int) -> int:
        if round_ < 0:
            raise ValueError(f"round must be >= 0, got {round_}")
        # Capped so that a huge round number (round skips are driven by peers) stays bounded.
        return min(base + round_ * delta, MAX_TIMEOUT_MS)
