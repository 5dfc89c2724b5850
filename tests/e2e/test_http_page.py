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
    """The task rows of a dumped page: their attributes, the bar's width and the texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.tags: list[str] = []
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        attr = {k: v or "" for k, v in attrs}
        classes = attr.get("class", "").split()
        if "task" in classes:
            self.rows.append(dict(attr))
        elif self.rows and "fill" in classes:
            self.rows[-1]["fill-style"] = attr.get("style", "")
        elif self.rows and tag == "span" and classes:
            self._field = classes[0]

    def handle_data(self, data: str) -> None:
        if self._field is not None and self.rows:
            self.rows[-1]["text-" + self._field] = data
            self._field = None

    def handle_endtag(self, tag: str) -> None:
        self._field = None


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
