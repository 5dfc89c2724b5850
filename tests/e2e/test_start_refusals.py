"""A process started on a data root that is not there says so and stops, instead of creating an
empty one and watching a queue no UI writes to (a typo, or a share that is not mounted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import REPO, taskd_env

COMMANDS = {
    "bridge": [sys.executable, "-m", "taskcli.cli", "bridge"],
    "up": [sys.executable, "-m", "taskcli.cli", "up", "--workers", "0", "--flower-port", "0"],
    "worker": [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", "retrieve"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_missing_data_root_is_an_error_not_created(
    command: str, tmp_path: Path, env: dict[str, str]
) -> None:
    missing = tmp_path / "not-mounted" / "data"
    run_env = taskd_env(missing, env["TASKD_REDIS_URL"])
    run_env["TASKD_ALLOWED_FILE_ROOTS"] = str(tmp_path / "files")
    done = subprocess.run(
        COMMANDS[command], cwd=REPO, env=run_env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"TASKD_DATA_ROOT='{missing}' does not exist" in done.stdout + done.stderr
    assert not missing.exists() and not missing.parent.exists()
