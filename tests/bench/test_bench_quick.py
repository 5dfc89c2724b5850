"""`python -m bench --quick` runs and reports: a smoke test of the benchmarks, not of speed.

No figure is checked against a goal here (a wall-clock limit fails on a busy machine for no fault
of the code); only that the run ends well and prints its table rows with a ratio.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import REPO

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)

ROW = re.compile(r"^\| (intake throughput|end to end) \|.*\| \d+\.\d\d \|", re.MULTILINE)


def test_quick_run_of_intake_and_end_to_end_prints_rows_with_ratios(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--repeat", "1", "--only", "intake,e2e",
         "--workdir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert {m.group(1) for m in ROW.finditer(done.stdout)} == {"intake throughput", "end to end"}
    assert "ratio" in done.stdout
