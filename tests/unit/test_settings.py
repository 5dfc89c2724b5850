"""Settings: design.md's defaults, the environment over them, arguments over both, bad values."""

from __future__ import annotations

import dataclasses
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from taskd.settings import Settings, SettingsError, redact_url


def test_defaults_match_the_design_table() -> None:
    s = Settings.from_env({})
    assert s.data_root == Path("/usr/local/mozart/data")
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.mail_db_path == Path("/usr/local/mozart/data/mail_db")
    assert s.smtp_url is None
    assert s.envelope_sender == f"taskd@{socket.gethostname()}"
    assert s.allowed_file_roots == (Path("/tmp"),)
    assert s.max_task_bytes == 1048576
    assert s.settle == 0.2
    assert s.reject_after == 10.0
    assert s.rescan_interval == 30.0
    assert s.metrics_port is None
    assert s.log_format == "text"


def test_the_contract_directories_hang_off_the_data_root(tmp_path: Path) -> None:
    env = {"TASKD_DATA_ROOT": str(tmp_path), "TASKD_ALLOWED_FILE_ROOTS": str(tmp_path / "f")}
    s = Settings.from_env(env)
    assert s.task_queue == tmp_path / "task_queue"
    assert s.work_space == tmp_path / "work_space"
    assert s.download == tmp_path / "download"
    assert s.retrieve == tmp_path / "retrieve"
    assert s.mail_db_path == tmp_path / "mail_db"


@pytest.mark.parametrize(
    ("variable", "raw", "attribute", "expected"),
    [
        ("TASKD_DATA_ROOT", "/srv/data", "data_root", Path("/srv/data")),
        ("TASKD_REDIS_URL", "redis://r:6380/2", "redis_url", "redis://r:6380/2"),
        ("TASKD_REDIS_URL", "rediss://r:6380/2", "redis_url", "rediss://r:6380/2"),
        ("TASKD_REDIS_URL", "unix:///run/redis.sock", "redis_url", "unix:///run/redis.sock"),
        ("TASKD_MAIL_DB", "/srv/mail", "mail_db_path", Path("/srv/mail")),
        ("TASKD_SMTP_URL", "smtps://u:p@mx:465", "smtp_url", "smtps://u:p@mx:465"),
        ("TASKD_MAIL_FROM", "ops@example.com", "envelope_sender", "ops@example.com"),
        ("TASKD_ALLOWED_FILE_ROOTS", "/a:/b/c", "allowed_file_roots", (Path("/a"), Path("/b/c"))),
        ("TASKD_MAX_TASK_BYTES", "2048", "max_task_bytes", 2048),
        ("TASKD_SETTLE", "0.5", "settle", 0.5),
        ("TASKD_SETTLE", "0", "settle", 0.0),
        ("TASKD_REJECT_AFTER", "3", "reject_after", 3.0),
        ("TASKD_RESCAN_INTERVAL", "5", "rescan_interval", 5.0),
        ("TASKD_METRICS_PORT", "9100", "metrics_port", 9100),
        ("TASKD_LOG_FORMAT", "json", "log_format", "json"),
    ],
)
def test_environment_overrides_the_default(
    variable: str, raw: str, attribute: str, expected: Any
) -> None:
    assert getattr(Settings.from_env({variable: raw}), attribute) == expected


def test_an_empty_variable_means_the_default() -> None:
    s = Settings.from_env({"TASKD_SETTLE": "", "TASKD_REDIS_URL": "", "TASKD_METRICS_PORT": ""})
    assert (s.settle, s.redis_url, s.metrics_port) == (0.2, "redis://127.0.0.1:6379/0", None)


def test_os_environ_is_read_when_called_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKD_SETTLE", "0.75")
    assert Settings.from_env().settle == 0.75


def test_an_argument_overrides_the_environment() -> None:
    s = Settings.from_env({"TASKD_SETTLE": "0.5"}, settle=0.9, reject_after=None)
    assert s.settle == 0.9
    assert s.reject_after == 10.0  # None means "not given"


def test_an_unknown_argument_is_an_error() -> None:
    with pytest.raises(SettingsError, match="'setle'"):
        Settings.from_env({}, setle=1.0)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("TASKD_SETTLE", "soon"),
        ("TASKD_REJECT_AFTER", "10s"),
        ("TASKD_RESCAN_INTERVAL", "half a minute"),
        ("TASKD_MIRROR_INTERVAL", "fast"),
        ("TASKD_VISIBILITY_TIMEOUT", "4h"),
        ("TASKD_MAX_TASK_BYTES", "1MiB"),
        ("TASKD_MAX_TASK_BYTES", "1.5"),
        ("TASKD_METRICS_PORT", "http"),
    ],
)
def test_a_bad_number_names_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=variable) as caught:
        Settings.from_env({variable: raw})
    assert repr(raw) in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("TASKD_SETTLE", "-1"),
        ("TASKD_REJECT_AFTER", "-0.5"),
        ("TASKD_RESCAN_INTERVAL", "0"),
        ("TASKD_MIRROR_INTERVAL", "0"),
        ("TASKD_MAX_TASK_BYTES", "0"),
        ("TASKD_MAX_TASK_BYTES", "-1"),
    ],
)
def test_an_out_of_range_number_names_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: raw})


@pytest.mark.parametrize("variable", ["TASKD_SETTLE", "TASKD_REJECT_AFTER"])
def test_nan_is_a_bad_number(variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: "nan"})


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", "127.0.0.1"])
def test_a_bad_redis_url_names_the_variable(url: str) -> None:
    with pytest.raises(SettingsError, match="TASKD_REDIS_URL"):
        Settings.from_env({"TASKD_REDIS_URL": url})
    with pytest.raises(SettingsError, match="TASKD_REDIS_URL"):
        Settings.from_env({}, redis_url=url)


def test_a_bad_log_format_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="TASKD_LOG_FORMAT"):
        Settings.from_env({"TASKD_LOG_FORMAT": "xml"})


def test_settings_errors_are_value_errors() -> None:
    assert issubclass(SettingsError, ValueError)


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.settle = 1.0  # type: ignore[misc]


def test_with_returns_a_changed_copy(tmp_path: Path) -> None:
    s = Settings.from_env({})
    changed = s.with_(data_root=tmp_path)
    assert changed.task_queue == tmp_path / "task_queue"
    assert s.data_root == Path("/usr/local/mozart/data")


@pytest.mark.parametrize(
    ("variable", "attribute", "default"),
    [
        ("TASKD_MAX_PACK_FILES", "max_pack_files", 10_000),
        ("TASKD_MAX_PACK_MAILS", "max_pack_mails", 1_000_000),
        ("TASKD_MAX_PACK_BYTES", "max_pack_bytes", 20 << 30),
        ("TASKD_MAX_NOTIFY_BYTES", "max_notify_bytes", 10 << 20),
    ],
)
def test_pack_and_notify_limits_are_read_and_checked(
    variable: str, attribute: str, default: int
) -> None:
    assert getattr(Settings.from_env({}), attribute) == default
    assert getattr(Settings.from_env({variable: "7"}), attribute) == 7
    with pytest.raises(SettingsError, match=f"{variable}=0 must be a positive whole number"):
        Settings.from_env({variable: "0"})
    with pytest.raises(SettingsError, match=f"{variable}='lots' is not a whole number"):
        Settings.from_env({variable: "lots"})


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"TASKD_REDIS_URL": "sentinel://127.0.0.1:26379/0"}, "set TASKD_REDIS_MASTER"),
        ({"TASKD_REDIS_MASTER": "mymaster"}, "TASKD_REDIS_MASTER is for sentinels"),
        ({"TASKD_REDIS_CA_FILE": "/etc/hostname"}, "TASKD_REDIS_CA_FILE is for TLS"),
        (
            {"TASKD_REDIS_URL": "rediss://h:6380/0", "TASKD_REDIS_CA_FILE": "ca.pem"},
            "is a relative path",
        ),
        (
            {"TASKD_REDIS_URL": "rediss://h:6380/0", "TASKD_REDIS_CA_FILE": "/nonexistent/ca.pem"},
            "'/nonexistent/ca.pem' is not a file",
        ),
        ({"TASKD_REDIS_URL": "sentinel:/h:1", "TASKD_REDIS_MASTER": "m"}, "not a Redis URL"),
    ],
)
def test_redis_settings_that_cannot_work_are_refused_naming_the_setting(
    env: dict[str, str], words: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(words)):
        Settings.from_env(env)


def test_a_password_in_any_part_of_a_sentinel_url_is_masked() -> None:
    url = "sentinel://:pw1@h1:26379/0;sentinel://u:pw2@h2:26380;sentinel://h3:26381"
    shown = redact_url(url)
    assert "pw1" not in shown and "pw2" not in shown
    assert shown == "sentinel://:***@h1:26379/0;sentinel://u:***@h2:26380;sentinel://h3:26381"


@pytest.mark.parametrize(
    ("raw", "expected"), [("", True), ("1", True), ("on", True), ("0", False), ("No", False)]
)
def test_spares_are_on_unless_switched_off(raw: str, expected: bool) -> None:
    assert Settings.from_env({"TASKD_SPARES": raw}).spares is expected


def test_a_spares_switch_that_is_not_one_says_what_it_takes() -> None:
    with pytest.raises(SettingsError, match=r"TASKD_SPARES='maybe' must be 1 or 0"):
        Settings.from_env({"TASKD_SPARES": "maybe"})
