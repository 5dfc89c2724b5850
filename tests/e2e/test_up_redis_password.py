"""`taskd up` and a Redis URL with a password: its private Redis takes that password, and a Redis
that answers but refuses the password (or asks for one) is a clear error naming the URL without
its password, never a second Redis started on a taken port."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.e2e.test_up import Up, anonymous_reply, cmdline, descendants
from tests.support.procs import REPO, free_port, stop_process, taskd_env, wait_until


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server of someone else's that wants the password `theirs`."""
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert proc.stdin is not None
    proc.stdin.write(f"port {port}\nbind 127.0.0.1\nsave ''\nrequirepass theirs\n".encode())
    proc.stdin.close()
    client = redis.Redis(port=port, password="theirs", socket_timeout=1)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    wait_until(answers, 10, what="the guarded redis-server")
    client.close()
    yield port
    stop_process(proc)


def run_up(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "data").mkdir(exist_ok=True)  # up without --sample needs its data root
    env = taskd_env(tmp_path / "data", url)
    return subprocess.run(
        [sys.executable, "-m", "taskcli.cli", "up", "--workers", "0", "--flower-port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_redis_that_refuses_the_password_is_named_without_it(
    tmp_path: Path, guarded_redis: int
) -> None:
    done = run_up(tmp_path, f"redis://:wrong-secret@127.0.0.1:{guarded_redis}/0")
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert f"the Redis at redis://:***@127.0.0.1:{guarded_redis}/0 refused the password" in said
    assert "wrong-secret" not in said
    assert "starting redis-server" not in said
    assert not (tmp_path / "data" / "redis").exists()


def test_a_redis_that_asks_for_a_password_the_url_lacks_is_a_clear_error(
    tmp_path: Path, guarded_redis: int
) -> None:
    done = run_up(tmp_path, f"redis://127.0.0.1:{guarded_redis}/0")
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert f"the Redis at redis://127.0.0.1:{guarded_redis}/0 asks for a password" in said
    assert "starting redis-server" not in said
    assert not (tmp_path / "data" / ".taskd" / "redis.pass").exists()


def test_the_private_redis_takes_the_password_of_the_url(tmp_path: Path) -> None:
    port = free_port()
    password = "given p@ss/word"  # quoted in the URL, as a URL must
    url = f"redis://:given%20p%40ss%2Fword@127.0.0.1:{port}/0"
    (tmp_path / "data").mkdir()
    up = Up(taskd_env(tmp_path / "data", url), tmp_path / "up.log")
    up.args = ("--workers", "0", "--flower-port", "0")
    up.start()
    try:
        up.wait_for("starting bridge")
        client = redis.Redis(port=port, password=password, socket_timeout=5)
        assert client.ping()
        client.close()
        assert anonymous_reply(port).startswith(b"-NOAUTH")
        for pid in descendants(up.pid):
            assert b"p@ss" not in cmdline(pid) and b"p%40ss" not in cmdline(pid)
    finally:
        code = up.stop()
    assert code == 0, up.text()[-3000:]
    assert "p@ss" not in up.text() and "p%40ss" not in up.text()
    assert f"Redis: redis://:***@127.0.0.1:{port}/0" in up.text()
    # The operator's password stays the operator's: `up` keeps no copy of its own.
    assert not (tmp_path / "data" / ".taskd" / "redis.pass").exists()
