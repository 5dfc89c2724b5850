"""The intake pass: take, reject or resume (adopt) what is ready in task_queue/.

Files taken in one pass share a directory fsync and two Redis round trips; none is published
before all are durable. Every file's action runs under the guard: a file that breaks ends
REJECTED with its error, and the others go on.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bridge import contract, dispatch, files, intake, metrics, watch, writer
from bridge.core import Core, path_ids, task_ids
from bridge.history import Ended, cut
from bridge.judge import adoption_error
from bridge.logs import ids
from bridge.mirror import utc_now
from bridge.model import Tracked
from bridge.schedule import Known
from taskd import states
from taskd.tasktypes import TaskType

log = logging.getLogger(__name__)

ORIGINAL_FILE = "original-file"
PASS_BUDGET_S = 1.0  # judging, then as long again acting, before the pass yields
PER_USER_PER_PASS = 4096  # files of one user looked at in one pass, at most
INLINE_SLACK = 8192  # the bridge's own fields and an error message
TAKE_BATCH = 128  # new files whose durable rewrites run together
FIRST_SPARES = 4096
"""A file taken while the bridge tracks fewer tasks than this keeps its content as first spare
(`files.Take.keep`): the jobs that can start soon start without a new file each, and a long
queue never holds a hidden file per task."""


def note_event(core: Core, seen: watch.Seen, now: float) -> None:
    """Hand an event on: to intake, to the mails, or as a cancel. Nothing is read here."""
    if seen.kind == watch.DIR:
        for path in watch.scan(core.settings.task_queue, seen.path):
            core.intake.note(path, now)
    elif seen.kind == watch.DELETED:
        core.intake.forget(seen.path)
        task = core.table.by_path.get(seen.path)
        if task is not None and not seen.path.exists():
            core.cancel(task)
    elif seen.kind == watch.MOVED:
        _moved(core, seen.path, seen.dest, now)
    elif contract.is_notify_mail(seen.path.name):
        core.mails[seen.path] = (now, seen.kind == watch.CLOSED)
    elif seen.path in core.table.by_path:
        core.touched.add(seen.path)  # the bridge's own write, or someone else's: see below
    else:
        core.intake.note(seen.path, now, closed=seen.kind == watch.CLOSED)


def _moved(core: Core, src: Path, dest: Path | None, now: float) -> None:
    """Someone else renamed a file (`taskd retry`, say): follow it, never cancel for it. A file
    moved out of task_queue/ (`dest` None) is gone, as if deleted."""
    core.intake.forget(src)
    task = core.table.by_path.get(src)
    if task is not None and dest is not None and dest.parent == src.parent and dest.exists():
        core.table.move(task, dest)
    elif task is not None and not src.exists():
        core.cancel(task)
    if dest is not None:
        note_event(core, watch.Seen(watch.CHANGED, dest), now)


def overwritten_once(core: Core, now: float) -> None:
    """A file the bridge tracks changed, and not by the bridge: the UI (or anyone) replaced the
    task. As with a delete, its job is cancelled; the new content is judged as a new file."""
    touched, core.touched = core.touched, set()
    for path in touched:
        task = core.table.by_path.get(path)
        if task is None:
            continue
        try:
            sig = files.signature(path)
        except OSError:
            sig = None  # a link or FIFO put in its place: not the bridge's file either
        if sig is not None and sig == task.written:
            continue
        log.warning(
            "%r was overwritten by someone else: cancelling its job, judging the new content",
            path.name,
            extra=task_ids(task),
        )
        core.cancel(task)
        core.intake.note(path, now)


def intake_once(core: Core, now: float) -> None:
    """Decide for every pending file, then act: files the bridge wrote are resumed as they are
    found (nothing of them is held for later), new files are taken or rejected after, so the
    task-ids resumed files hold are known before a new file may claim one."""
    overwritten_once(core, now)
    core.intake.new_pass()
    started = time.monotonic()
    core.intake_cut = False
    decided: list[tuple[Path, intake.Decision]] = []
    for path in core.intake.turns(PER_USER_PER_PASS):
        if time.monotonic() - started > PASS_BUDGET_S:
            core.intake_cut = True  # the rest next pass, at once: others' files wait no longer
            break
        key = str(path)
        if not core.guard.ready(key, now):
            continue
        decision = core.guard.run(
            key,
            "judging",
            now,
            lambda path=path: core.intake.consider(path, now),  # type: ignore[misc]
            end=lambda error, path=path: _reject_pending(core, path, error),  # type: ignore[misc]
            log_ids=partial(path_ids, path),
        )
        if decision is None:
            _done_unless_held(core, path)
        elif decision.action == intake.ADOPT:
            _act(core, path, decision, now)
        elif decision.action != intake.WAIT:
            decided.append((path, decision))
    taken = _act_on(core, decided, started, now)
    verify_adopting(core, now)
    if taken:
        _publish_taken(core, taken, now)


def _act_on(
    core: Core, decided: list[tuple[Path, intake.Decision]], started: float, now: float
) -> list[Tracked]:
    """Take or reject what was decided, while the pass's budget lasts; the files taken."""
    taken: list[Tracked] = []
    batch = _Takes(core, now, taken)
    try:
        for path, decision in decided:
            if time.monotonic() - started > 2 * PASS_BUDGET_S:
                core.intake_cut = True  # left pending: judged again next pass
                break
            if decision.action == intake.TAKE:
                batch.add(path, decision)
            else:
                batch.flush_if_held(decision.name)  # a rejected file of the same id comes after
                _act(core, path, decision, now)
    finally:
        batch.flush()  # no take outlives its pass, whatever happened in it
    return taken


def _act(core: Core, path: Path, decision: intake.Decision, now: float) -> None:
    core.guard.run(
        str(path),
        _doing(decision.action),
        now,
        lambda: _carry_out(core, path, decision),
        end=lambda error: _reject_pending(core, path, error),
        log_ids=partial(path_ids, path),
    )
    _done_unless_held(core, path)


def _doing(action: str) -> str:
    return {intake.TAKE: "taking", intake.REJECT: "rejecting", intake.ADOPT: "resuming"}.get(
        action, "looking at"
    )


def _done_unless_held(core: Core, path: Path) -> None:
    if str(path) not in core.guard.troubles:
        core.intake.forget(path)


def _carry_out(core: Core, path: Path, decision: intake.Decision) -> None:
    if decision.action == intake.REJECT:
        assert decision.name is not None
        reject(
            core,
            path,
            decision.name,
            decision.verdict.fields,
            decision.verdict.error,
            keep_aside=decision.keep_aside,
        )
    elif decision.action == intake.ADOPT:
        assert decision.name is not None
        adopt(core, path, decision.name, decision.fields)


def _publish_taken(core: Core, taken: list[Tracked], now: float) -> None:
    for directory in {task.path.parent for task in taken}:
        try:
            files.fsync_dir(directory)
        except OSError as exc:
            log.error("cannot fsync %s (%s); publishing anyway", directory, exc)
    due: list[Tracked] = []
    for task in taken:
        core.guard.run(
            str(task.path),
            "publishing",
            now,
            lambda t=task: dispatch.publish_when_due(core, t, Known(None, None), now, due),  # type: ignore[misc]
            end=lambda error, t=task: writer.fail(core, t, error, now),  # type: ignore[misc]
            log_ids=partial(task_ids, task),
        )
    dispatch.publish_batch(core, due, now)


@dataclass
class _Take:
    """A new file about to be taken: what its content and name become."""

    path: Path
    new_path: Path
    fields: dict[str, Any]
    data: bytes
    decision: intake.Decision  # its name, its type, and the file judged: only that one is taken

    @property
    def name(self) -> contract.TaskName:
        assert self.decision.name is not None
        return self.decision.name

    @property
    def task_type(self) -> TaskType:
        assert self.decision.verdict.task_type is not None
        return self.decision.verdict.task_type

    @property
    def judged(self) -> os.stat_result:
        assert self.decision.judged is not None
        return self.decision.judged


class _Takes:
    """New files taken in batches: each is judged and named one by one; a full batch's durable
    rewrites (`files.rewrite_then_rename_many`: one flush of the disk for all) run on a thread
    of their own while the next batch is named, the file system's work beside the bridge's
    Python; then each file of it is tracked. Two files of one task-id are never in flight
    together, so the second sees the first on disk."""

    def __init__(self, core: Core, now: float, taken: list[Tracked]) -> None:
        self.core, self.now, self.taken = core, now, taken
        self.ready: list[_Take] = []
        self.ids: set[tuple[str, str]] = set()
        self.in_flight: tuple[list[_Take], Future[list[_Taken]]] | None = None

    def flush_if_held(self, name: contract.TaskName | None) -> None:
        """Flush if a file of this task-id waits in a batch."""
        if name is not None and (name.user, name.stem) in self.ids:
            self.flush()

    def add(self, path: Path, decision: intake.Decision) -> None:
        self.flush_if_held(decision.name)
        core = self.core
        ready = core.guard.run(
            str(path),
            "preparing",  # a step of its own: its success says nothing of the rewrite's
            self.now,
            lambda: prepare_take(core, path, decision),
            end=lambda error: _reject_pending(core, path, error),
            log_ids=partial(path_ids, path),
        )
        if ready is None:
            _done_unless_held(core, path)
            return
        self.ready.append(ready)
        self.ids.add((ready.name.user, ready.name.stem))
        if len(self.ready) >= TAKE_BATCH:
            self._finish()
            self._start()

    def flush(self) -> None:
        """Every file added is on disk and tracked (or ended by its guard)."""
        self._finish()
        if self.ready:
            self._start(inline=True)
            self._finish()
        self.ids.clear()

    def _start(self, inline: bool = False) -> None:
        ready, self.ready = self.ready, []
        keep = len(self.core.table.by_job) + len(ready) <= FIRST_SPARES
        batch = [files.Take(t.path, t.new_path, t.data, t.judged, keep) for t in ready]
        future: Future[list[_Taken]] = Future()
        if inline:  # nothing to overlap with: no hand-over to the thread
            future.set_result(files.rewrite_then_rename_many(batch))
        else:
            future = _taker().submit(files.rewrite_then_rename_many, batch)
        self.in_flight = (ready, future)

    def _finish(self) -> None:
        if self.in_flight is None:
            return
        (ready, future), self.in_flight = self.in_flight, None
        try:
            outcomes = future.result()
        except Exception as exc:  # noqa: BLE001 - ends the batch's files, each by its guard
            outcomes = [exc for _ in ready]
        core = self.core
        for one, outcome in zip(ready, outcomes, strict=True):
            core.guard.run(
                str(one.path),
                "taking",
                self.now,
                lambda one=one, got=outcome: _track(core, one, got, self.now, self.taken),  # type: ignore[misc]
                end=lambda text, one=one: _reject_pending(core, one.path, text),  # type: ignore[misc]
                log_ids=partial(path_ids, one.path),
            )
            _done_unless_held(core, one.path)


_taker_pool: ThreadPoolExecutor | None = None


def _taker() -> ThreadPoolExecutor:
    """The one thread batches of takes are written on (one: a pass's batches stay in order)."""
    global _taker_pool
    if _taker_pool is None:
        _taker_pool = ThreadPoolExecutor(1, thread_name_prefix="taskd-take")
    return _taker_pool


def prepare_take(core: Core, path: Path, decision: intake.Decision) -> _Take | None:
    """What a new file becomes, or None when it was rejected instead (its task-id is taken)."""
    name, task_type = decision.name, decision.verdict.task_type
    assert name is not None and task_type is not None
    holder = core.owners.holder(name.user, name.stem, path)
    if holder is not None:
        error = f"task-id {name.stem!r} is already used by {holder.name}; use another task-id"
        reject(core, path, name, decision.verdict.fields, error)
        return None
    own = _ui_fields(decision.verdict.fields)
    fields = contract.merge(
        own,
        {
            states.TASK_ID: name.stem,
            states.STATE: states.QUEUED,
            states.PROGRESS_FIELD: 0,
            states.JOB_ID: str(uuid.uuid4()),
            states.QUEUED_AT: utc_now(),
            **task_type.assign_ids(own),
        },
    )
    new_path = path.with_name(
        contract.render_name(name.stem, name.type, fields, task_type.runtime_info)
    )
    # A file already under the new name is found by the rewrite (FileExistsError), see _track.
    assert decision.judged is not None
    return _Take(path, new_path, fields, contract.dump(fields), decision)


_Taken = Exception | files.Spare | None  # what a take raised, or the spare it kept


def _name_in_use(name: contract.TaskName, new_path: Path) -> str:
    """Why a new file could not take its name: a task file holds it, or something that is no
    task file is in the way."""
    kind = files.not_regular_kind(new_path)
    if kind is not None:
        return (
            f"the name {new_path.name!r} this task would take is in the way ({kind}, not a "
            "task file): remove it, or use another task-id"
        )
    return f"task-id {name.stem!r} is already used by {new_path.name}; use another task-id"


def _track(core: Core, one: _Take, got: _Taken, now: float, taken: list[Tracked]) -> None:
    """A taken file's rewrite is done (or raised an error, for the caller's guard): track it,
    with the spare it kept."""
    name, new_path = one.name, one.new_path
    if isinstance(got, FileExistsError) and one.path.exists():  # left as the UI wrote it
        reject(core, one.path, name, one.decision.verdict.fields, _name_in_use(name, new_path))
        return
    if isinstance(got, Exception):
        raise got
    try:
        written = files.signature(new_path)
    except BaseException:
        files.drop_spare(got)  # a hand put a link or a FIFO at the new name: not tracked
        raise
    task = Tracked(
        name.user, name.stem, one.task_type, new_path, one.fields, last_write=now, spare=got
    )
    task.written = written
    core.track(task)
    core.owners.note(name.user, name.stem, new_path)
    core.metrics.count(metrics.TAKEN)
    log.info("took %s as job %s", new_path.name, task.job_id, extra=task_ids(task))
    taken.append(task)


def _reject_pending(core: Core, path: Path, error: str) -> None:
    """End a file the intake could not handle: REJECTED with the error, its bytes kept."""
    entry = core.intake.pending.get(path)
    name = entry.name if entry else contract.parse_name((path.parent.name, path.name))
    if name is None or files.signature(path) is None:
        return
    reject(core, path, name, {}, error, keep_aside=True)


def reject(
    core: Core,
    path: Path,
    name: contract.TaskName,
    kept: dict[str, Any],
    error: str | None,
    keep_aside: bool = False,
) -> None:
    """REJECTED, renamed `<task-id>-ERR.<TYPE>`; what the UI wrote is kept inline while it
    stays small, else beside the queue, once (file-contract.md)."""
    ending = {
        states.TASK_ID: name.stem,
        states.STATE: states.REJECTED,
        states.FINISHED_AT: utc_now(),
        states.ERROR: contract.bounded(error or "rejected"),
    }
    data = contract.dump(contract.merge(kept, ending))
    judged = files.identity(path)
    if keep_aside or len(data) > _inline_budget(core, judged.st_size):
        folder = core.intake.rejected / name.user
        original = files.keep_aside(path, folder, judged)
        where = str(original.relative_to(core.settings.data_root))
        data = contract.dump({**ending, ORIGINAL_FILE: where})
    task_type = core.types.get(name.type)
    parts = task_type.runtime_info if task_type else (states.PROGRESS_FIELD,)
    new_name = contract.render_name(name.stem, name.type, ending, parts)
    new_path = path.with_name(new_name)
    if not contract.fits(new_name) or os.path.lexists(new_path):
        new_path = path  # keep the name rather than replace another file or overflow it
    files.rewrite_then_rename(path, new_path, data)
    if core.owners.holder(name.user, name.stem, new_path) is None:
        core.owners.note(name.user, name.stem, new_path)  # never instead of a live holder
    core.metrics.count(metrics.REJECTED)
    core.metrics.task_ended(
        Ended(
            time.time(),
            name.user,
            name.stem,
            name.type,
            states.REJECTED,
            cut(ending[states.ERROR]),
            cut(kept.get("description")),
        )
    )
    log.warning(
        "rejected %r: %s", new_path.name, ending[states.ERROR], extra=ids(name.stem, name.user)
    )


def _inline_budget(core: Core, size: int) -> int:
    """The most a rejected file may be with its original inside: a few times what the UI wrote
    (escaping, base64), never past the size a file of the bridge's is read at."""
    return min(core.settings.max_task_bytes + intake.OWN_SLACK_BYTES, 3 * size + INLINE_SLACK)


def adopt(core: Core, path: Path, name: contract.TaskName, fields: dict[str, Any]) -> None:
    """A file the bridge wrote (it restarted, or `taskd retry` requeued it): resume it if it
    checks out, else reject it with the UI's fields kept."""
    error = adoption_error(fields, name, path.name, core.types, core.intake.formats)
    if error is not None:
        ui_fields = {k: v for k, v in fields.items() if k not in states.OWNED_MARKERS}
        reject(core, path, _as_new(name, path, fields), ui_fields, error)
        return
    task_id = str(fields[states.TASK_ID])
    if fields.get(states.STATE) in states.TERMINAL:
        # Ended files are never judged again, even two that say one task-id (a reused id
        # rejected beside the task that holds it).
        if core.owners.holder(name.user, task_id, path) is None:
            core.owners.note(name.user, task_id, path)
        sig = files.signature(path)
        if sig is not None:
            core.settled[str(path)] = (sig, task_id)
            core.settled_changed = True
        return
    core.owners.note(name.user, task_id, path)  # a running task holds its id before any
    core.adopting[path] = fields


CANCELLED_ERROR = (
    "job {job_id} was cancelled: this file left task_queue/ or was replaced while it ran; "
    "to run the task again, write a new file without the fields taskd writes"
)


def _ui_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The UI's own fields of a file: what a new file keeps when taken, and a running file the
    bridge will not resume when rejected (what the bridge and its job wrote do not stand; the
    job's tmp-space is gone with it)."""
    return {
        k: v
        for k, v in fields.items()
        if k not in states.BRIDGE_FIELDS and k not in states.RESULT_FIELDS
    }


def _as_new(name: contract.TaskName, path: Path, fields: dict[str, Any]) -> contract.TaskName:
    """The name a rejected resume is filed under: its own task-id when it is believable."""
    task_id = fields.get(states.TASK_ID)
    if isinstance(task_id, str) and path.name.startswith(f"{task_id}-"):
        return contract.TaskName(name.user, task_id, name.type)
    return name


def verify_adopting(core: Core, now: float) -> None:
    """Resume running files whose job, if Redis knows it, is this user's and this task's."""
    if not core.adopting:
        return
    pending = dict(core.adopting)
    job_ids = [str(fields[states.JOB_ID]) for fields in pending.values()]
    answer = core.redis.call(now, lambda: core.publisher.owners_of(job_ids))
    if answer is None:
        return  # Redis is away: try again on a later pass
    core.adopting.clear()
    for path, fields in pending.items():
        core.guard.run(
            str(path),
            "resuming",
            now,
            lambda p=path, f=fields: _resume(core, p, f, answer),  # type: ignore[misc]
            end=lambda error, p=path: _reject_pending(core, p, error),  # type: ignore[misc]
            log_ids=partial(path_ids, path),
        )


def _resume(core: Core, path: Path, fields: dict[str, Any], owners: dict[str, Any]) -> None:
    name = contract.parse_name((path.parent.name, path.name))
    if name is None or files.signature(path) is None:
        return
    job_id, task_id = str(fields[states.JOB_ID]), str(fields[states.TASK_ID])
    owner = owners.get(job_id, ())
    error = None
    if job_id in core.pending_cancels or owner is None:
        error = CANCELLED_ERROR.format(job_id=job_id)
    elif owner != () and owner != (name.user, task_id):
        error = f"field 'job-id': job {job_id} belongs to another task; taskd writes it: remove it"
    if error is not None:
        reject(core, path, _as_new(name, path, fields), _ui_fields(fields), error)
        return
    task = Tracked(name.user, task_id, core.types[name.type], path, fields)
    task.written = files.signature(path)
    known = core.table.by_job.get(task.job_id)
    if known is not None and known.path != path and known.path.exists():
        error = (
            f"task-id {task_id!r} is already used by {known.path.name}; use another task-id"
            if (known.user, known.task_id) == (name.user, task_id)
            else f"field 'job-id': job {job_id} belongs to another task; taskd writes it: remove it"
        )
        reject(core, path, _as_new(name, path, fields), _ui_fields(fields), error)
        return
    core.track(task)
    log.info("resumed %s, job %s", path.name, task.job_id, extra=task_ids(task))
