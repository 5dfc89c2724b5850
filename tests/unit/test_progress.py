"""The one progress helper: rate-limited, cancel-aware, never failing the task on Redis errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskd import states
from tasks.errors import Cancelled
from tasks.progress import Progress, counted


class FakePipe:
    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.ops: list[tuple[str, tuple[Any, ...]]] = []

    def __enter__(self) -> FakePipe:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def set(self, *args: Any, **kwargs: Any) -> None:
        self.ops.append(("set", args))

    def eval(self, *args: Any) -> None:
        self.ops.append(("eval", args))

    def exists(self, *args: Any) -> None:
        self.ops.append(("exists", args))

    def execute(self) -> list[Any]:
        if self.backend.down:
            raise ConnectionError("redis is away")
        for name, args in self.ops:
            if name == "set":
                self.backend.store[args[0]] = args[1]
        return [True, True, self.backend.cancelled]


class FakeClient:
    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend

    def pipeline(self, transaction: bool = False) -> FakePipe:
        return FakePipe(self.backend)


class FakeBackend:
    expires = 60

    def __init__(self) -> None:
        self.store: dict[str, str] = {}
        self.down = False
        self.cancelled = 0
        self.client = FakeClient(self)

    def _get_result_meta(self, result: Any, state: str, traceback: Any, request: Any) -> dict:
        return {"status": state, "result": result}


class FakeTask:
    def __init__(self) -> None:
        self.backend = FakeBackend()
        self.request = object()
        self.events: list[dict[str, Any]] = []

    def send_event(self, kind: str, **fields: Any) -> None:
        self.events.append({"type": kind, **fields})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _stored(task: FakeTask) -> dict[str, Any]:
    return dict(json.loads(task.backend.store[states.meta_key("j1")]))


def test_reports_are_stored_at_most_once_a_second_and_sent_as_events() -> None:
    task, clock = FakeTask(), Clock()
    progress = Progress(task, "j1", "w1@h", clock=clock)
    progress(10)
    progress(20)
    clock.now += 0.5
    progress(30)
    assert _stored(task)["result"]["progress"] == 10
    assert [e["progress"] for e in task.events] == [10]
    clock.now += 0.5
    progress(40, output="/x")
    meta = _stored(task)
    assert meta["status"] == states.PROGRESS
    assert meta["result"]["progress"] == 40 and meta["result"]["fields"] == {"output": "/x"}
    assert task.events[-1] == {
        "type": states.EVENT_PROGRESS,
        "progress": 40,
        "result": "40%",
        "output": "/x",
    }


def test_a_forced_report_is_stored_at_once_and_progress_never_goes_back_or_reaches_100() -> None:
    task, clock = FakeTask(), Clock()
    progress = Progress(task, "j1", "w1@h", clock=clock)
    progress(50)
    progress(30, force=True)
    assert _stored(task)["result"]["progress"] == 50
    progress(100, force=True)
    assert _stored(task)["result"]["progress"] == 99


def test_redis_away_does_not_fail_the_task() -> None:
    task, clock = FakeTask(), Clock()
    progress = Progress(task, "j1", "w1@h", clock=clock)
    task.backend.down = True
    progress(10)
    clock.now += 1
    progress(20)
    task.backend.down = False
    clock.now += 1
    progress(30)
    assert _stored(task)["result"]["progress"] == 30


def test_a_cancelled_job_stops_at_its_next_report() -> None:
    task, clock = FakeTask(), Clock()
    progress = Progress(task, "j1", "w1@h", clock=clock)
    progress(10)
    task.backend.cancelled = 1
    clock.now += 1
    with pytest.raises(Cancelled):
        progress(20)


def test_the_event_reads_as_a_progress_line_and_never_shadows_the_tasks_own_fields() -> None:
    task, clock = FakeTask(), Clock()
    progress = Progress(task, "j1", "w1@h", clock=clock)
    progress(87, detail=counted(3, 5, "files"), name="x", matched=4)
    event = task.events[-1]
    assert event["result"] == "87% (3/5 files)" and event["matched"] == 4
    assert "name" not in event  # Flower's task name stays the Celery task's
    assert _stored(task)["result"]["fields"] == {"name": "x", "matched": 4}
    clock.now += 1
    progress(90)
    assert task.events[-1]["result"] == "90% (3/5 files)"


def test_a_report_renews_the_claim_under_the_owner_token_not_the_worker_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task, clock = FakeTask(), Clock()
    seen: list[tuple[Any, ...]] = []
    original = FakePipe.eval

    def spy(pipe: FakePipe, *args: Any) -> None:
        seen.append(args)
        original(pipe, *args)

    monkeypatch.setattr(FakePipe, "eval", spy)
    Progress(task, "j1", "w1@h", owner="w1@h/42/abcd", clock=clock)(10)
    assert seen and seen[0][2] == states.claim_key("j1") and seen[0][3] == "w1@h/42/abcd"


def test_a_step_and_what_the_task_does_reach_the_state_and_the_event() -> None:
    task, clock = FakeTask(), Clock()
    progress = Progress(task, "j1", "w1@h", clock=clock)
    progress(42, detail="searching 12/30 MB", step=1, steps=2)
    stored = _stored(task)["result"]
    assert (stored["step"], stored["steps"], stored["text"]) == (1, 2, "searching 12/30 MB")
    event = task.events[-1]
    assert event["result"] == "42% (step 1/2: searching 12/30 MB)"
    assert (event["progress-step"], event["progress-steps"]) == (1, 2)
    clock.now += 1
    progress(60, step=2, steps=2)  # a new step without words: the last step's words go
    assert task.events[-1]["result"] == "60% (step 2/2)"
    assert _stored(task)["result"]["text"] is None
