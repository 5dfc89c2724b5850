"""docker-compose.yml and the systemd units say what docs/operations.md promises."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TASKD_SERVICES = ("bridge", "worker", "flower")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return dict(compose["services"])


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def test_the_four_services_are_there(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "bridge", "worker", "flower"}


def _redis_script(services: dict[str, Any]) -> str:
    """The shell lines that start Redis in its container."""
    command = _command(services["redis"])
    assert command[:2] == ["sh", "-c"]
    return command[2]


def test_redis_is_append_only_and_never_evicts(services: dict[str, Any]) -> None:
    [start] = [line for line in _redis_script(services).splitlines() if "redis-server" in line]
    words = start.split()
    assert words[:2] == ["exec", "redis-server"]
    assert words[words.index("--appendonly") + 1] == "yes"
    assert words[words.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])


def test_redis_has_a_password_on_no_command_line(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["environment"]["TASKD_REDIS_PASSWORD"].startswith("${TASKD_REDIS_PASSWORD:?")
    assert redis["user"] == "redis"  # not root, the image's entrypoint notwithstanding
    lines = _redis_script(services).splitlines()
    [start] = [line for line in lines if "redis-server" in line]
    conf = start.split()[2]
    assert "requirepass" not in start and "PASSWORD" not in start
    # Written by the shell's own printf (no process, no argv), readable by Redis alone.
    [write] = [line for line in lines if "requirepass" in line]
    assert write.split()[0] == "printf" and write.endswith(f"> {conf}")
    assert lines.index("umask 077") < lines.index(write)
    assert "$$TASKD_REDIS_PASSWORD" in write
    health = " ".join(redis["healthcheck"]["test"])
    assert "REDISCLI_AUTH=" in health and " -a " not in health


def test_no_secret_is_spelled_on_a_command_line(services: dict[str, Any]) -> None:
    """Compose puts `${...}` values into the command itself, where `ps` shows them."""
    for name, service in services.items():
        for part in _command(service):
            assert "${" not in part, (name, part)
            assert "--basic-auth" not in part and "--requirepass" not in part, (name, part)


def test_every_service_reaches_redis_with_the_password_from_the_environment(
    services: dict[str, Any],
) -> None:
    for name in TASKD_SERVICES:
        url = services[name]["environment"]["TASKD_REDIS_URL"]
        assert url.startswith("redis://:${TASKD_REDIS_PASSWORD:?"), name
        assert url.endswith("}@redis:6379/0"), name


def test_one_data_volume_is_shared_at_the_data_root(services: dict[str, Any]) -> None:
    mounts = set()
    for name in TASKD_SERVICES:
        service = services[name]
        root = service["environment"]["TASKD_DATA_ROOT"]
        [mount] = [v for v in service["volumes"] if v.endswith(f":{root}")]
        mounts.add(mount)
        assert "@redis:6379/" in service["environment"]["TASKD_REDIS_URL"]
    assert len(mounts) == 1
    volume = mounts.pop().split(":")[0]
    assert volume in yaml.safe_load((REPO / "docker-compose.yml").read_text())["volumes"]


def test_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    bridge = services["bridge"]
    port = bridge["environment"]["TASKD_HTTP_PORT"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(bridge["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])


def test_workers_scale_and_stop_warm(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert _command(worker)[:2] == ["taskd", "worker"]
    # `--scale worker=N` needs a service without a fixed container name or host port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["stop_grace_period"] == "60s"
    for name in TASKD_SERVICES:
        assert services[name]["restart"] == "unless-stopped"


def test_flower_asks_for_basic_auth_from_its_environment_and_is_published_on_loopback(
    services: dict[str, Any],
) -> None:
    flower = services["flower"]
    command = _command(flower)
    assert command[:2] == ["taskd", "flower"]
    assert not [c for c in command if "auth" in c]
    # compose refuses to start without it
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_AUTH:?")
    assert "FLOWER_BASIC_AUTH" not in services["worker"]["environment"]
    # Inside its container on every address, so that the published port reaches it...
    assert "--address=0.0.0.0" in command
    # ...and published on the host's loopback only.
    assert all(p.startswith("127.0.0.1:") for p in flower["ports"])


def _unit(name: str) -> dict[str, list[str]]:
    """`key=value` lines of a systemd unit; a key may repeat (EnvironmentFile)."""
    out: dict[str, list[str]] = {}
    for line in (REPO / "deploy" / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize(
    ("unit", "command"),
    [
        ("taskd-bridge.service", "bridge"),
        ("taskd-worker@.service", "worker"),
        ("taskd-flower.service", "flower"),
    ],
)
def test_systemd_units_run_taskd_under_restart_with_the_shared_settings(
    unit: str, command: str
) -> None:
    service = _unit(unit)
    assert service["Restart"] == ["always"]
    assert service["ExecStart"][0].split()[:2] == ["/opt/taskd/venv/bin/taskd", command]
    assert "/etc/taskd/taskd.env" in service["EnvironmentFile"]
    assert service["User"] == ["taskd"]


def test_the_flower_unit_takes_its_login_from_the_environment_only() -> None:
    unit = _unit("taskd-flower.service")
    [start] = unit["ExecStart"]
    assert "--address=127.0.0.1" in start.split()
    assert "auth" not in start.lower()
    assert "/etc/taskd/flower.env" in unit["EnvironmentFile"]
    # It refuses to start without a login; `$$` keeps systemd from putting the value in argv.
    [check] = unit["ExecStartPre"]
    assert "$${FLOWER_BASIC_AUTH}" in check
    assert not re.findall(r"(?<!\$)\$\{", check)  # every ${ is a $${
    example = (REPO / "deploy" / "systemd" / "flower.env").read_text()
    assert "FLOWER_BASIC_AUTH=" in example


HARDENING = {
    "UMask": ["0027"],
    "NoNewPrivileges": ["yes"],
    "ProtectSystem": ["strict"],
    "ProtectHome": ["yes"],
    "ProtectKernelTunables": ["yes"],
    "ProtectControlGroups": ["yes"],
    "RestrictSUIDSGID": ["yes"],
    "LockPersonality": ["yes"],
}


@pytest.mark.parametrize(
    "unit", ["taskd-bridge.service", "taskd-worker@.service", "taskd-flower.service"]
)
def test_every_unit_runs_sandboxed_with_umask_0027(unit: str) -> None:
    service = _unit(unit)
    for key, value in HARDENING.items():
        assert service.get(key) == value, (unit, key)


def test_what_each_unit_may_write() -> None:
    root = "/usr/local/mozart/data"
    assert _unit("taskd-bridge.service")["ReadWritePaths"] == [root]
    assert _unit("taskd-bridge.service")["PrivateTmp"] == ["yes"]
    assert "ReadWritePaths" not in _unit("taskd-flower.service")  # Flower writes nothing
    assert _unit("taskd-flower.service")["PrivateTmp"] == ["yes"]
    # The worker packs the UI's files from /tmp (TASKD_ALLOWED_FILE_ROOTS' default): a private
    # /tmp would hide them. The unit says how to take it back with the roots elsewhere.
    worker = _unit("taskd-worker@.service")
    assert "PrivateTmp" not in worker
    assert worker["ReadWritePaths"] == [f"{root} /tmp"]
    text = (REPO / "deploy" / "systemd" / "taskd-worker@.service").read_text()
    assert "#   PrivateTmp=yes" in text and "TASKD_ALLOWED_FILE_ROOTS" in text


def test_no_unit_spells_a_secret_on_its_command_line() -> None:
    for unit in ("taskd-bridge.service", "taskd-worker@.service", "taskd-flower.service"):
        for start in _unit(unit)["ExecStart"]:
            assert "${" not in start, unit
            assert "pass" not in start.lower() and "auth" not in start.lower(), unit
