"""Redis behind an ACL user, and behind TLS with a CA of the test's own: a real bridge and a real
worker run a task through each, `taskd status` and `taskd show` ask it, and the password shows
nowhere: not in any log, not in status, not on the page, its API or /metrics."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskcli.cli import main
from tests.conftest import Drop
from tests.support.procs import BridgeProc, Worker, free_port, running, taskd_env
from tests.support.redisvariants import (
    ACL_PASSWORD,
    ACL_USER,
    TLS_PASSWORD,
    acl_server,
    tls_server,
)


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for sub in ("task_queue", "files", "mail_db"):
        (root / sub).mkdir(parents=True)
    return root


def _run_one_task(
    env: dict[str, str], root: Path, secret: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SLOW task through a bridge and a worker on `env`'s Redis; then every place a password
    could leak is read."""
    port = free_port()
    env = {**env, "TASKD_HTTP_PORT": str(port), "TASKD_RESCAN_INTERVAL": "2"}
    drop = Drop(root, "u1")
    worker = Worker(env, root / "worker.log", name="wsecure", concurrency=1, queues="retrieve")
    with running(worker), running(BridgeProc(env, root / "bridge.log")):
        drop.write("s1.SLOW", {"type": "SLOW", "steps": 2, "step-seconds": 0.2})
        done = drop.wait_state("s1", {"SUCCESS", "FAILURE"}, timeout=60)
        assert done["state"] == "SUCCESS", done
        shown = []
        for path in ("/", "/api/tasks", "/metrics", "/healthz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                shown.append(answer.read().decode())
    args = ["--data-root", str(root), "--redis-url", env["TASKD_REDIS_URL"]]
    capsys.readouterr()
    assert main(["status", "--json", *args]) == 0
    status = capsys.readouterr().out
    assert json.loads(status)["redis_error"] is None
    assert main(["show", done["job-id"], *args]) == 0
    show = capsys.readouterr().out
    assert json.loads(show)["celery"]["status"] == "SUCCESS"
    logs = [(root / name).read_text() for name in ("worker.log", "bridge.log")]
    for text in (*shown, status, show, *logs):
        assert secret not in text


@pytest.fixture
def acl(tmp_path: Path) -> Iterator[int]:
    server = acl_server(tmp_path / "redis-acl")
    server.start()
    yield server.port
    server.stop()


def test_an_acl_user_works_for_every_part_and_its_password_shows_nowhere(
    acl: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _root(tmp_path)
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{acl}/0"
    env = taskd_env(root, url)
    monkeypatch.setenv("TASKD_SCHEMA_PATH", env["TASKD_SCHEMA_PATH"])
    _run_one_task(env, root, ACL_PASSWORD, capsys)


def test_a_wrong_acl_password_is_said_without_the_password(
    acl: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _root(tmp_path)
    wrong = "Not-The-Password-77"
    url = f"redis://{ACL_USER}:{wrong}@127.0.0.1:{acl}/0"
    assert main(["status", "--json", "--data-root", str(root), "--redis-url", url]) == 1
    out = capsys.readouterr().out
    assert json.loads(out)["redis_error"] and wrong not in out


def test_tls_with_a_ca_file_works_for_every_part_and_without_it_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = tls_server(tmp_path / "redis-tls")
    tls.server.start(tls.client_context)
    try:
        root = _root(tmp_path)
        url = f"rediss://:{TLS_PASSWORD}@127.0.0.1:{tls.server.port}/0"
        env = taskd_env(root, url, {"TASKD_REDIS_CA_FILE": str(tls.ca_file)})
        monkeypatch.setenv("TASKD_SCHEMA_PATH", env["TASKD_SCHEMA_PATH"])
        monkeypatch.setenv("TASKD_REDIS_CA_FILE", str(tls.ca_file))
        _run_one_task(env, root, TLS_PASSWORD, capsys)

        monkeypatch.delenv("TASKD_REDIS_CA_FILE")  # the system's CAs do not know the test's
        assert main(["status", "--json", "--data-root", str(root), "--redis-url", url]) == 1
        said = json.loads(capsys.readouterr().out)["redis_error"]
        assert "certificate" in said.lower() and TLS_PASSWORD not in said
    finally:
        tls.server.stop()


def test_a_sentinel_url_without_a_master_name_is_refused_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _root(tmp_path)
    url = "sentinel://127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0"
    assert main(["status", "--data-root", str(root), "--redis-url", url]) == 2
    assert "TASKD_REDIS_MASTER" in capsys.readouterr().err
