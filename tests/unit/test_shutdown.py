"""The shutdown watchdog: a node whose shutdown hangs exits anyway, within its grace."""

from __future__ import annotations

import subprocess
import sys
import time

HANGING_SHUTDOWN = """
import time
from node.app import _exit_if_still_running_after
_exit_if_still_running_after(0.3)
time.sleep(30)  # a shutdown step that never finishes
"""


def test_a_hanging_shutdown_exits_after_the_grace_period() -> None:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", HANGING_SHUTDOWN], capture_output=True,
                          text=True, timeout=20)
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert took < 20
    assert "shutdown took longer than" in proc.stderr


def test_the_grace_is_within_the_five_seconds_an_operator_is_promised() -> None:
    from node.app import SHUTDOWN_GRACE_S

    assert 0 < SHUTDOWN_GRACE_S < 5
