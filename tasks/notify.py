"""Notify mails: `<task-id>.notify.eml`, sent when its task ends, then deleted.

The message goes out as the UI wrote it, with `X-Taskd-Task`, `X-Taskd-State`, `X-Taskd-Output`
(on success) and, if it has none, a `Message-ID` made from the task's job id, so a copy sent
twice (a server that took it just before a crash) carries the same id and can be dropped.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import stat
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from taskd import atomic, names, states
from tasks.app import app
from tasks.base import NOTIFY_TYPE, Job, TaskdTask
from tasks.errors import Retryable, TaskFailed
from tasks.progress import utc_now
from tasks.results import USER_RE, write_durably
from tasks.smtp import Outcome, SmtpTarget, SmtpUnavailable, send

log = logging.getLogger(__name__)

MAX_MARKER_BYTES = 1 << 20
"""A sent-marker holds a few names and a time; anything bigger was not written by taskd."""
# task_queue/<user>/ is the user's: what stands there under the mail's name may be a link to
# another file, or a FIFO that would block a plain open. Neither is followed or waited on.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_ADDRESS = re.compile(r"[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\]+")
_LINE_END = re.compile(rb"\r?\n")


def mail_path(job: Job) -> Path:
    if not USER_RE.fullmatch(job.user_id) or "/" in job.task_id or job.task_id.startswith("."):
        raise TaskFailed(f"task {job.user_id}/{job.task_id} has no valid notify path")
    return job.settings.task_queue / job.user_id / names.notify_mail(job.task_id)


def check_address(entry: object) -> str | None:
    """The bare address of one `notify` entry, or None if it is not exactly one safe address."""
    if not isinstance(entry, str) or any(c in entry for c in "\r\n\x00"):
        return None
    found = getaddresses([entry])
    if len(found) != 1:
        return None
    address = found[0][1]
    return address if _ADDRESS.fullmatch(address) else None


def split_recipients(entries: list[Any]) -> tuple[list[str], list[str]]:
    """Good addresses (deduplicated, in order) and the entries that are not one address."""
    good: dict[str, None] = {}  # a dict keeps the order and checks a repeat in constant time
    bad: list[str] = []
    for entry in entries:
        address = check_address(entry)
        if address is None:
            bad.append(repr(entry))
        else:
            good.setdefault(address)
    return list(good), bad


def read_regular(path: Path, limit: int, setting: str) -> bytes:
    """The bytes of `path` if it is a regular file (not a link to one) of at most `limit` bytes.

    A missing file raises FileNotFoundError; anything else that is not such a file is a
    TaskFailed naming it, so nothing is sent and the reason is the notify outcome.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _unreadable(path, exc) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise TaskFailed(
            f"{path.name} is not a regular file ({_kind(st.st_mode)}); nothing was sent. "
            "Write the mail as a plain file in the task's folder"
        )
    if st.st_nlink > 1:  # another name for a file that may live anywhere on this disk
        os.close(fd)
        raise TaskFailed(
            f"{path.name} is a hard link to another file; nothing was sent. Write the mail "
            "as a plain file of its own in the task's folder"
        )
    with os.fdopen(fd, "rb", buffering=0) as handle:
        data = handle.read(limit + 1) or b""
        while len(data) <= limit and (more := handle.read(limit + 1 - len(data))):
            data += more
    if len(data) > limit:
        raise TaskFailed(
            f"{path.name} is larger than {limit} bytes, the limit {setting} sets; nothing was "
            "sent. Write a shorter mail (link to big files instead of attaching them)"
        )
    return data


def _unreadable(path: Path, exc: OSError) -> TaskFailed:
    if exc.errno == errno.ELOOP:
        return TaskFailed(
            f"{path.name} is a symbolic link; nothing was sent. Write the mail as a plain file "
            "in the task's folder, not a link to one"
        )
    return TaskFailed(f"{path.name} cannot be read ({exc.strerror}); nothing was sent")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a device or socket"


def own_recipients(raw: bytes) -> list[Any]:
    """The mail's own To and Cc, when the task names nobody."""
    headers = BytesHeaderParser().parsebytes(raw)
    values = [str(v) for name in ("to", "cc") for v in headers.get_all(name, [])]
    return [f"{name} <{addr}>" if name else addr for name, addr in getaddresses(values) if addr]


def _header_value(text: object) -> str:
    return re.sub(r"[\r\n\x00]+", " ", str(text)).strip()


def prepare(raw: bytes, task: dict[str, Any], job_id: str) -> bytes:
    """The UI's message, CRLF for the wire, with taskd's headers put in front."""
    head = raw.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    added = [
        f"X-Taskd-Task: {_header_value(task.get(states.TASK_ID, ''))}",
        f"X-Taskd-State: {_header_value(task.get(states.STATE, ''))}",
    ]
    if task.get(states.STATE) == states.SUCCESS and task.get("output"):
        added.append(f"X-Taskd-Output: {_header_value(task['output'])}")
    if not re.search(rb"(?im)^message-id:", head):
        added.append(f"Message-ID: <{job_id}.taskd@{socket.getfqdn() or 'localhost'}>")
    prefix = "".join(line + "\r\n" for line in added).encode("ascii", "replace")
    return prefix + _LINE_END.sub(b"\r\n", raw)


def _deliver(job: Job, raw: bytes, recipients: list[str], record: SentRecord) -> None:
    """Send; the record is put in place, and the mail file deleted, the moment the server
    has answered, unless some recipients are to be tried again (then Retryable is raised)."""
    settings = job.settings
    if not settings.smtp_url:
        raise TaskFailed("no SMTP server is configured (TASKD_SMTP_URL); notify mails wait for it")
    target = SmtpTarget.from_url(settings.smtp_url, settings.smtp_timeout)
    task = dict(job.extra.get("task") or {})
    message = prepare(raw, task, str(task.get(states.JOB_ID) or job.job_id))
    problems = record.problems
    try:
        outcome = send(target, settings.envelope_sender, recipients, message, record.accepted)
    except SmtpUnavailable as exc:
        raise Retryable(
            str(exc), {states.META_RECIPIENTS: recipients, states.META_PROBLEMS: problems}
        ) from exc
    if outcome.later:
        waiting = ", ".join(f"{r} ({a})" for r, a in outcome.later.items())
        raise Retryable(
            f"SMTP server asked to try again later for {waiting}",
            {
                states.META_RECIPIENTS: list(outcome.later),
                states.META_PROBLEMS: problems + _failures(outcome),
            },
        )


def _failures(outcome: Outcome) -> list[str]:
    """What went wrong for each recipient that will never get the mail, naming it."""
    failed = [f"{r} refused: {answer}" for r, answer in outcome.refused.items()]
    return failed + [f"{r}: {why}" for r, why in outcome.unsendable.items()]


def _record(sent: list[str], problems: list[str], job_id: object) -> dict[str, Any]:
    """What a sent-marker holds, and the notify job's result."""
    return {
        states.NOTIFIED_AT: utc_now(),
        states.NOTIFY_ERROR: "; ".join(problems) or None,
        "sent-to": list(sent),
        "job-id": job_id,
    }


class SentRecord:
    """The sent-marker of one send, ready before the mail goes out.

    Its content (everyone sent to, the problems known before) is written to a temp file and
    fsynced before the conversation starts; when the server has taken the mail it takes the
    marker's name by one rename and the mail file is deleted, before even the goodbye. Between
    the server's answer and the mail's deletion there is no write to wait for, so a worker
    killed in that instant (the one instant that can send a mail twice) is rarely caught
    there. An outcome other than the one foreseen (a recipient refused) is written afresh.
    """

    def __init__(
        self, mail: Path, recipients: list[str], problems: list[str], mode: int, job_id: object
    ) -> None:
        self.mail, self.marker, self.mode = mail, sent_marker(mail), mode
        if os.path.isdir(self.marker) and not os.path.islink(self.marker):
            # A rename cannot replace a folder: the mail would go out with no record of it.
            raise TaskFailed(
                f"{self.marker.name} is a folder, where taskd records that the mail was sent; "
                "nothing was sent. Remove that folder"
            )
        self.problems = problems
        self.result = _record(recipients, problems, job_id)
        self.temp: Path | None = atomic.write_temp(
            self.marker,
            json.dumps(self.result).encode("utf-8"),
            durable=True,
            suffix=atomic.WORKER_TEMP_SUFFIX,
            chmod=mode,
        )

    def accepted(self, outcome: Outcome) -> None:
        """The server answered: record what it took, then let the mail file go."""
        if outcome.later:
            return  # tried again for those: the mail file stays for the retry
        result = {
            **self.result,
            states.NOTIFY_ERROR: "; ".join(self.problems + _failures(outcome)) or None,
            "sent-to": list(outcome.sent),
        }
        if result == self.result and self.temp is not None:
            os.replace(self.temp, self.marker)
            self.temp = None
        else:
            self.result = result
            _remember_sent(self.marker, result, self.mode)
            self.close()
        self.mail.unlink(missing_ok=True)
        atomic.fsync_path(self.marker.parent)

    def close(self) -> None:
        """Drop the temp file of a send that did not end in a record."""
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)
            self.temp = None


def sent_marker(mail: Path) -> Path:
    """Written once the server took the mail, before the mail file is deleted: a run of the same
    job after a crash (or after Redis forgot it) finds what was sent instead of failing."""
    return mail.with_name(names.sent_marker(names.notify_task_id(mail.name)))


def _remember_sent(marker: Path, result: dict[str, Any], mode: int) -> None:
    # Durable before the mail file goes: after a crash the marker, not a second send, answers.
    # `<marker>.tmp` is the name the bridge knows to ignore. It names the recipients: the
    # outputs' mode (TASKD_OUTPUT_MODE), not the umask's.
    write_durably(marker, json.dumps(result).encode("utf-8"), mode)


def _sent_before(marker: Path, task_job_id: object) -> dict[str, Any] | None:
    try:
        result = json.loads(read_regular(marker, MAX_MARKER_BYTES, "taskd sets"))
    except FileNotFoundError:
        return None  # never sent: the normal case when the mail file is gone
    except (OSError, ValueError, TaskFailed) as exc:
        log.warning("%s is not a sent-marker taskd wrote; ignoring it: %s", marker.name, exc)
        return None
    return result if isinstance(result, dict) and result.get("job-id") == task_job_id else None


@app.task(base=TaskdTask, name="tasks.notify.send")
def run(job: Job) -> dict[str, Any]:
    path = mail_path(job)
    task_job_id = dict(job.extra.get("task") or {}).get(states.JOB_ID)
    try:
        raw = read_regular(path, job.settings.max_notify_bytes, "TASKD_MAX_NOTIFY_BYTES")
    except FileNotFoundError:
        earlier = _sent_before(sent_marker(path), task_job_id)
        if earlier is not None:
            return earlier
        raise TaskFailed(f"{path.name} is gone; nothing to send") from None
    pending = job.extra.get(states.META_RECIPIENTS)
    entries = list(job.fields.get(states.NOTIFY) or []) or own_recipients(raw)
    good, bad = split_recipients(entries)
    waiting = set(pending) if isinstance(pending, list) else None
    recipients = good if waiting is None else [r for r in good if r in waiting]
    earlier = job.extra.get(states.META_PROBLEMS)
    if isinstance(earlier, list):  # a retry: the bad addresses were named by the first try
        problems = [str(p) for p in earlier]
    else:
        problems = [f"{b} is not one mail address; write it like name@example.com" for b in bad]
    if not recipients and not pending:
        raise TaskFailed("; ".join(problems) or f"{path.name} names no recipient (To/Cc)")
    if not recipients:  # a retry whose last recipients turned out bad: only the record is left
        result = _record([], problems, task_job_id)
        _remember_sent(sent_marker(path), result, job.settings.output_mode)
        path.unlink(missing_ok=True)
        return result
    record = SentRecord(path, recipients, problems, job.settings.output_mode, task_job_id)
    try:
        _deliver(job, raw, recipients, record)  # the record is in place when this returns
    finally:
        record.close()
    return record.result


__all__ = ["NOTIFY_TYPE", "run"]
