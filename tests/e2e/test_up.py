"""`taskd up` from nothing: its own Redis, the bridge, a worker and Flower; the seed's task runs;
SIGTERM stops every child and `up` exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import Drop
from tests.e2e.test_seeds import SEED_RETRMS
from tests.support.procs import REPO, free_port, taskd_env, wait_until


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        kids = {child for child, ppid in parents.items() if ppid == parent}
        todo += list(kids - found)
        found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_from_nothing_runs_the_seed_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    redis_port = free_port()
    env = taskd_env(data_root, f"redis://127.0.0.1:{redis_port}/0")
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "up", "--sample", "--workers", "1"]
            + ["--flower-port", str(free_port())],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: b"drop task files into" in log.read_bytes(), 60, what="up to start")
        drop = Drop(data_root, "3")
        drop.write("0001.RETRMS", SEED_RETRMS)
        done = drop.wait_state("0001", {"SUCCESS", "FAILURE"}, timeout=120)
        assert done["state"] == "SUCCESS", done.get("error")
        assert Path(done["output"]).is_file()
        kids = descendants(up.pid)
        names = {Path(f"/proc/{pid}/cmdline").read_bytes() for pid in kids if alive(pid)}
        assert any(b"redis-server" in n for n in names)
        assert any(b"flower" in n for n in names) and any(b"worker" in n for n in names)
        assert any(b"bridge" in n for n in names)
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(120)
    assert code == 0, log.read_text(errors="replace")[-3000:]
    assert not [pid for pid in kids if alive(pid)]
    # The private Redis kept its data append-only under the data root.
    assert list((data_root / "redis").glob("appendonly*"))
    assert os.listdir(data_root / "download" / "3")
