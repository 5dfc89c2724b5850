"""`python -m bench [--quick] [--only NAME,...] [--repeat N]`: run the benchmarks, print a table.

Each benchmark prints its figure, its baseline's (measured in the same run) and the ratio, then
one table sums them up. Benchmarks never fail the run on a missed goal: they say PASS or FAIL.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import e2e, idle, intake, mirror, plots, scripts
from bench.common import DEFAULT_WORKDIR, Outcome, Stack, stack, table

DEFAULT_PLOTS = Path(__file__).resolve().parents[1] / "docs" / "img"

Bench = Callable[[Stack, bool, int], Outcome]
SYSTEM: dict[str, Bench] = {
    "intake": intake.run,
    "mirror": mirror.run,
    "idle": idle.run,
    "e2e": e2e.run,
    "scaling": e2e.run_scaling,
}
SCRIPTS: dict[str, Callable[[bool], Outcome]] = {"pack": scripts.pack, "search": scripts.search}
NAMES = [*SYSTEM, *SCRIPTS]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help=f"benchmarks to run, comma-separated or repeated (of {', '.join(NAMES)})",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of each throughput figure (default 3)"
    )
    parser.add_argument(
        "--plots",
        type=Path,
        default=None,
        help=f"where to write the PNG plots (default {DEFAULT_PLOTS}; none with --quick)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"where the data roots and redis-server live (default {DEFAULT_WORKDIR})",
    )
    args = parser.parse_args(argv)
    only = [n.strip() for part in args.only for n in part.split(",") if n.strip()]
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    args.only = only or NAMES
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.plots is None and not args.quick:
        args.plots = DEFAULT_PLOTS
    return args


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start"
    )


def run_one(name: str, args: argparse.Namespace) -> Outcome:
    if name in SCRIPTS:
        return SCRIPTS[name](args.quick)
    with stack(args.workdir) as system:
        return SYSTEM[name](system, args.quick, args.repeat)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {machine()}", flush=True)
    results: dict[str, Outcome] = {}
    for name in args.only:
        print(f"\n== {name}", flush=True)
        begun = time.monotonic()
        results[name] = run_one(name, args)
        for note in results[name].notes:
            print(f"  {note}", flush=True)
        print(f"  ({time.monotonic() - begun:.0f} s)", flush=True)
    rows = [row for outcome in results.values() for row in outcome.rows]
    print("\n" + "\n".join(table(rows)))
    if args.plots is not None:
        for path in plots.draw(results, args.plots):
            print(f"plot: {path}")
    print(f"\nall done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
