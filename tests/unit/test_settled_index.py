"""Finished files read by an earlier run are known at start by a stat, not a read
(bridge/settledindex.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import settledindex
from bridge.daemon import Bridge
from taskd.settings import Settings
from taskd.tasktypes import load_types
from tests.support.procs import SUPPORT_SCHEMAS
from tests.support.reads import count_reads
from tests.unit.test_rescan import finished


def _bridge(settings: Settings) -> Bridge:
    return Bridge(settings, load_types([SUPPORT_SCHEMAS]), app=None, client=None)  # type: ignore[arg-type]


def _stop(bridge: Bridge) -> None:
    from bridge.passes import reconcile

    reconcile.save_settled(bridge.core)  # what the loop does when it stops


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    return count_reads(monkeypatch)


def test_a_restarted_bridge_reads_no_finished_file_that_did_not_change(
    tmp_path: Path, reads: list[Path]
) -> None:
    settings = Settings(data_root=tmp_path, settle=0.0)
    directory = settings.task_queue / "3"
    directory.mkdir(parents=True)
    paths = [finished(directory, f"t{n}") for n in range(30)]
    first = _bridge(settings)
    from bridge.passes import reconcile

    reconcile.load_settled(first.core)
    first.rescan_once(time.monotonic())
    _stop(first)
    assert sorted(reads) == sorted(paths)
    assert (tmp_path / ".taskd" / "settled").stat().st_mode & 0o777 == 0o600

    paths[4].write_text(paths[4].read_text(encoding="utf-8") + " ", encoding="utf-8")
    reads.clear()
    again = _bridge(settings)
    reconcile.load_settled(again.core)
    again.rescan_once(time.monotonic())
    assert reads == [paths[4]]  # only the one that changed
    assert len(again.settled) == 30
    # The task-ids the index named are held: a new file reusing one is refused.
    (directory / "t7.SLOW").write_text(json.dumps({"type": "SLOW"}))
    again.rescan_once(time.monotonic())
    rejected = json.loads((directory / "t7-ERR.SLOW").read_text())
    assert "task-id 't7' is already used by" in rejected["error"]


@given(st.lists(st.text(max_size=40), max_size=20))
def test_any_index_content_loads_without_raising(lines: list[str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / ".taskd").mkdir()
        (root / ".taskd" / "settled").write_text("\n".join(lines), encoding="utf-8")
        loaded = settledindex.load(root, root / "task_queue")
        for full, (sig, task_id) in loaded.items():
            assert full.startswith(f"{root}/task_queue/") and "/../" not in full
            assert len(sig) == 4 and isinstance(task_id, str)


def test_names_with_a_tab_or_newline_are_left_out_and_the_rest_round_trips(
    tmp_path: Path,
) -> None:
    (tmp_path / ".taskd").mkdir()
    queue = tmp_path / "task_queue"
    entries = {
        f"{queue}/3/a-100.SLOW": ((1, 2, 3, 4), "a"),
        f"{queue}/3/b\t-100.SLOW": ((5, 6, 7, 8), "b"),
        f"{queue}/3/c-100.SLOW": ((9, 10, 11, 12), "c\nx"),
    }
    settledindex.save(tmp_path, queue, entries)
    assert settledindex.load(tmp_path, queue) == {f"{queue}/3/a-100.SLOW": ((1, 2, 3, 4), "a")}
