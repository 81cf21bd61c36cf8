"""node.app.tune_gc: start-up state frozen out of the cyclic collector, rarer passes. Run in a
child interpreter, so that this test process keeps its own collector settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tune_gc_freezes_start_up_objects_and_raises_the_thresholds() -> None:
    code = (
        "import gc, json\n"
        "from node.app import GC_THRESHOLDS, tune_gc\n"
        "before = gc.get_threshold()\n"
        "tune_gc()\n"
        "print(json.dumps([before, gc.get_threshold(), GC_THRESHOLDS, gc.get_freeze_count()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    before, after, wanted, frozen = json.loads(out)
    assert before == [700, 10, 10]  # CPython's default, which the node no longer runs with
    assert after == wanted and wanted[0] > before[0]
    assert frozen > 10_000  # the node's modules and what they built
