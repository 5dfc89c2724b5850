"""Fixtures for real processes: a private redis-server, Celery workers and the bridge."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import background
from tests.support.procs import BridgeProc, RedisServer, Worker, taskd_env, wait_until
from tests.support.smtp import SmtpServer

_users = itertools.count(1)


collect_ignore_glob = [] if background.inside() else [f"{background.FOLDER}/*"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests waiting for the background run go last: the rest of the suite runs meanwhile."""
    items.sort(key=lambda item: item.get_closest_marker("background") is not None)


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or background.inside():
        return
    if any(item.get_closest_marker("background") for item in session.items):
        background.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    background.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-scale", default="1", help="size of the chaos suite (10: ten times larger)"
    )
    parser.addoption(
        "--fuzz-scale", default="1", help="size of the hostile fuzz suite (10: ten times longer)"
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "files").mkdir()
    return root


@pytest.fixture(scope="session")
def smtp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path_factory.mktemp("smtp"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def env(data_root: Path, redis_server: RedisServer, smtp_server: SmtpServer) -> dict[str, str]:
    return taskd_env(
        data_root,
        redis_server.url,
        {
            "TASKD_RESCAN_INTERVAL": "2",
            "TASKD_RECOVERY_GRACE": "6",
            "TASKD_SMTP_URL": smtp_server.url,
            "TASKD_MAIL_FROM": "taskd@test.example",
            "TASKD_NOTIFY_RETRY_INTERVALS": " ".join(["1"] * 30),
        },
    )


@pytest.fixture(scope="session")
def worker(env: dict[str, str], data_root: Path) -> Iterator[Worker]:
    proc = Worker(env, data_root / "worker-w1.log", supervise=True)
    proc.start()
    yield proc
    proc.stop()


class Drop:
    """One test's user directory under task_queue/, and helpers to read what the bridge did."""

    def __init__(self, data_root: Path, user: str) -> None:
        self.data_root = data_root
        self.user = user
        self.dir = data_root / "task_queue" / user
        self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, content: dict[str, Any] | str | bytes) -> Path:
        """Write a task file as the UI does: the whole content, then close."""
        if isinstance(content, dict):
            content = json.dumps(content, ensure_ascii=False)
        data = content.encode() if isinstance(content, str) else content
        path = self.dir / name
        path.write_bytes(data)
        return path

    def find(self, task_id: str) -> Path | None:
        """The current file of a task, whatever its runtime-info says now."""
        for path in self.dir.iterdir():
            if path.name.startswith("."):
                continue
            if path.name.split(".")[0] == task_id or path.name.startswith(task_id + "-"):
                try:
                    fields = json.loads(path.read_text())
                except (ValueError, OSError):
                    continue
                if fields.get("task-id", path.name.split(".")[0]) == task_id:
                    return path
        return None

    def fields(self, task_id: str) -> dict[str, Any]:
        path = self.find(task_id)
        if path is None:
            return {}
        try:
            return dict(json.loads(path.read_text()))
        except (ValueError, OSError):
            return {}

    def wait_state(
        self, task_id: str, states: set[str] | str, timeout: float = 30, interval: float = 0.02
    ) -> dict[str, Any]:
        wanted = {states} if isinstance(states, str) else states

        def reached() -> dict[str, Any] | None:
            fields = self.fields(task_id)
            return fields if fields.get("state") in wanted else None

        return dict(
            wait_until(reached, timeout, interval, what=f"{task_id} to reach {sorted(wanted)}")
        )

    def runs(self) -> list[str]:
        log = self.data_root / "runs.log"
        return log.read_text().split("\n") if log.exists() else []


@pytest.fixture
def drop(data_root: Path) -> Drop:
    return Drop(data_root, f"u{next(_users)}")


@pytest.fixture
def bridge(
    env: dict[str, str], data_root: Path, worker: Worker, request: pytest.FixtureRequest
) -> Iterator[BridgeProc]:
    proc = BridgeProc(env, data_root / f"bridge-{request.node.name[:60]}.log")
    proc.start()
    yield proc
    proc.stop()
