"""Glances between mirror ticks (bridge/passes/mirror.py, `glance_once`): a running job's new
progress is written before the next tick, still at most once a tick a file; anything but
progress is left to the tick; nothing is read when no job runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge.daemon import Bridge
from bridge.model import Tracked
from bridge.passes import mirror
from taskd import states
from taskd.settings import Settings
from taskd.tasktypes import load_types
from tests.support.noredis import NoRedis
from tests.support.procs import SUPPORT_SCHEMAS


def _meta(status: str, percent: int) -> bytes:
    result = {
        states.META_PROGRESS: percent,
        states.META_FIELDS: {},
        states.META_WORKER: "w@host",
        states.META_STARTED_AT: "2026-01-01T00:00:00Z",
    }
    return json.dumps({"status": status, "result": result}).encode()


@pytest.fixture
def bridge(tmp_path: Path) -> Bridge:
    settings = Settings(data_root=tmp_path, settle=0.0)
    return Bridge(settings, load_types([SUPPORT_SCHEMAS]), app=None, client=NoRedis())  # type: ignore[arg-type]


def _running(bridge: Bridge, n: int, state: str = states.PROGRESS) -> Tracked:
    fields: dict[str, Any] = {
        "type": "SLOW",
        "task-id": f"t{n}",
        "state": state,
        "progress": 10,
        "job-id": f"j{n}",
    }
    path = bridge.settings.task_queue / "3" / f"t{n}-10.SLOW"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))
    task = Tracked("3", f"t{n}", bridge.core.types["SLOW"], path, fields, published=True)
    bridge.table.add(task)
    return task


class States:
    """`Publisher.states_of`, answering from `raw` and counting its calls."""

    def __init__(self) -> None:
        self.raw: dict[str, bytes | None] = {}
        self.asked: list[list[str]] = []

    def __call__(self, job_ids: list[str]) -> list[bytes | None]:
        self.asked.append(list(job_ids))
        return [self.raw.get(j) for j in job_ids]


@pytest.fixture
def redis_states(bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> States:
    answer = States()
    monkeypatch.setattr(bridge.core.publisher, "states_of", answer)
    return answer


def _on_disk(task: Tracked) -> dict[str, Any]:
    return json.loads(task.path.read_text())


def test_new_progress_is_written_at_the_next_glance(bridge: Bridge, redis_states: States) -> None:
    task = _running(bridge, 1)
    redis_states.raw["j1"] = _meta(states.PROGRESS, 40)
    assert mirror.glance_once(bridge.core, 100.0) == 1  # one job reported
    assert task.path.name == "t1-40.SLOW"
    assert _on_disk(task)["progress"] == 40 and _on_disk(task)["worker"] == "w@host"


def test_a_file_written_less_than_a_tick_ago_waits_and_is_written_later(
    bridge: Bridge, redis_states: States
) -> None:
    task = _running(bridge, 1)
    redis_states.raw["j1"] = _meta(states.PROGRESS, 40)
    mirror.glance_once(bridge.core, 100.0)
    redis_states.raw["j1"] = _meta(states.PROGRESS, 50)
    mirror.glance_once(bridge.core, 100.25)  # 0.25 s after the last write: not yet
    assert _on_disk(task)["progress"] == 40
    mirror.glance_once(bridge.core, 100.5)
    assert _on_disk(task)["progress"] == 40
    mirror.glance_once(bridge.core, 101.0)  # a tick later: the report not shown yet is
    assert _on_disk(task)["progress"] == 50 and task.path.name == "t1-50.SLOW"


def test_a_held_back_report_brings_the_next_glance_to_when_it_may_be_written(
    bridge: Bridge, redis_states: States
) -> None:
    task = _running(bridge, 1)
    redis_states.raw["j1"] = _meta(states.PROGRESS, 40)
    mirror.glance_once(bridge.core, 100.0)
    assert bridge.core.glance_due == float("inf")  # nothing held back
    assert bridge._next_glance(100.0) == 100.0 + bridge.glance_every
    redis_states.raw["j1"] = _meta(states.PROGRESS, 50)
    mirror.glance_once(bridge.core, 100.8)  # 0.8 s after the last write: held back
    due = task.last_write + 0.95 * bridge.settings.mirror_interval
    assert bridge.core.glance_due == pytest.approx(due)
    assert bridge._next_glance(100.8) == pytest.approx(due)  # sooner than 101.05
    assert bridge._next_glance(due - 0.01) == pytest.approx(due + 0.04)  # never closer than 50 ms
    mirror.glance_once(bridge.core, due)
    assert _on_disk(task)["progress"] == 50


def test_an_unchanged_state_writes_nothing(bridge: Bridge, redis_states: States) -> None:
    task = _running(bridge, 1)
    redis_states.raw["j1"] = _meta(states.PROGRESS, 40)
    mirror.glance_once(bridge.core, 100.0)
    before = task.path.stat()
    assert mirror.glance_once(bridge.core, 105.0) == 0  # nothing new: no glance till the tick
    after = task.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_an_end_or_a_retry_is_left_to_the_tick(bridge: Bridge, redis_states: States) -> None:
    done, retrying = _running(bridge, 1), _running(bridge, 2)
    redis_states.raw["j1"] = json.dumps({"status": "SUCCESS", "result": {}}).encode()
    redis_states.raw["j2"] = _meta(states.RETRY, 0)
    mirror.glance_once(bridge.core, 100.0)
    assert _on_disk(done)["state"] == states.PROGRESS and _on_disk(retrying)["progress"] == 10
    assert done.job_id in bridge.table.by_job  # still mirrored: the tick ends it


def test_no_running_job_no_read(bridge: Bridge, redis_states: States) -> None:
    _running(bridge, 1, state=states.QUEUED)
    assert mirror.glance_once(bridge.core, 100.0) == 0
    assert redis_states.asked == []


def test_only_running_jobs_are_read(bridge: Bridge, redis_states: States) -> None:
    _running(bridge, 1, state=states.QUEUED)
    _running(bridge, 2)
    mirror.glance_once(bridge.core, 100.0)
    assert redis_states.asked == [["j2"]]


def test_a_state_is_parsed_once_while_its_bytes_stay_the_same() -> None:
    from bridge.publish import Metas

    metas = Metas()
    raw = _meta(states.PROGRESS, 40)
    first = metas.parsed("j1", raw)
    assert first is not None and first["result"]["progress"] == 40
    assert metas.parsed("j1", bytes(raw)) is first  # equal bytes: the same parse
    assert metas.parsed("j1", _meta(states.PROGRESS, 50))["result"]["progress"] == 50  # type: ignore[index]
    assert metas.parsed("j1", None) is None
    metas.keep_only(["j2"])
    assert metas.parsed("j1", _meta(states.PROGRESS, 50)) is not first  # forgotten: parsed anew


def test_the_tick_leaves_alone_what_a_glance_mirrored(bridge: Bridge, redis_states: States) -> None:
    """A running job whose state is the one a glance wrote, its lease held, needs nothing from
    the tick; any other difference (no lease, another state, an orphan) is the tick's."""
    from bridge.schedule import Known

    _running(bridge, 1)
    raw = _meta(states.PROGRESS, 40)
    redis_states.raw["j1"] = raw
    mirror.glance_once(bridge.core, 100.0)
    meta = json.loads(raw)
    assert mirror._glanced(bridge.core, "j1", Known("published", meta, leased=True, raw=raw))
    assert not mirror._glanced(bridge.core, "j1", Known("published", meta, leased=False, raw=raw))
    other = _meta(states.PROGRESS, 41)
    assert not mirror._glanced(
        bridge.core, "j1", Known("published", json.loads(other), leased=True, raw=other)
    )
    bridge.core.orphans["j1"] = 99.0
    assert not mirror._glanced(bridge.core, "j1", Known("published", meta, leased=True, raw=raw))


def test_a_quiet_job_that_starts_is_written_at_the_next_glance(
    bridge: Bridge, redis_states: States
) -> None:
    """A queued job a worker took shows its start at the next glance, not the next tick, so its
    file's writes follow its own reports from the first."""
    from bridge.schedule import Known

    task = _running(bridge, 1, state=states.QUEUED)
    bridge.table.wrote(task, 90.0)
    bridge.core.quiet = {"j1": Known("published", None)}
    assert mirror.glance_once(bridge.core, 100.0) == 0  # not started: nothing written
    assert _on_disk(task)["state"] == states.QUEUED
    redis_states.raw["j1"] = _meta(states.PROGRESS, 30)
    assert mirror.glance_once(bridge.core, 100.25) == 1
    assert _on_disk(task)["state"] == states.PROGRESS and task.path.name == "t1-30.SLOW"


def _three_queued_that_started(bridge: Bridge, redis_states: States) -> list[Tracked]:
    """Three quiet jobs (queued, taken long ago) whose workers have just reported progress."""
    from bridge.schedule import Known

    tasks = [_running(bridge, n, state=states.QUEUED) for n in (1, 2, 3)]
    for task in tasks:
        bridge.table.wrote(task, 90.0)
    bridge.core.quiet = {t.job_id: Known("published", None) for t in tasks}
    for n in (1, 2, 3):
        redis_states.raw[f"j{n}"] = _meta(states.PROGRESS, 30)
    return tasks


def test_starts_in_one_folder_flush_it_once_after_all_are_written(
    bridge: Bridge, redis_states: States, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change of state is durable before anything acts on it, the folder flushed once for
    all the glance's starts rather than once a file; progress alone flushes nothing."""
    from bridge import files

    flushed: list[Path] = []
    monkeypatch.setattr(files, "fsync_dir", flushed.append)
    tasks = _three_queued_that_started(bridge, redis_states)
    assert mirror.glance_once(bridge.core, 100.0) == 3
    assert all(_on_disk(t)["state"] == states.PROGRESS for t in tasks)
    assert flushed == [tasks[0].path.parent]
    flushed.clear()
    for n in (1, 2, 3):
        redis_states.raw[f"j{n}"] = _meta(states.PROGRESS, 60)
    assert mirror.glance_once(bridge.core, 101.0) == 3
    assert all(_on_disk(t)["progress"] == 60 for t in tasks) and flushed == []


def test_a_glance_reads_only_the_head_of_a_long_queue(
    bridge: Bridge, redis_states: States, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of the queued jobs only the first taken are glanced at (the ones that start next): a
    backlog of any length costs a glance a bounded read; a start further back waits for the
    tick."""
    monkeypatch.setattr(mirror, "QUIET_GLANCED", 2)
    tasks = _three_queued_that_started(bridge, redis_states)
    assert mirror.glance_once(bridge.core, 100.0) == 2
    assert redis_states.asked == [["j1", "j2"]]
    assert [_on_disk(t)["state"] for t in tasks] == [states.PROGRESS, states.PROGRESS, "QUEUED"]


def test_a_glance_reads_only_the_jobs_whose_files_may_be_written_now(
    bridge: Bridge, redis_states: States
) -> None:
    first, second = _running(bridge, 1), _running(bridge, 2)
    redis_states.raw["j1"] = _meta(states.PROGRESS, 40)
    mirror.glance_once(bridge.core, 100.0)  # writes both
    redis_states.asked.clear()
    bridge.table.wrote(second, 99.0)  # as if written a second ago: free again
    redis_states.raw["j2"] = _meta(states.PROGRESS, 60)
    assert mirror.glance_once(bridge.core, 100.5) == 1
    assert redis_states.asked == [["j2"]]  # j1, written at 100.0, may not be written yet
    assert _on_disk(second)["progress"] == 60
    assert bridge.core.glance_due == pytest.approx(first.last_write + 0.95)
    assert bridge.core.glanced["j1"] == redis_states.raw["j1"]  # the tick still knows it


def test_resting_files_bring_a_glance_when_the_first_may_be_written(
    bridge: Bridge, redis_states: States
) -> None:
    task = _running(bridge, 1)
    redis_states.raw["j1"] = _meta(states.PROGRESS, 40)
    bridge.next_glance = 100.0
    bridge.tick(100.0, 1000.0, 1000.0)  # the glance writes it
    assert task.path.name == "t1-40.SLOW"
    redis_states.asked.clear()
    bridge.next_glance = 100.3
    bridge.tick(100.3, 1000.0, 1000.0)  # nothing may be read: it rests till 100.95
    assert redis_states.asked == []
    assert 100.3 < bridge.next_glance <= 100.0 + 0.95  # not left to the tick at 1000
    redis_states.raw["j1"] = _meta(states.PROGRESS, 50)
    while bridge.next_glance < 100.95:
        bridge.tick(bridge.next_glance, 1000.0, 1000.0)
    assert bridge.next_glance == pytest.approx(100.95)
    bridge.tick(bridge.next_glance, 1000.0, 1000.0)
    assert task.path.name == "t1-50.SLOW"
