"""Intake: deciding when a file in task_queue/ is complete, and what it is.

A file is complete when it was closed after writing and has not changed since, or has been
unchanged for TASKD_SETTLE and parses. A file that does not parse is given TASKD_REJECT_AFTER
unchanged before it is rejected, since a slow writer may still be adding to it. `consider` reads
and judges; the bridge carries the decision out.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge import contract, files
from bridge.judge import Verdict, judge, too_large
from taskd import formats, names
from taskd.settings import Settings
from taskd.tasktypes import TaskType

log = logging.getLogger(__name__)

WAIT = "wait"
DROP = "drop"
TAKE = "take"
REJECT = "reject"
ADOPT = "adopt"


@dataclass
class Pending:
    name: contract.TaskName
    since: float
    sig: tuple[int, int, int, int] | None = None
    closed_sig: tuple[int, int, int, int] | None = None
    owner_checked: tuple[int, int, int, int] | None = None
    owned: dict[str, Any] | None = None  # the fields, when the bridge wrote this file


@dataclass(frozen=True)
class Decision:
    action: str
    name: contract.TaskName | None = None
    verdict: Verdict = field(default_factory=Verdict)
    fields: dict[str, Any] = field(default_factory=dict)
    keep_aside: bool = False  # too large to keep inline: the original is kept beside
    judged: os.stat_result | None = None  # the file the verdict is of (TAKE): its lstat


def owned_limit(max_task_bytes: int) -> int:
    """The most the bridge reads to learn whether it wrote a file: what it writes is bounded
    by a small multiple of the limit (a taken file's fields, expanded by indenting)."""
    return 4 * max_task_bytes + OWN_SLACK_BYTES


OWN_SLACK_BYTES = 65536
REJECTED_DIR = names.REJECTED_DIR  # originals of rejected files too large to keep inline


class Intake:
    def __init__(self, settings: Settings, types: Mapping[str, TaskType]) -> None:
        self.settings = settings
        self.types = types
        self.formats = formats.checker(settings.mail_db_path)
        self.rejected = settings.data_root / REJECTED_DIR
        self._dirs_checked: dict[str, bool] = {}  # this pass's user folders: real or a link
        self.pending: dict[Path, Pending] = {}
        self._by_user: dict[str, dict[Path, None]] = {}  # the same, by user, in arrival order
        self._ignored: set[Path] = set()
        self._root = str(settings.task_queue).rstrip("/") + "/"

    def note(self, path: Path, now: float, closed: bool = False) -> None:
        """A path was created, changed or closed (or a scan found it)."""
        # String slicing, not Path.relative_to: a start-up scan notes every file of the tree.
        text, root = str(path), self._root
        if not text.startswith(root):
            return
        parts = tuple(text[len(root) :].split("/"))
        reason = contract.ignore_reason(parts)
        if reason is not None:
            self._ignore_once(path, reason)
            return
        name = contract.parse_name(parts)
        assert name is not None
        entry = self.pending.get(path)
        if entry is None:
            entry = self.pending[path] = Pending(name=name, since=now)
            self._by_user.setdefault(name.user, {})[path] = None
        if closed:
            try:
                entry.closed_sig = files.signature(path)
            except OSError:
                entry.closed_sig = None

    def new_pass(self) -> None:
        """Look at user folders afresh: one may have been swapped for a link since."""
        self._dirs_checked.clear()

    def _real_directory(self, user: str, path: Path) -> bool:
        known = self._dirs_checked.get(user)
        if known is None:
            known = self._dirs_checked[user] = _real_directory(path.parent)
        return known

    def forget(self, path: Path) -> None:
        entry = self.pending.pop(path, None)
        if entry is not None:
            mine = self._by_user.get(entry.name.user)
            if mine is not None:
                mine.pop(path, None)
                if not mine:
                    del self._by_user[entry.name.user]

    def turns(self, per_user: int) -> list[Path]:
        """Up to `per_user` pending files of each user, one user's at a time in turn, so a
        user who drops thousands of files does not hold up another's one. No pass costs more
        than what it hands out."""
        batches = [list(itertools.islice(mine, per_user)) for mine in self._by_user.values()]
        if len(batches) == 1:
            return batches[0]
        return [p for turn in itertools.zip_longest(*batches) for p in turn if p is not None]

    def _ignore_once(self, path: Path, reason: str) -> None:
        if path not in self._ignored and path.name not in ("", "."):
            self._ignored.add(path)
            log.info("ignoring %s: %s", path, reason)

    def _look(self, path: Path, entry: Pending) -> os.stat_result | Decision:
        """The file's lstat, or the decision when it is no task file to read."""
        if not self._real_directory(entry.name.user, path):
            self._ignore_once(path, "its user directory is a link, not a directory")
            return Decision(DROP)
        try:
            st = files.identity(path)
        except files.NotRegularFile:
            self._ignore_once(path, "not a regular file (symlink, FIFO, device or directory)")
            return Decision(DROP)
        except FileNotFoundError:
            return Decision(DROP)
        if files.foreign_links(path, st, self.rejected / entry.name.user):
            # Another name for a file that may be anyone's: never read, kept beside as it is.
            error = (
                "the file is a hard link to another file; write the task file itself, "
                "not a link to one"
            )
            return Decision(REJECT, entry.name, Verdict(error=error), keep_aside=True)
        return st

    def consider(self, path: Path, now: float) -> Decision:
        entry = self.pending[path]
        st = self._look(path, entry)
        if isinstance(st, Decision):
            return st
        sig = files.signature_of(st)
        if entry.sig is None:
            entry.sig = sig  # first look: quiet since it was noted
        elif sig != entry.sig:
            entry.sig, entry.since = sig, now
        raw: bytes | None = None
        if entry.owner_checked != sig:
            # A file the bridge wrote is complete by construction (atomic rename): resume it
            # at once, without the settle wait meant for the UI's writes.
            entry.owner_checked = sig
            raw = _read_quietly(path, owned_limit(self.settings.max_task_bytes), st)
            entry.owned = owned_fields(raw or b"")
        if entry.owned is not None:
            return Decision(ADOPT, entry.name, fields=entry.owned)
        quiet = now - entry.since
        if entry.closed_sig != sig and quiet < self.settings.settle:
            return Decision(WAIT)
        if raw is not None and len(raw) > self.settings.max_task_bytes:
            raw = None  # too large: judged by its size alone, below
        return self._read_and_judge(path, entry, quiet, st, raw)

    def _read_and_judge(
        self,
        path: Path,
        entry: Pending,
        quiet: float,
        st: os.stat_result,
        raw: bytes | None = None,
    ) -> Decision:
        """Judge the file; `raw` is its content when this pass has read it already."""
        try:
            if raw is None:
                raw = files.read_regular(path, self.settings.max_task_bytes, expect=st)
        except files.TooLarge as exc:
            # Never read whole: it may be any size. Its bytes are kept beside, once.
            error = too_large(exc.size, exc.limit)
            return Decision(REJECT, entry.name, Verdict(error=error), keep_aside=True)
        except files.NotRegularFile:
            return Decision(DROP)
        except FileNotFoundError:
            return Decision(DROP)
        verdict = judge(raw, entry.name, self.types, self.formats)
        if verdict.ok:
            return Decision(TAKE, entry.name, verdict, judged=st)
        if verdict.incomplete and quiet < self.settings.reject_after:
            return Decision(WAIT)
        if verdict.incomplete:
            verdict = Verdict(
                fields=verdict.fields,
                error=f"{verdict.error} (unchanged for {self.settings.reject_after:g} s)",
            )
        return Decision(REJECT, entry.name, verdict)


def _real_directory(path: Path) -> bool:
    """A user directory must be one: through a link the bridge would write wherever it points."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _read_quietly(path: Path, limit: int, st: os.stat_result) -> bytes | None:
    try:
        return files.read_regular(path, limit, expect=st)
    except OSError:
        return None  # gone, too large or not regular: the judging says which


def owned_fields(raw: bytes) -> dict[str, Any] | None:
    """The fields of a file the bridge wrote; None for any other content."""
    try:
        fields = contract.parse_content(contract.decode_utf8(raw))
    except (UnicodeDecodeError, contract.ParseError):
        return None
    return fields if contract.owned_by_bridge(fields) else None
