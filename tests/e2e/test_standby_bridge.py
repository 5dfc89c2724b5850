"""A second bridge on the same data root stands by, and takes over when the first dies.

The standby serves /healthz meanwhile: 503, role standby, naming the bridge that holds the lease
(host/pid/...); the same endpoint answers 200 once it has taken over.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import Drop
from tests.e2e.test_http_metrics import get, health
from tests.support.procs import BridgeProc, free_port, wait_until


def test_a_standby_bridge_waits_then_takes_over_within_5_s(
    bridge: BridgeProc, drop: Drop, env: dict[str, str], data_root: Path
) -> None:
    drop.write("s0.SLOW", {"type": "SLOW", "steps": 0})
    drop.wait_state("s0", "SUCCESS", timeout=15)  # the first bridge is active
    port = free_port()
    standby = BridgeProc({**env, "TASKD_HTTP_PORT": str(port)}, data_root / "bridge-standby.log")
    standby.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: "standing by" in standby.log.read_text(), 15, what="standby")
        assert bridge.proc is not None
        holder = f"{socket.gethostname()}/{bridge.proc.pid}/"
        said = [line for line in standby.log.read_text().splitlines() if "standing by" in line]
        assert len(said) == 1 and f"another bridge ({holder}" in said[0], said
        wait_until(lambda: get(base + "/healthz"), 15, interval=0.1, what="the standby's /healthz")
        status, body = health(base)
        assert (status, body["status"], body["role"]) == (503, "standby", "standby")
        assert f"another bridge ({holder}" in str(body["reason"])
        drop.write("s1.SLOW", {"type": "SLOW", "steps": 0})
        drop.wait_state("s1", "SUCCESS", timeout=15)
        assert "took s1" not in standby.log.read_text()
        assert "took s1" in bridge.log.read_text()
        bridge.kill()
        # the contract's bound: the standby acts within 5 s of the active bridge's death
        wait_until(lambda: "taking over" in standby.log.read_text(), 6, what="take-over")
        wait_until(lambda: health(base)[0] == 200, 10, interval=0.1, what="its /healthz 200")
        assert health(base)[1]["role"] == "active"
        drop.write("s2.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0.01})
        drop.wait_state("s2", "SUCCESS", timeout=15)
        assert "took s2" in standby.log.read_text()
    finally:
        standby.stop()
