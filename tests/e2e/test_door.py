"""The task door of a real bridge with TASKD_HTTP_TOKEN, a real worker behind it: a task handed
in over HTTP is judged as a file is, written whole into the queue and run; its file is read
back, long-polled until it ends. No token, a wrong one, a bad name, a bad body, a body too
large, a task-id in use and a link in a user folder's place are each refused, saying why, with
nothing written."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Drop
from tests.support.procs import BridgeProc, Worker, free_port, running, wait_until

TOKEN = "t0ken-for-the-door-0123456789"


@pytest.fixture(scope="module")
def door_port() -> int:
    return free_port()


@pytest.fixture
def door(env: dict[str, str], data_root: Path, worker: Worker, door_port: int) -> Iterator[str]:
    door_env = {**env, "TASKD_HTTP_TOKEN": TOKEN, "TASKD_HTTP_PORT": str(door_port)}
    with running(BridgeProc(door_env, data_root / "bridge-door.log")):
        base = f"http://127.0.0.1:{door_port}"
        wait_until(lambda: call(base + "/healthz", token=None) is not None, 30, what="the door")
        yield base


def call(
    url: str,
    body: bytes | None = None,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, object]] | None:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return None


def _slow(steps: int = 2, **more: object) -> bytes:
    return json.dumps({"type": "SLOW", "steps": steps, "step-seconds": 0.2, **more}).encode()


def test_a_task_handed_in_runs_and_is_read_back_when_it_ends(door: str, drop: Drop) -> None:
    answer = call(f"{door}/api/tasks/{drop.user}/d1.SLOW", _slow())
    assert answer == (201, {"user-id": drop.user, "name": "d1.SLOW"})
    status, body = call(f"{door}/api/tasks/{drop.user}/d1.SLOW?wait=60") or (0, {})
    assert status == 200, body
    task = body["task"]
    assert isinstance(task, dict) and task["state"] == "SUCCESS", body
    assert task["steps"] == 2  # the UI's bytes, kept
    assert str(body["name"]).startswith("d1-") and (drop.dir / str(body["name"])).exists()


def test_a_long_poll_answers_with_what_the_task_is_when_its_time_is_up(
    door: str, drop: Drop
) -> None:
    assert (call(f"{door}/api/tasks/{drop.user}/d2.SLOW", _slow(hang=True)) or (0,))[0] == 201
    started = time.monotonic()
    status, body = call(f"{door}/api/tasks/{drop.user}/d2.SLOW?wait=1.5") or (0, {})
    assert status == 200 and time.monotonic() - started >= 1.4
    assert body["task"]["state"] in {"QUEUED", "STARTED", "PROGRESS"}  # type: ignore[index]
    found = drop.find("d2")
    assert found is not None
    found.unlink()  # cancel: the hanging job goes


def test_no_token_or_a_wrong_one_is_refused_and_logged(
    door: str, drop: Drop, data_root: Path
) -> None:
    for token in (None, "wrong-token-wrong-token-wrong"):
        answer = call(f"{door}/api/tasks/{drop.user}/d3.SLOW", _slow(), token=token)
        assert answer is not None and answer[0] == 401, answer
        assert "Bearer" in str(answer[1]["error"])
        assert (call(f"{door}/api/tasks/{drop.user}/d3.SLOW", token=token) or (0,))[0] == 401
    assert not list(drop.dir.glob("d3*"))
    log = (data_root / "bridge-door.log").read_text()
    assert "task door: refused" in log and "(no token)" in log
    assert log.count("task door: refused") == 1  # once per client a minute, however many


@pytest.mark.parametrize(
    ("path", "body", "code", "words"),
    [
        ("{user}/d4.SLOW", b'{"type": "SLOW", "steps": "many"}', 422, "field 'steps'"),
        ("{user}/d4.SLOW", b'{"type": "SLOW", "steps": 2', 422, "JSON"),
        ("{user}/d4.SLOW", b'{"type": "SLOW", "job-id": "x"}', 422, "field 'job-id'"),
        ("{user}/d4.NOPE", b'{"type": "NOPE"}', 422, "NOPE"),
        ("{user}/d4.slow", b"{}", 400, "not a task name"),
        ("bad-user/d4.SLOW", b"{}", 400, "[A-Za-z0-9_]+"),
        ("{user}/sub/d4.SLOW", b"{}", 400, "/api/tasks/<user-id>/<task-id>.<TYPE>"),
        ("{user}/d4.SLOW", b" " * (1024 * 1024 + 1), 413, "over the limit"),
    ],
    ids=["schema", "json", "reserved", "type", "name", "user", "path", "size"],
)
def test_a_bad_request_is_refused_saying_why_and_nothing_is_written(
    door: str, drop: Drop, path: str, body: bytes, code: int, words: str
) -> None:
    answer = call(f"{door}/api/tasks/{path.format(user=drop.user)}", body)
    assert answer is not None and answer[0] == code, answer
    assert words in str(answer[1]["error"]), answer
    assert not list(drop.dir.glob("d4*"))


def test_a_task_id_in_use_is_refused(door: str, drop: Drop) -> None:
    drop.write("d5.RETRMS", {"type": "RETRMS"})
    answer = call(f"{door}/api/tasks/{drop.user}/d5.SLOW", _slow())
    assert answer is not None and answer[0] == 409, answer
    assert "d5.RETRMS" in str(answer[1]["error"])
    assert not list(drop.dir.glob("d5*.SLOW"))


def test_a_link_in_a_user_folders_place_is_not_written_through(
    door: str, data_root: Path, tmp_path: Path
) -> None:
    os.symlink(tmp_path, data_root / "task_queue" / "linked")
    try:
        answer = call(f"{door}/api/tasks/linked/d6.SLOW", _slow())
        assert answer is not None and answer[0] == 503, answer
        assert list(tmp_path.iterdir()) == []
    finally:
        (data_root / "task_queue" / "linked").unlink()


def test_an_unknown_task_and_a_bad_wait_say_so(door: str, drop: Drop) -> None:
    answer = call(f"{door}/api/tasks/{drop.user}/nothing.SLOW")
    assert answer is not None and answer[0] == 404 and "no task" in str(answer[1]["error"])
    answer = call(f"{door}/api/tasks/{drop.user}/nothing.SLOW?wait=forever")
    assert answer is not None and answer[0] == 400 and "seconds" in str(answer[1]["error"])


def test_without_a_token_there_is_no_door(env: dict[str, str], data_root: Path, drop: Drop) -> None:
    port = free_port()
    with running(BridgeProc({**env, "TASKD_HTTP_PORT": str(port)}, data_root / "bridge-nd.log")):
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: call(base + "/healthz", token=None) is not None, 30, what="the bridge")
        answer = call(f"{base}/api/tasks/{drop.user}/d7.SLOW", _slow())
    assert answer is not None and answer[0] == 404, answer
    assert "TASKD_HTTP_TOKEN" in str(answer[1]["error"])
    assert not list(drop.dir.glob("d7*"))
