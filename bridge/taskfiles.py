"""Task files as the UI sees them: each one's user, name, state and fields, read without
following links (`taskd status`, `taskd submit --wait`, the task door and the page share it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge import contract, files
from bridge.schedule import parse_time
from taskd import jobs, states

log = logging.getLogger(__name__)

NEW = "NEW"
"""A file the bridge has not taken yet (or one still being written)."""


@dataclass(frozen=True)
class TaskFile:
    """One task file as status sees it."""

    user: str
    name: str
    state: str
    fields: Mapping[str, Any]
    mtime: float

    @property
    def task_id(self) -> str:
        own = self.fields.get(states.TASK_ID)
        return own if isinstance(own, str) else self.name.rsplit(".", 1)[0]

    def last_change(self) -> datetime:
        """When the task last moved: finished, else started, else queued, else the file's mtime."""
        for key in (states.FINISHED_AT, states.STARTED_AT, states.QUEUED_AT):
            when = parse_time(self.fields.get(key))
            if when is not None:
                return when
        return datetime.fromtimestamp(self.mtime, UTC)


def read_task_files(
    task_queue: Path, max_bytes: int, user_id: str | None = None
) -> Iterator[TaskFile]:
    """Every task file directly under task_queue/<user-id>/ (of one user, if given)."""
    try:
        users = sorted(os.scandir(task_queue), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for user in users:
        if user_id is not None and user.name != user_id:
            continue
        if not user.is_dir(follow_symlinks=False):
            continue
        try:
            entries = list(os.scandir(user.path))
        except OSError as exc:
            log.warning("cannot list %s (%s); its tasks are left out", user.path, exc)
            continue
        for entry in entries:
            task = read_one(user.name, entry, max_bytes)
            if task is not None:
                yield task


def read_one(user: str, entry: os.DirEntry[str], max_bytes: int) -> TaskFile | None:
    """One entry of a user's folder as a task file, or None when it is not one (or is gone)."""
    if contract.parse_name((user, entry.name)) is None:
        return None
    try:
        mtime = entry.stat(follow_symlinks=False).st_mtime
        raw = files.read_regular(Path(entry.path), max_bytes)
        fields = contract.parse_content(contract.decode_utf8(raw))
    except (OSError, ValueError):
        # Gone meanwhile, not a regular file, too large or not (yet) JSON: not the bridge's.
        return None if not os.path.lexists(entry.path) else TaskFile(user, entry.name, NEW, {}, 0)
    state = fields[states.STATE] if contract.owned_by_bridge(fields) else NEW
    return TaskFile(user, entry.name, str(state), fields, mtime)


def doing_of(fields: Mapping[str, Any]) -> str:
    """What a running task's file says it is doing: `step 1/2: searching 12/30 MB`."""
    return jobs.doing(
        {
            states.META_STEP: fields.get(states.PROGRESS_STEP),
            states.META_STEPS: fields.get(states.PROGRESS_STEPS),
            states.META_TEXT: fields.get(states.PROGRESS_TEXT),
        }
    ).label()
