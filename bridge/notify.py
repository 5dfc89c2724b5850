"""The bridge's side of notify mails: when to send `<task-id>.notify.eml`, and what came of it.

A notify mail is sent when its task has ended (SUCCESS or FAILURE) and the mail file exists,
whichever comes last. Sending is a job of its own on the `notify` queue, with an id derived from
the task's job id: it is published once, retried on the notify intervals (the task file shows
`notify-retry-at`), and its outcome is written into the task file (`notified-at`, or
`notify-error` after the last try). The task file stays the only record.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge import contract, files
from bridge.mirror import error_text
from bridge.model import Tracked
from taskd import jobs, names, states
from taskd.tasktypes import TaskType

log = logging.getLogger(__name__)

NOTIFY_NAMESPACE = uuid.UUID("9b7a8c55-d57f-4bd8-8a1b-6e0f0c6d3a11")
ENDED = frozenset({states.SUCCESS, states.FAILURE})
SUFFIX = names.NOTIFY_SUFFIX


def notify_job_id(task_job_id: str, user: str, task_id: str) -> str:
    """The notify job of one task of one user: a copy of another user's ended file (same job
    id) gets a job of its own, and can never take the owner's mail's place."""
    return str(uuid.uuid5(NOTIFY_NAMESPACE, f"{user}/{task_id}/{task_job_id}:notify"))


def task_id_of(mail: Path) -> str:
    return mail.name[: -len(SUFFIX)]


def sent_marker(task_path: Path, task_id: str) -> Path:
    return task_path.with_name(names.sent_marker(task_id))


def is_sent_marker(name: str) -> bool:
    return names.is_sent_marker(name)


def marker_task_id(marker: Path) -> str:
    return names.sent_marker_task_id(marker.name)


MARKER_LIMIT = 65536
FIELDS_LIMIT = 1 << 24


def read_marker(marker: Path) -> dict[str, Any] | None:
    """A worker's sent-marker; never follows a link or blocks on a FIFO put in its place."""
    try:
        value = json.loads(files.read_regular(marker, MARKER_LIMIT).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def is_regular(path: Path) -> bool:
    """A regular file itself, not whatever a link in its place points to."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def wants_mail(fields: dict[str, Any]) -> bool:
    """Ended, and no outcome of its notify mail recorded yet."""
    return (
        fields.get(states.STATE) in ENDED
        and states.NOTIFIED_AT not in fields
        and states.NOTIFY_ERROR not in fields
    )


def read_fields(path: Path) -> dict[str, Any] | None:
    try:
        return contract.parse_content(contract.decode_utf8(files.read_regular(path, FIELDS_LIMIT)))
    except (OSError, ValueError):
        return None


def task_files(directory: Path, task_id: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The task files in `directory` whose content says they are task `task_id`."""
    try:
        names = [p for p in directory.iterdir() if p.name.startswith(task_id)]
    except FileNotFoundError:
        return
    for path in names:
        if path.name.endswith(SUFFIX) or contract.parse_name(("u", path.name)) is None:
            continue
        fields = read_fields(path)
        if fields is not None and fields.get(states.TASK_ID) == task_id:
            yield path, fields


@dataclass
class Notifier:
    """Notify jobs in flight, by notify job id."""

    kind: TaskType

    def __post_init__(self) -> None:
        self.jobs: dict[str, Tracked] = {}
        # Ended tasks whose mail is no regular file: (task file, why), for the notify pass to
        # write as `notify-error`.
        self.refused: list[tuple[Path, str]] = []

    def job_for(self, task_path: Path, fields: dict[str, Any]) -> Tracked | None:
        """A notify job for an ended task whose mail exists; None if there is nothing to send."""
        if not wants_mail(fields) or not isinstance(fields.get(states.JOB_ID), str):
            return None
        task_id = str(fields[states.TASK_ID])
        mail = task_path.with_name(task_id + SUFFIX)
        if not is_regular(mail):  # absent, or a link or FIFO in its place: never followed
            kind = files.not_regular_kind(mail)
            if kind is not None:
                self.refused.append(
                    (
                        task_path,
                        f"{mail.name} is {kind}; nothing was sent. "
                        "Write the mail as a plain file in the task's folder",
                    )
                )
            return None
        user = task_path.parent.name
        job_id = notify_job_id(fields[states.JOB_ID], user, task_id)
        if job_id in self.jobs:
            return None
        keep = (states.TASK_ID, states.STATE, states.JOB_ID, states.ERROR, "output")
        task = {k: fields.get(k) for k in keep}
        job = Tracked(
            user=task_path.parent.name,
            task_id=task_id,
            type=self.kind,
            path=task_path,
            fields={
                states.NOTIFY: fields.get(states.NOTIFY) or [],
                states.JOB_ID: job_id,
                states.STATE: states.QUEUED,
            },
            extra={"task": task},
        )
        self.jobs[job_id] = job
        return job

    def owns(self, job_id: str, task_user: str, task_id: str, task_queue: Path) -> bool:
        """Is `job_id` the notify job of a task whose file still wants its mail sent?"""
        for _path, fields in task_files(task_queue / task_user, task_id):
            if (
                isinstance(fields.get(states.JOB_ID), str)
                and notify_job_id(fields[states.JOB_ID], task_user, task_id) == job_id
            ):
                return True
        return False

    def for_mail(self, mail: Path) -> Tracked | None:
        """A notify mail appeared (or was found by a scan): send it if its task has ended."""
        for path, fields in task_files(mail.parent, task_id_of(mail)):
            job = self.job_for(path, fields)
            if job is not None:
                return job
        return None

    def outcome(self, job: Tracked, meta: dict[str, Any] | None) -> dict[str, Any] | None:
        """Task-file fields the notify job's state calls for; None while it has no news."""
        if not meta:
            return None
        result = jobs.result(meta)
        status = jobs.status(meta)
        if status == states.SUCCESS:
            fields = jobs.fields(result)
            return {
                states.NOTIFIED_AT: fields.get(states.NOTIFIED_AT),
                states.NOTIFY_ERROR: fields.get(states.NOTIFY_ERROR),
                states.NOTIFY_RETRY_AT: None,
            }
        if status == states.RETRY:
            # The next try sends only to who is still waiting, and keeps what went wrong before.
            for key in (states.META_RECIPIENTS, states.META_PROBLEMS):
                job.extra[key] = result.get(key)
            return {states.NOTIFY_RETRY_AT: result.get(states.META_RETRY_AT)}
        if status in (states.FAILURE, states.CELERY_REVOKED):
            return {
                states.NOTIFY_ERROR: error_text(meta.get("result")),
                states.NOTIFY_RETRY_AT: None,
            }
        return None
