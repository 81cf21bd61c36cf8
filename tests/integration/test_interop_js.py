"""Another libp2p implementation (js-libp2p: TCP + Noise + yamux) connects, identifies, pings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.interop]

JS_DIR = Path(__file__).resolve().parents[1] / "interop" / "js"


def _dialer() -> list[str]:
    node = shutil.which("node")
    ready = node is not None and (JS_DIR / "node_modules" / "libp2p").is_dir()
    if not ready:
        if os.environ.get("CI"):
            pytest.fail("CI must install the js-libp2p dialer: npm ci --prefix tests/interop/js")
        pytest.skip("js-libp2p dialer not installed (npm ci --prefix tests/interop/js)")
    return [str(node), str(JS_DIR / "dial.mjs")]


def test_js_libp2p_connects_identifies_and_pings_the_node(node_factory):
    dialer = _dialer()
    node = node_factory().start()
    status = node.wait_healthy()
    addr = status["listen_addrs"][0]
    proc = subprocess.run([*dialer, addr, "--pings", "3"], capture_output=True, text=True,
                          timeout=60)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and result["ok"], (result, proc.stderr[-2000:])
    assert result["remote_peer"] == status["node_id"]
    assert result["agent_version"].startswith("py-libp2p")
    for protocol in ("/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/ipfs/kad/1.0.0",
                     "/dcloud/info/0.1.0"):
        assert protocol in result["protocols"]
    assert any(f"/tcp/{node.p2p_port}" in a for a in result["listen_addrs"])
    assert len(result["rtt_ms"]) == 3 and all(rtt >= 0 for rtt in result["rtt_ms"])


def test_js_dialer_with_the_wrong_peer_id_is_refused_by_noise(node_factory):
    dialer = _dialer()
    node = node_factory().start()
    status = node.wait_healthy()
    from node.crypto import Ed25519Key
    from node.p2p import peer_id_of

    wrong = status["listen_addrs"][0].rsplit("/p2p/", 1)[0] + "/p2p/" + \
        peer_id_of(Ed25519Key.generate())
    proc = subprocess.run([*dialer, wrong, "--pings", "1"], capture_output=True, text=True,
                          timeout=60)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 1 and result["ok"] is False
    assert node.status()["node_id"] == status["node_id"]  # still up
