"""A second bridge on the same data root stands by, and takes over when the first dies."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Drop
from tests.support.procs import BridgeProc, wait_until


def test_a_standby_bridge_waits_then_takes_over_within_5_s(
    bridge: BridgeProc, drop: Drop, env: dict[str, str], data_root: Path
) -> None:
    drop.write("s0.SLOW", {"type": "SLOW", "steps": 0})
    drop.wait_state("s0", "SUCCESS", timeout=15)  # the first bridge is active
    standby = BridgeProc(env, data_root / "bridge-standby.log")
    standby.start()
    try:
        wait_until(lambda: "standing by" in standby.log.read_text(), 15, what="standby")
        drop.write("s1.SLOW", {"type": "SLOW", "steps": 0})
        drop.wait_state("s1", "SUCCESS", timeout=15)
        assert "took s1" not in standby.log.read_text()
        assert "took s1" in bridge.log.read_text()
        bridge.kill()
        # the contract's bound: the standby acts within 5 s of the active bridge's death
        wait_until(lambda: "taking over" in standby.log.read_text(), 6, what="take-over")
        drop.write("s2.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0.01})
        drop.wait_state("s2", "SUCCESS", timeout=15)
        assert "took s2" in standby.log.read_text()
    finally:
        standby.stop()
