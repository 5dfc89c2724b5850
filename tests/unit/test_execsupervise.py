"""The EXEC supervisor (tasks/execsupervise.py) with real processes: nothing of a program's
group outlives it, whether the program ends, the supervisor is told to stop, or the worker that
started it is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tasks import execprog
from tests.support.procs import process_gone, wait_until

SPAWN = """
sleep 300 &
echo $! > "$1"
echo $$ >> "$1"
{rest}
"""


def _program(tmp_path: Path, rest: str) -> Path:
    path = tmp_path / "spawn"
    path.write_text("#!/bin/sh\n" + SPAWN.format(rest=rest))
    path.chmod(0o755)
    return path


def _pids(path: Path) -> list[int]:
    wait_until(lambda: path.exists() and len(path.read_text().split()) == 2, 10, what="pids")
    return [int(p) for p in path.read_text().split()]


def test_leftovers_are_ended_when_the_program_exits_and_its_code_is_kept(tmp_path: Path) -> None:
    program = _program(tmp_path, "echo done; exit 3")
    pids = tmp_path / "pids"
    run = subprocess.run(
        execprog.argv(program, [str(pids)]),
        capture_output=True,
        timeout=20,  # the background sleep held the output open: it must not wait for it
        start_new_session=True,
    )
    assert run.returncode == 3 and run.stdout == b"done\n"
    assert all(process_gone(pid) for pid in _pids(pids))


def test_a_stop_ends_the_whole_group(tmp_path: Path) -> None:
    program = _program(tmp_path, "wait")
    pids = tmp_path / "pids"
    proc = subprocess.Popen(execprog.argv(program, [str(pids)]), start_new_session=True)
    found = _pids(pids)
    execprog.stop_group(proc)
    assert all(process_gone(pid) for pid in found)


def test_the_group_dies_with_the_worker_that_started_it(tmp_path: Path) -> None:
    """A worker killed outright (SIGKILL, out of memory) takes its program's group with it."""
    program = _program(tmp_path, "wait")
    pids = tmp_path / "pids"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from tasks import execprog\n"
            "subprocess.Popen(execprog.argv(sys.argv[1], [sys.argv[2]]), start_new_session=True)\n"
            "time.sleep(300)\n",
            str(program),
            str(pids),
        ],
        cwd=Path(execprog.__file__).resolve().parents[1],
    )
    try:
        found = _pids(pids)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        wait_until(lambda: all(process_gone(pid) for pid in found), 15, what="the group to end")
    finally:
        if worker.poll() is None:
            worker.kill()
