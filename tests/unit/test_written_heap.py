"""The tasks by last write (`Table.written`): a glance finds exactly the running files the rate
rule frees, and when the first other one will be, as a look at every task would; the heap never
outgrows the table."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import model
from bridge.model import Table, Tracked
from bridge.passes import mirror
from bridge.writer import RATE_SLACK
from taskd import states
from taskd.tasktypes import TaskType

RATE = RATE_SLACK * 1.0
STATES = [states.QUEUED, states.STARTED, states.PROGRESS, states.RETRY]

_KIND: Any = SimpleNamespace(name="SLOW")


def _task(n: int, state: str) -> Tracked:
    fields = {states.JOB_ID: f"j{n}", states.STATE: state}
    kind: TaskType = _KIND
    return Tracked("3", f"t{n}", kind, Path(f"/q/3/t{n}.SLOW"), fields)


def _core(table: Table) -> Any:
    return SimpleNamespace(table=table, settings=SimpleNamespace(mirror_interval=1.0), quiet={})


def _looked_at_every_task(table: Table, now: float) -> tuple[list[str], float]:
    """What `_writable` found before the heap: a look at every tracked task."""
    free, soonest = [], float("inf")
    for job_id, task in table.by_job.items():
        if task.fields[states.STATE] in mirror.schedule.RUNNING:
            if task.last_write + RATE <= now:
                free.append(job_id)
            else:
                soonest = min(soonest, task.last_write + RATE)
    return free, soonest


_steps = st.lists(
    st.tuples(
        st.sampled_from(["add", "write", "end", "drop", "glance"]),
        st.integers(0, 5),  # which task
        st.sampled_from(STATES),
        st.sampled_from([0.0, 0.05, 0.5, RATE, 1.0]),  # how much time passes first
    ),
    max_size=200,
)


@settings(max_examples=800, deadline=None)
@given(_steps, st.sampled_from([0, 1024]))
def test_a_glance_finds_what_a_look_at_every_task_would(steps: list, slack: int) -> None:
    """Each running file the rate rule frees, once, and when the first other one will be,
    whatever the order of adds, writes (several at one instant too), ends and drops; with the
    heap compacted at every write (slack 0) or seldom."""
    was, model.WRITTEN_SLACK = model.WRITTEN_SLACK, slack
    try:
        _play(steps, slack)
    finally:
        model.WRITTEN_SLACK = was


def _play(steps: list, slack: int) -> None:
    table = Table()
    core = _core(table)
    now = 100.0
    for op, n, state, later in steps:
        now += later
        task = table.by_job.get(f"j{n}")
        if op == "add":
            fresh = _task(n, state)
            fresh.last_write = now if state == states.QUEUED else float("-inf")
            table.add(fresh)
        elif op == "write" and task is not None:
            task.fields = {**task.fields, states.STATE: state}  # a write changes the state
            table.wrote(task, now)
        elif op == "end" and task is not None:  # an end is written, then no longer tracked
            task.fields, task.last_write = {**task.fields, states.STATE: states.SUCCESS}, now
            table.drop(task)
        elif op == "drop" and task is not None:
            table.drop(task)
        elif op == "glance":
            found, soonest = mirror._writable(core, now)
            free, first = _looked_at_every_task(table, now)
            assert sorted(job_id for job_id, _ in found) == sorted(free)
            assert soonest == first
        if op == "add" or (op == "write" and task is not None):  # a push compacts the heap
            assert len(table.written) <= 2 * len(table.by_job) + slack + 1


def test_the_heap_stays_bounded_while_no_glance_comes() -> None:
    """Written again and again, never glanced at: old entries are dropped, not kept."""
    table = Table()
    tasks = [_task(n, states.PROGRESS) for n in range(50)]
    for task in tasks:
        table.add(task)
    for second in range(200):
        for task in tasks:
            table.wrote(task, 100.0 + second)
    assert len(table.written) <= 2 * len(tasks) + 1025
    found, _ = mirror._writable(_core(table), 400.0)
    assert sorted(job_id for job_id, _ in found) == sorted(t.job_id for t in tasks)


def test_a_running_file_not_written_by_a_glance_is_found_by_the_next() -> None:
    """A free file whose job sent nothing new stays in the heap for the next glance."""
    table = Table()
    task = _task(1, states.PROGRESS)
    table.add(task)
    table.wrote(task, 100.0)
    core = _core(table)
    assert mirror._writable(core, 100.5) == ([], 100.0 + RATE)
    assert mirror._writable(core, 101.0) == ([("j1", task)], float("inf"))
    assert mirror._writable(core, 101.2) == ([("j1", task)], float("inf"))
    table.drop(task)
    assert mirror._writable(core, 101.4) == ([], float("inf"))
    assert table.written == []


def test_two_writes_at_one_instant_make_one_entry() -> None:
    """A task added and written at the same instant (intake stamps its take) is glanced at
    once, not twice."""
    table = Table()
    task = _task(1, states.QUEUED)
    task.last_write = 100.0
    table.add(task)
    task.fields = {**task.fields, states.STATE: states.STARTED}
    table.wrote(task, 100.0)
    table.wrote(task, 100.0)
    found, _ = mirror._writable(_core(table), 102.0)
    assert found == [("j1", task)]
