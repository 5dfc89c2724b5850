"""Hostile task files against the bridge's passes, one class at a time (Redis away: intake and
rejection need none). Each test names the rule of file-contract.md it proves."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from bridge import contract, intake
from bridge.daemon import Bridge
from bridge.logs import TextFormatter
from taskd.settings import Settings
from taskd.tasktypes import TaskType, load_types
from tests.support.noredis import NoRedis

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 4096


@pytest.fixture(scope="module")
def types() -> dict[str, TaskType]:
    return load_types([ROOT / "tests" / "support" / "schemas"])


@pytest.fixture
def bridge(tmp_path: Path, types: dict[str, TaskType]) -> Bridge:
    settings = Settings(data_root=tmp_path, max_task_bytes=LIMIT, settle=0.0)
    (settings.task_queue / "3").mkdir(parents=True)
    return Bridge(settings, types, app=None, client=NoRedis())  # type: ignore[arg-type]


def _drop(bridge: Bridge, name: str, content: bytes | str | dict[str, Any]) -> Path:
    if isinstance(content, dict):
        content = json.dumps(content)
    data = content.encode() if isinstance(content, str) else content
    path = bridge.settings.task_queue / "3" / name
    path.write_bytes(data)
    return path


def _passes(bridge: Bridge, rounds: int = 3, start: float = 0.0) -> None:
    """Rescan and take, as the loop would, a few times over (a file must settle, not loop)."""
    for n in range(rounds):
        bridge.rescan_once(start + n * 20.0)


def _files(bridge: Bridge) -> dict[str, bytes]:
    folder = bridge.settings.task_queue / "3"
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def _only(bridge: Bridge) -> tuple[str, dict[str, Any]]:
    found = _files(bridge)
    assert len(found) == 1, sorted(found)
    name, raw = next(iter(found.items()))
    return name, json.loads(raw)


# --- 1. the bridge's own output never comes back as work ---------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"x" * (LIMIT * 3),  # not JSON, over the limit
        json.dumps({"type": "SLOW", "label": "y" * LIMIT * 2}).encode(),  # JSON, over the limit
        b"\x00" * (LIMIT - 10),  # under the limit, but six times as long once escaped
        b"\xff" * (LIMIT - 10),  # not UTF-8: base64 makes it a third longer
    ],
    ids=["oversized-text", "oversized-json", "nul-bytes", "not-utf8"],
)
def test_a_rejected_file_is_written_once_and_stays_small(bridge: Bridge, content: bytes) -> None:
    path = _drop(bridge, "x.SLOW", content)
    _passes(bridge, rounds=4)
    name, fields = _only(bridge)
    assert name == "x-ERR.SLOW"
    assert fields["state"] == "REJECTED" and fields["task-id"] == "x"
    assert os.path.getsize(path.with_name(name)) <= LIMIT + intake.OWN_SLACK_BYTES
    if "original-file" in fields:  # kept once, beside the queue, byte for byte
        kept = bridge.settings.data_root / fields["original-file"]
        assert kept.read_bytes() == content
        assert len(list(kept.parent.iterdir())) == 1
    else:
        assert "original" in fields or "original-base64" in fields


def test_a_rejected_file_is_never_judged_again(bridge: Bridge) -> None:
    _drop(bridge, "x.SLOW", '{"type": "SLOW", "steps": "many"}')
    _passes(bridge, rounds=1)
    first = _files(bridge)
    _passes(bridge, rounds=3, start=100.0)
    assert _files(bridge) == first


# --- 2. poison numbers end the file, never the loop ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"type": "SLOW", "delay": 1e999}', "too large"),
        ('{"type": "SLOW", "delay": 1e308}', "delay"),
        ('{"type": "SLOW", "priority": ' + "9" * 1000 + "}", "digits"),
        ('{"type": "SLOW", "delay": NaN}', "NaN"),
        ('{"type": "SLOW", "run-at": "99999-01-01T00:00:00Z"}', "run-at"),
        ('{"type": "SLOW", "delay": -1}', "delay"),
        ('{"type": "SLOW", "type": "SLOW"}', "'type' appears twice"),
    ],
)
def test_poison_numbers_and_keys_are_rejected_naming_the_problem(
    bridge: Bridge, text: str, words: str
) -> None:
    _drop(bridge, "p.SLOW", text)
    _drop(bridge, "ok.SLOW", '{"type": "SLOW"}')
    _passes(bridge, rounds=2)
    files = _files(bridge)
    rejected = json.loads(files["p-ERR.SLOW"])
    assert rejected["state"] == "REJECTED"
    assert words in rejected["error"]
    assert any(n.startswith("ok-") and n != "ok-ERR.SLOW" for n in files)  # the other is taken


def test_a_file_that_breaks_the_intake_ends_rejected_and_the_others_go_on(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = bridge.intake.consider

    def consider(path: Path, now: float) -> intake.Decision:
        if path.name == "bad.SLOW":
            raise ValueError("a bug met this file")
        return real(path, now)

    monkeypatch.setattr(bridge.intake, "consider", consider)
    _drop(bridge, "bad.SLOW", '{"type": "SLOW"}')
    _drop(bridge, "good.SLOW", '{"type": "SLOW"}')
    caplog.set_level(logging.ERROR, logger="bridge")
    _passes(bridge, rounds=3)
    files = _files(bridge)
    bad = json.loads(files["bad-ERR.SLOW"])
    assert bad["state"] == "REJECTED" and "a bug met this file" in bad["error"]
    assert any(n.startswith("good-") and "ERR" not in n for n in files)
    assert len([r for r in caplog.records if "bad.SLOW" in r.getMessage()]) == 1


def test_a_passing_error_holds_the_file_back_and_is_logged_once(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(path: Path, now: float) -> intake.Decision:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bridge.intake, "consider", full)
    path = _drop(bridge, "f.SLOW", '{"type": "SLOW"}')
    caplog.set_level(logging.ERROR, logger="bridge")
    for step in range(200):  # 10 s of a loop spinning every 50 ms
        bridge.intake.note(path, step * 0.05)
        bridge.intake_once(step * 0.05)
    lines = [r for r in caplog.records if "f.SLOW" in r.getMessage()]
    assert len(lines) == 1 and "No space left" in lines[0].getMessage()
    assert path.exists()  # untouched, tried again later
    assert bridge.core.guard.degraded() == ["[Errno 28] No space left on device"]


# --- 3. forged ownership ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forged",
    [
        {
            "task-id": "../../etc/x",
            "state": "QUEUED",
            "job-id": "0b6e4c1e-5f5e-4f4c-9d37-6f0c2a7d9e11",
        },
        {"task-id": "other", "state": "PROGRESS", "job-id": "0b6e4c1e-5f5e-4f4c-9d37-6f0c2a7d9e11"},
        {"task-id": "f", "state": "QUEUED", "job-id": "not-a-uuid"},
        {"task-id": "f", "state": "QUEUED"},
        {
            "task-id": "f",
            "state": "PROGRESS",
            "progress": 1e308,
            "job-id": "0b6e4c1e-5f5e-4f4c-9d37-6f0c2a7d9e11",
        },
        {
            "task-id": "f",
            "state": "QUEUED",
            "delay": 1e300,
            "job-id": "0b6e4c1e-5f5e-4f4c-9d37-6f0c2a7d9e11",
        },
        {
            "task-id": "f",
            "state": "QUEUED",
            "steps": "many",
            "job-id": "0b6e4c1e-5f5e-4f4c-9d37-6f0c2a7d9e11",
        },
    ],
    ids=["dotdot", "other-task", "bad-job", "no-job", "huge-progress", "huge-delay", "schema"],
)
def test_a_new_file_forging_the_bridge_fields_is_rejected(
    bridge: Bridge, forged: dict[str, Any]
) -> None:
    _drop(bridge, "f.SLOW", {"type": "SLOW", "label": "mine", **forged})
    _passes(bridge, rounds=3)
    name, fields = _only(bridge)
    assert fields["state"] == "REJECTED", fields
    assert fields["label"] == "mine"  # the UI's fields are kept
    assert name.endswith("-ERR.SLOW") and not name.startswith("..")
    assert not bridge.table.by_job


# --- 5. a task-id in use ---------------------------------------------------------------------


def test_a_second_file_with_a_task_id_in_use_is_rejected(bridge: Bridge) -> None:
    _drop(bridge, "0001.SLOW", '{"type": "SLOW"}')
    _passes(bridge, rounds=1)
    (first,) = _files(bridge)
    _drop(bridge, "0001.SLOW", '{"type": "SLOW", "label": "again"}')
    _passes(bridge, rounds=2, start=100.0)
    files = _files(bridge)
    assert first in files and json.loads(files[first])["state"] == "QUEUED"
    second = [json.loads(raw) for n, raw in files.items() if n != first]
    assert len(second) == 1 and second[0]["state"] == "REJECTED"
    assert second[0]["error"] == (f"task-id '0001' is already used by {first}; use another task-id")
    assert len(bridge.table.by_job) == 1


def test_a_task_id_in_use_is_known_after_a_restart(bridge: Bridge, types: Any) -> None:
    _drop(bridge, "0001.SLOW", '{"type": "SLOW"}')
    _passes(bridge, rounds=1)
    again = Bridge(bridge.settings, types, app=None, client=NoRedis())  # type: ignore[arg-type]
    _drop(again, "0001.SLOW", '{"type": "SLOW"}')
    _passes(again, rounds=2, start=100.0)
    states = sorted(json.loads(raw)["state"] for raw in _files(again).values())
    assert states == ["QUEUED", "REJECTED"]
    # Both say task 0001; a third start resumes them as they are, whichever it reads first.
    before = _files(again)
    third = Bridge(bridge.settings, types, app=None, client=NoRedis())  # type: ignore[arg-type]
    _passes(third, rounds=2, start=200.0)
    assert _files(third) == before


# --- 6. names at the file system's limit --------------------------------------------------------


@pytest.mark.parametrize("length", [250, 251, 254])
def test_a_name_too_long_for_its_runtime_info_is_rejected_up_front(
    bridge: Bridge, length: int, caplog: pytest.LogCaptureFixture
) -> None:
    stem = "t" * (length - len(".SLOW"))
    _drop(bridge, f"{stem}.SLOW", '{"type": "SLOW"}')
    caplog.set_level(logging.INFO, logger="bridge")
    _passes(bridge, rounds=3)
    name, fields = _only(bridge)
    assert fields["state"] == "REJECTED"
    assert "at most 255" in fields["error"] and "use a task-id of at most" in fields["error"]
    assert contract.fits(name)
    assert len(caplog.records) < 10


def test_the_longest_name_that_fits_is_taken(bridge: Bridge) -> None:
    # SLOW's runtime-info is `<ticket>_<progress>`: 10 + 1 + 3, then "-" and ".SLOW".
    stem = "t" * (255 - len("-ABCDEFGHJK_100.SLOW"))
    _drop(bridge, f"{stem}.SLOW", '{"type": "SLOW"}')
    _passes(bridge, rounds=1)
    name, fields = _only(bridge)
    assert fields["state"] == "QUEUED", fields.get("error")


# --- 8. logs a person can trust ------------------------------------------------------------------


def test_a_name_with_newlines_and_escapes_cannot_forge_log_lines(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    _drop(bridge, "a\nERROR forged\x1b[2J.SLOW", '{"type": "SLOW", "steps": "x"}')
    caplog.set_level(logging.INFO, logger="bridge")
    _passes(bridge, rounds=1)
    lines = [TextFormatter().format(r) for r in caplog.records]
    assert lines and all("\n" not in line and "\x1b" not in line for line in lines)


# --- 4. links where a user controls them ----------------------------------------------------------


def test_a_user_directory_that_is_a_link_is_never_entered(bridge: Bridge, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "x.SLOW"
    target.write_text('{"type": "SLOW"}')
    (bridge.settings.task_queue / "evil").symlink_to(outside)
    bridge.intake.note(bridge.settings.task_queue / "evil" / "x.SLOW", 0.0, closed=True)
    _passes(bridge, rounds=2)
    assert [p.name for p in outside.iterdir()] == ["x.SLOW"]
    assert target.read_text() == '{"type": "SLOW"}'


def test_a_notify_mail_that_is_a_link_is_never_sent(bridge: Bridge, tmp_path: Path) -> None:
    secret = tmp_path / "secret.eml"
    secret.write_text("To: a@example.org\n\nsecret\n")
    folder = bridge.settings.task_queue / "3"
    (folder / "n.notify.eml").symlink_to(secret)
    task = folder / "n-100.SLOW"
    fields = {"type": "SLOW", "task-id": "n", "state": "SUCCESS", "job-id": str(uuid.uuid4())}
    assert bridge.core.notifier.job_for(task, fields) is None
    ((refused, why),) = bridge.core.notifier.refused
    assert refused == task and why.startswith("n.notify.eml is a symbolic link; nothing was sent")
    (folder / "n.notify.eml").unlink()
    (folder / "n.notify.eml").write_text("To: a@example.org\n\nhello\n")
    assert bridge.core.notifier.job_for(task, fields) is not None


# --- 8. criteria that can only fail end REJECTED at intake ----------------------------------------


@pytest.mark.parametrize(
    ("criterion", "error"),
    [
        (
            {"since": "2017-02-30"},
            "field 'criterion.since': '2017-02-30' is not a day of the calendar",
        ),
        (
            {"before": "20171345"},
            "field 'criterion.before': '20171345' is not a day of the calendar",
        ),
        (
            {"file": ["20170229"]},
            "field 'criterion.file[0]': '20170229' is not a day of the calendar",
        ),
        (
            {"group": "nobody"},
            "field 'criterion.group': no group 'nobody' in the archive's groups.json",
        ),
    ],
)
def test_criteria_that_can_only_fail_are_rejected_when_taken(
    bridge: Bridge, criterion: dict[str, Any], error: str
) -> None:
    mail_db = bridge.settings.mail_db_path
    mail_db.mkdir(parents=True)
    (mail_db / "groups.json").write_text('{"sales": ["yukoh"]}')
    _drop(bridge, "r.RETRMS", {"type": "RETRMS", "criterion": criterion})
    _passes(bridge, rounds=1)
    _, fields = _only(bridge)
    assert fields["state"] == "REJECTED"
    assert fields["error"].startswith(error), fields["error"]


def test_a_known_group_and_real_days_are_taken(bridge: Bridge) -> None:
    mail_db = bridge.settings.mail_db_path
    mail_db.mkdir(parents=True)
    (mail_db / "groups.json").write_text('{"sales": ["yukoh"]}')
    criterion = {"group": "sales", "since": "2016-02-29", "before": "20240101", "file": []}
    _drop(bridge, "r.RETRMS", {"type": "RETRMS", "criterion": criterion})
    _passes(bridge, rounds=1)
    _, fields = _only(bridge)
    assert fields["state"] == "QUEUED", fields.get("error")


# --- a taken file overwritten, and results a new file cannot forge -------------------------------


def test_a_taken_file_overwritten_by_someone_else_is_a_new_file_and_its_job_cancelled(
    bridge: Bridge,
) -> None:
    _drop(bridge, "o.SLOW", '{"type": "SLOW"}')
    _passes(bridge, rounds=1)
    (task,) = bridge.table.by_job.values()
    task.path.write_text("{}")
    _passes(bridge, rounds=2, start=100.0)
    assert task.job_id in bridge.core.pending_cancels and not bridge.table.by_job
    _, fields = _only(bridge)
    assert fields["state"] == "REJECTED" and "'type' is missing" in fields["error"]


def test_the_bridges_own_writes_are_not_taken_for_someone_elses(bridge: Bridge) -> None:
    _drop(bridge, "w.SLOW", '{"type": "SLOW"}')
    _passes(bridge, rounds=1)
    (task,) = bridge.table.by_job.values()
    bridge.write(task, {"state": "PROGRESS", "progress": 40}, 50.0)  # renamed, then rewritten
    bridge.write(task, {"progress": 60}, 52.0)
    _passes(bridge, rounds=2, start=100.0)
    assert list(bridge.table.by_job.values()) == [task] and not bridge.core.pending_cancels
    assert _only(bridge)[1]["progress"] == 60


def test_a_new_file_cannot_forge_results_or_notify_outcomes(bridge: Bridge) -> None:
    forged = {
        "output": "/data/download/other/theirs.tar.gz",
        "matched": 7,
        "tmp-space": "/etc",
        "notified-at": "2026-01-01T00:00:00Z",
        "error": "nothing",
        "progress": 99,
    }
    _drop(bridge, "r.SLOW", {"type": "SLOW", "label": "kept", **forged})
    _passes(bridge, rounds=1)
    _, fields = _only(bridge)
    assert fields["state"] == "QUEUED" and fields["label"] == "kept"
    assert fields["progress"] == 0
    assert not set(forged) - {"progress"} & set(fields)


def test_a_copy_of_another_users_ended_file_cannot_take_its_notify_job(bridge: Bridge) -> None:
    job_id = str(uuid.uuid4())
    fields = {"type": "SLOW", "task-id": "0001", "state": "SUCCESS", "job-id": job_id}
    jobs = []
    for user in ("3", "15"):
        folder = bridge.settings.task_queue / user
        folder.mkdir(exist_ok=True)
        (folder / "0001.notify.eml").write_text("To: a@example.org\n\nhello\n")
        jobs.append(bridge.core.notifier.job_for(folder / "0001-100.SLOW", fields))
    owner, copy = jobs
    assert owner is not None and copy is not None and owner.job_id != copy.job_id


# --- what the attack on a running system found ----------------------------------------------------


def test_a_hard_link_is_rejected_unread_and_kept_aside(bridge: Bridge, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("CANARY-outside")
    os.link(secret, bridge.settings.task_queue / "3" / "h.SLOW")
    _passes(bridge, rounds=2)
    name, fields = _only(bridge)
    assert fields["state"] == "REJECTED" and "hard link" in fields["error"]
    assert "CANARY" not in json.dumps(fields)
    assert secret.read_text() == "CANARY-outside"


def test_nesting_deeper_than_a_task_needs_is_rejected(bridge: Bridge) -> None:
    deep = '{"type": "SLOW", "x": ' + "[" * 40 + "]" * 40 + "}"
    _drop(bridge, "d.SLOW", deep)
    _passes(bridge, rounds=1)
    _, fields = _only(bridge)
    assert fields["state"] == "REJECTED"
    assert "nested more than 32 levels deep" in fields["error"]


def test_a_name_that_is_not_utf8_is_rejected(bridge: Bridge) -> None:
    folder = bridge.settings.task_queue / "3"
    (folder / os.fsdecode(b"x1\xff.SLOW")).write_text('{"type": "SLOW"}')
    _passes(bridge, rounds=1)
    (raw,) = [p for p in os.listdir(os.fsencode(folder)) if not p.startswith(b".")]
    fields = json.loads((folder / os.fsdecode(raw)).read_text())
    assert fields["state"] == "REJECTED" and "not UTF-8" in fields["error"]


def test_a_resumed_file_in_the_future_is_rejected(bridge: Bridge) -> None:
    forged = {
        "type": "SLOW",
        "task-id": "q",
        "state": "QUEUED",
        "job-id": str(uuid.uuid4()),
        "queued-at": "9999-12-31T23:59:59Z",
        "delay": 10,
    }
    _drop(bridge, "q-0.SLOW", forged)
    _passes(bridge, rounds=1)
    _, fields = _only(bridge)
    assert fields["state"] == "REJECTED" and "queued-at" in fields["error"]
