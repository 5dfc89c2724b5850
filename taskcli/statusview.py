"""How `taskd status` looks on a terminal: tables of counts, queues and workers, and a progress
bar per running task. Takes a `taskcli.status.Status`, reads nothing itself."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from taskcli.status import CANCELLED, NEW, Status
from taskd import states

STATE_ORDER = (
    NEW,
    states.QUEUED,
    states.STARTED,
    states.PROGRESS,
    states.RETRY,
    states.SUCCESS,
    states.FAILURE,
    states.REJECTED,
    CANCELLED,
)


def age(seconds: float) -> str:
    """`42 s`, `7 min`, `3.5 h`, `2.0 d`: an age read at a glance."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def counts_table(status: Status) -> Table:
    table = Table(title="tasks", title_justify="left")
    table.add_column("state")
    table.add_column("today", justify="right")
    table.add_column("total", justify="right")
    known = [s for s in STATE_ORDER if s in status.total or s in status.today]
    others = sorted(set(status.total) - set(STATE_ORDER))
    for state in known + others:
        table.add_row(state, str(status.today.get(state, 0)), str(status.total.get(state, 0)))
    return table


def queues_table(status: Status) -> Table:
    table = Table(title="queues", title_justify="left")
    table.add_column("queue")
    table.add_column("waiting", justify="right")
    for queue, depth in status.queues.items():
        table.add_row(queue, str(depth))
    table.add_row("(taken, not yet done)", str(status.unacked))
    return table


def workers_table(status: Status) -> Table:
    table = Table(title=f"workers alive: {len(status.workers)}", title_justify="left")
    table.add_column("worker")
    table.add_column("running jobs")
    for name, jobs in status.workers.items():
        table.add_row(name, "\n".join(jobs) or "-")
    return table


def running_table(status: Status) -> Table:
    table = Table(title=f"running: {len(status.running)}", title_justify="left")
    table.add_column("user")
    table.add_column("task")
    table.add_column("type")
    table.add_column("progress", min_width=24)
    table.add_column("%", justify="right")
    table.add_column("doing")
    table.add_column("worker")
    table.add_column("started")
    for task in status.running:
        bar = ProgressBar(total=100, completed=task.progress, width=24)
        table.add_row(
            task.user,
            task.task_id,
            task.type,
            bar,
            str(task.progress),
            Text(task.doing or "-"),  # a task's own words: never read as markup
            task.worker,
            task.started_at,
        )
    return table


def caps_table(status: Status) -> Table:
    table = Table(title="caps per type", title_justify="left")
    for column in ("type", "cap", "running", "queued"):
        table.add_column(column, justify="left" if column == "type" else "right")
    for name, row in status.caps.items():
        table.add_row(name, str(row["cap"]), str(row["running"]), str(row["queued"]))
    return table


def headline(status: Status) -> Text:
    text = Text(f"taskd status at {status.at}")
    if status.oldest_queued is not None:
        oldest = status.oldest_queued
        text.append(
            f"\noldest queued: user {oldest.user}, task {oldest.task_id}, "
            f"waiting {age(oldest.age_s)}"
        )
    if status.redis_error:
        text.append(f"\nRedis cannot be asked: {status.redis_error}", style="bold red")
    return text


def render(status: Status) -> RenderableType:
    parts: list[RenderableType] = [headline(status), counts_table(status)]
    if status.redis_error is None:
        parts += [queues_table(status), workers_table(status)]
    if status.caps:
        parts.append(caps_table(status))
    parts.append(running_table(status))
    return Group(*parts)
