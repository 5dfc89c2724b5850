"""PACKMS: pack chosen mails of a result set and local files into `download/<user-id>/`.

Thin: it checks the arguments, lists the members, and hands them to `tasks.pack`. The archive is
built in the task's tmp-space and published by link, so a reader sees it whole or not at all.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from taskd.settings import Settings
from tasks import pack, results
from tasks.app import app
from tasks.base import Job, TaskdTask
from tasks.errors import Retryable, TaskFailed
from tasks.mailstore import FileMailStore, MailStoreUnavailable, UnknownMail
from tasks.mailstore.message import StoredMessage
from tasks.progress import megabytes

MARKER_PREFIX = ".taskd-output-"
"""`download/<user-id>/.taskd-output-<job-id>` names what a job published, so a second delivery
of the same job finds its output instead of publishing another."""


def allowed_file(raw: str, roots: Iterable[Path]) -> Path:
    """A `files` entry, resolved with symlinks followed, inside an allowed root, a regular file."""
    if "\x00" in raw or not os.path.isabs(raw):
        raise TaskFailed(f"field 'files': {raw!r} is not an absolute path; write e.g. /tmp/a.doc")
    try:
        real = Path(raw).resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        raise TaskFailed(f"field 'files': {raw!r} does not exist (or cannot be read)") from None
    allowed = [Path(r).resolve() for r in roots]
    if not any(real.is_relative_to(root) for root in allowed):
        shown = ":".join(str(r) for r in allowed)
        raise TaskFailed(
            f"field 'files': {raw!r} is outside the allowed folders ({shown}, "
            "TASKD_ALLOWED_FILE_ROOTS); copy it there first"
        )
    if not real.is_file():
        raise TaskFailed(f"field 'files': {raw!r} is not a regular file")
    return real


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


def published_before(settings: Settings, job: Job) -> Path | None:
    marker = settings.download / job.user_id / f"{MARKER_PREFIX}{job.job_id}"
    try:
        name = marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    output = marker.parent / name
    return output if name and "/" not in name and output.is_file() else None


def _remember(settings: Settings, job: Job, output: Path) -> None:
    marker = settings.download / job.user_id / f"{MARKER_PREFIX}{job.job_id}"
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(output.name, encoding="utf-8")
    os.replace(tmp, marker)


Mails = Callable[[], Iterable[dict[str, Any]]]
"""The result set's chosen mails, read afresh each time it is called."""


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
        total = sum(_mail(store, mail).raw_size for mail in mails())
        paths = [allowed_file(f, settings.allowed_file_roots) for f in files]
        file_members = [pack.file_member(p, f"files/{p.name}") for p in paths]
        total += sum(member.size for member in file_members)
    except MailStoreUnavailable as exc:
        raise Retryable(f"the mail archive cannot be read now ({exc}); will try again") from exc
    stem = pack.safe_name(str(job.fields.get("description") or ""), job.task_id)
    target_dir = settings.download / job.user_id
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = job.tmp_space / f"{job.job_id}.tar.gz"
    members = itertools.chain((_mail_member(store, m) for m in mails()), file_members)
    try:
        pack.build_targz(tmp, stem, members, None, report, total, with_index=True, keep_names=False)
    except pack.MemberSizeError as exc:
        raise Retryable(f"a file changed while it was packed ({exc}); will try again") from exc
    except MailStoreUnavailable as exc:
        raise Retryable(f"the mail archive cannot be read now ({exc}); will try again") from exc
    output = pack.publish(tmp, target_dir, stem)
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
    count = sum(1 for _ in mails())
    if not count and not files:
        raise TaskFailed("nothing to pack: the result set is empty and no 'files' were given")
    with job.work_dir() as tmp:
        job.progress(0, force=True, **{"tmp-space": str(tmp)})
        output = pack_to_download(
            job,
            mails,
            files,
            lambda done, total: job.progress(
                99 * done / max(total, 1), detail=megabytes(done, total, "packed")
            ),
        )
    return {"output": str(output), "tmp-space": None, "packed": count + len(files)}
