"""/metrics and /healthz of a real bridge, on a private redis-server the test kills and restarts.

No worker: the files taken stay QUEUED, which is all the counters need.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Drop
from tests.support.procs import (
    BridgeProc,
    RedisServer,
    Worker,
    free_port,
    running,
    taskd_env,
    wait_until,
)


@dataclass
class Site:
    redis: RedisServer
    bridge: BridgeProc
    base: str
    drop: Drop


def get(url: str) -> tuple[int, bytes] | None:
    """Status and body, whatever the status; None while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None


def health(base: str) -> tuple[int, dict[str, object]]:
    answer = get(base + "/healthz")
    assert answer is not None, "the bridge's HTTP endpoint does not answer"
    return answer[0], json.loads(answer[1])


def unhealthy(base: str) -> dict[str, object] | None:
    status, body = health(base)
    return body if status == 503 else None


def samples(base: str) -> dict[str, float]:
    """Every sample of /metrics by name (labels joined in), as Prometheus would parse it."""
    answer = get(base + "/metrics")
    assert answer is not None and answer[0] == 200
    out = {}
    for family in text_string_to_metric_families(answer[1].decode()):
        assert family.documentation, f"{family.name} has no HELP"
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    data_root = tmp_path / "data"
    (data_root / "files").mkdir(parents=True)
    port = free_port()
    env = taskd_env(data_root, redis.url, {"TASKD_HTTP_PORT": str(port)})
    bridge = BridgeProc(env, tmp_path / "bridge.log")
    bridge.start()
    base = f"http://127.0.0.1:{port}"
    try:
        # It answers from the start, as a standby until it holds the lease: wait for active.
        wait_until(lambda: get(base + "/healthz"), 30, interval=0.1, what="the HTTP endpoint")
        wait_until(lambda: health(base)[0] == 200, 30, interval=0.1, what="the bridge active")
        yield Site(redis, bridge, base, Drop(data_root, "m1"))
    finally:
        bridge.stop()
        redis.stop()


def test_metrics_count_the_files_taken_and_rejected(site: Site) -> None:
    for i in range(3):
        site.drop.write(f"ok{i}.SLOW", {"type": "SLOW", "steps": 1})
    site.drop.write("bad0.SLOW", {"type": "SLOW", "steps": "many"})
    site.drop.write("bad1.SLOW", {"type": "NOPE"})
    for i in range(3):
        site.drop.wait_state(f"ok{i}", "QUEUED", timeout=15)
    for i in range(2):
        site.drop.wait_state(f"bad{i}", "REJECTED", timeout=15)

    values = samples(site.base)
    assert values["taskd_files_taken_total"] == 3
    assert values["taskd_files_rejected_total"] == 2
    assert values["taskd_tasks_ended_total{state=SUCCESS}"] == 0
    assert values["taskd_rescans_total"] >= 1  # the scan every bridge starts with
    assert values["taskd_redis_reconnects_total"] == 0
    assert values["taskd_redis_up"] == 1
    assert values["taskd_watcher_up"] == 1
    assert values["taskd_bridge_active"] == 1
    assert values["taskd_bridge_degraded"] == 0
    # The active-jobs gauge follows the loop's once-a-tick snapshot.
    wait_until(lambda: samples(site.base)["taskd_jobs_active"] == 3, 10, what="3 active jobs")


def test_healthz_is_503_while_redis_is_gone_and_200_again_when_it_is_back(site: Site) -> None:
    status, body = health(site.base)
    assert status == 200
    assert (body["status"], body["role"]) == ("ok", "active")
    assert body["redis"] is True and body["watcher"] is True
    assert isinstance(body["mirror_lag_s"], float) and body["mirror_lag_s"] < 5

    site.redis.kill()
    try:
        body = wait_until(
            lambda: unhealthy(site.base), 30, interval=0.1, what="/healthz to report Redis gone"
        )
        assert body["redis"] is False
        assert (body["status"], body["role"]) == ("unhealthy", "active")
        assert body["watcher"] is True
        problems = body["problems"]
        assert isinstance(problems, list) and any("redis" in p for p in problems)
        assert samples(site.base)["taskd_redis_up"] == 0
        assert site.bridge.proc is not None and site.bridge.proc.poll() is None
    finally:
        site.redis.start()

    wait_until(lambda: health(site.base)[0] == 200, 30, interval=0.1, what="/healthz 200 again")
    assert samples(site.base)["taskd_redis_reconnects_total"] == 1


def test_metrics_say_how_long_the_queue_waits_and_how_many_workers_live(
    site: Site, tmp_path: Path
) -> None:
    site.drop.write("w1.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0})
    site.drop.write("w2.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0})
    wait_until(
        lambda: samples(site.base).get("taskd_tasks_waiting{type=SLOW}") == 2, 15, what="2 waiting"
    )
    # No worker yet: nobody alive, and the queue's oldest task waits on.
    wait_until(lambda: samples(site.base)["taskd_queue_oldest_seconds"] >= 2, 15, what="an age")
    assert samples(site.base)["taskd_workers_alive"] == 0

    env = taskd_env(site.drop.data_root, site.redis.url)
    with running(Worker(env, tmp_path / "worker.log", name="walive", queues="retrieve")):
        wait_until(lambda: samples(site.base)["taskd_workers_alive"] == 1, 30, what="1 alive")
        site.drop.wait_state("w2", "SUCCESS", timeout=30)
        wait_until(
            lambda: samples(site.base)["taskd_queue_oldest_seconds"] == 0, 15, what="none waits"
        )
        assert samples(site.base).get("taskd_tasks_waiting{type=SLOW}", 0) == 0
