"""EXEC's pieces (tasks/execprog.py): which program may run, what it gets of the environment,
how its output is kept and read for progress; and the type being off until ops turn it on."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.judge import unknown_type
from taskd.settings import EXEC_SCHEMA_DIR, Settings, SettingsError
from taskd.tasktypes import load_types
from tasks import execprog
from tasks.errors import TaskFailed


def _program(folder: Path, name: str, body: str = "exit 0", mode: int = 0o755) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def test_a_program_is_a_name_of_an_executable_file_of_the_folder(tmp_path: Path) -> None:
    hello = _program(tmp_path, "hello")
    assert execprog.program_path(tmp_path, "hello") == hello
    (tmp_path / "linked").symlink_to(hello)  # ops may link one in from elsewhere
    assert execprog.program_path(tmp_path, "linked") == tmp_path / "linked"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("../hello", "not a program name"),
        ("/bin/sh", "not a program name"),
        ("a/b", "not a program name"),
        ("", "not a program name"),
        (".hidden", "not a program name"),
        ("sh -c", "not a program name"),
        ("missing", "there is no program 'missing' in TASKD_EXEC_DIR; the programs there are: "),
        ("plain", "is not an executable file"),
        ("folder", "is not an executable file"),
    ],
)
def test_anything_else_fails_naming_the_field_and_the_fix(
    tmp_path: Path, name: str, says: str
) -> None:
    _program(tmp_path, "hello")
    _program(tmp_path, "plain", mode=0o644)
    (tmp_path / "folder").mkdir()
    with pytest.raises(TaskFailed, match="field 'program'") as caught:
        execprog.program_path(tmp_path, name)
    assert says in str(caught.value)
    if name == "missing":
        assert "hello" in str(caught.value)


def test_without_the_folder_exec_is_off(tmp_path: Path) -> None:
    with pytest.raises(TaskFailed, match="off: ops turn it on with TASKD_EXEC_DIR"):
        execprog.program_path(None, "hello")


def test_the_type_is_read_only_once_ops_name_the_folder(tmp_path: Path) -> None:
    off = Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path)})
    on = Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path), "TASKD_EXEC_DIR": str(tmp_path)})
    assert "EXEC" not in load_types(off.type_dirs)
    assert "EXEC" in load_types(on.type_dirs) and on.type_dirs[0] == EXEC_SCHEMA_DIR
    assert "off on this system: ops turn it on with TASKD_EXEC_DIR" in unknown_type(
        "EXEC", load_types(off.type_dirs)
    )
    assert unknown_type("NOPE", {}).startswith("unknown task type 'NOPE'")
    with pytest.raises(SettingsError, match="TASKD_EXEC_DIR='programs' is a relative path"):
        Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path), "TASKD_EXEC_DIR": "programs"})


class _Job:
    job_id, user_id, task_id = "j-1", "7", "0001"


def test_the_program_gets_a_minimal_environment(tmp_path: Path) -> None:
    os.environ["TASKD_SECRET_FOR_TEST"] = "x"
    try:
        env = execprog.environment(_Job(), tmp_path)  # type: ignore[arg-type]
    finally:
        del os.environ["TASKD_SECRET_FOR_TEST"]
    assert set(env) == {
        "PATH", "LANG", "HOME", "TMPDIR", "TASKD_JOB_ID", "TASKD_USER_ID", "TASKD_TASK_ID",
    }  # fmt: skip
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path) and env["TASKD_TASK_ID"] == "0001"


def test_progress_lines_are_read_and_the_rest_is_kept() -> None:
    out = io.BytesIO()
    kept = execprog.Kept(out, 1000)
    seen: list[execprog.Report] = []
    lines = execprog.Lines(kept, seen.append)
    lines.feed(b"start\nTASKD-PROGRESS 40 copying 3/9\nTASKD-PRO")
    lines.feed(b"GRESS 250\nTASKD-PROGRESS x\nhalf a li")
    lines.feed(b"ne\nno newline at the end")
    lines.end()
    assert [(r.percent, r.text) for r in seen] == [(40.0, "copying 3/9"), (100.0, "")]
    assert out.getvalue() == b"start\nTASKD-PROGRESS x\nhalf a line\nno newline at the end\n"


def test_output_is_kept_up_to_the_limit_and_says_what_was_dropped() -> None:
    out = io.BytesIO()
    kept = execprog.Kept(out, 10)
    lines = execprog.Lines(kept, lambda r: None)
    lines.feed(b"0123456789abcdef\n" * 3)
    kept.finish()
    assert out.getvalue().startswith(b"0123456789\n[taskd: 41 more bytes of output not kept")
    assert kept.kept == 10 and kept.dropped == 41


@settings(database=None, deadline=None)
@given(st.binary(max_size=200))
def test_no_line_but_a_progress_line_is_read_as_one(line: bytes) -> None:
    found = execprog.progress_line(line)
    if found is not None:
        assert line.startswith(b"TASKD-PROGRESS ") and 0 <= found.percent <= 100


@settings(database=None, deadline=None)
@given(st.lists(st.binary(max_size=50), max_size=20), st.integers(1, 40))
def test_whatever_the_chunks_every_byte_but_progress_lines_is_kept(
    chunks: list[bytes], cut: int
) -> None:
    data = b"".join(chunks)
    out = io.BytesIO()
    lines = execprog.Lines(execprog.Kept(out, 1 << 20), lambda r: None)
    for at in range(0, len(data), cut):
        lines.feed(data[at : at + cut])
    lines.end()
    *complete, last = data.split(b"\n")
    expected = b"".join(line + b"\n" for line in complete if execprog.progress_line(line) is None)
    if last and execprog.progress_line(last) is None:
        expected += last + b"\n"  # the last line, unended, is kept ended
    assert out.getvalue() == expected


REPO = Path(__file__).resolve().parents[2]


def test_the_examples_make_run_offers_are_good_task_files(tmp_path: Path) -> None:
    """What the README has a newcomer submit under `make run` (EXEC on with
    examples/programs/) is judged good, and the program it names is there to run."""
    from bridge import contract
    from bridge.judge import judge
    from taskd.formats import checker

    programs = REPO / "examples" / "programs"
    on = Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path), "TASKD_EXEC_DIR": str(programs)})
    types = load_types(on.type_dirs)
    examples = sorted(p for p in (REPO / "examples").iterdir() if p.is_file())
    assert any(p.suffix == ".EXEC" for p in examples)
    for path in examples:
        name = contract.parse_name(("3", path.name))
        assert name is not None, path
        verdict = judge(path.read_bytes(), name, types, checker(on.mail_db_path))
        assert verdict.ok, (path, verdict.error)
        if name.type == "EXEC":
            assert execprog.program_path(programs, verdict.fields["program"]).exists()


def test_the_program_runs_under_the_supervisor_with_its_arguments_as_a_list(
    tmp_path: Path,
) -> None:
    line = execprog.argv(tmp_path / "hello", ["a b", "; rm -rf /"])
    assert line[-3:] == [str(tmp_path / "hello"), "a b", "; rm -rf /"]  # a list: no shell
    assert line[1:4] == ["-I", str(execprog.SUPERVISOR), str(os.getpid())]
    for bad in ("a\0b", "\ud800"):
        with pytest.raises(TaskFailed, match="field 'args'"):
            execprog.argv(tmp_path / "hello", [bad])
