"""PNG plots of a run for docs/benchmarks.md: intake latency and mirror lag as CDFs, and the
scaling bar chart. Only what the run measured is drawn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import Outcome


def _cdf(ax: Any, values: Sequence[float], label: str) -> None:
    data = sorted(values)
    if data:
        ax.step(data, [(i + 1) / len(data) for i in range(len(data))], where="post", label=label)


def _latency(plt: Any, series: Mapping[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    _cdf(ax, series["intake_ms"], "bridge: closed -> renamed QUEUED")
    _cdf(ax, series["floor_ms"], "floor: raw inotify + read + fsync'd rewrite + renames")
    ax.axvline(5, color="grey", linestyle=":", label="goals: p50 5 ms, p99 20 ms")
    ax.axvline(20, color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("ms from the writer's close to the rename (log scale)")
    ax.set_ylabel("fraction of files")
    ax.set_title(f"Intake latency, {len(series['intake_ms'])} files 20 ms apart")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def _mirror(plt: Any, series: Mapping[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    _cdf(ax, series["mirror_lag_ms"], "report in Redis -> file renamed")
    ax.axvline(1200, color="grey", linestyle=":", label="goal: p99 1,200 ms")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of progress reports")
    ax.set_title("Mirror lag, 2,000 simulated jobs reporting every second")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def _scaling(plt: Any, series: Mapping[int, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = {"bridge": "task files through the bridge", "direct": "straight to Celery",
              "bare": "bare Celery no-op"}  # fmt: skip
    width = 0.25
    procs = sorted(series)
    for k, (name, label) in enumerate(labels.items()):
        rates = [series[c]["rates"][name] for c in procs]
        xs = [i + (k - 1) * width for i in range(len(procs))]
        bars = ax.bar(xs, rates, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(procs)), [f"{c} worker process{'es' * (c > 1)}" for c in procs])
    ax.set_ylabel("NOOP tasks/s")
    ax.set_title("End-to-end throughput, 2-core machine")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw(results: Mapping[str, Outcome], outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    series: dict[str, Any] = {}
    for outcome in results.values():
        series.update(outcome.series)
    made = []
    if "intake_ms" in series:
        made.append(_latency(plt, series, outdir / "intake-latency.png"))
    if "mirror_lag_ms" in series:
        made.append(_mirror(plt, series, outdir / "mirror-lag.png"))
    if series.get("scaling"):
        made.append(_scaling(plt, series["scaling"], outdir / "scaling.png"))
    return made
