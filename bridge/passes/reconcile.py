"""The reconcile pass: catch what events missed (new files, deleted tasks, jobs whose files are
gone, sent-markers whose outcome never reached the file) and sweep temp files of the dead."""

from __future__ import annotations

import logging
import os
import time
from glob import escape as glob_escape
from pathlib import Path

from bridge import contract, files, intake, metrics, settledindex, watch
from bridge.contract import BRIDGE_TEMP_SUFFIX
from bridge.core import Core
from bridge.logs import ids
from bridge.notify import is_sent_marker
from bridge.settledindex import Settled
from taskd import states
from taskd.jobs import JobRecord

log = logging.getLogger(__name__)

WORKER_TEMP_AGE_S = 60.0


def rescan_once(core: Core, now: float) -> list[Path]:
    """Note every file that changed since it was last read; returns the sent-markers found,
    for the notify pass."""
    core.metrics.count(metrics.RESCANS)
    settled: dict[str, Settled] = {}
    markers: list[Path] = []
    for entry in watch.scan_entries(core.settings.task_queue):
        if contract.is_notify_mail(entry.name):
            core.mails.setdefault(Path(entry.path), (now, True))
        elif is_sent_marker(entry.name):
            markers.append(Path(entry.path))
        elif not _still_settled(core, entry, settled):
            path = Path(entry.path)
            if path in core.table.by_path:
                core.touched.add(path)  # changed by someone else since our last write?
            else:
                core.intake.note(path, now)
    if len(settled) != len(core.settled):
        core.settled_changed = True  # files gone since are forgotten
    core.settled = settled
    save_settled(core)
    for task in list(core.table.by_job.values()):
        if not task.path.exists():
            core.cancel(task)
    _sweep_leftovers(core)
    return markers


def _still_settled(core: Core, entry: os.DirEntry[str], settled: dict[str, Settled]) -> bool:
    """Whether a finished file is as it was when last read (then it needs no reading). Read by
    an earlier run of the bridge (the index), its task-id is noted as held, as reading it would."""
    known = core.settled.get(entry.path)
    if known is None:
        return False
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    unchanged = files.signature_of(st) == known[0]
    if unchanged:
        settled[entry.path] = known
        if core.settled_loaded:
            core.owners.note_name(settledindex.user_of(entry.path), known[1], entry.name)
    return unchanged


def load_settled(core: Core) -> None:
    """Before the first scan: what an earlier run read (bridge/settledindex.py)."""
    core.settled = settledindex.load(core.settings.data_root, core.settings.task_queue)
    core.settled_loaded = bool(core.settled)


def save_settled(core: Core) -> None:
    """After a scan (and at a clean stop): the index, if it changed."""
    core.settled_loaded = False
    if core.settled_changed:
        core.settled_changed = False
        settledindex.save(core.settings.data_root, core.settings.task_queue, core.settled)


def _sweep_leftovers(core: Core) -> None:
    """Remove temp files of a process killed mid-write. This bridge writes only on its loop's
    thread, so none of its own is in flight; a worker's is spared for a minute."""
    wall = time.time()
    for path in watch.leftovers(core.settings.task_queue):
        try:
            own = path.name.endswith(BRIDGE_TEMP_SUFFIX)
            if own or wall - path.stat().st_mtime > WORKER_TEMP_AGE_S:
                path.unlink()
                log.info(
                    "removed %r, left by a process that died mid-write",
                    path.name,
                    extra=ids(user_id=path.parent.name),
                )
        except FileNotFoundError:
            continue  # removed by its own writer in between: nothing left to sweep


def cancel_orphans(core: Core, now: float) -> None:
    """Jobs Redis lists as active whose files are gone (deleted while the bridge was down)."""
    active = core.redis.call(now, core.publisher.active_ids)
    if active is None:
        return
    for job_id in active - set(core.table.by_job) - set(core.notifier.jobs):
        found = core.guard.run(
            f"job {job_id}",
            "looking for the file of",
            now,
            lambda j=job_id: _job_file_exists(core, now, j),  # type: ignore[misc]
            log_ids=ids(job_id=job_id),
        )
        if found is False:
            log.info(
                "job %s has no task file any more: cancelling it", job_id, extra=ids(job_id=job_id)
            )
            core.pending_cancels.add(job_id)


def _job_file_exists(core: Core, now: float, job_id: str) -> bool:
    """Look for the job's file by the user and task-id Redis recorded (a rare, exact check)."""
    raw = core.redis.call(now, lambda: core.client.hgetall(states.job_key(job_id)))
    if raw is None:
        return True  # Redis went away: decide another time
    record = JobRecord.parse(raw)
    if record is None:
        return False
    if record.root and record.root != core.root_id:
        return True  # another data root's job (see taskd/roots.py): never this bridge's to cancel
    user, task_id = record.user, record.task_id
    if not contract.USER_RE.fullmatch(user) or not task_id or "/" in task_id:
        return False
    if record.type == core.notifier.kind.name:
        return core.notifier.owns(job_id, user, task_id, core.settings.task_queue)
    limit = intake.owned_limit(core.settings.max_task_bytes)
    for path in (core.settings.task_queue / user).glob(f"{glob_escape(task_id)}*"):
        try:
            fields = contract.parse_content(contract.decode_utf8(files.read_regular(path, limit)))
        except (OSError, ValueError):
            continue  # not a task file the bridge wrote: not this job's
        if fields.get(states.JOB_ID) != job_id:
            continue
        if fields.get(states.STATE) in states.TERMINAL:
            # Ended, but the bridge died before it stopped listing the job as active.
            core.redis.call(now, lambda: core.publisher.forget([job_id]))
        else:
            core.intake.note(path, now)
        return True
    return False
