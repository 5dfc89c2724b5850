"""The reconcile pass: catch what events missed (new files, deleted tasks, jobs whose files are
gone, sent-markers whose outcome never reached the file) and sweep temp files of the dead."""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path

from bridge import contract, files, intake, metrics, settledindex, watch, writer
from bridge.contract import BRIDGE_TEMP_SUFFIX
from bridge.core import Core
from bridge.judge import adoption_error
from bridge.logs import ids
from bridge.notify import is_sent_marker
from bridge.settledindex import Settled
from taskd import states
from taskd.jobs import JobRecord

log = logging.getLogger(__name__)

WORKER_TEMP_AGE_S = 60.0


FULL_RESCAN_EVERY = 10
"""Every this many rescans, every user folder is listed, changed or not."""
RACY_S = 2.0
"""A folder changed this close before it was listed may have changed again unseen within the
same timestamp tick: it is listed again next time."""


@dataclass
class FolderSeen:
    """What a rescan found in a user folder that held nothing to take: its own signature
    (inode, mtime, ctime), and what to hand on again while the folder stays as it was."""

    sig: tuple[int, int, int]
    listed_at: float  # wall clock, for RACY_S
    settled: list[str] = field(default_factory=list)
    mails: list[str] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)
    noted: list[str] = field(default_factory=list)  # handed to intake: to be read first


@dataclass
class _Scan:
    """One rescan's state: what it settled and found, and the paths it must not settle
    (tracked, or waiting for intake) as the listing spells them, so the rest of a first scan's
    100,000 files need no Path made and hashed to be looked up."""

    now: float
    queue: str  # task_queue/, as the listing spells it
    handled: set[str]
    settled: dict[str, Settled] = field(default_factory=dict)
    markers: list[Path] = field(default_factory=list)


def rescan_once(core: Core, now: float) -> list[Path]:
    """Note every file that changed since it was last read; returns the sent-markers found,
    for the notify pass.

    A user folder whose own mtime and ctime are those of the last rescan, which found nothing
    in it to take, is not listed: no file was made, removed or renamed in it since (a change to
    a file's content in place comes as an inotify event, and an overflow of those asks for a
    full scan). Every `FULL_RESCAN_EVERY`-th rescan lists every folder all the same.
    """
    core.metrics.count(metrics.RESCANS)
    core.rescans += 1
    full = core.rescans % FULL_RESCAN_EVERY == 1
    folders: dict[str, FolderSeen] = {}
    queue = core.settings.task_queue
    handled = {os.fspath(p) for p in core.table.by_path} | {
        os.fspath(p) for p in core.intake.pending
    }
    scan = _Scan(now, str(queue), handled)
    for top in watch.listed(queue):
        if not (top.is_dir(follow_symlinks=False) and contract.USER_RE.fullmatch(top.name)):
            _rescan_entry(core, scan, top, None)
            continue
        sig = _folder_sig(top)
        skippable = not full and sig is not None and core.watched(top.path)
        seen = core.folders.get(top.path) if skippable else None
        if seen is not None and seen.sig == sig:
            _carry_over(core, seen, scan)
            folders[top.path] = seen
            continue
        found = FolderSeen(sig, time.time()) if sig is not None else None
        for entry in watch.scan_entries(queue, Path(top.path)):
            _rescan_entry(core, scan, entry, found)
        if found is not None and _not_racy(found, sig):
            folders[top.path] = found
    core.folders = {path: seen for path, seen in folders.items() if not seen.noted}
    core.folders_noted = {path: seen for path, seen in folders.items() if seen.noted}
    if len(scan.settled) != len(core.settled):
        core.settled_changed = True  # files gone since are forgotten
    core.settled = scan.settled
    save_settled(core)
    for task in list(core.table.by_job.values()):
        if not task.path.exists():
            core.cancel(task)
    _sweep_leftovers(core, full)
    writer.rename_misnamed(core)
    return scan.markers


def _rescan_entry(
    core: Core, scan: _Scan, entry: os.DirEntry[str], found: FolderSeen | None
) -> None:
    """Hand one entry on, and note it in what its folder is found to hold."""
    if contract.is_notify_mail(entry.name):
        core.mails.setdefault(Path(entry.path), (scan.now, True))
        if found is not None:
            found.mails.append(entry.path)
    elif is_sent_marker(entry.name):
        scan.markers.append(Path(entry.path))
        if found is not None:
            found.markers.append(entry.path)
    elif _still_settled(core, entry, scan.settled):
        if found is not None:
            found.settled.append(entry.path)
    else:
        _not_settled(core, scan, entry, found)


def _not_settled(
    core: Core, scan: _Scan, entry: os.DirEntry[str], found: FolderSeen | None
) -> None:
    if entry.path in scan.handled:
        path = Path(entry.path)
        if path in core.table.by_path:
            core.touched.add(path)  # changed by someone else since our last write?
            return
        if path in core.intake.pending:
            _noted(core, scan, entry, found)
            return
    if _ended_at_once(core, scan, entry):
        if found is not None:
            found.settled.append(entry.path)
    else:
        _noted(core, scan, entry, found)


def _noted(core: Core, scan: _Scan, entry: os.DirEntry[str], found: FolderSeen | None) -> None:
    core.intake.note(Path(entry.path), scan.now)
    scan.handled.add(entry.path)
    if found is not None:
        found.noted.append(entry.path)


def _ended_at_once(core: Core, scan: _Scan, entry: os.DirEntry[str]) -> bool:
    """A file the bridge wrote and that ended, read once here and settled as intake would
    settle it (`passes/intake.py` `adopt`), without the rounds of judging a new file needs:
    a first start on a tree of 100,000 finished files reads each once. Anything else, or any
    doubt, is intake's (False), whose guard ends a file that fails, never the scan."""
    try:
        return _settled_from_one_read(core, scan, entry)
    except Exception:  # noqa: BLE001 - whatever it is, intake judges the file and says why
        return False


def _settled_from_one_read(core: Core, scan: _Scan, entry: os.DirEntry[str]) -> bool:
    folder, _, base = entry.path.rpartition("/")
    if folder.rpartition("/")[0] != scan.queue:
        return False  # not in a user folder: intake says why it is ignored
    if not entry.is_file(follow_symlinks=False):
        return False  # a FIFO, a link...: never opened here
    user = folder.rpartition("/")[2]
    name = contract.parse_name((user, base))  # None for what is no task file's name
    if name is None:
        return False
    read = files.read_plain(entry.path, intake.owned_limit(core.settings.max_task_bytes))
    if read is None:
        return False
    raw, st = read
    fields = intake.owned_fields(raw)
    if (
        fields is None
        or fields.get(states.STATE) not in states.TERMINAL
        or adoption_error(fields, name, base, core.types, core.intake.formats) is not None
    ):
        return False
    task_id = str(fields[states.TASK_ID])
    held = f"{user}/{task_id}" in core.owners.by_id
    if not held or core.owners.holder(user, task_id, Path(entry.path)) is None:
        core.owners.note_name(user, task_id, base)  # the first file of an id holds it
    scan.settled[entry.path] = (files.signature_of(st), task_id)
    core.settled_changed = True
    return True


def folders_read(core: Core) -> None:
    """After the intake pass that followed a rescan: a folder whose noted files were all read
    and found finished or running (a start-up's first scan, mostly) needs no listing next time
    either: running tasks are the mirror's, and each of its renames changes the folder."""
    tracked = {str(p) for p in core.table.by_path}
    for path, seen in core.folders_noted.items():
        if all(noted in core.settled or noted in tracked for noted in seen.noted):
            seen.settled += [noted for noted in seen.noted if noted in core.settled]
            seen.noted = []
            core.folders[path] = seen
    core.folders_noted = {}


def _carry_over(core: Core, seen: FolderSeen, scan: _Scan) -> None:
    """An unchanged folder: what its last listing found, without listing it."""
    for path in seen.settled:
        known = core.settled.get(path)
        if known is not None:
            scan.settled[path] = known
    for mail in seen.mails:
        core.mails.setdefault(Path(mail), (scan.now, True))
    scan.markers.extend(Path(m) for m in seen.markers)


def _folder_sig(entry: os.DirEntry[str]) -> tuple[int, int, int] | None:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _not_racy(found: FolderSeen, sig: tuple[int, int, int] | None) -> bool:
    """A folder whose last change is older than RACY_S before it was listed: a change made
    after the listing shows as another mtime."""
    return sig is not None and found.listed_at - max(sig[1], sig[2]) / 1e9 > RACY_S


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


_EUID = os.geteuid()


def _sweep_leftovers(core: Core, full: bool) -> None:
    """Remove temp files of a process killed mid-write: regular files of the bridge's own user
    (its workers', where they run as that user), never another account's that only carries the
    name. None of this bridge's own is in flight:
    it writes on its loop's thread, and the thread that writes a batch of takes is done with
    it before the intake pass ends (`passes/intake.py`), and the spares of the files it
    tracks (`files.Spare`) are kept; a worker's is spared for a minute. Folders the rescan did
    not need to list are swept on a full one."""
    wall = time.time()
    skipped = set() if full else set(core.folders)
    live = {task.spare.path for task in core.table.by_job.values() if task.spare is not None}
    unsweepable = {path for path in core.unsweepable if str(path.parent) in skipped}
    removed: list[Path] = []
    for path in watch.leftovers(core.settings.task_queue, skipped):
        if path in live:
            continue
        try:
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_uid != _EUID:
                continue  # not a file this system wrote: another account's, left as it is
            own = path.name.endswith(BRIDGE_TEMP_SUFFIX)
            if own or wall - st.st_mtime > WORKER_TEMP_AGE_S:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue  # removed by its own writer in between: nothing left to sweep
        except OSError as exc:  # another user's, in a sticky folder, say: never the rescan
            if path not in core.unsweepable:
                log.warning("cannot remove %r: %s", path.name, exc.strerror or exc)
            unsweepable.add(path)
    core.unsweepable = unsweepable  # only those still there: said once each
    if removed:  # one line: a bridge killed with 2,000 tasks running left 2,000 spares
        log.info(
            "removed %d temp file(s) left by processes that died mid-write, %r the first",
            len(removed),
            str(removed[0].relative_to(core.settings.task_queue)),
        )


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
