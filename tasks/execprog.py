"""EXEC: run one of the programs ops put in TASKD_EXEC_DIR, by name, with arguments as a list.

No shell and no path: `program` names a file of that folder, run with a minimal environment in
the task's tmp-space, in a process group of its own that dies with the worker's process. Cancel,
the task's `timeout` and the type's time limits end the whole group (SIGTERM, then SIGKILL).

What the program writes (stdout and stderr together) is kept, at most TASKD_EXEC_OUTPUT_BYTES of
it, as the task's output file in `download/<user-id>/`; lines `TASKD-PROGRESS <percent> [text]`
on its output report progress instead of being kept. Exit 0 is SUCCESS, with `exit-code` and
`output` in the file; any other exit, or a signal, is FAILURE naming it and the output file.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tasks import pack
from tasks.app import app
from tasks.base import Job, TaskdTask
from tasks.errors import TaskFailed

PROGRAM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
PROGRESS_PREFIX = b"TASKD-PROGRESS "
_PROGRESS_LINE = re.compile(rb"TASKD-PROGRESS (\d{1,3}(?:\.\d+)?)(?: (.*))?")
READ_S = 0.5
"""How long a read waits for output before the cancel and the timeout are looked at again."""
STOP_GRACE_S = 5.0
"""After SIGTERM, the program's group has this long before SIGKILL."""
MAX_LINE = 64 << 10
"""A line longer than this is kept as it comes, never looked at as a progress line."""
MAX_TEXT = 120
"""What a progress line's words may be: one line of printable text, this long at most."""
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def program_path(settings_dir: Path | None, name: str) -> Path:
    """The program `name` of TASKD_EXEC_DIR, checked: a name (not a path) of an executable
    regular file there (ops may link one in from elsewhere)."""
    if settings_dir is None:
        raise TaskFailed("task type EXEC is off: ops turn it on with TASKD_EXEC_DIR")
    if not PROGRAM_RE.fullmatch(name):
        raise TaskFailed(
            f"field 'program': {name!r} is not a program name (letters, digits, . _ + -, "
            "no path); write the name of a program in TASKD_EXEC_DIR"
        )
    path = settings_dir / name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TaskFailed(
            f"field 'program': there is no program {name!r} in TASKD_EXEC_DIR; the programs "
            f"there are: {', '.join(available(settings_dir)) or 'none'}"
        ) from None
    except OSError as exc:
        raise TaskFailed(
            f"field 'program': {name!r} cannot be looked at ({exc.strerror})"
        ) from None
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        raise TaskFailed(f"field 'program': {name!r} in TASKD_EXEC_DIR is not an executable file")
    return path


def available(folder: Path) -> list[str]:
    """The program names of a folder (what an error lists)."""
    try:
        names = sorted(e.name for e in os.scandir(folder) if PROGRAM_RE.fullmatch(e.name))
    except OSError:
        return []
    return names[:20]


def environment(job: Job, tmp: Path) -> dict[str, str]:
    """All the program gets of the worker's environment: nothing of it but these."""
    return {
        "PATH": BASE_PATH,
        "LANG": "C.UTF-8",
        "HOME": str(tmp),
        "TMPDIR": str(tmp),
        "TASKD_JOB_ID": job.job_id,
        "TASKD_USER_ID": job.user_id,
        "TASKD_TASK_ID": job.task_id,
    }


SUPERVISOR = Path(__file__).resolve().with_name("execsupervise.py")


def argv(path: Path, args: list[str]) -> list[str]:
    """The command line: the program and its arguments, as a list (no shell), under the small
    supervisor (`tasks/execsupervise.py`) that ends its whole group with the task, or with the
    worker's process if that dies first."""
    for arg in args:
        if "\0" in arg or any(0xD800 <= ord(c) <= 0xDFFF for c in arg):
            raise TaskFailed(
                "field 'args': an argument holds a NUL or a lone surrogate, which no program "
                "can be given; remove it"
            )
    return [sys.executable, "-I", str(SUPERVISOR), str(os.getpid()), str(path), *args]


@dataclass
class Report:
    """A progress line: the percentage and what the program says it is doing."""

    percent: float
    text: str


def progress_line(line: bytes) -> Report | None:
    """`TASKD-PROGRESS 42 copying 3/9` -> Report(42, "copying 3/9"); None for any other line."""
    match = _PROGRESS_LINE.fullmatch(line.rstrip(b"\r\n"))
    if match is None:
        return None
    words = (match.group(2) or b"").decode("utf-8", "replace")
    text = "".join(c for c in words if c.isprintable()).strip()[:MAX_TEXT]
    return Report(min(100.0, float(match.group(1))), text)


class Kept:
    """The program's output as it comes, kept up to `limit` bytes; what is dropped is counted."""

    def __init__(self, handle: IO[bytes], limit: int) -> None:
        self.handle, self.limit = handle, limit
        self.kept = self.dropped = 0

    def add(self, data: bytes) -> None:
        room = max(0, self.limit - self.kept)
        self.handle.write(data[:room])
        self.kept += min(room, len(data))
        self.dropped += max(0, len(data) - room)

    def finish(self) -> None:
        if self.dropped:
            self.handle.write(
                f"\n[taskd: {self.dropped} more bytes of output not kept, over "
                f"TASKD_EXEC_OUTPUT_BYTES={self.limit}]\n".encode()
            )
        self.handle.flush()


class Lines:
    """Splits the output into lines: progress lines go to `report`, the rest to `kept`."""

    def __init__(self, kept: Kept, report: Callable[[Report], None]) -> None:
        self.kept, self.report, self.partial = kept, report, b""

    def feed(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > MAX_LINE:  # no progress line is that long: keep it as it comes
            self.kept.add(self.partial)
            self.partial = b""
        for line in lines:
            found = progress_line(line) if line.startswith(PROGRESS_PREFIX) else None
            if found is None:
                self.kept.add(line + b"\n")
            else:
                self.report(found)

    def end(self) -> None:
        if self.partial:
            self.feed(b"\n")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """End the program and whatever it started in its group: SIGTERM to the supervisor, which
    ends the group (SIGTERM, then SIGKILL after its grace); SIGKILL to the supervisor's own group
    if it has not finished by then."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_GRACE_S + 2)
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _pump(proc: subprocess.Popen[bytes], lines: Lines, job: Job, deadline: float) -> int | None:
    """Read the program's output until it closes it and exits: its exit code, or None when
    the deadline came first. Between reads, a report that looks at the cancel flag
    (`job.progress` raises Cancelled, at most once a second)."""
    assert proc.stdout is not None
    poller = select.poll()  # not select(): a worker may hold descriptors past 1024
    poller.register(proc.stdout.fileno(), select.POLLIN | select.POLLHUP)
    fd: int | None = proc.stdout.fileno()
    while fd is not None or proc.poll() is None:
        if time.monotonic() >= deadline:
            return None
        if fd is None:  # its output closed, the program still running
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(READ_S)
        elif poller.poll(READ_S * 1000):
            data = os.read(fd, 1 << 16)
            if data:
                lines.feed(data)
            else:
                lines.end()
                fd = None
        job.progress(0)  # the last percentage stands; this only renews it and reads cancel
    return proc.wait()


def _reporter(job: Job) -> Callable[[Report], None]:
    def report(found: Report) -> None:
        job.progress(found.percent, detail=found.text or None)

    return report


def _outcome(job: Job, code: int | None, output: Path) -> dict[str, Any]:
    if code == 0:
        return {"exit-code": 0, "output": str(output), "tmp-space": None}
    program = job.fields.get("program")
    if code is None:
        how = f"ran longer than {job.fields.get('timeout')} s (field 'timeout') and was stopped"
    elif code < 0:
        how = f"was killed by signal {_signal_name(-code)}"
    else:
        how = f"exited with code {code}"
    raise TaskFailed(f"program {program!r} {how}; its output is in {output}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _started(job: Job, path: Path, tmp: Path) -> subprocess.Popen[bytes]:
    args = [str(a) for a in job.fields.get("args") or []]
    return subprocess.Popen(  # noqa: S603 - a checked program of ops' folder, no shell
        argv(path, args),
        cwd=tmp,
        env=environment(job, tmp),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a process group of its own, ended as a whole
    )


def _named(log: IO[bytes], path: Path) -> Path:
    """The kept output under `path`, a new file of its own (the program, ended by now, may have
    left anything there), to be published."""
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        log.seek(0)
        shutil.copyfileobj(log, out)
    return path


def run_program(job: Job) -> dict[str, Any]:
    settings = job.settings
    path = program_path(settings.exec_dir, str(job.fields.get("program", "")))
    deadline = time.monotonic() + float(job.fields.get("timeout") or 1e9)
    stem = pack.safe_name(str(job.fields.get("description") or ""), job.task_id)
    with job.work_dir() as tmp:
        job.progress(0, force=True, **{"tmp-space": str(tmp)})
        # Unnamed while the program runs (O_TMPFILE): nothing it does in its folder can swap
        # what is published for a file of its choosing.
        with tempfile.TemporaryFile(dir=tmp) as log:
            kept = Kept(log, settings.exec_output_bytes)
            proc = _started(job, path, tmp)
            try:
                code = _pump(proc, Lines(kept, _reporter(job)), job, deadline)
            finally:
                stop_group(proc)  # whatever happened: nothing of the program outlives its task
                kept.finish()
            log_file = _named(log, tmp / f"{job.job_id}.log")
        output = pack.publish_download(settings, job.user_id, log_file, stem, ".log")
        return _outcome(job, code, output)


@app.task(base=TaskdTask, name="tasks.execprog.run")
def run(job: Job) -> dict[str, Any]:
    return run_program(job)
