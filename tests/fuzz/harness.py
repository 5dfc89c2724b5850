"""The world the hostile fuzz runs in: a bridge it may kill, canaries outside, and the checks.

The bridge runs against the session's data root, Redis, SMTP server and Celery worker, with
short windows (settle, reject-after, rescan) and a 4 KiB task-size limit so hostile cases are
cheap. Canary files outside the data root and outside TASKD_ALLOWED_FILE_ROOTS carry a random
token: the token showing up in any file the bridge or a worker wrote, or in any mail, means
something followed a link or a path it must not follow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import stat
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.support.procs import BridgeProc, wait_until
from tests.support.smtp import SmtpServer

STATES = frozenset({"QUEUED", "STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE", "REJECTED"})
TERMINAL = frozenset({"SUCCESS", "FAILURE", "REJECTED"})
FAILED = frozenset({"FAILURE", "REJECTED"})
TASK_NAME = re.compile(r"(?P<stem>.+)\.(?P<type>[A-Z][A-Z0-9_]*)", re.DOTALL)
ERR_PART = re.compile(r"-ERR(?![A-Za-z])")
LOG_LINE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")

# The windows of the fuzz bridge: short, so that waiting for it to settle is short too.
SETTLE_S = 0.1
REJECT_AFTER_S = 0.5
RESCAN_S = 1.0
# How long a file may stay unanswered: a reject window, a rescan, a bridge start-up, slack.
ANSWER_DEADLINE_S = REJECT_AFTER_S + RESCAN_S + 8.0
# Legitimate growth of a file the bridge rewrites: JSON escapes a control byte as \u00XX (six
# bytes for one), and adds its own fields (task-id, state, times, error...) once per file.
GROWTH_FACTOR = 6
GROWTH_PER_FILE = 2048
GROWTH_SLACK = 16384
# A task's whole life (taken, started, ended, notified) and the `ignoring ...` line that each
# bridge start may repeat: more lines than this about one name is a flood.
LOG_LINES_PER_NAME = 8
LOG_LINES_PER_RESTART = 3


def is_task_name(name: str) -> bool:
    """A task file's name by the contract: `<stem>.<TYPE>`, not hidden, not an editor file."""
    if name.startswith((".", "#", "~")) or name.endswith(("~", "#")):
        return False
    return TASK_NAME.fullmatch(name) is not None


def read_no_follow(path: Path) -> bytes | None:
    """A regular file's bytes; None for anything else (never follows a link, never blocks)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def parse(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def identity(path: Path) -> tuple[Any, ...] | None:
    """What must not change about an entry the bridge has to leave alone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    mode = stat.S_IFMT(st.st_mode)
    base = (mode, st.st_ino, st.st_size, st.st_mtime_ns)
    if stat.S_ISLNK(st.st_mode):
        return (*base, os.readlink(path))
    if stat.S_ISREG(st.st_mode):
        return (*base, hashlib.sha256(read_no_follow(path) or b"").hexdigest())
    if stat.S_ISDIR(st.st_mode):
        return (*base, tuple(sorted(os.listdir(path))))
    return base


def walk(top: Path) -> Iterator[Path]:
    """Every entry below `top`, symlinks reported but never followed."""
    try:
        entries = list(os.scandir(top))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    for entry in entries:
        yield Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from walk(Path(entry.path))


def tree(top: Path) -> dict[str, tuple[Any, ...] | None]:
    return {str(p.relative_to(top)): identity(p) for p in walk(top)}


def disk_bytes(tops: list[Path]) -> int:
    total = 0
    for top in tops:
        for path in walk(top):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                total += st.st_size
    return total


def tar_bytes(path: Path) -> Iterator[bytes]:
    """Member names and contents of a .tar.gz, as the UI's user would unpack them."""
    raw = read_no_follow(path)
    if raw is None:
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as archive:
            for member in archive:
                yield member.name.encode()
                handle = archive.extractfile(member) if member.isfile() else None
                if handle is not None:
                    yield handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield f"<unreadable archive {path.name}: {exc}>".encode()


@dataclass
class Canaries:
    """Files outside the data root and outside the allowed roots, each carrying `token`."""

    outside: Path
    token: str = field(default_factory=lambda: f"CANARY-{secrets.token_hex(12)}")

    def __post_init__(self) -> None:
        self.outside.mkdir(parents=True, exist_ok=True)
        self.text = self.outside / "canary.txt"
        self.mail = self.outside / "canary.eml"
        self.task = self.outside / "canary.SLOW"
        self.folder = self.outside / "folder"
        self.text.write_text(f"secret {self.token}\n")
        self.mail.write_text(
            f"To: canary@fuzz.example\nSubject: canary\n\nmailed from outside {self.token}\n"
        )
        self.task.write_text(json.dumps({"type": "SLOW", "steps": 0, "label": self.token}))
        self.folder.mkdir(exist_ok=True)
        (self.folder / "a.txt").write_text(f"outside folder {self.token}\n")
        self.snapshot = tree(self.outside)

    def untouched(self) -> list[str]:
        now = tree(self.outside)
        return [
            f"outside the data root, {name} was {'changed' if name in self.snapshot else 'created'}"
            for name in sorted(set(now) | set(self.snapshot))
            if now.get(name) != self.snapshot.get(name)
        ]


class FuzzBridge:
    """The bridge under test, started, killed -9 and started again by the machine."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: BridgeProc | None = None
        self.restarts = 0

    def start(self) -> None:
        self.proc = BridgeProc(self.env, self.log)
        self.proc.start()

    def kill_and_restart(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        # The dead bridge's Redis lease would hold the next one back for its 3 s: it is gone
        # with its holder, so drop it rather than wait for it (the fuzz budget is short).
        client = redis.Redis.from_url(self.env["TASKD_REDIS_URL"])
        try:
            for key in client.scan_iter("taskd:bridge:*"):
                client.delete(key)
        finally:
            client.close()
        self.restarts += 1
        self.start()

    def exited(self) -> int | None:
        """The exit code if the bridge ended on its own (it never should), else None."""
        assert self.proc is not None and self.proc.proc is not None
        return self.proc.proc.poll()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def log_bytes(self, offset: int = 0) -> bytes:
        with open(self.log, "rb") as handle:
            handle.seek(offset)
            return handle.read()

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0


@dataclass
class World:
    """Everything shared by the examples of one fuzz run."""

    data_root: Path
    env: dict[str, str]
    bridge: FuzzBridge
    canaries: Canaries
    smtp: SmtpServer
    top_level: set[str] = field(default_factory=set)
    queue_level: set[str] = field(default_factory=set)

    @property
    def task_queue(self) -> Path:
        return self.data_root / "task_queue"

    @property
    def allowed(self) -> Path:
        return self.data_root / "files"

    def mark_tops(self) -> None:
        self.top_level = set(os.listdir(self.data_root))
        self.queue_level = set(os.listdir(self.task_queue))


def task_problem(path: Path, fields: dict[str, Any] | None) -> str | None:
    """Why a task file is not (yet) in a state the contract names; None when it is."""
    if fields is None:
        return "not a JSON object the bridge wrote"
    state = fields.get("state")
    if state not in STATES:
        return f"state {state!r} is not one the contract names"
    if not isinstance(fields.get("task-id"), str):
        return "no task-id"
    if state in FAILED and not (isinstance(fields.get("error"), str) and fields["error"]):
        return f"{state} without an error"
    return None


def name_problem(name: str, fields: dict[str, Any]) -> str | None:
    """A file the bridge owns is named after its task-id: `<task-id>-<runtime-info>.<TYPE>`,
    or `<task-id>.<TYPE>` (see below)."""
    task_id = fields["task-id"]
    match = TASK_NAME.fullmatch(name)
    assert match is not None
    if name.startswith(f"{task_id}-") and "/" not in task_id:
        return None
    if match["stem"] == task_id:
        # Rejected beside an earlier `-ERR` file, or taken (content first, then the name)
        # and seen between the two steps, or resumed after a kill in that window: the next
        # write moves the name (file-contract.md, "How it is written").
        return None
    return f"named {name!r} but says task-id {task_id!r} (a forged or misread task-id)"


def scan_token(token: str, tops: list[Path]) -> list[str]:
    """Files under `tops` (not following links; .tar.gz unpacked) that contain `token`."""
    needle = token.encode()
    found = []
    for top in tops:
        for path in walk(top):
            chunks: list[bytes]
            if path.name.endswith((".tar.gz", ".tgz", ".tar")):
                chunks = list(tar_bytes(path))
            else:
                chunks = [read_no_follow(path) or b""]
            if any(needle in chunk for chunk in chunks):
                found.append(str(path))
    return found


# Files the test wrote, by identity, and when: one the bridge has not touched yet may merely
# look answered (a forged file carries a state) until the bridge has had its chance at it.
WRITTEN: dict[tuple[int, int, int], float] = {}
UNTOUCHED_GRACE_S = 2.0


def note_written(st: os.stat_result) -> None:
    WRITTEN[(st.st_ino, st.st_size, st.st_mtime_ns)] = time.monotonic()


def _fresh_from_the_test(entry: os.DirEntry[str]) -> bool:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return False  # renamed since the listing: looked at again next poll
    written = WRITTEN.get((st.st_ino, st.st_size, st.st_mtime_ns))
    return written is not None and time.monotonic() - written < UNTOUCHED_GRACE_S


def wait_settled(
    dirs: list[Path], what: str, timeout: float = ANSWER_DEADLINE_S
) -> dict[Path, dict[str, Any]]:
    """Wait until every task file in `dirs` carries a contract state; its fields by path."""
    last: dict[Path, str] = {}

    def answered() -> list[dict[Path, dict[str, Any]]] | None:
        last.clear()
        out: dict[Path, dict[str, Any]] = {}
        for directory in dirs:
            for entry in os.scandir(directory):
                if not entry.is_file(follow_symlinks=False) or not is_task_name(entry.name):
                    continue
                path = Path(entry.path)
                if _fresh_from_the_test(entry):
                    last[path] = "just written by the test, not yet looked at by the bridge"
                    continue
                raw = read_no_follow(path)
                if raw is None:
                    continue  # renamed since the listing: looked at again next poll
                fields = parse(raw)
                problem = task_problem(path, fields)
                if problem is not None:
                    last[path] = f"{problem}: {raw[:120]!r}"
                elif fields is not None:
                    out[path] = fields
        return [out] if not last else None  # a list: an empty directory is answered too

    try:
        return dict(wait_until(answered, timeout, interval=0.05, what=what)[0])
    except AssertionError:
        raise AssertionError(
            f"task files left unanswered for {timeout:g} s (the contract rejects or takes "
            f"every complete file): {[(p.name, why) for p, why in last.items()]}"
        ) from None


def log_problems(text: bytes, names: dict[str, str], restarts: int) -> list[str]:
    """Tracebacks, unexpected errors, forged lines, and names logged over and over."""
    problems = []
    if b"Traceback" in text:
        at = text.index(b"Traceback")
        problems.append(f"Traceback in the bridge log: {text[at : at + 1500]!r}")
    if b"unexpected error" in text:
        at = text.index(b"unexpected error")
        problems.append(f"'unexpected error' in the bridge log: {text[at - 200 : at + 400]!r}")
    lines = text.split(b"\n")
    forged = [line for line in lines if line and not LOG_LINE.match(line)]
    if forged and b"Traceback" not in text:
        problems.append(f"log lines not written by the logger (a name broke a line): {forged[:3]}")
    if b"\x1b" in text:
        problems.append("a raw ESC (terminal escape) in the bridge log")
    limit = LOG_LINES_PER_NAME + LOG_LINES_PER_RESTART * restarts
    for name, stem_key in names.items():
        needles = (f"/{name}".encode(), f" {name}".encode(), stem_key.encode())
        count = sum(1 for line in lines if any(n in line for n in needles))
        if count > limit:
            sample = [line[:200] for line in lines if any(n in line for n in needles)][-3:]
            problems.append(f"{name!r} is in {count} log lines (over {limit}): {sample}")
    return problems
