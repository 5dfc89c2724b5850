"""EXEC end to end: a real bridge and a real worker (queue `exec`) with TASKD_EXEC_DIR, running
real programs: arguments as given (no shell), output kept, progress lines read, the exit code
deciding SUCCESS or FAILURE, cancel and the task's timeout ending the program's whole group; and
without TASKD_EXEC_DIR the type is off, the file rejected saying so."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Drop
from tests.support.procs import BridgeProc, Worker, process_gone, running, wait_until

PROGRAMS = {
    "hello": """
echo "hello $1"
echo "TASKD-PROGRESS 50 halfway"
sleep 2
echo "to stderr" >&2
echo "home=$HOME redis=${TASKD_REDIS_URL:-none}"
""",
    "fail3": """
echo "bad input"
exit 3
""",
    "spawn": """
sleep 300 &
echo $! > "$1"
echo $$ >> "$1"
echo "TASKD-PROGRESS 10 waiting"
wait
""",
}


@pytest.fixture(scope="module")
def exec_env(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("programs")
    for name, body in PROGRAMS.items():
        path = folder / name
        path.write_text("#!/bin/sh\n" + body.lstrip())
        path.chmod(0o755)
    return {**env, "TASKD_EXEC_DIR": str(folder)}


@pytest.fixture(scope="module")
def exec_worker(exec_env: dict[str, str], data_root: Path) -> Iterator[Worker]:
    log = data_root / "worker-exec.log"
    with running(Worker(exec_env, log, name="wexec", concurrency=2, queues="exec")) as proc:
        yield proc


@pytest.fixture
def exec_bridge(
    exec_env: dict[str, str], data_root: Path, exec_worker: Worker, worker: Worker
) -> Iterator[BridgeProc]:
    with running(BridgeProc(exec_env, data_root / "bridge-exec.log")) as proc:
        yield proc


def test_a_program_runs_with_its_arguments_and_its_output_is_kept(
    exec_bridge: BridgeProc, drop: Drop
) -> None:
    drop.write("e1.EXEC", {"type": "EXEC", "program": "hello", "args": ["world; rm -rf /"]})
    wait_until(
        lambda: drop.fields("e1").get("progress-text") == "halfway", 30, what="the program's words"
    )
    done = drop.wait_state("e1", {"SUCCESS", "FAILURE"}, timeout=30)
    assert done["state"] == "SUCCESS", done
    assert done["exit-code"] == 0 and "progress-text" not in done
    output = Path(done["output"])
    assert output.parent == drop.data_root / "download" / drop.user
    text = output.read_text()
    assert text.startswith("hello world; rm -rf /\n")  # one argument, as given: no shell
    assert "to stderr\n" in text and "TASKD-PROGRESS" not in text
    assert "redis=none" in text  # nothing of the worker's environment
    assert f"home={drop.data_root / 'work_space'}" in text


def _failure(drop: Drop, task_id: str, **fields: object) -> str:
    """Drop an EXEC task and wait for it to end: it must fail; its error."""
    drop.write(f"{task_id}.EXEC", {"type": "EXEC", **fields})
    done = drop.wait_state(task_id, {"SUCCESS", "FAILURE"}, timeout=30)
    assert done["state"] == "FAILURE", done
    return str(done["error"])


def test_a_failing_exit_is_a_failure_naming_the_code_and_the_output(
    exec_bridge: BridgeProc, drop: Drop
) -> None:
    error = _failure(drop, "e2", program="fail3")
    assert "program 'fail3' exited with code 3; its output is in " in error
    kept = Path(error.rsplit(" ", 1)[1])
    assert kept.read_text() == "bad input\n"


def test_an_unknown_program_fails_naming_the_ones_there(
    exec_bridge: BridgeProc, drop: Drop
) -> None:
    error = _failure(drop, "e3", program="nope")
    assert "there is no program 'nope' in TASKD_EXEC_DIR" in error
    assert "fail3, hello, spawn" in error


def _started_group(drop: Drop, task_id: str, tmp_path: Path, **fields: object) -> list[int]:
    pids = tmp_path / f"{task_id}.pids"
    drop.write(
        f"{task_id}.EXEC", {"type": "EXEC", "program": "spawn", "args": [str(pids)], **fields}
    )
    wait_until(
        lambda: pids.exists() and len(pids.read_text().split()) == 2, 30, what="both processes"
    )
    found = [int(p) for p in pids.read_text().split()]
    assert not any(process_gone(pid) for pid in found)
    return found


def test_cancel_ends_the_programs_whole_group(
    exec_bridge: BridgeProc, drop: Drop, tmp_path: Path
) -> None:
    pids = _started_group(drop, "e4", tmp_path)
    drop.wait_state("e4", "PROGRESS", timeout=30)
    path = drop.find("e4")
    assert path is not None
    path.unlink()  # the UI cancels the task
    wait_until(lambda: all(process_gone(pid) for pid in pids), 30, what="the program and its child")


def test_the_tasks_timeout_stops_the_program_and_its_group(
    exec_bridge: BridgeProc, drop: Drop, tmp_path: Path
) -> None:
    pids = _started_group(drop, "e5", tmp_path, timeout=2)
    done = drop.wait_state("e5", {"SUCCESS", "FAILURE"}, timeout=30)
    assert done["state"] == "FAILURE"
    assert (
        "ran longer than 2 s (field 'timeout') and was stopped; its output is in" in done["error"]
    )
    wait_until(lambda: all(process_gone(pid) for pid in pids), 15, what="the program and its child")


def test_without_the_folder_exec_is_off(bridge: BridgeProc, drop: Drop) -> None:
    drop.write("e6.EXEC", {"type": "EXEC", "program": "hello"})
    done = drop.wait_state("e6", "REJECTED", timeout=30)
    assert "task type 'EXEC' is off on this system" in done["error"]
    assert "TASKD_EXEC_DIR" in done["error"]
    assert os.path.basename(drop.find("e6") or "") == "e6-ERR.EXEC"
