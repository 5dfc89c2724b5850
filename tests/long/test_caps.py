"""Caps per type end to end: a real bridge and real workers running EXEC programs that write
when each run starts and ends. With a cap of N no more than N runs overlap, whatever the
workers could take; the others wait QUEUED and do not fail; `taskd cap` changes the cap while
everything runs; a worker killed under a capped job gives its slot back through the job's
run again, and the next job waits for that."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskcli import cli
from taskd import caps
from tests.conftest import Drop
from tests.e2e.test_worker_death import _children
from tests.support.procs import BridgeProc, Worker, running, wait_until

SPAN = """
echo "start $(date +%s.%N)" >> "$1"
sleep "$2"
echo "end $(date +%s.%N)" >> "$1"
"""


@pytest.fixture(scope="module")
def caps_env(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("cap-programs")
    program = folder / "span"
    program.write_text("#!/bin/sh\n" + SPAN.lstrip())
    program.chmod(0o755)
    return {**env, "TASKD_EXEC_DIR": str(folder)}


@pytest.fixture
def cap_worker(caps_env: dict[str, str], data_root: Path) -> Iterator[Worker]:
    log = data_root / "worker-caps.log"
    with running(Worker(caps_env, log, name="wcaps", concurrency=3, queues="exec")) as proc:
        yield proc  # type: ignore[misc]


@pytest.fixture
def cap_bridge(
    caps_env: dict[str, str], data_root: Path, cap_worker: Worker
) -> Iterator[BridgeProc]:
    caps.caps_path(data_root).unlink(missing_ok=True)
    try:
        with running(BridgeProc(caps_env, data_root / "bridge-caps.log")) as proc:
            yield proc  # type: ignore[misc]
    finally:
        caps.caps_path(data_root).unlink(missing_ok=True)  # the data root is shared


def _cap(data_root: Path, *args: str) -> None:
    assert cli.main(["cap", *args, "--data-root", str(data_root)]) == 0


def _drop_spans(drop: Drop, runs: Path, names: list[str], seconds: float) -> None:
    for name in names:
        drop.write(
            f"{name}.EXEC",
            {"type": "EXEC", "program": "span", "args": [str(runs / name), str(seconds)]},
        )


def _spans(runs: Path, killed_at: float = float("inf")) -> list[tuple[float, float]]:
    """Every run's (start, end); a run killed before its end ends at `killed_at`."""
    out = []
    for log in runs.iterdir():
        start: float | None = None
        for word, value in (line.split() for line in log.read_text().splitlines()):
            if word == "start":
                if start is not None:
                    out.append((start, killed_at))
                start = float(value)
            elif start is not None:
                out.append((start, float(value)))
                start = None
        if start is not None:
            out.append((start, killed_at))
    return out


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def _all_succeed(drop: Drop, names: list[str], timeout: float = 90) -> None:
    for name in names:
        done = drop.wait_state(name, {"SUCCESS", "FAILURE", "REJECTED"}, timeout=timeout)
        assert done["state"] == "SUCCESS", done


def test_a_cap_bounds_the_runs_at_once_and_changes_while_all_runs(
    cap_bridge: BridgeProc, drop: Drop, tmp_path: Path
) -> None:
    _cap(drop.data_root, "EXEC", "1")
    first = ["c1", "c2", "c3", "c4"]
    _drop_spans(drop, tmp_path, first, 1)
    _all_succeed(drop, first)
    assert _most_at_once(_spans(tmp_path)) == 1  # three worker processes, one run at a time

    _cap(drop.data_root, "EXEC", "2")
    more = tmp_path / "more"
    more.mkdir()
    second = ["c5", "c6", "c7", "c8"]
    _drop_spans(drop, more, second, 2)
    _all_succeed(drop, second)
    assert _most_at_once(_spans(more)) == 2  # the new cap, read without restarting anything


def test_a_held_job_waits_queued_and_runs_when_a_slot_opens(
    cap_bridge: BridgeProc, drop: Drop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _cap(drop.data_root, "EXEC", "0")
    _drop_spans(drop, tmp_path, ["h1"], 0)
    drop.wait_state("h1", {"QUEUED"}, timeout=30)
    time.sleep(3)  # a few ticks: a held job is neither run nor failed
    assert drop.fields("h1")["state"] == "QUEUED"
    assert not (tmp_path / "h1").exists()
    redis_url = cap_bridge.env["TASKD_REDIS_URL"]
    capsys.readouterr()
    status = ["status", "--json", "--data-root", str(drop.data_root), "--redis-url", redis_url]
    assert cli.main(status) == 0
    shown = json.loads(capsys.readouterr().out)["caps"]["EXEC"]
    assert shown["cap"] == 0 and shown["running"] == 0 and shown["queued"] >= 1

    _cap(drop.data_root, "EXEC", "--default")  # EXEC's schema sets no cap
    _all_succeed(drop, ["h1"])


def test_a_killed_worker_gives_its_slot_back_through_its_job(
    caps_env: dict[str, str], cap_bridge: BridgeProc, drop: Drop, tmp_path: Path
) -> None:
    _cap(drop.data_root, "EXEC", "1")
    killer = Worker(caps_env, drop.data_root / "worker-caps-kill.log", name="wkill", queues="exec")
    killer.start()
    try:
        _drop_spans(drop, tmp_path, ["k1"], 4)
        wait_until(lambda: (tmp_path / "k1").exists(), 30, what="k1 to start")
        _drop_spans(drop, tmp_path, ["k2"], 0)
        # kill -9 whichever worker runs k1: its whole process, pool and all
        holder = _holder_of(drop, "k1")
        for pid in [holder, *_children(holder)]:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        _all_succeed(drop, ["k1", "k2"], timeout=120)
    finally:
        killer.stop()
    spans = _spans(tmp_path, killed_at)
    assert _most_at_once(spans) == 1
    assert len([s for s in spans if s[1] != killed_at]) == 2  # k1 again, whole, then k2


def _holder_of(drop: Drop, task: str) -> int:
    """The main pid of the worker running `task` (its node name is in the file)."""
    worker = wait_until(lambda: drop.fields(task).get("worker"), 30, what=f"{task}'s worker")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = str(worker).split("@", 1)[0]
        if b"worker" in argv and f"{name}@%h".encode() in argv:
            return int(proc.name)
    raise AssertionError(f"no worker process named {worker}")
