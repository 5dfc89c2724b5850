"""The bridge's counters, health and HTTP answers, on a fake clock and without the loop."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge import metrics
from bridge.daemon import _Rows
from bridge.history import ENDED_KEPT, MINUTES, Ended, History
from bridge.metrics import Metrics, TaskRow
from bridge.model import Tracked
from bridge.web import server as web
from bridge.web.page import API_PATH, PAGE
from taskd.settings import Settings, SettingsError
from taskd.tasktypes import load_types
from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _row(task_id: str, state: str = "PROGRESS", progress: int = 10, user: str = "3") -> TaskRow:
    return TaskRow(task_id, user, "SLOW", state, progress)


# --- settings ---------------------------------------------------------------------------------


def test_the_endpoint_is_off_by_default_and_listens_on_localhost() -> None:
    s = Settings.from_env({})
    assert (s.serve_port, s.http_host) == (None, "127.0.0.1")


def test_http_port_and_host_come_from_the_environment() -> None:
    s = Settings.from_env({"TASKD_HTTP_PORT": "9108", "TASKD_HTTP_HOST": "0.0.0.0"})
    assert (s.http_port, s.serve_port, s.http_host) == (9108, 9108, "0.0.0.0")


def test_the_older_metrics_port_is_used_when_http_port_is_not_set() -> None:
    assert Settings.from_env({"TASKD_METRICS_PORT": "9100"}).serve_port == 9100
    both = {"TASKD_METRICS_PORT": "9100", "TASKD_HTTP_PORT": "9108"}
    assert Settings.from_env(both).serve_port == 9108


@pytest.mark.parametrize("raw", ["0", "65536", "-1", "http"])
def test_a_port_that_is_not_a_tcp_port_is_refused_with_the_variable_named(raw: str) -> None:
    with pytest.raises(SettingsError, match="TASKD_HTTP_PORT"):
        Settings.from_env({"TASKD_HTTP_PORT": raw})


# --- counters and the Prometheus text ---------------------------------------------------------


def test_every_metric_is_there_from_the_start_with_help_and_the_taskd_prefix() -> None:
    text = metrics.exposition(Metrics(1.0).snapshot())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for metric in metrics.ALL:
        family = families[metric.name.removesuffix("_total")]
        assert family.type == metric.kind
        assert family.documentation == metric.help
        assert family.name.startswith("taskd_")
    values = _samples(text)
    assert values[("taskd_files_taken_total", ())] == 0
    assert values[("taskd_tasks_ended_total", (("state", "FAILURE"),))] == 0
    assert values[("taskd_jobs_republished_total", (("reason", "redis_lost"),))] == 0


def test_counts_reach_the_text_under_their_labels() -> None:
    m = Metrics(1.0)
    for _ in range(3):
        m.count(metrics.TAKEN)
    m.count(metrics.REJECTED)
    m.count(metrics.ENDED, "SUCCESS")
    m.count(metrics.REPUBLISHED, metrics.WORKER_LOST)
    m.count(metrics.RESCANS, n=2)
    m.observe([_row("a"), _row("b", "QUEUED", 0)], watcher_ok=True)
    values = _samples(metrics.exposition(m.snapshot()))
    assert values[("taskd_files_taken_total", ())] == 3
    assert values[("taskd_files_rejected_total", ())] == 1
    assert values[("taskd_tasks_ended_total", (("state", "SUCCESS"),))] == 1
    assert values[("taskd_jobs_republished_total", (("reason", "worker_lost"),))] == 1
    assert values[("taskd_rescans_total", ())] == 2
    assert values[("taskd_jobs_active", ())] == 2


def test_label_values_are_escaped() -> None:
    m = Metrics(1.0)
    m.count(metrics.ENDED, 'odd "state"\\\nx')
    values = _samples(metrics.exposition(m.snapshot()))
    assert values[("taskd_tasks_ended_total", (("state", 'odd "state"\\\nx'),))] == 1


def test_a_reconnect_is_redis_answering_again_after_an_outage() -> None:
    m = Metrics(1.0)
    m.redis_seen(True)
    assert m.snapshot().count(metrics.RECONNECTS) == 0
    m.redis_seen(False)
    m.redis_seen(False)
    assert not m.snapshot().redis_ok
    m.redis_seen(True)
    m.redis_seen(True)
    snap = m.snapshot()
    assert snap.redis_ok and snap.count(metrics.RECONNECTS) == 1


def test_mirror_lag_is_the_time_since_the_last_tick_beyond_one_interval() -> None:
    clock = Clock(100.0)
    m = Metrics(1.0, clock)
    clock.now = 100.5
    assert m.snapshot().mirror_lag == 0.0  # within the interval
    m.mirrored(started=100.5, ended=100.75)
    clock.now = 104.75
    snap = m.snapshot()
    assert snap.mirror_lag == pytest.approx(3.0)
    assert snap.mirror_tick == pytest.approx(0.25)
    values = _samples(metrics.exposition(snap))
    assert values[("taskd_mirror_lag_seconds", ())] == pytest.approx(3.0)


# --- health -----------------------------------------------------------------------------------


def test_healthy_when_redis_answers_the_watcher_lives_and_the_mirror_keeps_up() -> None:
    ok, body = metrics.health(Metrics(1.0).snapshot())
    assert ok
    assert body == {
        "status": "ok",
        "role": "active",
        "redis": True,
        "watcher": True,
        "mirror_lag_s": 0.0,
    }


def test_each_problem_is_named() -> None:
    clock = Clock()
    m = Metrics(1.0, clock)
    m.redis_seen(False)
    m.observe([], watcher_ok=False)
    clock.now += 1.0 + metrics.HEALTHY_LAG_S
    ok, body = metrics.health(m.snapshot())
    assert not ok
    assert body["status"] == "unhealthy"
    assert (body["redis"], body["watcher"], body["mirror_lag_s"]) == (False, False, 5.0)
    problems = body["problems"]
    assert isinstance(problems, list) and len(problems) == 3
    assert any("redis" in p for p in problems)
    assert any("watcher" in p for p in problems)
    assert any("mirror" in p for p in problems)


def test_a_lag_just_under_the_limit_is_still_healthy() -> None:
    clock = Clock()
    m = Metrics(1.0, clock)
    clock.now += 1.0 + metrics.HEALTHY_LAG_S - 0.01
    assert metrics.health(m.snapshot())[0]


FULL = "no space left on device"


def test_files_held_back_make_the_bridge_degraded_naming_each_file() -> None:
    m = Metrics(1.0)
    m.held_files(
        [
            (FULL, f"{FULL} taking task_queue/u/x.RETRMS"),
            (FULL, f"{FULL} mirroring task_queue/u/y-AB_40.RETRMS"),
            ("read-only file system", "read-only file system taking task_queue/v/z.PACKMS"),
        ]
    )
    ok, body = metrics.health(m.snapshot())
    assert not ok
    assert (body["status"], body["role"], body["held_files"]) == ("degraded", "active", 3)
    assert f"{FULL} taking task_queue/u/x.RETRMS" in body["problems"]
    status, _, raw = web.route("/healthz", m.snapshot())
    assert status == 503 and json.loads(raw)["status"] == "degraded"
    values = _samples(metrics.exposition(m.snapshot()))
    assert values[("taskd_bridge_degraded", ())] == 1
    assert values[("taskd_bridge_held_files", (("reason", FULL),))] == 2
    assert values[("taskd_bridge_held_files", (("reason", "read-only file system"),))] == 1
    m.held_files([])  # the disk has room again
    assert metrics.health(m.snapshot()) == (True, metrics.health(Metrics(1.0).snapshot())[1])
    values = _samples(metrics.exposition(m.snapshot()))
    assert values[("taskd_bridge_degraded", ())] == 0
    assert not [k for k in values if k[0] == "taskd_bridge_held_files"]


def test_held_files_beyond_the_cap_are_counted_not_listed() -> None:
    m = Metrics(1.0)
    n = metrics.MAX_HELD_SHOWN + 5
    m.held_files([(FULL, f"{FULL} taking task_queue/u/t{i:03d}.SLOW") for i in range(n)])
    body = metrics.health(m.snapshot())[1]
    assert body["held_files"] == n
    assert len(body["problems"]) == metrics.MAX_HELD_SHOWN + 1
    assert body["problems"][-1] == "and 5 more files held back"


def test_a_problem_beside_held_files_makes_the_bridge_unhealthy_not_degraded() -> None:
    m = Metrics(1.0)
    m.held_files([(FULL, f"{FULL} taking task_queue/u/x.SLOW")])
    m.redis_seen(False)
    body = metrics.health(m.snapshot())[1]
    assert body["status"] == "unhealthy"
    assert "redis unreachable" in body["problems"]


def test_a_standby_answers_503_with_its_role_and_reason_and_no_lag() -> None:
    clock = Clock()
    m = Metrics(1.0, clock)
    m.standby("no Redis answers at redis://127.0.0.1:1/0: connection refused")
    m.redis_seen(False)
    clock.now += 100.0  # a standby mirrors nothing: never behind
    status, _, raw = web.route("/healthz", m.snapshot())
    body = json.loads(raw)
    assert status == 503
    assert (body["status"], body["role"]) == ("standby", "standby")
    assert body["reason"] == "no Redis answers at redis://127.0.0.1:1/0: connection refused"
    assert body["redis"] is False
    assert any("connection refused" in p for p in body["problems"])  # the page shows these
    values = _samples(metrics.exposition(m.snapshot()))
    assert values[("taskd_bridge_active", ())] == 0
    assert values[("taskd_mirror_lag_seconds", ())] == 0
    assert values[("taskd_redis_up", ())] == 0
    assert web.tasks_view(m.snapshot())["health"]["role"] == "standby"


def test_taking_over_starts_the_lag_afresh() -> None:
    clock = Clock()
    m = Metrics(1.0, clock)
    m.standby("another bridge (h/1/x) is active on /data")
    clock.now += 600.0
    m.redis_seen(True)
    m.active()
    clock.now += 0.5
    ok, body = metrics.health(m.snapshot())
    assert ok and (body["status"], body["role"]) == ("ok", "active")
    assert _samples(metrics.exposition(m.snapshot()))[("taskd_bridge_active", ())] == 1


# --- routes -----------------------------------------------------------------------------------


def test_healthz_answers_503_with_the_same_keys_when_unhealthy() -> None:
    m = Metrics(1.0)
    assert web.route("/healthz", m.snapshot())[0] == 200
    m.redis_seen(False)
    status, kind, body = web.route("/healthz", m.snapshot())
    assert (status, kind) == (503, "application/json")
    assert json.loads(body)["redis"] is False


def test_the_tasks_view_counts_by_state_and_lists_running_tasks_first() -> None:
    m = Metrics(1.0)
    m.count(metrics.ENDED, "SUCCESS")
    m.count(metrics.REJECTED)
    m.observe([_row("q", "QUEUED", 0), _row("p", "PROGRESS", 40), _row("s", "STARTED", 0)], True)
    view = web.tasks_view(m.snapshot())
    assert view["active"] == {"PROGRESS": 1, "STARTED": 1, "RETRY": 0, "QUEUED": 1}
    assert view["ended"] == {"SUCCESS": 1, "FAILURE": 0, "REJECTED": 1}
    assert [t["task_id"] for t in view["tasks"]] == ["p", "s"]
    assert [t["task_id"] for t in view["waiting"]] == ["q"]
    assert view["tasks"][0] == {
        "task_id": "p",
        "user_id": "3",
        "type": "SLOW",
        "state": "PROGRESS",
        "progress": 40,
        "doing": "",
        "description": "",
        "worker": "",
        "started_at": "",
        "queued_at": "",
        "due_at": "",
        "started": None,
        "queued": None,
        "due": None,
    }
    assert view["more"] == 0
    assert view["waiting_by_type"] == {"SLOW": 1}


def test_the_last_hour_is_a_minute_a_bucket_and_the_ended_tasks_newest_first() -> None:
    m = Metrics(1.0)
    for _ in range(3):
        m.count(metrics.TAKEN)
    m.count(metrics.ENDED, "FAILURE")
    m.count(metrics.REJECTED)
    m.task_ended(Ended(1.0, "3", "old", "SLOW", "SUCCESS"))
    m.task_ended(Ended(2.0, "3", "new", "SLOW", "FAILURE", "field 'x': bad"))
    m.observe([_row("q", "QUEUED", 0)], True)
    view = web.tasks_view(m.snapshot(), *m.drawn())
    hour = view["last_hour"]
    assert len(hour) == 60 and hour[-1]["at"] == int(view["now"] // 60)
    assert (hour[-1]["taken"], hour[-1]["failed"], hour[-1]["rejected"]) == (3, 1, 1)
    assert hour[-1]["waiting"] == 1 and sum(h["taken"] for h in hour[:-1]) == 0
    assert [e["task_id"] for e in view["recent"]] == ["new", "old"]
    assert view["recent"][0]["error"] == "field 'x': bad"


def test_what_the_page_keeps_over_time_is_bounded() -> None:
    kept = History()
    for n in range(5000):
        kept.count("taken", n * 30.0)
        kept.task_ended(Ended(float(n), "3", f"t{n}", "SLOW", "SUCCESS"))
    assert len(kept.minutes) == MINUTES and len(kept.ended) == ENDED_KEPT
    assert kept.recent()[0]["task_id"] == "t4999"


def test_the_tasks_view_is_capped_and_says_how_many_it_left_out() -> None:
    m = Metrics(1.0)
    m.observe([_row(f"t{i:04d}") for i in range(web.MAX_ROWS + 7)], True)
    view = web.tasks_view(m.snapshot())
    assert len(view["tasks"]) == web.MAX_ROWS
    assert view["more"] == 7


def test_the_page_builds_its_content_with_text_nodes_only() -> None:
    status, kind, body = web.route("/", Metrics(1.0).snapshot())
    assert (status, kind) == (200, "text/html; charset=utf-8")
    page = body.decode()
    assert page == PAGE
    assert API_PATH in page and "fetch(" in page
    assert "innerHTML" not in page and "outerHTML" not in page
    assert "src=" not in page and "href=" not in page  # no external assets


def test_an_unknown_path_is_404() -> None:
    assert web.route("/etc/passwd", Metrics(1.0).snapshot())[0] == 404


# --- the server on a real socket --------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[Metrics, str]]:
    m = Metrics(1.0)
    server = web.serve("127.0.0.1", free_port(), m)
    assert server is not None
    yield m, f"http://127.0.0.1:{server.port}"
    server.stop()


def test_the_server_answers_from_the_latest_snapshot(served: tuple[Metrics, str]) -> None:
    m, base = served
    with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert _samples(answer.read().decode())[("taskd_files_taken_total", ())] == 0
    m.count(metrics.TAKEN)
    with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
        assert _samples(answer.read().decode())[("taskd_files_taken_total", ())] == 1
    with urllib.request.urlopen(base + "/", timeout=5) as answer:
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    m.redis_seen(False)
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(base + "/healthz", timeout=5)
    assert failed.value.code == 503
    assert json.loads(failed.value.read())["redis"] is False


def test_the_server_stops_once_however_often_it_is_told() -> None:
    m = Metrics(1.0)
    server = web.serve("127.0.0.1", free_port(), m)
    assert server is not None
    server.stop()
    server.stop()


def test_a_port_in_use_is_logged_and_the_bridge_goes_on_without_it(
    served: tuple[Metrics, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, base = served
    port = int(base.rsplit(":", 1)[1])
    assert web.serve("127.0.0.1", port, Metrics(1.0)) is None
    assert "TASKD_HTTP_PORT" in caplog.text
    assert web.serve("127.0.0.1", None, Metrics(1.0)) is None


def test_health_names_why_redis_failed() -> None:
    m = Metrics(1.0)
    m.redis_seen(False, "Redis at redis://h:6379/0 refused the password")
    body = metrics.health(m.snapshot())[1]
    assert "redis unreachable: Redis at redis://h:6379/0 refused the password" in body["problems"]
    m.redis_seen(True)
    assert metrics.health(m.snapshot())[1]["status"] == "ok"


def test_a_slow_tick_shows_in_the_minute_it_was_behind() -> None:
    clock = [100.0]
    m = Metrics(1.0, clock=lambda: clock[0])
    clock[0] = 141.0
    m.mirrored(140.0, 141.0)  # began 39 s after the last ended, one interval allowed
    hour, _ = m.drawn()
    assert hour[-1]["lag"] == 39.0


def test_the_pages_json_is_made_once_per_second_and_set_of_tasks() -> None:
    m = Metrics(1.0)
    made = []
    view = web.PageView(lambda: made.append(1) or ([], []))  # type: ignore[func-returns-value]
    m.observe([_row("q", "QUEUED", 0)], True)
    snap = m.snapshot()
    first = view.reply(snap)
    assert view.reply(snap) is first and len(made) == 1
    m.observe([_row("q", "QUEUED", 0), _row("r", "QUEUED", 0)], True)
    assert json.loads(view.reply(m.snapshot())[2])["waiting_by_type"] == {"SLOW": 2}
    assert len(made) == 2


# --- rows made when looked at ---------------------------------------------------------------


def test_observed_rows_are_made_only_when_a_snapshot_is_taken_and_once() -> None:
    m = Metrics(1.0)
    made: list[int] = []

    def make() -> tuple[TaskRow, ...]:
        made.append(1)
        return (_row("a"), _row("q", "QUEUED", 0))

    for _ in range(5):  # five ticks nobody looked at
        m.observe_later(make, waiting=1, watcher_ok=True)
    assert made == []
    first, second = m.snapshot(), m.snapshot()
    assert len(made) == 1
    assert [r.task_id for r in first.tasks] == [r.task_id for r in second.tasks] == ["a", "q"]


def test_a_row_shows_the_task_as_it_was_when_observed_and_is_made_again_only_when_it_moved(
    tmp_path: Path,
) -> None:
    slow = load_types([ROOT / "tests" / "support" / "schemas"])["SLOW"]
    fields = {"job-id": "j1", "state": "PROGRESS", "progress": 40}
    task = Tracked("3", "t1", slow, tmp_path / "t1-40.SLOW", fields)
    rows = _Rows()
    make, waiting = rows.later([task])
    task.fields = {**fields, "progress": 50}  # written after it was observed
    (row,) = make()
    assert (row.state, row.progress, waiting) == ("PROGRESS", 40, 0)
    again, _ = rows.later([task])
    (moved,) = again()
    assert moved.progress == 50 and moved is not row
    still, _ = rows.later([task])
    assert still()[0] is moved  # nothing moved: the row made before
