"""`taskd submit --wait` against the live system: it returns when the task ends, prints the
file's final JSON, and its exit code says how it ended (0 SUCCESS, 1 FAILURE, REJECTED or a
cancel, 2 when --timeout passes first)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from taskcli.cli import main
from tests.conftest import Drop
from tests.support.procs import SUPPORT_SCHEMAS, BridgeProc


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> list[str]:
    monkeypatch.setenv("TASKD_SCHEMA_PATH", str(SUPPORT_SCHEMAS))
    return ["--data-root", env["TASKD_DATA_ROOT"], "--redis-url", env["TASKD_REDIS_URL"]]


def _submit(
    tmp_path: Path, drop: Drop, cli_env: list[str], name: str, content: dict[str, Any], *more: str
) -> int:
    source = tmp_path / name
    source.write_text(json.dumps(content))
    return main(["submit", drop.user, str(source), "--wait", *more, *cli_env])


def _printed(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = capsys.readouterr().out
    return dict(json.loads(out[out.index("{") :]))


@pytest.mark.usefixtures("bridge")
def test_waits_for_success_and_prints_the_final_file(
    tmp_path: Path, drop: Drop, cli_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    content = {"type": "SLOW", "steps": 3, "step-seconds": 0.3}
    assert _submit(tmp_path, drop, cli_env, "w1.SLOW", content) == 0
    final = _printed(capsys)
    assert final["state"] == "SUCCESS" and final["progress"] == 100 and final["task-id"] == "w1"
    assert drop.fields("w1")["state"] == "SUCCESS"


@pytest.mark.usefixtures("bridge")
@pytest.mark.parametrize(
    ("content", "state"),
    [
        ({"type": "SLOW", "steps": 1, "step-seconds": 0, "fail": "boom"}, "FAILURE"),
        ({"type": "SLOW", "steps": "many"}, "REJECTED"),
    ],
    ids=["failure", "rejected"],
)
def test_a_task_that_fails_or_is_rejected_exits_1(
    tmp_path: Path,
    drop: Drop,
    cli_env: list[str],
    capsys: pytest.CaptureFixture[str],
    content: dict[str, Any],
    state: str,
) -> None:
    assert _submit(tmp_path, drop, cli_env, "w2.SLOW", content, "--no-check") == 1
    final = _printed(capsys)
    assert final["state"] == state and final["error"]


def test_a_bad_file_is_refused_before_it_is_written_unless_told(
    tmp_path: Path, drop: Drop, cli_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    content = {"type": "SLOW", "steps": "many"}
    assert _submit(tmp_path, drop, cli_env, "w4.SLOW", content) == 1
    err = capsys.readouterr().err
    assert "field 'steps'" in err and "not submitted" in err and "--no-check" in err
    assert not (drop.dir / "w4.SLOW").exists()


@pytest.mark.usefixtures("bridge")
def test_a_timeout_exits_2_and_leaves_the_task_running(
    tmp_path: Path, drop: Drop, cli_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    content = {"type": "SLOW", "run-at": "2099-01-01T00:00:00Z"}
    started = time.monotonic()
    assert _submit(tmp_path, drop, cli_env, "w3.SLOW", content, "--timeout", "1.5") == 2
    assert time.monotonic() - started < 30
    assert "still QUEUED after 1.5 s" in capsys.readouterr().err
    assert drop.fields("w3")["state"] == "QUEUED"  # waiting gave up; the task did not


def test_a_deleted_file_ends_the_wait_with_1(
    bridge: BridgeProc, tmp_path: Path, drop: Drop, cli_env: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    content = {"type": "SLOW", "run-at": "2099-01-01T00:00:00Z"}
    codes: list[int] = []
    waiter = threading.Thread(
        target=lambda: codes.append(_submit(tmp_path, drop, cli_env, "w4.SLOW", content))
    )
    waiter.start()
    drop.wait_state("w4", "QUEUED")
    queued = drop.find("w4")
    assert queued is not None
    queued.unlink()  # the UI cancels it
    waiter.join(30)
    assert codes == [1]
    assert "gone" in capsys.readouterr().err
