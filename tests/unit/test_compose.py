"""docker-compose.yml and the systemd units say what docs/operations.md promises."""

from __future__ import annotations

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


def test_redis_is_append_only_and_never_evicts(services: dict[str, Any]) -> None:
    command = _command(services["redis"])
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])


def test_one_data_volume_is_shared_at_the_data_root(services: dict[str, Any]) -> None:
    mounts = set()
    for name in TASKD_SERVICES:
        service = services[name]
        root = service["environment"]["TASKD_DATA_ROOT"]
        [mount] = [v for v in service["volumes"] if v.endswith(f":{root}")]
        mounts.add(mount)
        assert service["environment"]["TASKD_REDIS_URL"].startswith("redis://redis:")
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


def test_flower_asks_for_basic_auth_and_is_published_on_loopback(
    services: dict[str, Any],
) -> None:
    flower = services["flower"]
    command = _command(flower)
    assert command[:2] == ["taskd", "flower"]
    [auth] = [c for c in command if c.startswith("--basic-auth=")]
    assert "FLOWER_AUTH:?" in auth  # compose refuses to start without it
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


def test_the_flower_unit_asks_for_basic_auth() -> None:
    [start] = _unit("taskd-flower.service")["ExecStart"]
    assert "--basic-auth=${FLOWER_AUTH}" in start.split()
    assert "--address=127.0.0.1" in start.split()
