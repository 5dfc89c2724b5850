"""A name the file should take is in the way (a folder, a link, another file put there): the
file keeps its name and says so once while it runs and once for its final name; an ended one
takes its name at a later rescan, once the name is free, and only while it is still the file
the bridge wrote."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bridge import writer
from bridge.daemon import Bridge
from bridge.model import Tracked
from taskd import states
from taskd.settings import Settings
from taskd.tasktypes import load_types
from tests.support.noredis import NoRedis
from tests.support.procs import SUPPORT_SCHEMAS


@pytest.fixture
def bridge(tmp_path: Path) -> Bridge:
    settings = Settings(data_root=tmp_path, settle=0.0)
    return Bridge(settings, load_types([SUPPORT_SCHEMAS]), app=None, client=NoRedis())  # type: ignore[arg-type]


def _running(bridge: Bridge) -> Tracked:
    fields: dict[str, Any] = {
        "type": "SLOW",
        "task-id": "e5",
        "state": states.PROGRESS,
        "progress": 10,
        "job-id": "j5",
    }
    path = bridge.settings.task_queue / "3" / "e5-10.SLOW"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))
    task = Tracked("3", "e5", bridge.core.types["SLOW"], path, fields, published=True)
    bridge.table.add(task)
    return task


def _ended_beside_a_blocker(bridge: Bridge) -> tuple[Path, Path]:
    """A task that ends while a folder sits at its final name: (its file, the folder)."""
    task = _running(bridge)
    blocker = task.path.with_name("e5-100.SLOW")
    blocker.mkdir()
    writer.write(bridge.core, task, {"state": states.SUCCESS, "progress": 100}, 100.0)
    return task.path, blocker


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cannot be renamed" in r.getMessage()]


def test_a_file_whose_names_are_taken_keeps_its_name_and_says_so_once_running_once_ended(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    task = _running(bridge)
    folder = task.path.parent
    for k in (20, 30):
        (folder / f"e5-{k}.SLOW").mkdir()
    writer.write(bridge.core, task, {"progress": 20}, 100.0)
    writer.write(bridge.core, task, {"progress": 30}, 102.0)
    assert task.path.name == "e5-10.SLOW"
    assert json.loads(task.path.read_text())["progress"] == 30  # the content still says
    assert _warnings(caplog) == [
        "e5-10.SLOW cannot be renamed e5-20.SLOW: something else is at that name; it keeps "
        "its name until the name is free"
    ]
    writer.write(bridge.core, task, {"progress": 40}, 104.0)  # a free name: taken
    assert task.path.name == "e5-40.SLOW"
    (folder / "e5-100.SLOW").mkdir()  # and its final name blocked too: said once more
    writer.write(bridge.core, task, {"state": states.SUCCESS, "progress": 100}, 106.0)
    assert task.path.name == "e5-40.SLOW"
    assert _warnings(caplog)[1:] == [
        "e5-40.SLOW cannot be renamed e5-100.SLOW: something else is at that name; it keeps "
        "its name until the name is free"
    ]


def test_an_ended_file_takes_its_name_at_a_rescan_once_the_name_is_free(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    kept, blocker = _ended_beside_a_blocker(bridge)
    folder = kept.parent
    assert json.loads(kept.read_text())["state"] == states.SUCCESS
    assert "j5" not in bridge.table.by_job  # ended
    bridge.rescan_once(time.monotonic())
    assert kept.exists() and blocker.is_dir()  # still in the way
    blocker.rmdir()
    bridge.rescan_once(time.monotonic())
    assert not kept.exists()
    assert json.loads((folder / "e5-100.SLOW").read_text())["state"] == states.SUCCESS
    assert bridge.core.misnamed == {}
    assert len(_warnings(caplog)) == 1


def test_an_ended_file_changed_since_is_not_renamed(bridge: Bridge) -> None:
    kept, blocker = _ended_beside_a_blocker(bridge)
    folder = kept.parent
    kept.write_text('{"someone": "else"}')  # judged as a new file by intake, not renamed here
    blocker.rmdir()
    writer.rename_misnamed(bridge.core)
    assert kept.read_text() == '{"someone": "else"}'
    assert not (folder / "e5-100.SLOW").exists()
    assert bridge.core.misnamed == {}
