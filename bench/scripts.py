"""Packing and searching for the table: `bench_pack.py` and `bench_retrms.py` run at small sizes
as they are (each has its own full report and options; bench/README.md), their summary parsed."""

from __future__ import annotations

import re
import subprocess
import sys

from bench.common import REPO, Outcome, Row, describe

PACK_NAME_WIDTH = 28
SEARCH_NAME_WIDTH = 34
PACK_OURS = "ours isal L1 t1"
PACK_TAR = "tar czf (gzip -6)"
PACK_PIGZ = "tar | pigz -6"
GREP = "grep -rli (C.UTF-8)"


def _run(script: str, args: list[str]) -> tuple[list[str], str | None]:
    command = [sys.executable, str(REPO / "bench" / script), *args]
    print(f"  running: {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return [], f"{script} exited {done.returncode}: {tail[0]}"
    return done.stdout.splitlines(), None


def _rows(lines: list[str], width: int) -> dict[str, list[str]]:
    """The first table row of each contender, by name: its cells."""
    out: dict[str, list[str]] = {}
    for line in lines:
        name = line[:width].strip()
        cells = line[width:].split()
        if name and cells and cells[0].replace(".", "", 1).isdigit():
            out.setdefault(name, cells)
    return out


def pack(quick: bool) -> Outcome:
    size = "5" if quick else "50"
    args = ["--size-mb", size, "--repeat", "1", "--levels", "1", "--skip-stdlib"]
    lines, error = _run("bench_pack.py", args)
    rows = _rows(lines, PACK_NAME_WIDTH)
    if error or not {PACK_OURS, PACK_TAR, PACK_PIGZ} <= set(rows):
        return Outcome(notes=[error or "bench_pack.py printed no table"])
    ours = float(rows[PACK_OURS][0])
    out = Outcome()
    for base, goal in ((PACK_TAR, 10.0), (PACK_PIGZ, 2.0)):
        speed = float(rows[base][0])
        out.rows.append(
            Row(
                "pack",
                f"PACKMS .tar.gz of {size} MB of mail (ISA-L level 1)",
                [ours],
                "MB/s",
                [speed],
                f"`{base}`",
                f">= {goal:g}x",
                "PASS" if ours / speed >= goal else "FAIL",
            )
        )
    for row in out.rows:
        print(describe(row), flush=True)
    return out


def _search_sections(lines: list[str]) -> list[tuple[str, list[str]]]:
    """Each subject needle's lines, from its 'subject "X":' heading to its goal line."""
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith('subject "'):
            sections.append((line.split('"')[1], []))
        elif sections:
            sections[-1][1].append(line)
    return sections


def _goal_verdict(goal: str) -> str:
    """PASS or FAIL from `goal: ... one: PASS (speed x1.22: PASS; matches: PASS)`."""
    found = re.search(r": (PASS|FAIL) \(speed", goal)
    return found.group(1) if found else "FAIL"


def _ours_first(section: list[str]) -> list[tuple[str, list[str]]]:
    """The contender rows of a subject table in order; the first is the one its goal judges."""
    rows = _rows(section, SEARCH_NAME_WIDTH)
    return [(name, cells) for name, cells in rows.items() if name.startswith("ours")]


def search(quick: bool) -> Outcome:
    messages, size = ("1000", "10") if quick else ("5000", "50")
    args = ["--messages", messages, "--size-mb", size, "--repeat", "1", "--skip-body"]
    lines, error = _run("bench_retrms.py", args)
    if error:
        return Outcome(notes=[error])
    out = Outcome()
    for needle, section in _search_sections(lines):
        grep = _rows(section, SEARCH_NAME_WIDTH).get(GREP)
        goal = next((s for s in section if s.startswith("goal:")), "")
        for k, (name, cells) in enumerate(_ours_first(section) if grep else []):
            assert grep is not None
            judged = k == 0
            out.rows.append(
                Row(
                    "search",
                    f"RETRMS subject `{needle}`, {name}, {size} MB, {messages} messages",
                    [float(cells[0])],
                    "files/s",
                    [float(grep[0])],
                    f"`{GREP}` (inexact)",
                    ">= 1x, exact" if judged else "",
                    _goal_verdict(goal) if judged else "",
                )
            )
    if not out.rows:
        out.notes.append("bench_retrms.py printed no subject table")
    for row in out.rows:
        print(describe(row), flush=True)
    return out
