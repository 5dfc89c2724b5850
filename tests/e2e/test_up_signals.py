"""SIGHUP (a closed terminal) stops `taskd up` gracefully and in order, as SIGTERM does: the
workers first, finishing the job they run while the bridge still mirrors it, then the bridge,
then Redis. A second signal meanwhile changes nothing. The job ends SUCCESS in its file and is
not run again when `up` starts again on the same data root."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from tests.conftest import Drop
from tests.e2e.test_up import Up
from tests.support.procs import free_port, taskd_env, wait_until

STEPS, STEP_S = 8, 0.5
"""The job: four seconds of steps, long enough to be running when the signal comes."""


def stop_lines(text: str) -> list[str]:
    """up's own lines about stopping, in order."""
    return [
        line.split("taskcli.up: ", 1)[1]
        for line in text.splitlines()
        if re.search(r"taskcli\.up: .*(received|stopping|stopped)", line)
    ]


def test_sighup_drains_the_workers_before_the_bridge_and_redis(tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    env = taskd_env(data_root, f"redis://127.0.0.1:{free_port()}/0")
    (data_root / "files").mkdir(parents=True)
    first = Up(env, tmp_path / "up1.log", "--workers", "1", "--flower-port", "0").start()
    assert first.proc is not None
    try:
        first.wait_for(" ready.")
        drop = Drop(data_root, "7")
        drop.write("slow.SLOW", {"type": "SLOW", "steps": STEPS, "step-seconds": STEP_S})
        job_id = drop.wait_state("slow", "PROGRESS", timeout=30)["job-id"]
        first.proc.send_signal(signal.SIGHUP)
        first.wait_for("stopping worker1")
        first.proc.send_signal(signal.SIGTERM)  # a second signal, in the middle of the drain
        code = first.proc.wait(90)
    finally:
        if first.proc.poll() is None:
            first.stop(signal.SIGKILL)
    text = first.text()
    assert code == 0, text[-3000:]
    lines = stop_lines(text)
    assert lines[0].startswith("SIGHUP received: stopping workers"), lines
    assert "SIGTERM received: already stopping, in order" in lines, lines
    order = [
        line
        for line in lines
        if line.startswith(("stopping", "worker1 stopped", "bridge stopped", "redis-server st"))
    ]
    assert order == [
        "stopping worker1",
        "worker1 stopped (exit 0)",
        "stopping bridge",
        "bridge stopped (exit 0)",
        "stopping redis-server",
        "redis-server stopped (exit 0)",
    ], lines
    # The job finished during the drain, once, and the bridge, still running, wrote it down.
    assert drop.fields("slow")["state"] == "SUCCESS", drop.fields("slow")
    ended = text.index("ended SUCCESS task_id=slow")
    assert text.index("taskcli.up: stopping worker1") < ended < text.index("stopping bridge")
    runs = [r for r in drop.runs() if r.startswith(job_id)]
    assert len(runs) == 2 and runs[1].startswith(f"{job_id} slow end "), runs

    # Started again on the same data root: the finished job is not run again.
    again = Up(env, tmp_path / "up2.log", "--workers", "1", "--flower-port", "0").start()
    try:
        again.wait_for(" ready.")
        drop.write("quick.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0})
        assert drop.wait_state("quick", {"SUCCESS", "FAILURE"}, timeout=60)["state"] == "SUCCESS"
        wait_until(lambda: drop.fields("slow").get("state") == "SUCCESS", 5, what="slow stays")
    finally:
        assert again.stop(signal.SIGTERM, timeout=90) == 0, again.text()[-3000:]
    assert len([r for r in drop.runs() if r.startswith(job_id)]) == 2, drop.runs()
    assert drop.fields("slow")["state"] == "SUCCESS"
