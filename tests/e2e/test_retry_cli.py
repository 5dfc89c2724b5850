"""`taskd retry` reruns a FAILURE task, same task-id; `taskd check` judges files as the bridge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import Drop
from tests.support.procs import REPO, BridgeProc


def _taskd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskcli.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_taskd_retry_runs_a_failure_again_keeping_its_errors(
    bridge: BridgeProc, drop: Drop, env: dict[str, str], tmp_path: Path
) -> None:
    switch = tmp_path / "ready"
    drop.write("r1.SLOW", {"type": "SLOW", "steps": 0, "fail-unless": str(switch)})
    failed = drop.wait_state("r1", "FAILURE", timeout=20)
    path = drop.find("r1")
    assert path is not None
    switch.touch()
    result = _taskd(env, "retry", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    done = drop.wait_state("r1", "SUCCESS", timeout=30)
    assert done["task-id"] == "r1" and done["job-id"] != failed["job-id"]
    assert done["previous-errors"] == [
        {"job-id": failed["job-id"], "error": failed["error"], "finished-at": failed["finished-at"]}
    ]
    assert "error" not in done
    again = _taskd(env, "retry", str(drop.find("r1")))
    assert again.returncode == 1 and "only a FAILURE task" in again.stdout


def test_taskd_check_says_which_files_are_bad(env: dict[str, str], tmp_path: Path) -> None:
    good = tmp_path / "0001.SLOW"
    good.write_text('{"type": "SLOW", "steps": 1,}')
    bad = tmp_path / "0002.SLOW"
    bad.write_text(json.dumps({"type": "SLOW", "steps": "x"}))
    assert _taskd(env, "check", str(good)).returncode == 0
    result = _taskd(env, "check", str(good), str(bad))
    assert result.returncode == 1
    assert f"{good}: ok" in result.stdout and "steps" in result.stdout


def test_taskd_retry_touches_only_files_of_the_data_roots_queue(
    env: dict[str, str], tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere" / "7"
    outside.mkdir(parents=True)
    failed = {"type": "SLOW", "task-id": "x", "state": "FAILURE", "job-id": "j", "error": "e"}
    path = outside / "x-ERR.SLOW"
    path.write_text(json.dumps(failed))
    result = _taskd(env, "retry", str(path))
    assert result.returncode == 1 and "not a task file of" in result.stdout
    assert json.loads(path.read_text()) == failed and sorted(outside.iterdir()) == [path]
