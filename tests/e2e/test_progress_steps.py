"""A running task's step, number of steps and what it is doing reach its file, `taskd status`
and the bridge's page while it runs, and leave the file when it ends."""

from __future__ import annotations

from typing import Any

from tests.conftest import Drop
from tests.support.procs import BridgeProc, status_json, wait_until


def test_steps_show_while_running_and_go_when_done(
    bridge: BridgeProc, drop: Drop, env: dict[str, str]
) -> None:
    drop.write("st1.SLOW", {"type": "SLOW", "steps": 4, "step-seconds": 1.5})

    def at_step_two() -> dict[str, Any] | None:
        fields = drop.fields("st1")
        return fields if fields.get("progress-step", 0) >= 2 else None

    running = wait_until(at_step_two, 60, interval=0.1, what="st1 to reach step 2")
    assert running["state"] == "PROGRESS" and running["progress-steps"] == 4
    assert running["progress-text"] == "sleeping 1.5 s"
    [row] = status_json(env, "--user", drop.user)["running"]
    assert row["doing"].startswith("step ") and row["doing"].endswith("/4: sleeping 1.5 s")
    done = drop.wait_state("st1", "SUCCESS", timeout=60)
    assert not {"progress-step", "progress-steps", "progress-text"} & set(done)
