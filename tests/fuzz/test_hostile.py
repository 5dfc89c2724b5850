"""A hostile UI against the real bridge, Redis, Celery worker and file system.

A hypothesis state machine writes, rewrites, renames, links and deletes task files, notify
mails, folders and listed files with hostile content and names, and kills the bridge (-9) and
starts it again between steps. After each step it waits for the bridge to answer every task
file (never longer than the reject window plus a rescan and a start-up) and checks that:

- the bridge is alive: it never exits on its own;
- every task file carries exactly one state the contract names, an `error` when it failed, and
  a name that follows its own task-id; files that are not task files are left untouched;
- the bytes on disk stay within a small multiple of what the test wrote, and no name nests
  (`x-ERR-ERR.SLOW`);
- nothing outside the data root changes, and a canary token kept outside the allowed roots
  never shows up in a task file, an output (archives unpacked) or a mail;
- the bridge log has no Traceback, no "unexpected error", no line a file name forged, and no
  name logged over and over.

`make test` runs it small (about a minute); `pytest tests/fuzz --fuzz-scale 10` runs ten times
more. Failures print the steps; TASKD_FUZZ_SHRINK=1 shrinks them (slow: it replays real
processes); TASKD_FUZZ_SKIP=oversize,bignum,... leaves rule families out, to look past a bug
already known.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.fuzz import strategies as fs
from tests.fuzz.harness import (
    ERR_PART,
    GROWTH_FACTOR,
    GROWTH_PER_FILE,
    GROWTH_SLACK,
    REJECT_AFTER_S,
    RESCAN_S,
    SETTLE_S,
    TERMINAL,
    Canaries,
    FuzzBridge,
    World,
    disk_bytes,
    identity,
    is_task_name,
    log_problems,
    name_problem,
    note_written,
    parse,
    read_no_follow,
    scan_token,
    wait_settled,
)
from tests.support.procs import Worker, wait_until
from tests.support.smtp import SmtpServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1800)]

_examples = itertools.count(1)
# The first failure seen, with the steps that led to it. A replay against real processes may
# fail at another step or not at all (hypothesis then reports a flaky test): this is what the
# test reports in any case.
FIRST_FAILURE: list[str] = []
SKIP = {s.strip() for s in os.environ.get("TASKD_FUZZ_SKIP", "").split(",") if s.strip()}
# How long a plain valid task may take to end (SLOW of at most 3 x 0.05 s, a tiny PACKMS).
FINISH_S = 30.0


def _family(name: str) -> bool:
    """Whether a rule family runs in this fuzz run (TASKD_FUZZ_SKIP leaves it out)."""
    return name not in SKIP


ENDED = {"SUCCESS", "FAILURE", "REJECTED", "CANCELLED"}


def _listed(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


class HostileMachine(RuleBasedStateMachine):
    world: World  # set by the test before the run; hypothesis builds the machine itself

    def __init__(self) -> None:
        super().__init__()
        n = next(_examples)
        self.users = [f"fz{n}a", f"fz{n}b"]
        self.dirs = [self.world.task_queue / u for u in self.users]
        self.serial = itertools.count(1)
        self.written = 0  # bytes the test put under the measured folders
        self.created = 0  # entries the test created there
        self.untouched: dict[Path, tuple[Any, ...] | None] = {}
        self.may_vanish: set[Path] = set()  # symlinked notify mails: a cancel may remove them
        self.plain: set[tuple[str, str]] = set()  # (user, task-id) that must end by teardown
        self.renamed_ids: set[tuple[str, str]] = set()
        self.names: dict[str, str] = {}  # every name written -> its `task_id=... user_id=...`
        self.log_offset = self.world.bridge.log_size()
        self.restarts_at_start = self.world.bridge.restarts
        self.failed = False
        self.trace: list[str] = []
        self.stems_written: set[str] = set()
        for user, directory in zip(self.users, self.dirs, strict=True):
            directory.mkdir(parents=True)
            files = self.world.allowed / user
            (files / "sub").mkdir(parents=True)
            (files / "ok.txt").write_text("fine\n")
            (files / "sub" / "a.txt").write_text("inside\n")
            (files / "link.txt").symlink_to(self.world.canaries.text)

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _pick(data: st.DataObject, items: list[Path], label: str) -> Path | None:
        """One of `items`, which the file system decides: the draw itself must not depend on
        them (hypothesis replays draws), so an index is drawn and folded onto the list."""
        index = data.draw(st.integers(0, 1 << 16), label=label)
        return items[index % len(items)] if items else None

    def _dir(self, data: st.DataObject) -> tuple[str, Path]:
        i = data.draw(st.sampled_from([0, 1]), label="user")
        return self.users[i], self.dirs[i]

    def _write(self, directory: Path, name: str, content: bytes) -> Path:
        path = directory / name
        self._note(f"write {directory.name}/{name!r}: {content[:300]!r} ({len(content)} bytes)")
        with open(path, "wb") as handle:
            handle.write(content)
            handle.flush()
            # From the descriptor: the bridge may take and rename the file before a stat by name.
            note_written(os.fstat(handle.fileno()))
        self.written += len(content)
        self.created += 1
        match = fs_stem(name)
        self.names[name] = f"task_id={match} user_id={directory.name}"
        self.stems_written.add(match)
        return path

    def _note(self, step: str) -> None:
        self.trace.append(step)

    def _leave_alone(self, path: Path) -> None:
        self._note(f"made {path.parent.name}/{path.name!r}: {_kind(path)}")
        self.untouched[path] = identity(path)
        self.created += 1
        self.written += len(path.name)

    def _files_of(self, directory: Path, owned: bool | None = None) -> list[Path]:
        """Task files now in `directory`; with `owned`, only those the bridge has (not) taken."""
        out = []
        for entry in sorted(os.listdir(directory)):
            path = directory / entry
            if not is_task_name(entry) or path.is_symlink() or not path.is_file():
                continue
            fields = parse(read_no_follow(path))
            taken = fields is not None and isinstance(fields.get("task-id"), str)
            if owned is None or owned == taken:
                out.append(path)
        return out

    def _finished_jobs(self, directory: Path) -> tuple[list[str], list[str]]:
        jobs, ids = [], []
        for path in self._files_of(directory, owned=True):
            fields = parse(read_no_follow(path)) or {}
            if isinstance(fields.get("job-id"), str):
                jobs.append(fields["job-id"])
                ids.append(str(fields["task-id"]))
        return jobs, ids

    def _valid(self, data: st.DataObject, task_type: str, user: str) -> dict[str, Any]:
        if task_type == "SLOW":
            return data.draw(fs.valid_slow(), label="content")
        if task_type == "RETRMS":
            return data.draw(fs.valid_retrms(), label="content")
        listed = str(self.world.allowed / user / "ok.txt")
        return {"type": "PACKMS", "description": data.draw(st.text(max_size=12)), "files": [listed]}

    # --- writing task files ----------------------------------------------------------------

    @rule(data=st.data(), task_type=st.sampled_from(fs.TYPES), mail=st.booleans())
    def write_valid(self, data: st.DataObject, task_type: str, mail: bool) -> None:
        user, directory = self._dir(data)
        stem = data.draw(fs.stems(next(self.serial)), label="stem")
        if mail:
            self._write(directory, f"{stem}.notify.eml", b"To: fz@fuzz.example\n\nended\n")
        self._write(
            directory,
            f"{stem}.{task_type}",
            json.dumps(self._valid(data, task_type, user)).encode(),
        )
        self.plain.add((user, stem))

    @precondition(lambda self: _family("hostile"))
    @rule(data=st.data(), task_type=st.sampled_from(fs.TYPES))
    def write_hostile(self, data: st.DataObject, task_type: str) -> None:
        _, directory = self._dir(data)
        content = data.draw(fs.hostile_content(task_type, SKIP), label="content")
        stem = f"h{next(self.serial)}"
        self._write(directory, f"{stem}.{task_type}", content)

    @precondition(lambda self: _family("forged"))
    @rule(data=st.data(), task_type=st.sampled_from(fs.TYPES))
    def write_forged(self, data: st.DataObject, task_type: str) -> None:
        i = data.draw(st.sampled_from([0, 1]), label="user")
        fields = data.draw(fs.forged_fields(task_type), "content")
        # The sentinels become ids of tasks that exist: the other user's first, then our own.
        jobs, ids = self._finished_jobs(self.dirs[1 - i])
        own_jobs, own_ids = self._finished_jobs(self.dirs[i])
        for key, sentinel, found in (
            ("job-id", fs.OTHER_JOB, jobs + own_jobs),
            ("task-id", fs.OTHER_TASK, ids + own_ids),
        ):
            if fields.get(key) == sentinel:
                fields[key] = found[0] if found else "00000000-0000-0000-0000-000000000000"
        stem = f"f{next(self.serial)}"
        self._write(self.dirs[i], f"{stem}.{task_type}", json.dumps(fields).encode())

    @precondition(lambda self: _family("longname"))
    @rule(data=st.data(), task_type=st.sampled_from(fs.TYPES))
    def write_long_name(self, data: st.DataObject, task_type: str) -> None:
        user, directory = self._dir(data)
        stem = data.draw(fs.long_stems(next(self.serial), f".{task_type}"), label="stem")
        self._write(
            directory,
            f"{stem}.{task_type}",
            json.dumps(self._valid(data, task_type, user)).encode(),
        )

    @precondition(lambda self: _family("weirdname"))
    @rule(data=st.data())
    def write_weird_name(self, data: st.DataObject) -> None:
        user, directory = self._dir(data)
        stem = data.draw(fs.weird_stems(next(self.serial)), label="stem")
        self._write(directory, f"{stem}.SLOW", json.dumps(self._valid(data, "SLOW", user)).encode())

    @precondition(lambda self: _family("reuse"))
    @rule(data=st.data())
    def reuse_task_id(self, data: st.DataObject) -> None:
        """A second `<id>.TYPE` beside the bridge's `<id>-....TYPE`: a task-id used again."""
        user, directory = self._dir(data)
        contents = {t: self._valid(data, t, user) for t in fs.TYPES}
        path = self._pick(data, self._files_of(directory, owned=True), "reused")
        if path is None:
            return
        fields = parse(read_no_follow(path)) or {}
        task_id, task_type = str(fields.get("task-id")), path.suffix[1:]
        if "/" in task_id or not task_id or task_type not in fs.TYPES:
            return
        self._write(directory, f"{task_id}.{task_type}", json.dumps(contents[task_type]).encode())
        self.plain.add((user, task_id))

    @precondition(lambda self: _family("overwrite"))
    @rule(data=st.data())
    def overwrite_taken(self, data: st.DataObject) -> None:
        """The UI scribbles over a file the bridge owns."""
        user, directory = self._dir(data)
        contents = {t: data.draw(fs.hostile_content(t, SKIP), label=t) for t in fs.TYPES}
        path = self._pick(data, self._files_of(directory, owned=True), "overwritten")
        if path is None:
            return
        fields = parse(read_no_follow(path)) or {}
        self.plain.discard((user, str(fields.get("task-id"))))
        self._write(directory, path.name, contents.get(path.suffix[1:], contents["SLOW"]))

    # --- links, FIFOs, folders, notify mails -------------------------------------------------

    @precondition(lambda self: _family("links"))
    @rule(data=st.data())
    def symlink_task_file(self, data: st.DataObject) -> None:
        _, directory = self._dir(data)
        targets = [self.world.canaries.task, self.world.canaries.folder, Path("/nonexistent/x")]
        target = self._pick(data, targets + self._files_of(directory)[:3], "target")
        assert target is not None
        path = directory / f"s{next(self.serial)}.SLOW"
        path.symlink_to(target)
        self._leave_alone(path)

    @precondition(lambda self: _family("links"))
    @rule(data=st.data(), with_task=st.booleans())
    def symlink_notify_mail(self, data: st.DataObject, with_task: bool) -> None:
        """`<id>.notify.eml` linked to a mail outside: it must never be sent."""
        user, directory = self._dir(data)
        path = self._pick(data, self._files_of(directory, owned=True), "beside")
        if with_task or path is None:
            stem = f"n{next(self.serial)}"
            mail = directory / f"{stem}.notify.eml"
            mail.symlink_to(self.world.canaries.mail)
            content = {"type": "SLOW", "steps": 0, "notify": ["fz@fuzz.example"]}
            self._write(directory, f"{stem}.SLOW", json.dumps(content).encode())
            self.plain.add((user, stem))
        else:
            task_id = str((parse(read_no_follow(path)) or {}).get("task-id"))
            mail = directory / f"{task_id}.notify.eml"
            if "/" in task_id or len(os.fsencode(mail.name)) > 255 or os.path.lexists(mail):
                return  # a task-id near the name limit has no room for the mail's suffix
            mail.symlink_to(self.world.canaries.mail)
        self._leave_alone(mail)
        self.may_vanish.add(mail)

    @rule(data=st.data())
    def notify_mail_late(self, data: st.DataObject) -> None:
        """A regular notify mail beside a task that may have ended already."""
        _, directory = self._dir(data)
        path = self._pick(data, self._files_of(directory, owned=True), "beside")
        if path is None:
            return
        task_id = str((parse(read_no_follow(path)) or {}).get("task-id"))
        mail = directory / f"{task_id}.notify.eml"
        if "/" in task_id or len(os.fsencode(mail.name)) > 255 or os.path.lexists(mail):
            return  # a task-id near the name limit has no room for the mail's suffix
        self._write(directory, mail.name, b"To: late@fuzz.example\n\nlate\n")

    @precondition(lambda self: _family("special"))
    @rule(data=st.data(), kind=st.sampled_from(["fifo", "dir", "dir-with-file", "lower", "editor"]))
    def not_a_task_file(self, data: st.DataObject, kind: str) -> None:
        _, directory = self._dir(data)
        stem = f"x{next(self.serial)}"
        if kind == "fifo":
            path = directory / f"{stem}.SLOW"
            os.mkfifo(path)
        elif kind == "dir":
            path = directory / f"{stem}.PACKMS"
            path.mkdir()
        elif kind == "dir-with-file":
            path = directory / f"{stem}.RETRMS"
            path.mkdir()
            (path / "inner.SLOW").write_text('{"type": "SLOW"}')
        elif kind == "lower":
            path = directory / f"{stem}.slow"
            path.write_text('{"type": "SLOW"}')
        else:
            path = directory / f"{stem}.SLOW~"
            path.write_text('{"type": "SLOW"}')
        self._leave_alone(path)

    # --- PACKMS paths ------------------------------------------------------------------------

    @precondition(lambda self: _family("paths"))
    @rule(data=st.data())
    def packms_hostile_files(self, data: st.DataObject) -> None:
        user, directory = self._dir(data)
        mine = self.world.allowed / user
        canaries = self.world.canaries
        choices = [
            str(canaries.text),
            str(mine / "link.txt"),
            str(mine / "sub" / "a.txt"),
            str(mine / "ok.txt"),
            f"{mine}/../../../{canaries.outside.name}/canary.txt",
            str(mine / ".." / ".." / "files" / user / "link.txt"),
            "ok.txt",
            str(mine / "sub"),
            str(canaries.folder / "a.txt"),
        ]
        entry = st.sampled_from(choices)
        listed = data.draw(st.lists(entry, min_size=1, max_size=6), label="files")
        repeat = data.draw(st.integers(1, 20), label="repeat")
        content = {
            "type": "PACKMS",
            "description": f"p{next(self.serial)}",
            "files": listed * repeat,
        }
        self._write(directory, f"p{next(self.serial)}.PACKMS", json.dumps(content).encode())

    @precondition(lambda self: _family("paths"))
    @rule(data=st.data())
    def swap_folder_for_symlink(self, data: st.DataObject) -> None:
        """A listed folder inside the allowed root becomes a link to a folder outside it."""
        user, _ = self._dir(data)
        sub = self.world.allowed / user / "sub"
        self._note(f"swap files/{user}/sub for {'a folder' if sub.is_symlink() else 'a link'}")
        if sub.is_symlink():
            sub.unlink()
            sub.mkdir()
            (sub / "a.txt").write_text("inside\n")
        else:
            shutil.rmtree(sub)
            sub.symlink_to(self.world.canaries.folder)

    # --- the UI's other moves --------------------------------------------------------------

    @precondition(lambda self: _family("cancel"))
    @rule(data=st.data())
    def delete_task_file(self, data: st.DataObject) -> None:
        user, directory = self._dir(data)
        path = self._pick(data, self._files_of(directory), "deleted")
        if path is None:
            return
        task_id = (parse(read_no_follow(path)) or {}).get("task-id")
        self.plain.discard((user, str(task_id)))
        self._note(f"delete {user}/{path.name!r}")
        path.unlink(missing_ok=True)

    @precondition(lambda self: _family("rename"))
    @rule(data=st.data())
    def rename_task_file(self, data: st.DataObject) -> None:
        user, directory = self._dir(data)
        path = self._pick(data, self._files_of(directory), "renamed")
        if path is None:
            return
        task_id = (parse(read_no_follow(path)) or {}).get("task-id")
        self.plain.discard((user, str(task_id)))
        self.renamed_ids.add((user, str(task_id)))
        new = directory / f"r{next(self.serial)}{path.suffix}"
        self.names[new.name] = f"task_id={new.stem} user_id={user}"
        self._note(f"rename {user}/{path.name!r} to {new.name!r}")
        try:
            os.rename(path, new)
        except FileNotFoundError:
            self._note(f"  {path.name!r} was renamed by the bridge first")

    @precondition(lambda self: _family("restart"))
    @rule()
    def kill_and_restart_bridge(self) -> None:
        self._note("kill -9 the bridge, start it again")
        self.world.bridge.kill_and_restart()

    # --- the checks ----------------------------------------------------------------------------

    @invariant()
    def contract_holds(self) -> None:
        try:
            self._check()
        except BaseException as exc:
            self.failed = True
            if not FIRST_FAILURE:
                steps = "\n  ".join(self.trace[-25:]) or "(none)"
                FIRST_FAILURE.append(f"{exc}\n\nsteps of {self.users} (last 25):\n  {steps}")
            raise

    def _check(self) -> None:
        world = self.world
        code = world.bridge.exited()
        assert code is None, f"the bridge exited on its own (code {code}): {self._log_tail()}"
        settled = wait_settled(self.dirs, "every task file to be answered")
        problems: list[str] = []
        for path, fields in settled.items():
            user = path.parent.name
            if (user, str(fields.get("task-id"))) not in self.renamed_ids:
                problem = name_problem(path.name, fields)
                if problem:
                    problems.append(f"{user}/{problem}")
            output = fields.get("output") if fields.get("state") != "REJECTED" else None
            if output is not None and not str(output).startswith(
                str(world.data_root / "download" / user) + "/"
            ):
                problems.append(f"{user}/{path.name} shows output {output!r} of another user")
        problems += self._duplicates(settled)
        problems += self._left_alone()
        problems += self._bounded(settled)
        problems += world.canaries.untouched()
        problems += self._no_leak()
        problems += self._no_new_tops()
        text = world.bridge.log_bytes(self.log_offset)
        restarts = world.bridge.restarts - self.restarts_at_start
        problems += log_problems(text, self.names, restarts)
        assert not problems, "\n".join(problems)

    def _duplicates(self, settled: dict[Path, dict[str, Any]]) -> list[str]:
        """One task-id, one live file: a second is REJECTED (the task-id is in use)."""
        live: dict[tuple[str, str], list[str]] = {}
        for path, fields in settled.items():
            key = (path.parent.name, str(fields.get("task-id")))
            if fields.get("state") != "REJECTED" and key not in self.renamed_ids:
                live.setdefault(key, []).append(path.name)
        return [
            f"task-id {key[1]!r} of {key[0]} has {len(names)} live files: {names}"
            for key, names in live.items()
            if len(names) > 1
        ]

    def _left_alone(self) -> list[str]:
        out = []
        for path, before in self.untouched.items():
            now = identity(path)
            if now is None and path in self.may_vanish:
                continue
            if now != before:
                out.append(
                    f"{path.parent.name}/{path.name!r} is no task file, yet it was touched: "
                    f"{before} -> {now}"
                )
        return out

    def _bounded(self, settled: dict[Path, dict[str, Any]]) -> list[str]:
        out = []
        root = self.world.data_root
        # A running job's tmp-space holds what its work needs (a RETRMS's spilled matches grow
        # with the archive, not with what the UI wrote) and goes when the job ends.
        running = {
            root / "work_space" / path.parent.name / str(fields.get("task-id"))
            for path, fields in settled.items()
            if fields.get("state") not in ENDED
        }
        spaces = [root / "work_space" / u for u in self.users]
        measured = [*self.dirs, *(t for s in spaces for t in _listed(s) if t not in running)]
        measured += [root / "rejected" / u for u in self.users]
        size = disk_bytes(measured)
        bound = GROWTH_FACTOR * self.written + GROWTH_PER_FILE * self.created + GROWTH_SLACK
        if size > bound:
            out.append(f"{size} bytes on disk for {self.written} written (bound {bound})")
        for directory in self.dirs:
            for name in os.listdir(directory):
                # `x-ERR.SLOW` scribbled over by the test is task `x-ERR`: its `-ERR-ERR` is fair.
                # The nested file's task-id is everything before its last `-ERR`.
                base = name[: name.rfind("-ERR")]
                if len(ERR_PART.findall(name)) > 1 and base not in self.stems_written:
                    out.append(f"{directory.name}/{name!r}: the name nests")
        return out

    def _no_leak(self) -> list[str]:
        token = self.world.canaries.token
        root = self.world.data_root
        tops = [*self.dirs]
        for user in self.users:
            tops += [root / d / user for d in ("download", "retrieve", "work_space", "rejected")]
        out = [f"the canary token is in {p}" for p in scan_token(token, tops)]
        if token.encode() in self.world.bridge.log_bytes(self.log_offset):
            out.append("the canary token is in the bridge log")
        with self.world.smtp.handler.lock:
            mails = list(self.world.smtp.handler.received)
        out += [
            f"a mail to {m.recipients} carries the canary token"
            for m in mails
            if token.encode() in m.data
        ]
        return out

    def _no_new_tops(self) -> list[str]:
        world = self.world
        allowed = {"download", "retrieve", "work_space", "mail_db", "task_queue", "files"}
        allowed |= {".taskd-bridge.lock", "runs.log"}
        new = set(os.listdir(world.data_root)) - world.top_level - allowed
        # New folders are the bridge's or a worker's to make (a `rejected/` store, say); a new
        # file there is something written by a path that escaped its user folder.
        new = {n for n in new if not n.endswith(".log") and not (world.data_root / n).is_dir()}
        queue_new = set(os.listdir(world.task_queue)) - world.queue_level
        queue_new = {
            n for n in queue_new if not (n.startswith("fz") and (world.task_queue / n).is_dir())
        }
        return [f"created at the top of the data root: {sorted(new)}"] * bool(new) + [
            f"created in task_queue/: {sorted(queue_new)}"
        ] * bool(queue_new)

    def _log_tail(self) -> str:
        return self.world.bridge.log_bytes(self.log_offset)[-3000:].decode(errors="replace")

    def teardown(self) -> None:
        if self.failed:
            return

        # Liveness: every plain valid task ends (or waits for a retry) in bounded time.
        def ended() -> bool:
            for user, task_id in self.plain:
                directory = self.world.task_queue / user
                states = [
                    f.get("state")
                    for p in self._files_of(directory, owned=True)
                    if (f := parse(read_no_follow(p)) or {}).get("task-id") == task_id
                ]
                if not states or any(s not in TERMINAL | {"RETRY"} for s in states):
                    return False
            return True

        try:
            wait_until(ended, FINISH_S, interval=0.2, what="every plain task to end")
        except AssertionError:
            stuck = []
            for user, task_id in sorted(self.plain):
                for p in self._files_of(self.world.task_queue / user, owned=True):
                    fields = parse(read_no_follow(p)) or {}
                    if fields.get("task-id") == task_id and fields.get("state") not in TERMINAL:
                        stuck.append((user, p.name, fields.get("state")))
            raise AssertionError(f"plain tasks not ended after {FINISH_S:g} s: {stuck}") from None


def _kind(path: Path) -> str:
    if path.is_symlink():
        return f"symlink to {os.readlink(path)}"
    if path.is_dir():
        return "folder"
    return "FIFO" if not path.is_file() else "file"


def fs_stem(name: str) -> str:
    stem, _, _ = name.rpartition(".")
    return stem or name


def test_hostile_ui(
    request: pytest.FixtureRequest,
    env: dict[str, str],
    data_root: Path,
    worker: Worker,
    smtp_server: SmtpServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    scale = int(request.config.getoption("--fuzz-scale"))
    fuzz_env = {
        **env,
        "TASKD_MAX_TASK_BYTES": str(fs.MAX_TASK_BYTES),
        "TASKD_SETTLE": str(SETTLE_S),
        "TASKD_REJECT_AFTER": str(REJECT_AFTER_S),
        "TASKD_RESCAN_INTERVAL": str(RESCAN_S),
    }
    bridge = FuzzBridge(fuzz_env, data_root / "bridge-fuzz.log")
    world = World(
        data_root=data_root,
        env=fuzz_env,
        bridge=bridge,
        canaries=Canaries(tmp_path_factory.mktemp("fuzz-outside")),
        smtp=smtp_server,
    )
    (data_root / "task_queue").mkdir(exist_ok=True)
    world.mark_tops()
    HostileMachine.world = world
    bridge.start()
    shrink = os.environ.get("TASKD_FUZZ_SHRINK") == "1"
    FIRST_FAILURE.clear()
    try:
        run_state_machine_as_test(
            HostileMachine,
            settings=settings(
                max_examples=6 * scale,
                stateful_step_count=15,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
                print_blob=False,
                verbosity=Verbosity.debug
                if os.environ.get("TASKD_FUZZ_DEBUG")
                else Verbosity.normal,
            ),
        )
    except BaseException as exc:
        if FIRST_FAILURE:
            raise AssertionError(f"{FIRST_FAILURE[0]}\n\nbridge log: {bridge.log}") from exc
        raise
    finally:
        bridge.stop()
