"""A data root on a full file system: the bridge cannot take a task file (ENOSPC). It logs that
once, however often it tries again; /healthz answers 503 "degraded" naming the file, /metrics
shows taskd_bridge_degraded 1; once there is room again the file is taken and health is ok.

A real 2 MB tmpfs, mounted here (root only), a real bridge subprocess and redis-server.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Drop
from tests.e2e.test_http_metrics import get, health, samples
from tests.support.procs import BridgeProc, RedisServer, free_port, taskd_env, wait_until

WINDOW_S = 6.0
"""How long the held file is watched for repeated lines: a dozen ticks, four tries."""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(path: Path) -> None:
    """Write `path` until the file system has not a byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def lines(log: Path, *needles: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if all(n in line for n in needles)]


def test_a_full_disk_holds_the_file_logs_once_reports_degraded_and_recovers(
    tmp_path: Path, small_disk: Path
) -> None:
    data_root = small_disk
    (data_root / "files").mkdir()
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    port = free_port()
    env = taskd_env(data_root, redis.url, {"TASKD_HTTP_PORT": str(port)})
    log = tmp_path / "bridge.log"  # off the small disk: it must be readable whatever happens
    bridge = BridgeProc(env, log)
    bridge.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get(base + "/healthz"), 30, interval=0.1, what="the HTTP endpoint")
        wait_until(lambda: health(base)[0] == 200, 30, interval=0.1, what="/healthz 200")
        drop = Drop(data_root, "u1")
        staged = data_root / "staging" / "full1.SLOW"  # written while there is room
        staged.parent.mkdir()
        staged.write_text(json.dumps({"type": "SLOW", "steps": 0}))
        filler = data_root / "filler"
        fill(filler)
        os.rename(staged, drop.dir / staged.name)  # a rename needs no room

        failed = ("taking", "full1.SLOW", "No space left on device")
        wait_until(lambda: lines(log, *failed), 30, what="the bridge to meet the full disk")
        time.sleep(WINDOW_S)  # it tries again meanwhile, with growing pauses, and says nothing
        said = lines(log, "full1.SLOW")
        assert len(said) == 1, said
        assert " ERROR " in said[0] and "trying again with growing pauses" in said[0]
        assert lines(log, " ERROR ") == said  # nothing else complained either
        assert drop.fields("full1") == {"type": "SLOW", "steps": 0}  # untouched meanwhile

        status, body = health(base)
        assert status == 503
        assert (body["status"], body["role"], body["held_files"]) == ("degraded", "active", 1)
        assert body["problems"] == ["no space left on device taking task_queue/u1/full1.SLOW"]
        assert body["redis"] is True
        values = samples(base)
        assert values["taskd_bridge_degraded"] == 1
        assert values["taskd_bridge_held_files{reason=no space left on device}"] == 1

        filler.unlink()  # room again: the next try takes it
        drop.wait_state("full1", "QUEUED", timeout=45)
        again = ("taking", "full1.SLOW", "works again")
        wait_until(lambda: lines(log, *again), 10, what="the bridge to say it works again")
        assert len(lines(log, *again)) == 1
        wait_until(lambda: health(base)[0] == 200, 10, interval=0.1, what="/healthz 200 again")
        status, body = health(base)
        assert body["status"] == "ok" and "held_files" not in body
        values = samples(base)
        assert values["taskd_bridge_degraded"] == 0
        assert not [k for k in values if k.startswith("taskd_bridge_held_files")]
    finally:
        bridge.stop()
        redis.stop()
