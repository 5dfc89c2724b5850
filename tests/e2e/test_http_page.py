"""The bridge's status page, rendered by a real headless Chromium against a real bridge."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import Drop
from tests.support.procs import BridgeProc, Worker, free_port, wait_until

HOSTILE_ID = "<img src=x onerror=alert(1)>"


def healthz(base: str) -> dict[str, object] | None:
    """/healthz's JSON whatever its status, or None while nothing answers."""
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=5) as answer:
            return dict(json.loads(answer.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))
    except OSError:
        return None


@pytest.fixture
def http_bridge(
    env: dict[str, str], data_root: Path, worker: Worker, request: pytest.FixtureRequest
) -> Iterator[str]:
    port = free_port()
    proc = BridgeProc(
        {**env, "TASKD_HTTP_PORT": str(port)}, data_root / f"bridge-{request.node.name[:60]}.log"
    )
    proc.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthz(base), 30, interval=0.1, what="the bridge's HTTP endpoint")
        yield base
    finally:
        proc.stop()


class Rows(HTMLParser):
    """What a dumped page shows: each row (running `task`, `waits-row`, `ended-row`) with its
    attributes, the texts of its spans by class (`text-<class>`) and its bar's width; the
    attributes of every element with an id; the texts of each heading row."""

    KINDS = ("task", "waits-row", "ended-row")
    VOID = frozenset({"input", "meta", "br", "img", "link", "hr"})  # no end tag comes

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []  # the running tasks
        self.by_kind: dict[str, list[dict[str, str]]] = {kind: [] for kind in self.KINDS}
        self.ids: dict[str, dict[str, str]] = {}
        self.heads: dict[str, list[str]] = {}
        self.tags: list[str] = []
        self._depth = 0
        self._open: tuple[dict[str, str], int] | None = None  # the row being read, its depth
        self._head: tuple[str, int] | None = None
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._depth += tag not in self.VOID
        attr = {k: v or "" for k, v in attrs}
        classes = attr.get("class", "").split()
        if "id" in attr:
            self.ids[attr["id"]] = attr
        kind = next((k for k in self.KINDS if k in classes), None)
        if kind is not None:
            row = dict(attr)
            self.by_kind[kind].append(row)
            if kind == "task":
                self.rows.append(row)
            self._open = (row, self._depth)
        elif "head" in classes and "id" in attr:
            self._head = (attr["id"], self._depth)
            self.heads[attr["id"]] = []
        elif self._open is not None and "fill" in classes:
            self._open[0]["fill-style"] = attr.get("style", "")
        self._field = (classes[0] if classes else "") if tag == "span" else None

    def handle_data(self, data: str) -> None:
        if self._field is None:
            return
        if self._head is not None:
            self.heads[self._head[0]].append(data.strip())
        elif self._open is not None and self._field:
            self._open[0]["text-" + self._field] = data
        self._field = None

    def handle_endtag(self, tag: str) -> None:
        self._field = None
        if self._open is not None and self._depth <= self._open[1]:
            self._open = None
        if self._head is not None and self._depth <= self._head[1]:
            self._head = None
        self._depth -= 1


def render(base: str, profile: Path) -> Rows:
    """The page's DOM after its script has run (fetch included), as Chromium dumps it."""
    chromium = shutil.which("chromium")
    assert chromium is not None, "chromium is not installed; `make test` installs it"
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            base + "/",
        ],
        capture_output=True,
        timeout=90,
        check=True,
    )
    parser = Rows()
    parser.feed(done.stdout.decode())
    return parser


def row_of(page: Rows, drop: Drop, task_id: str) -> dict[str, str] | None:
    for row in page.rows:
        if row.get("data-task-id") == task_id and row.get("data-user-id") == drop.user:
            return row
    return None


def test_the_page_shows_a_live_bar_per_running_task(
    http_bridge: str, drop: Drop, tmp_path: Path
) -> None:
    drop.write("bar1.SLOW", {"type": "SLOW", "steps": 60, "step-seconds": 0.25})
    drop.wait_state("bar1", "PROGRESS", timeout=30)

    first = wait_until(
        lambda: row_of(render(http_bridge, tmp_path / "profile"), drop, "bar1"),
        30,
        interval=0.5,
        what="bar1's row on the page",
    )
    percent = int(first["data-percent"])
    assert 0 <= percent < 100
    assert first["text-id"] == "bar1"
    assert first["text-user"] == drop.user
    assert first["text-type"] == "SLOW"
    assert first["text-pct"] == f"{percent}%"
    assert first["fill-style"] == f"width: {percent}%;"

    def moved() -> dict[str, str] | None:
        row = row_of(render(http_bridge, tmp_path / "profile"), drop, "bar1")
        return row if row is not None and int(row["data-percent"]) > percent else None

    second = wait_until(moved, 60, interval=0.5, what="bar1's percent to move on the page")
    assert int(second["data-percent"]) > percent
    assert second["fill-style"] == f"width: {second['data-percent']}%;"
    drop.wait_state("bar1", "SUCCESS", timeout=60)


def test_text_from_task_files_is_shown_as_text_never_as_markup(
    http_bridge: str, drop: Drop, tmp_path: Path
) -> None:
    drop.write(f"{HOSTILE_ID}.SLOW", {"type": "SLOW", "steps": 40, "step-seconds": 0.25})
    drop.wait_state(HOSTILE_ID, {"STARTED", "PROGRESS"}, timeout=30)

    def shown() -> Rows | None:
        page = render(http_bridge, tmp_path / "profile")
        return page if row_of(page, drop, HOSTILE_ID) else None

    page = wait_until(shown, 30, interval=0.5, what="the hostile task's row on the page")
    row = row_of(page, drop, HOSTILE_ID)
    assert row is not None and row["text-id"] == HOSTILE_ID
    assert "img" not in page.tags
    drop.wait_state(HOSTILE_ID, "SUCCESS", timeout=60)


def test_the_page_shows_running_waiting_and_ended_tasks_with_headings_and_errors(
    http_bridge: str, drop: Drop, tmp_path: Path
) -> None:
    drop.write(
        "run1.SLOW",
        {"type": "SLOW", "steps": 80, "step-seconds": 0.25, "description": "quarterly <b>report"},
    )
    drop.write("late1.SLOW", {"type": "SLOW", "steps": 1, "run-at": "2099-01-01T00:00:00Z"})
    drop.write("boom1.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0, "fail": "disk <i>"})
    drop.write("bad1.SLOW", {"type": "SLOW", "steps": "many"})
    drop.wait_state("run1", "PROGRESS", timeout=30)
    drop.wait_state("boom1", "FAILURE", timeout=30)
    drop.wait_state("bad1", "REJECTED", timeout=30)

    def complete() -> Rows | None:
        page = render(http_bridge, tmp_path / "profile")
        mine = [r for r in page.by_kind["ended-row"] if r.get("data-task-id") in ("boom1", "bad1")]
        ready = row_of(page, drop, "run1") and len(mine) == 2
        return page if ready and page.by_kind["waits-row"] else None

    page = wait_until(complete, 60, interval=0.5, what="running, waiting and ended rows")
    assert page.heads["running-head"] == [
        "user",
        "task",
        "type",
        "description",
        "worker",
        "started",
        "elapsed",
        "progress",
        "left",
    ]
    running = row_of(page, drop, "run1")
    assert running is not None
    assert running["text-desc"] == "quarterly <b>report" and "b" not in page.tags
    assert running["text-worker"].startswith("w1@")
    assert running["text-elapsed"].endswith("s")
    late = next(r for r in page.by_kind["waits-row"] if r["data-task-id"] == "late1")
    assert late["data-state"] == "QUEUED" and "2099" in late["text-due"]
    ended = {r["data-task-id"]: r for r in page.by_kind["ended-row"]}
    assert ended["boom1"]["text-state"] == "FAILURE"
    assert ended["boom1"]["text-error"] == drop.fields("boom1")["error"]
    assert "disk <i>" in ended["boom1"]["text-error"] and "i" not in page.tags
    assert ended["bad1"]["text-state"] == "REJECTED"
    assert "field 'steps'" in ended["bad1"]["text-error"]
    for path in (drop.find("run1"), drop.find("late1")):
        if path is not None:
            path.unlink()  # cancel: nothing of this test runs on


def test_the_last_hour_chart_moves_as_tasks_are_taken_and_end(
    http_bridge: str, drop: Drop, tmp_path: Path
) -> None:
    def chart() -> dict[str, str]:
        return render(http_bridge, tmp_path / "profile").ids["chart-flow"]

    before = wait_until(lambda: chart().get("data-total-taken"), 30, what="the chart drawn")
    for n in range(3):
        drop.write(f"c{n}.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0})
    for n in range(3):
        drop.wait_state(f"c{n}", "SUCCESS", timeout=30)

    def moved() -> dict[str, str] | None:
        now = chart()
        taken = float(now.get("data-total-taken", 0))
        return (
            now if taken >= float(before) + 3 and float(now["data-total-succeeded"]) >= 3 else None
        )

    after = wait_until(moved, 30, interval=0.5, what="the chart to count the new tasks")
    assert float(after["data-total-taken"]) >= float(before) + 3
