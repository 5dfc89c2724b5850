"""Mirror cost: `n` running jobs each reporting progress every second, simulated.

No worker runs: the bridge takes and publishes `n` NOOP files, then this process plays the
workers, writing each job's PROGRESS meta and renewing its claim in Redis exactly as
`tasks.progress.store_meta` does, every job once a second, spread over the second in 20 batches.
A poller lists the directory every 20 ms and notes when each file's name shows a new progress.
The lag of a report is from the moment Redis held it to the first listing that shows it (or a
later value). The bridge's CPU comes from /proc over the steady part of the run.

Baseline: the least a mirror tick can do in Python under the file contract, timed here in the
same run: one MGET of every meta, decode each, and for every file rename it (never over another
file) and land its new content: its spare (the file's last content, kept by the last write)
refilled under a write lease and swapped in by an atomic exchange, which never brings back a
file deleted meanwhile; no fsync, as the bridge's progress writes. The same tick with a new temp
file each write (the old content removed), and landing content by a rename over the file (which
would bring a deleted, that is cancelled, task's file back), are timed too and shown in the
notes.

That least tick writes two fields and skips what the file contract and hostile input require of
every write, so a second one is timed beside it, the least *checked* tick: the same steps plus
the file's fields and name as the contract derives them from the report (`mirror.updates_for`,
`contract.merge`, `contract.render_name`), its whole content as the contract writes it
(`contract.dump`), an lstat for the mode and group the file must keep, an fstat of the opened
spare (it must be the file kept, not what a user put in its place), its old pages detached
(`files._detach_pages`: a reader that queued them keeps them whole) and an lstat of what was
written (the signature that tells the bridge's own writes from the UI's). Its ratio to the
least tick says how much of the CPU goal any correct bridge spends before its first line of
bookkeeping. A third, the least *watched* checked tick, is the checked one with its folder
watched as the bridge must watch it (`watch.Watcher`, its renames announced so the reader drops
their events): the events the kernel makes of each write, and their reading, which no bridge
that watches the folder it writes in can skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    NOOP,
    CpuMeter,
    Outcome,
    Row,
    Stack,
    describe,
    drop,
    median,
    percentile,
    pid_of,
    queued_messages,
    rss_mb,
    task_dir,
    verdict,
)
from bridge import contract, files, watch
from bridge.files import _detach_pages, _exchange, _rename_noreplace
from bridge.mirror import updates_for, utc_now
from taskd import states
from taskd.atomic import BRIDGE_TEMP_SUFFIX
from taskd.leases import TAKE_OR_KEEP
from tests.support.procs import wait_until

LAG_GOAL_MS = 1200.0
CPU_GOAL = 1.2  # times the least tick's CPU in the same run
CPU_MOONSHOT = 0.3  # cores
BATCHES = 20
POLL_S = 0.02
CLAIM_TTL_S = 15
FLOOR_RUNS = 7  # each least tick is timed this many times; the median counts


def meta(job_id: str, percent: int) -> str:
    """What `store_meta` writes for a running job (Celery's result meta, state PROGRESS)."""
    return json.dumps(
        {
            "status": states.PROGRESS,
            "result": {
                states.META_PROGRESS: percent,
                states.META_FIELDS: {},
                states.META_WORKER: "bench@sim",
                states.META_STARTED_AT: "2026-01-01T00:00:00Z",
            },
            "traceback": None,
            "children": [],
            "date_done": None,
            "task_id": job_id,
        }
    )


class Workers(threading.Thread):
    """Every job reports once a second; `reports[(stem, percent)]` is when Redis held it."""

    def __init__(self, system: Stack, jobs: dict[str, str], seconds: int) -> None:
        super().__init__(daemon=True)
        self.system, self.jobs, self.seconds = system, jobs, seconds
        self.reports: dict[tuple[str, int], float] = {}

    def run(self) -> None:
        stems = sorted(self.jobs)
        batches = [stems[i::BATCHES] for i in range(BATCHES)]
        start = time.perf_counter()
        for second in range(self.seconds):
            for k, batch in enumerate(batches):
                due = start + second + k / BATCHES
                time.sleep(max(0.0, due - time.perf_counter()))
                self._report(batch, second + 1)

    def _report(self, stems: list[str], percent: int) -> None:
        with self.system.r.pipeline(transaction=False) as pipe:
            for stem in stems:
                job_id = self.jobs[stem]
                pipe.set(states.meta_key(job_id), meta(job_id, percent), ex=86400)
                pipe.eval(TAKE_OR_KEEP, 1, states.claim_key(job_id), "bench", CLAIM_TTL_S)
                pipe.exists(states.cancel_key(job_id))
            pipe.execute()
        now = time.perf_counter()
        for stem in stems:
            self.reports[(stem, percent)] = now


class Poller(threading.Thread):
    """Lists the directory every POLL_S; `seen[stem]` is [(when, percent in the name)]."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.stop = threading.Event()
        self.seen: dict[str, list[tuple[float, int]]] = defaultdict(list)

    def run(self) -> None:
        last: dict[str, int] = {}
        while not self.stop.wait(POLL_S):
            now = time.perf_counter()
            for name in os.listdir(self.directory):
                stem, _, rest = name.partition("-")
                info = rest.removesuffix(f".{NOOP}")
                if not info.isdigit() or last.get(stem) == int(info):
                    continue
                last[stem] = int(info)
                self.seen[stem].append((now, int(info)))


def _files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if not p.name.startswith(".")]


def lags(reports: dict[tuple[str, int], float], seen: dict, end: float) -> tuple[list, int]:
    """Milliseconds from each report to the first listing showing it; and how many never did
    (counted only if reported more than the goal before the end)."""
    out: list[float] = []
    missed = 0
    for (stem, percent), when in reports.items():
        shown = next((t for t, p in seen.get(stem, []) if p >= percent and t >= when), None)
        if shown is not None:
            out.append((shown - when) * 1000)
        elif end - when > LAG_GOAL_MS / 1000:
            missed += 1
    return out, missed


def floor_tick(
    system: Stack,
    directory: Path,
    jobs: dict[str, str],
    percent: int,
    landing: str = "spare",
    spares: dict[str, Path] | None = None,
    fields: dict[str, dict] | None = None,
) -> float:
    """CPU seconds of the least mirror tick: read every meta, rename and rewrite every file.
    The content lands by exchange, as the contract needs, from the file's spare (its last
    content, refilled under a write lease: `files.Spare`) or from a new temp file (`temp`, what
    the bridge did before spares); or by a rename over the file (`over`)."""
    names = {name.partition("-")[0]: name for name in os.listdir(directory)}
    stems = sorted(jobs)
    cpu = time.process_time()
    raw = system.r.mget([states.meta_key(jobs[s]) for s in stems])
    now_iso = utc_now()
    for stem, blob in zip(stems, raw, strict=True):
        decoded = json.loads(blob) if blob else {}
        path = directory / names[stem]
        spare = None if spares is None else spares.get(stem)
        if landing in ("checked", "watched") and spare is not None and fields is not None:
            # The file's fields and name as the contract derives them from the report.
            shown = percent % 100  # the contract shows no progress past 100
            updates = {**updates_for(decoded, fields[stem], now_iso), "progress": shown}
            fields[stem] = contract.merge(fields[stem], updates)
            new = path.with_name(contract.render_name(stem, NOOP, fields[stem], ("progress",)))
            if landing == "watched":  # each rename announced, so the watcher drops its events
                files.rename_noreplace(path, new)
                _checked_refill(spare, new, contract.dump(fields[stem]), _announced_exchange)
            else:
                _rename_noreplace(path, new)
                _checked_refill(spare, new, contract.dump(fields[stem]), _exchange)
            continue
        new = directory / f"{stem}-{percent}.{NOOP}"
        _rename_noreplace(path, new)
        data = json.dumps({"state": decoded.get("status"), "progress": percent}).encode()
        if landing == "spare" and spare is not None:
            fd = os.open(spare, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            os.close(fd)
            _exchange(spare, new)
            continue
        tmp = directory / f".{new.name}.{secrets.token_hex(4)}{BRIDGE_TEMP_SUFFIX}"
        tmp.write_bytes(data)
        if landing == "over":
            os.replace(tmp, new)
            continue
        _exchange(tmp, new)
        if spares is None:
            os.unlink(tmp)
        else:
            spares[stem] = tmp
    return time.process_time() - cpu


def watched_tick(
    system: Stack,
    directory: Path,
    jobs: dict[str, str],
    percent: int,
    spares: dict[str, Path],
    fields: dict[str, dict],
) -> float:
    """CPU seconds of the least checked tick with its folder watched as the bridge watches it
    (its reader on inotify, each rename announced and dropped as the bridge's own): the events
    the kernel makes of every write, and their reading, are counted too."""
    watcher = watch.Watcher(directory.parent)
    watcher.start()
    try:
        cpu = time.process_time()
        floor_tick(system, directory, jobs, percent, "watched", spares, fields)
        time.sleep(0.2)  # the reader's last events, read in this tick's time
        cpu = time.process_time() - cpu
    finally:
        watcher.stop()
    left = watcher.drain()
    assert not left, f"the tick's own events reached the loop: {left[:3]}"
    return cpu


def _announced_exchange(a: Path, b: Path) -> None:
    """The exchange as the bridge makes it: announced to its watcher first."""
    files._swap_in(os.fsencode(a), os.fsencode(b))


def _checked_refill(
    spare: Path, new: Path, data: bytes, exchange: Callable[[Path, Path], None]
) -> None:
    """The least checked landing of `data` in `new` from its spare (see the module's text)."""
    os.lstat(new)  # the mode and group the file keeps
    fd = os.open(spare, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)  # the file kept, not a user's
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    _detach_pages(fd, st)
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    os.close(fd)  # before the swap: a close after it would be a write to the task file
    exchange(spare, new)
    os.lstat(new)  # the signature of what was written


def settle_jobs(system: Stack, directory: Path, n: int) -> dict[str, str]:
    def ready() -> bool:
        done = sum(1 for path in _files(directory) if "-" in path.name)
        return done >= n and queued_messages(system.r) >= n

    wait_until(ready, 300, interval=0.05, what=f"{n} files to be QUEUED")
    jobs = {}
    for path in _files(directory):  # not the spares
        jobs[path.name.partition("-")[0]] = json.loads(path.read_text())[states.JOB_ID]
    return jobs


def run(system: Stack, quick: bool, repeat: int) -> Outcome:
    n, seconds = (200, 5) if quick else (2000, 20)
    root = system.new_root()
    bridge = system.bridge(root)
    directory = task_dir(root, "7")
    for i in range(n):
        drop(directory, f"m{i:05d}.{NOOP}")
    jobs = settle_jobs(system, directory, n)
    poller, workers = Poller(directory), Workers(system, jobs, seconds)
    poller.start()
    workers.start()
    time.sleep(2.0)  # past the first reports, which also change each file's state
    meter = CpuMeter(pid_of(bridge)).start()
    workers.join()
    cores = meter.stop()
    time.sleep(LAG_GOAL_MS / 1000 + 0.5)
    poller.stop.set()
    poller.join()
    end = time.perf_counter()
    rss = rss_mb(pid_of(bridge))
    system.stop(bridge)
    measured, missed = lags(workers.reports, poller.seen, end)
    spares: dict[str, Path] = {}
    floor_tick(system, directory, jobs, 99, "temp", spares)  # makes the spares
    contents = {p.name.partition("-")[0]: json.loads(p.read_bytes()) for p in _files(directory)}
    floors, checked, watched = [], [], []
    for i in range(FLOOR_RUNS):  # taken in turns, so the host's drift weighs on all alike
        floors.append(floor_tick(system, directory, jobs, 100 + 3 * i, "spare", spares))
        checked.append(
            floor_tick(system, directory, jobs, 101 + 3 * i, "checked", spares, contents)
        )
        watched.append(watched_tick(system, directory, jobs, 102 + 3 * i, spares, contents))
    for spare in spares.values():
        spare.unlink()
    temp = [floor_tick(system, directory, jobs, 200 + i, "temp") for i in range(3)]
    over = [floor_tick(system, directory, jobs, 300 + i, "over") for i in range(3)]
    p99 = percentile(measured, 99)
    tick = f"1 tick ({1000:,} ms) + the least tick's {median(floors) * 1000:.0f} ms"
    rows = [
        Row("mirror cost", f"lag p50, {n:,} jobs", [percentile(measured, 50)], "ms"),
        Row(
            "mirror cost",
            f"lag p99, {n:,} jobs reporting every second",
            [p99],
            "ms",
            [1000 + median(floors) * 1000],
            tick,
            f"<= {LAG_GOAL_MS:,.0f} ms, none missed",
            verdict(p99 <= LAG_GOAL_MS and missed == 0),
        ),
        Row(
            "mirror cost",
            "bridge CPU while mirroring",
            [cores],
            "cores",
            [median(floors)],
            "the least tick in Python, once a second",
            f"<= {CPU_GOAL:g}x (moonshot {CPU_MOONSHOT:g} core)",
            verdict(cores <= CPU_GOAL * median(floors)),
        ),
        Row(
            "mirror cost",
            "the least checked tick (the contract's fields, name, content, checks), once a second",
            [median(checked)],
            "cores",
            [median(floors)],
            "the least tick",
        ),
        Row(
            "mirror cost",
            "bridge CPU while mirroring, against the least checked tick",
            [cores],
            "cores",
            [median(checked)],
            "the least checked tick",
        ),
        Row(
            "mirror cost",
            "the least checked tick, its folder watched as the bridge watches it, once a second",
            [median(watched)],
            "cores",
            [median(floors)],
            "the least tick",
        ),
        Row(
            "mirror cost",
            "bridge CPU while mirroring, against the least watched checked tick",
            [cores],
            "cores",
            [median(watched)],
            "the least watched checked tick",
        ),
    ]
    for row in rows:
        print(describe(row), flush=True)
    notes = [
        f"mirror: {len(measured):,} reports shown, {missed} never shown; "
        f"max lag {max(measured, default=float('nan')):.0f} ms; bridge RSS {rss:.0f} MB; "
        f"simulated workers, files listed every {POLL_S * 1000:g} ms; the least tick landing "
        f"content from a new temp file each write (no spares) {median(temp) * 1000:.0f} ms, "
        f"by a rename over each file (which could bring a cancelled task's file back) "
        f"{median(over) * 1000:.0f} ms"
    ]
    return Outcome(rows=rows, series={"mirror_lag_ms": measured}, notes=notes)
