"""Tests that mostly wait (Redis away for minutes) run in a pytest of their own, started when the
main run's collection ends, beside the rest of the suite; a test of the main run waits for it and
fails with its output when it failed. Alone: `TASKD_TEST_LONG=1 pytest tests/long`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import REPO

INSIDE = "TASKD_TEST_LONG"
"""Set in the background pytest (or by hand): collect `tests/long`."""
FOLDER = "long"


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    output: Path

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            code = self.proc.wait()
        return code, self.output.read_text(errors="replace")

    def stop(self) -> None:
        """End the run and everything it started (its own process group): its Redis, worker,
        Flower and bridge must not outlive the suite."""
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                continue


_run: Run | None = None


def inside() -> bool:
    return bool(os.environ.get(INSIDE))


def start() -> None:
    """Start `pytest tests/long` once, its output in a file of its own."""
    global _run
    if _run is not None:
        return
    output = Path(tempfile.mkdtemp(prefix="taskd-long-")) / "pytest.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/{FOLDER}"],
            cwd=REPO,
            env={**os.environ, INSIDE: "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _run = Run(proc, output)


def stop() -> None:
    """At the end of the main run, whatever happened: nothing of the background run is left."""
    if _run is not None:
        _run.stop()


def result(timeout: float) -> tuple[int, str]:
    """The background run's exit code and output, once it has ended."""
    start()
    assert _run is not None
    return _run.wait(timeout)
