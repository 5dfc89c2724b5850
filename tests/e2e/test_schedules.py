"""Schedules against the live system: the bridge writes a task file at each due time, named
after it, which is taken and run like any other; a restart never writes a due time twice; a bad
schedule gets its error beside it and never stops the others; `taskd schedules` lists them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskcli.cli import main
from tests.conftest import Drop
from tests.support.procs import SUPPORT_SCHEMAS, BridgeProc, wait_until

NAME = re.compile(r"(?P<id>every2_\d{8}T\d{6}Z)[-.]")


@pytest.fixture
def schedule_dir(data_root: Path) -> Iterator[Path]:
    folder = data_root / "schedules"
    folder.mkdir(exist_ok=True)
    yield folder
    for path in folder.iterdir():  # the session's other bridges must not go on with them
        path.unlink()


def _ids(drop: Drop) -> list[str]:
    found = [NAME.match(p.name) for p in drop.dir.iterdir()] if drop.dir.exists() else []
    return sorted(m.group("id") for m in found if m)


@pytest.mark.usefixtures("worker")
def test_a_schedule_writes_one_task_a_due_time_and_a_bad_one_says_why(
    env: dict[str, str],
    data_root: Path,
    drop: Drop,
    schedule_dir: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (schedule_dir / "bad.json").write_text(json.dumps({"cron": "nonsense", "user-id": "3"}))
    nobody = {"cron": "* * * * * *", "user-id": "no_such_user_x", "type": "SLOW", "task": {}}
    (schedule_dir / "nobody.json").write_text(json.dumps(nobody))
    good = {
        "cron": "*/2 * * * * *",
        "user-id": drop.user,
        "type": "SLOW",
        "task": {"steps": 1, "step-seconds": 0},
    }
    (schedule_dir / "every2.json").write_text(json.dumps(good))
    first = BridgeProc(env, data_root / f"bridge-{request.node.name[:40]}-1.log")
    first.start()
    try:
        wait_until(lambda: len(_ids(drop)) >= 2, 30, interval=0.2, what="two due times")
        error = (schedule_dir / "bad.error").read_text()
        assert "field 'cron'" in error and "nonsense" in error
        missing = (schedule_dir / "nobody.error").read_text()
        assert "task_queue/no_such_user_x is not a folder" in missing
        assert not (data_root / "task_queue" / "no_such_user_x").exists()  # never made here
    finally:
        first.stop()
    before = _ids(drop)
    second = BridgeProc(env, data_root / f"bridge-{request.node.name[:40]}-2.log")
    second.start()
    try:
        wait_until(lambda: len(_ids(drop)) >= len(before) + 2, 30, interval=0.2, what="more")
        for task_id in before:
            drop.wait_state(task_id, "SUCCESS", timeout=30)
    finally:
        (schedule_dir / "every2.json").unlink()
        second.stop()
    ids = _ids(drop)
    assert len(ids) == len(set(ids))  # no due time written twice, across the restart
    seconds = [int(i[-3:-1]) for i in ids]
    assert all(s % 2 == 0 for s in seconds)  # each named after a due time
    assert [p.name for p in drop.dir.iterdir() if p.name.endswith(".SLOW")]
    monkeypatch.setenv("TASKD_SCHEMA_PATH", str(SUPPORT_SCHEMAS))
    (schedule_dir / "every2.json").write_text(json.dumps(good))
    code = main(["schedules", "--data-root", str(data_root)])
    out = capsys.readouterr().out
    assert code == 1  # bad.json is still bad
    assert "bad.json: BAD: field 'cron'" in out
    assert re.search(r"every2.json: '\*/2 \* \* \* \* \*' user u\d+ type SLOW", out)
    assert "last written 20" in out
