"""PACKMS: pack chosen mails of a result set and local files into `download/<user-id>/`.

Thin: it checks the arguments, lists the members, and hands them to `tasks.pack`. The archive is
built in the task's tmp-space and published by link, so a reader sees it whole or not at all.
Outputs, their markers and the folders made for them get TASKD_OUTPUT_MODE whatever the umask.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from taskd import atomic, names, states
from taskd.settings import Settings
from tasks import fileroots, pack, results
from tasks.app import app
from tasks.base import Job, TaskdTask
from tasks.errors import Retryable, TaskFailed, as_retryable
from tasks.mailstore import FileMailStore, MailStoreUnavailable, UnknownMail
from tasks.mailstore.message import StoredMessage
from tasks.progress import megabytes

log = logging.getLogger(__name__)

MARKER_PREFIX = ".taskd-output-"
"""Older versions marked outputs as `download/<user-id>/.taskd-output-<job-id>`; still honoured."""
MARKER_DIR = Path(names.PRIVATE_DIR) / names.OUTPUTS_DIR
"""`<data-root>/.taskd/outputs/<user-id>/<job-id>` names what a job published, so a second
delivery of the same job finds its output instead of publishing another. Kept out of
`download/`, which holds the users' outputs only."""
MARKER_KEEP_S = states.DONE_TTL_S
"""A marker is swept once older than this: as long as Redis keeps the job's outcome. Deliveries
of a finished job come while the bridge still tracks it (a redelivery, or a republish after
Redis lost it), which is seconds to hours; a week leaves a wide margin."""
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# O_NONBLOCK: a FIFO put in place of the file opens at once (and is then refused by fstat)
# instead of hanging the worker until someone writes to it.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _roots_shown(roots: Iterable[Path]) -> str:
    return ":".join(str(r) for r in roots)


def _outside(raw: str, roots: Iterable[Path]) -> TaskFailed:
    return TaskFailed(
        f"field 'files': {raw!r} is outside the allowed folders ({_roots_shown(roots)}, "
        "TASKD_ALLOWED_FILE_ROOTS); copy it there first"
    )


def allowed_root(
    raw: str, roots: Iterable[Path], private: Iterable[tuple[str, Path]] = ()
) -> tuple[Path, Path]:
    """A `files` entry resolved with symlinks followed, and the allowed root it lies in.

    Only a look at the path: what is packed is opened later by `open_below`, which follows no
    link, so a folder swapped for a symlink after this check cannot lead outside the root; the
    roots themselves are pinned (`tasks.fileroots`), so a root swapped for a link opens nothing.
    A file inside one of the `private` folders (`Settings.private_folders`) is refused unless
    its root lies inside that folder too: a root that holds the data root (the default /tmp
    when the data root was made there) does not open the data root.
    """
    if "\x00" in raw or not os.path.isabs(raw):
        raise TaskFailed(f"field 'files': {raw!r} is not an absolute path; write e.g. /tmp/a.doc")
    try:
        real = Path(raw).resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        raise TaskFailed(f"field 'files': {raw!r} does not exist (or cannot be read)") from None
    roots = tuple(roots)
    allowed, broken = fileroots.current(roots)
    # The deepest root that holds it: every folder below is then one the walk must pass.
    inside = [root for root in allowed if real.is_relative_to(root)]
    if not inside:
        named = Path(os.path.normpath(raw))
        for root, problem in broken.items():
            if named.is_relative_to(os.path.normpath(root)):
                raise problem  # named inside a root that may not be used now: say why
        raise _outside(raw, roots)
    root = max(inside, key=lambda root: len(root.parts))
    for variable, folder in private:
        kept = folder.resolve()
        if real.is_relative_to(kept) and not root.is_relative_to(kept):
            raise TaskFailed(
                f"field 'files': {raw!r} is inside {kept} ({variable}), whose files only taskd "
                "may read; copy what you want packed to an allowed folder "
                f"({_roots_shown(allowed)}, TASKD_ALLOWED_FILE_ROOTS) first"
            )
    return real, root


def allowed_file(raw: str, roots: Iterable[Path], private: Iterable[tuple[str, Path]] = ()) -> Path:
    """A `files` entry, resolved with symlinks followed, inside an allowed root, a regular file."""
    real, root = allowed_root(raw, roots, private)
    fd = open_below(root, real, raw)
    os.close(fd)
    return real


def open_below(root: Path, real: Path, raw: str) -> int:
    """`real` opened one component at a time from `root`'s folder, following no symlink.

    Returns a read-only fd of a regular file. A component that is no longer the folder or file
    `allowed_root` saw (a symlink or file put in its place since) fails the task: what would be
    read now is not what was checked.
    """
    parts = real.relative_to(root).parts
    if not parts:
        raise TaskFailed(f"field 'files': {raw!r} is not a regular file")
    fd = fileroots.open_root(root)
    for part in parts[:-1]:
        fd = _step(fd, part, fileroots.FOLDER_FLAGS, raw, root)
    fd = _step(fd, parts[-1], _FILE_FLAGS, raw, root)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TaskFailed(f"field 'files': {raw!r} is not a regular file")
    return fd


def _step(parent: int, name: str, flags: int, raw: str, root: Path) -> int:
    """Open `name` in the folder `parent` (which is closed in any case)."""
    try:
        return os.open(name, flags, dir_fd=parent)
    except OSError as exc:
        raise _walk_error(exc, raw, root) from None
    finally:
        os.close(parent)


def _walk_error(exc: OSError, raw: str, root: Path) -> Exception:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return TaskFailed(
            f"field 'files': {raw!r} changed while it was packed (a part of its path is now a "
            f"symbolic link or not a folder), so it may no longer be inside the allowed folders "
            f"({root}, TASKD_ALLOWED_FILE_ROOTS); copy it there and try again"
        )
    if exc.errno == errno.ENOENT:
        return TaskFailed(f"field 'files': {raw!r} does not exist (or cannot be read)")
    retry = as_retryable(exc)
    if retry is not None:
        return retry
    return TaskFailed(f"field 'files': {raw!r} cannot be read ({exc.strerror})")


@dataclass(frozen=True)
class _CheckedFile:
    raw: str
    root: Path
    real: Path
    identity: tuple[int, int]
    """(st_dev, st_ino) when checked: the file packed must be this very one."""


def _file_member(raw: str, settings: Settings) -> tuple[tuple[int, int], pack.Member]:
    real, root = allowed_root(raw, settings.allowed_file_roots, settings.private_folders)
    fd = open_below(root, real, raw)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    checked = _CheckedFile(raw, root, real, (st.st_dev, st.st_ino))
    opener = functools.partial(_open_checked, checked)
    return checked.identity, pack.Member(f"files/{real.name}", st.st_size, opener, st.st_mtime)


def _open_checked(checked: _CheckedFile) -> BinaryIO:
    """The file as checked, opened afresh without following links; its bytes come from this fd.

    The tar header was made from the fstat of the same file (same device and inode); a size
    that changed since is caught while copying (`pack.MemberSizeError`).
    """
    fd = open_below(checked.root, checked.real, checked.raw)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != checked.identity:
        os.close(fd)
        raise TaskFailed(
            f"field 'files': {checked.raw!r} was replaced by another file while it was packed; "
            "run the task again once it stays put"
        )
    # Unbuffered: reads are whole blocks anyway, so a buffer would only add a copy.
    return cast(BinaryIO, os.fdopen(fd, "rb", buffering=0))


def file_members(files: list[str], settings: Settings) -> list[pack.Member]:
    """The `files` entries as members, each checked and stat'ed through a no-link walk."""
    if len(files) > settings.max_pack_files:
        raise TaskFailed(
            f"field 'files': {len(files)} entries, more than the limit of "
            f"{settings.max_pack_files} (TASKD_MAX_PACK_FILES); split them over several tasks"
        )
    # A file listed twice (by the same path or another way to it) is packed once: repeats
    # must not turn a small task file into gigabytes of copies.
    members: dict[tuple[int, int], pack.Member] = {}
    for raw in files:
        identity, member = _file_member(raw, settings)
        members.setdefault(identity, member)
    return list(members.values())


def _mail(store: FileMailStore, mail: dict[str, Any]) -> StoredMessage:
    """The stored mail a result set's entry names, looked for first where the entry says."""
    user, mail_id = str(mail.get("user", "")), str(mail.get("id", ""))
    folder, day = str(mail.get("folder") or ""), str(mail.get("day") or "")
    try:
        return store.message(user, mail_id, folder or None, day or None)
    except UnknownMail:
        raise TaskFailed(
            f"mail {mail_id!r} of the result set is no longer in the archive; run the RETRMS again"
        ) from None


def _opener(message: StoredMessage, mail_id: str) -> Callable[[], BinaryIO]:
    def open_mail() -> BinaryIO:
        try:
            return message.open()
        except FileNotFoundError:
            raise TaskFailed(
                f"mail {mail_id!r} left the archive while it was packed; run the RETRMS again"
            ) from None
        except OSError as error:
            raise MailStoreUnavailable(f"cannot read mail {mail_id!r}: {error}") from error

    return open_mail


def _mail_member(store: FileMailStore, mail: dict[str, Any]) -> pack.Member:
    message = _mail(store, mail)
    mail_id = str(mail.get("id", ""))
    row = {k: mail.get(k, "") for k in ("id", "date", "from", "to", "subject", "folder", "day")}
    return pack.Member(f"mails/{mail_id}.eml", message.raw_size, _opener(message, mail_id), row=row)


def marker_path(settings: Settings, job: Job) -> Path:
    """Where a job notes the name of what it published (see `MARKER_DIR`)."""
    if not results.USER_RE.fullmatch(job.user_id) or not _JOB_ID.fullmatch(job.job_id):
        raise TaskFailed(f"job {job.user_id}/{job.job_id} has no valid output marker path")
    return settings.data_root / MARKER_DIR / job.user_id / job.job_id


def published_before(settings: Settings, job: Job) -> Path | None:
    """The output an earlier delivery of this job published, if it is still there."""
    folder = settings.download / job.user_id
    for marker in (marker_path(settings, job), folder / f"{MARKER_PREFIX}{job.job_id}"):
        try:
            name = marker.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue  # not published by this job (yet): the normal first delivery
        output = folder / name
        return output if name and "/" not in name and output.is_file() else None
    return None


def _remember(settings: Settings, job: Job, output: Path) -> None:
    marker = marker_path(settings, job)
    atomic.make_dirs(marker.parent, settings.output_folder_mode)
    results.write_durably(marker, output.name.encode("utf-8"), settings.output_mode)
    _sweep_markers(marker.parent, time.time() - MARKER_KEEP_S)


def _sweep_markers(folder: Path, older_than: float) -> None:
    """Remove a user's markers older than `older_than`: their jobs cannot come again."""
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_mtime < older_than:
                    os.unlink(entry.path)
                    log.info("removed the output marker of job %s: a week old", entry.name)
            except FileNotFoundError:
                pass  # a concurrent sweep of the same user took it first: nothing to do


Mails = Callable[[], Iterable[dict[str, Any]]]
"""The result set's chosen mails, read afresh each time it is called."""


def count_mails(job: Job, mails: Mails) -> int:
    """How many mails there are to pack, stopping once past TASKD_MAX_PACK_MAILS."""
    limit = job.settings.max_pack_mails
    count = sum(1 for _ in itertools.islice(mails(), limit + 1))
    if count > limit:
        raise TaskFailed(
            f"field {_mails_field(job)!r}: more than {limit} mails to pack, the limit "
            f"TASKD_MAX_PACK_MAILS sets; {_fewer(job)}"
        )
    return count


def _mails_field(job: Job) -> str:
    return "criterion" if job.type == "RETRMS" else "mails"


def _fewer(job: Job) -> str:
    if job.type == "RETRMS":
        return "narrow the criterion, or pack parts of the result set with PACKMS"
    return "pick fewer mails or files, or split them over several tasks"


def _bytes_limit(job: Job, field: str) -> TaskFailed:
    limit = job.settings.max_pack_bytes
    return TaskFailed(
        f"field {field!r}: the pack would hold more than {limit} bytes "
        f"({limit / (1 << 30):.1f} GiB), the limit TASKD_MAX_PACK_BYTES sets; {_fewer(job)}"
    )


def _total_size(job: Job, store: FileMailStore, mails: Mails, files: list[pack.Member]) -> int:
    """Bytes to pack, each mail checked to be there; stops at the first limit passed."""
    count_mails(job, mails)
    limit = job.settings.max_pack_bytes
    total = 0
    for mail in mails():
        total += _mail(store, mail).raw_size
        if total > limit:
            raise _bytes_limit(job, _mails_field(job))
    total += sum(member.size for member in files)
    if total > limit:
        raise _bytes_limit(job, "files")
    return total


def pack_to_download(
    job: Job,
    mails: Mails,
    files: list[str],
    report: Callable[[int, int], None],
) -> Path:
    """Build the archive in tmp-space and publish it; a second delivery returns the first output.

    The mails are read twice, one at a time: once to check each is there and size the whole,
    once to pack them, so memory does not grow with their number.
    """
    settings = job.settings
    done = published_before(settings, job)
    if done is not None:
        return done
    store = FileMailStore(settings.mail_db_path, settings.mail_index_path)
    try:
        members = file_members(files, settings)
        total = _total_size(job, store, mails, members)
    except MailStoreUnavailable as exc:
        raise Retryable(f"the mail archive cannot be read now ({exc}); will try again") from exc
    stem = pack.safe_name(str(job.fields.get("description") or ""), job.task_id)
    target_dir = settings.download / job.user_id
    atomic.make_dirs(target_dir, settings.output_folder_mode)
    tmp = job.tmp_space / f"{job.job_id}.tar.gz"
    everything = itertools.chain((_mail_member(store, m) for m in mails()), members)
    try:
        pack.build_targz(
            tmp, stem, everything, None, report, total, with_index=True, keep_names=False
        )
    except pack.MemberSizeError as exc:
        raise Retryable(f"a file changed while it was packed ({exc}); will try again") from exc
    except MailStoreUnavailable as exc:
        raise Retryable(f"the mail archive cannot be read now ({exc}); will try again") from exc
    output = pack.publish(tmp, target_dir, stem, mode=settings.output_mode)
    _remember(settings, job, output)
    return output


@app.task(base=TaskdTask, name="tasks.packms.run")
def run(job: Job) -> dict[str, Any]:
    fields = job.fields
    retrieve_id = fields.get("retrieve-id")
    mails: Mails = tuple
    if retrieve_id:
        path = results.result_path(job.settings, job.user_id, str(retrieve_id))
        result_set = results.ResultSet(path, str(retrieve_id), job.user_id)
        wanted = [str(m) for m in fields.get("mails") or []]
        mails = functools.partial(result_set.pick, wanted)
    files = [str(f) for f in fields.get("files") or []]
    count = count_mails(job, mails)
    if not count and not files:
        raise TaskFailed("nothing to pack: the result set is empty and no 'files' were given")
    with job.work_dir() as tmp:
        job.progress(0, force=True, **{"tmp-space": str(tmp)})
        output = pack_to_download(
            job,
            mails,
            files,
            lambda done, total: job.progress(
                99 * done / max(total, 1), detail=megabytes(done, total, "packing")
            ),
        )
    return {"output": str(output), "tmp-space": None, "packed": count + len(files)}
