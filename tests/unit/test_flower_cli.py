"""`taskd flower` runs Flower on 127.0.0.1 unless told otherwise, and hands on the rest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taskcli import cli


@pytest.fixture
def execv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    calls: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append(list(argv)))
    (tmp_path / "files").mkdir()
    monkeypatch.setenv("TASKD_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("TASKD_REDIS_URL", "redis://:pw@127.0.0.1:6379/0")
    monkeypatch.setenv("TASKD_ALLOWED_FILE_ROOTS", str(tmp_path / "files"))
    monkeypatch.delenv("FLOWER_ADDRESS", raising=False)
    return calls


def test_taskd_flower_listens_on_loopback_by_default(execv: list[list[str]]) -> None:
    cli.main(["flower", "--port=5555"])
    [argv] = execv
    assert argv[argv.index("flower") + 1 :] == ["--address=127.0.0.1", "--port=5555"]
    assert not [a for a in argv if "pw" in a]  # the Redis URL goes by the environment


@pytest.mark.parametrize("given", [["--address=0.0.0.0"], ["--address", "0.0.0.0"]])
def test_an_address_the_operator_names_is_kept(execv: list[list[str]], given: list[str]) -> None:
    cli.main(["flower", *given, "--port=5555"])
    [argv] = execv
    assert argv[argv.index("flower") + 1 :] == [*given, "--port=5555"]


def test_flower_address_from_the_environment_is_kept(
    execv: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWER_ADDRESS", "10.1.2.3")
    cli.main(["flower"])
    [argv] = execv
    assert argv[argv.index("flower") + 1 :] == []


@pytest.mark.parametrize("command", ["worker", "flower"])
def test_help_says_what_taskd_adds_before_handing_over(
    execv: list[list[str]], capsys: pytest.CaptureFixture[str], command: str
) -> None:
    cli.main([command, "--help"])
    [argv] = execv
    assert "--help" in argv  # Celery's or Flower's own help follows
    said = " ".join(capsys.readouterr().out.split())
    assert said.startswith(f"taskd {command}:")
    assert "--data-root (TASKD_DATA_ROOT)" in said and "--redis-url (TASKD_REDIS_URL)" in said


def test_without_help_nothing_is_said_first(
    execv: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    cli.main(["worker", "-c", "2"])
    assert capsys.readouterr().out == ""
