"""What `taskd up` decides without running anything: passwords kept 0600, the private Redis's
config, URLs with their password, a banner without secrets, one graceful stop in order."""

from __future__ import annotations

import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskcli import privateredis, secretfile, stopsignals, up
from taskd.settings import Settings
from tests.support.procs import wait_until


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_root=tmp_path / "data", redis_url="redis://127.0.0.1:6399/2")


def test_a_password_is_made_once_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / ".taskd" / "redis.pass"
    old = os.umask(0)
    try:
        made = secretfile.secret(path)
    finally:
        os.umask(old)
    assert len(made) >= 40 and made.replace("-", "").replace("_", "").isalnum()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secretfile.secret(path) == made
    assert [p.name for p in path.parent.iterdir()] == ["redis.pass"]  # no temp file left


def test_a_password_file_others_may_read_or_a_link_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flower.pass"
    path.write_text("seen-by-all\n")
    path.chmod(0o644)
    with pytest.raises(SystemExit, match="mode 0600"):
        secretfile.secret(path)
    path.unlink()
    target = tmp_path / "elsewhere"
    target.write_text("x")
    target.chmod(0o600)
    path.symlink_to(target)
    with pytest.raises(SystemExit, match="delete it for a new one"):
        secretfile.secret(path)


@pytest.mark.parametrize(
    ("url", "password", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "abc", "redis://:abc@127.0.0.1:6379/0"),
        ("redis://:old@127.0.0.1:6379/0", "new", "redis://:new@127.0.0.1:6379/0"),
        ("redis://ops@localhost/1", "p@ss word", "redis://ops:p%40ss%20word@localhost/1"),
    ],
)
def test_a_url_carries_its_password(url: str, password: str, expected: str) -> None:
    assert secretfile.with_password(url, password) == expected
    assert secretfile.url_password(expected) == password


def test_the_redis_config_quotes_the_password_and_stays_on_loopback(settings: Settings) -> None:
    conf = privateredis.redis_conf(settings, 'a "quoted" \\ pässword')
    lines = conf.splitlines()
    assert "port 6399" in lines and "bind 127.0.0.1" in lines
    assert "protected-mode yes" in lines and "maxmemory-policy noeviction" in lines
    assert "appendonly yes" in lines and "appendfsync everysec" in lines
    assert 'requirepass "a \\"quoted\\" \\\\ p\\xc3\\xa4ssword"' in lines
    assert f'dir "{settings.data_root / "redis"}"' in lines
    assert not [line for line in lines if line.startswith(("unixsocket", "user "))]
    as_user = settings.with_(redis_url="redis://ops:pw@[::1]:7000/0")
    conf = privateredis.redis_conf(as_user, "pw")
    assert "bind ::1" in conf.splitlines()
    assert 'user "ops" on ">pw" ~* &* +@all' in conf.splitlines()


def test_the_redis_config_is_private(settings: Settings) -> None:
    path = privateredis.write_redis_conf(settings, "s3cret-value")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert 'requirepass "s3cret-value"' in path.read_text()


def test_an_older_redis_folder_is_made_private(settings: Settings) -> None:
    folder = settings.data_root / "redis"
    folder.mkdir(parents=True, mode=0o755)
    folder.chmod(0o755)
    privateredis.write_redis_conf(settings, "pw")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_flower_listens_on_loopback_unless_told_otherwise() -> None:
    assert up.flower_options(["--port=5555"], {}) == ["--address=127.0.0.1", "--port=5555"]
    assert up.flower_options(["--address=0.0.0.0"], {}) == ["--address=0.0.0.0"]
    assert up.flower_options(["--address", "::"], {}) == ["--address", "::"]
    assert up.flower_options([], {"FLOWER_ADDRESS": "10.0.0.2"}) == []


def test_flower_under_up_logs_in_with_a_kept_password_or_the_operators(
    settings: Settings,
) -> None:
    env, hint = up.flower_login(settings, {})
    path = settings.data_root / ".taskd" / "flower.pass"
    assert env == {"FLOWER_BASIC_AUTH": f"taskd:{path.read_text().strip()}"}
    assert hint == f"user taskd, password in {path}"
    env, hint = up.flower_login(settings, {"FLOWER_BASIC_AUTH": "ops:theirs"})
    assert env == {"FLOWER_BASIC_AUTH": "ops:theirs"} and "theirs" not in hint


def test_the_banner_says_where_the_passwords_are_never_what_they_are(
    settings: Settings,
) -> None:
    stored = settings.data_root / ".taskd" / "redis.pass"
    redis_plan = up.RedisPlan("redis://:TopSecret@127.0.0.1:6399/2", None, stored)
    planned = up.Plan([], redis_plan, "user taskd, password in /x/flower.pass")
    text = up.banner(settings, planned, 5555)
    assert "TopSecret" not in text
    assert (
        "Redis: redis://:***@127.0.0.1:6399/2 (one answered there; set TASKD_REDIS_URL for "
        f"another), password in {stored}"
    ) in text
    taskd = up.taskd_command()
    assert f'TASKD_REDIS_URL="redis://:$(cat {stored})@127.0.0.1:6399/2" {taskd} status' in text
    assert f"try:   {taskd} submit 3 examples/0001.RETRMS" in text
    assert "Flower: http://127.0.0.1:5555 (user taskd, password in /x/flower.pass)" in text


def test_the_banner_says_a_private_redis_was_started_and_how_to_reach_flowers_api(
    settings: Settings, tmp_path: Path
) -> None:
    stored = settings.data_root / ".taskd" / "redis.pass"
    child = up.Child("redis-server", ["redis-server"], {}, role="redis")
    redis_plan = up.RedisPlan("redis://:s3cret@127.0.0.1:6379/0", child, stored, tmp_path)
    flower = settings.data_root / ".taskd" / "flower.pass"
    planned = up.Plan([], redis_plan, f"user taskd, password in {flower}", flower)
    text = up.banner(settings, planned, 5555)
    assert f"(started privately, kept in {tmp_path}), password in {stored}" in text
    api = '"http://127.0.0.1:5555/api/workers?refresh=1"'
    assert f'Flower API: curl -u "taskd:$(cat {flower})" {api}' in text
    assert "s3cret" not in text


def test_the_taskd_command_is_shown_as_it_can_be_typed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    venv_bin = Path(sys.executable).parent
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")
    assert up.taskd_command() == "taskd"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(venv_bin.parent.parent)
    assert up.taskd_command() == f"{venv_bin.parent.name}/bin/taskd"
    monkeypatch.chdir(tmp_path)
    assert up.taskd_command() == str(venv_bin / "taskd")


class Recorded(up.Child):
    """A child that only records what it is told."""

    events: list[str]

    def running(self) -> bool:
        return f"waited {self.name}" not in self.events

    def stop(self) -> None:
        self.events.append(f"stop {self.name}")

    def wait(self, started: float, tick: object) -> None:
        self.events.append(f"waited {self.name}")


def test_the_stop_goes_workers_then_bridge_and_flower_then_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(up, "_pause", lambda seconds, tick: events.append(f"pause {seconds}"))
    kids = []
    for name, role in [
        ("redis-server", "redis"),
        ("bridge", "bridge"),
        ("worker1", "worker"),
        ("worker2", "worker"),
        ("flower", "flower"),
    ]:
        kid = Recorded(name, [], {}, role=role)
        kid.events = events
        kids.append(kid)
    up.stop_all(kids, up.StopSignals(), 2.0)
    assert events == [
        "stop worker1",
        "stop worker2",
        "waited worker1",
        "waited worker2",
        "pause 2.0",
        "stop bridge",
        "stop flower",
        "waited bridge",
        "waited flower",
        "stop redis-server",
        "waited redis-server",
    ]


@pytest.fixture
def restored_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in stopsignals.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_sighup_sigterm_and_sigint_ask_for_one_stop_and_a_second_is_noted(
    restored_handlers: None, caplog: pytest.LogCaptureFixture
) -> None:
    signals = up.StopSignals()
    signals.install()
    os.kill(os.getpid(), signal.SIGHUP)
    assert signals.requested.wait(5)
    os.kill(os.getpid(), signal.SIGINT)
    with caplog.at_level(logging.INFO, logger="taskcli.up"):
        signals.report()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("SIGHUP received: stopping workers")
    assert messages[1] == "SIGINT received: already stopping, in order"
    assert signals.first == "SIGHUP"


def test_a_process_without_a_place_to_report_logs_the_signal_from_a_thread(
    restored_handlers: None, caplog: pytest.LogCaptureFixture
) -> None:
    """What the bridge uses: its loop only watches the event."""
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="taskcli.up"):
        up.StopSignals(stop, "the bridge stops after this tick").install().report_in_background()
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.wait(5)
        wait_until(lambda: caplog.records, 5, what="the log line")
    assert caplog.records[0].getMessage() == "SIGHUP received: the bridge stops after this tick"


def test_a_child_that_refuses_to_start_is_not_restarted_and_stops_the_rest(
    tmp_path: Path,
) -> None:
    refusing = up.Child("worker1", [sys.executable, "-c", "raise SystemExit(2)"], {}, "worker")
    sleeper = up.Child(
        "bridge", [sys.executable, "-c", "import time; time.sleep(60)"], {}, "bridge"
    )
    signals = stopsignals.StopSignals()
    started = time.monotonic()
    assert up.supervise([refusing, sleeper], "redis://127.0.0.1:1/0", signals, 0.0) is False
    assert refusing.refused and refusing.proc is None  # not started again
    assert not sleeper.running()  # the others were stopped in order
    assert time.monotonic() - started < 30
