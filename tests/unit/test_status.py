"""`taskd status` gathering from files (pure parts), its rendering, and the CLI's pass-through."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from taskcli import status, statusview
from taskcli.cli import split_passthrough
from taskcli.status import NEW, TaskFile

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def task(name: str, state: str, **fields: Any) -> TaskFile:
    own = {"task-id": name.split(".")[0], "state": state, **fields}
    return TaskFile("3", name, state, own, mtime=0.0)


def test_counts_by_state_today_and_in_total() -> None:
    tasks = [
        task("a.SLOW", "SUCCESS", **{"finished-at": "2026-11-25T01:00:00Z"}),
        task("b.SLOW", "SUCCESS", **{"finished-at": "2026-11-24T23:59:59Z"}),
        task("c.SLOW", "FAILURE", **{"queued-at": "2026-11-20T10:00:00Z"}),
        task("d.SLOW", "QUEUED", **{"queued-at": "2026-11-25T11:00:00Z"}),
        TaskFile("3", "e.SLOW", NEW, {}, mtime=0.0),
    ]
    today, total = status.count(tasks, NOW.date())
    assert total == {"SUCCESS": 2, "FAILURE": 1, "QUEUED": 1, NEW: 1}
    assert today == {"SUCCESS": 1, "QUEUED": 1, NEW: 1}


def test_the_oldest_queued_task_is_the_one_due_longest() -> None:
    tasks = [
        task("late.SLOW", "QUEUED", **{"queued-at": "2026-11-25T11:00:00Z"}),
        task("later.SLOW", "QUEUED", **{"queued-at": "2026-11-25T11:30:00Z"}),
        task(
            "future.SLOW", "QUEUED", **{"queued-at": "2026-11-25T09:00:00Z", "run-at": "2099-01-01"}
        ),
        task("delayed.SLOW", "QUEUED", **{"queued-at": "2026-11-25T10:00:00Z", "delay": 7201}),
        task("done.SLOW", "SUCCESS", **{"queued-at": "2026-11-25T08:00:00Z"}),
    ]
    oldest = status.oldest_queued(tasks, NOW)
    assert oldest is not None
    assert (oldest.task_id, oldest.age_s) == ("late", 3600.0)
    assert status.oldest_queued(tasks[2:], NOW) is None


def test_running_tasks_in_start_order_with_progress() -> None:
    tasks = [
        task("b.SLOW", "PROGRESS", progress=40, **{"started-at": "2026-11-25T11:00:00Z"}),
        task("a.PACKMS", "STARTED", **{"started-at": "2026-11-25T10:00:00Z", "job-id": "j"}),
        task("c.SLOW", "RETRY"),
    ]
    got = [(r.task_id, r.type, r.progress, r.job_id) for r in status.running(tasks)]
    assert got == [("a", "PACKMS", 0, "j"), ("b", "SLOW", 40, "")]


def test_task_files_are_read_with_their_state_and_others_ignored(tmp_path: Path) -> None:
    queue = tmp_path / "task_queue"
    (queue / "3").mkdir(parents=True)
    (queue / "4").mkdir()
    owned = {"type": "SLOW", "task-id": "0001", "state": "SUCCESS", "progress": 100}
    (queue / "3" / "0001-100.SLOW").write_text(json.dumps(owned))
    (queue / "3" / "0002.SLOW").write_text('{"type": "SLOW",}')
    (queue / "3" / "0003.SLOW").write_text('{"type": "SL')
    (queue / "3" / "0001.notify.eml").write_text("mail")
    (queue / "3" / ".0004.SLOW.submit").write_text("{}")
    (queue / "4" / "0001.SLOW").write_text("{}")
    found = {(t.user, t.task_id, t.state) for t in status.read_task_files(queue, 1 << 20)}
    assert found == {
        ("3", "0001", "SUCCESS"),
        ("3", "0002", NEW),
        ("3", "0003", NEW),
        ("4", "0001", NEW),
    }
    mine = {t.task_id for t in status.read_task_files(queue, 1 << 20, "4")}
    assert mine == {"0001"}
    assert list(status.read_task_files(tmp_path / "absent", 1 << 20)) == []


def test_every_priority_sub_queue_is_counted() -> None:
    names = status.queue_names(["pack", "retrieve", "pack"])
    assert list(names) == ["pack", "retrieve"]
    assert names["pack"][:3] == ["pack", "pack:1", "pack:2"] and len(names["pack"]) == 10


def test_cancels_count_today_by_when_their_mark_was_set() -> None:
    st = status.from_files([], NOW)
    earlier = datetime(2026, 11, 23, tzinfo=UTC)
    status.add_cancelled(st, [NOW, earlier, NOW], NOW.date())
    assert st.total == {"CANCELLED": 3} and st.today == {"CANCELLED": 2}


def test_the_view_shows_counts_queues_workers_and_a_bar_per_running_task() -> None:
    tasks = [
        task(
            "r.SLOW",
            "PROGRESS",
            progress=42,
            worker="w1@h",
            **{"started-at": "2026-11-25T11:00:00Z"},
        ),
        task("q.SLOW", "QUEUED", **{"queued-at": "2026-11-25T11:58:00Z"}),
    ]
    st = status.from_files(tasks, NOW)
    st.queues, st.unacked, st.workers = {"retrieve": 7}, 1, {"w1@h": ["job-1"]}
    console = Console(record=True, width=160, color_system=None)
    console.print(statusview.render(st))
    text = console.export_text()
    assert "oldest queued: user 3, task q, waiting 2 min" in text
    assert "PROGRESS" in text and "QUEUED" in text
    assert "retrieve" in text and "7" in text and "job-1" in text
    assert "━" in text  # the progress bar
    assert "42" in text


def test_ages_read_at_a_glance() -> None:
    assert [statusview.age(s) for s in (5, 600, 9000, 3 * 86400)] == [
        "5 s",
        "10 min",
        "2.5 h",
        "3.0 d",
    ]


def test_worker_and_flower_options_pass_through_verbatim() -> None:
    ours, theirs = split_passthrough(
        [
            "--port=5555",
            "--data-root",
            "/d",
            "-c",
            "2",
            "--redis-url=redis://h/0",
            "--basic-auth=a:b",
        ]
    )
    assert ours == ["--data-root", "/d", "--redis-url=redis://h/0"]
    assert theirs == ["--port=5555", "-c", "2", "--basic-auth=a:b"]
