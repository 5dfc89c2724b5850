"""The Prometheus alert rules and the Grafana dashboard in deploy/ name only metrics the bridge
exports, with labels it sets and label values it uses; each alert says what it means."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bridge import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "taskd-alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "taskd-dashboard.json"
NAME = re.compile(r"\b(taskd_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(taskd_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"([^"]*)"\s*')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
OWN_LABELS = {"instance", "job"}  # set by Prometheus when it scrapes


def _expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [r["expr"] for r in rules] + [t["expr"] for p in panels for t in p["targets"]]


def _exported() -> dict[str, set[str]]:
    """Every family a bridge's /metrics shows, with its sample names and labels: read from
    the text prometheus_client writes, as Prometheus would."""
    snap = metrics.Metrics(1.0).snapshot()
    text = metrics.exposition(snap)
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    for metric in metrics.ALL:  # labelled gauges show no sample until something is counted
        found.setdefault(metric.name, set()).update([metric.label] if metric.label else [])
    return found


@pytest.mark.parametrize("expr", _expressions())
def test_every_metric_named_is_exported_with_the_labels_used(expr: str) -> None:
    exported = _exported()
    named = set(NAME.findall(expr))
    assert named, f"no taskd metric in {expr!r}"
    assert named <= set(exported), sorted(named - set(exported))
    labels_of = {name: exported[name] | OWN_LABELS for name in named}
    for name, inner in SELECTOR.findall(expr):
        for label, value in MATCHER.findall(inner):
            assert label in labels_of[name], (name, label)
            metric = next(m for m in metrics.ALL if m.name == name)
            if metric.values:
                assert value in metric.values, (name, label, value)
    for group in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            assert any(label in labels for labels in labels_of.values()), (expr, label)


def test_every_alert_says_what_it_means_and_how_bad() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]


def test_the_alerts_cover_what_operations_says_to_alert_on() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    exprs = " ".join(rule["expr"] for rule in rules)
    for metric in (
        "taskd_bridge_active",
        "taskd_redis_up",
        "taskd_mirror_lag_seconds",
        "taskd_queue_oldest_seconds",
        "taskd_tasks_ended_total",
        "taskd_files_rejected_total",
        "taskd_workers_alive",
    ):
        assert metric in exprs, metric


def test_the_checks_would_catch_a_name_the_bridge_does_not_export() -> None:
    with pytest.raises(AssertionError):
        test_every_metric_named_is_exported_with_the_labels_used("rate(taskd_files_lost_total[5m])")
    with pytest.raises(AssertionError):
        test_every_metric_named_is_exported_with_the_labels_used(
            'taskd_tasks_ended_total{status="FAILURE"}'
        )
    with pytest.raises(AssertionError):
        test_every_metric_named_is_exported_with_the_labels_used(
            'taskd_tasks_ended_total{state="FAILED"}'
        )
