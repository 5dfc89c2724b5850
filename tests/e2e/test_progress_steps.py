"""A running task's step, number of steps and what it is doing reach its file, `taskd status`
and the bridge's page while it runs, and leave the file when it ends."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.conftest import Drop
from tests.support.procs import REPO, BridgeProc, wait_until


def _status(env: dict[str, str], user: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "status", "--json", "--user", user],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    return dict(json.loads(done.stdout))


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
    [row] = _status(env, drop.user)["running"]
    assert row["doing"].startswith("step ") and row["doing"].endswith("/4: sleeping 1.5 s")
    done = drop.wait_state("st1", "SUCCESS", timeout=60)
    assert not {"progress-step", "progress-steps", "progress-text"} & set(done)
