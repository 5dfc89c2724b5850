"""Result sets: `retrieve/<user-id>/<retrieve-id>.json`, written by RETRMS, read by PACKMS.

Written aside and renamed into place, so a reader sees a whole result set or none. The mails are
streamed to a scratch file first: a search has no cap on its matches and memory stays flat. A
result set gets TASKD_OUTPUT_MODE whatever the umask, and so do the folders made for it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from taskd import atomic
from taskd.settings import DEFAULT_OUTPUT_MODE, Settings, folder_mode
from tasks.errors import TaskFailed

log = logging.getLogger(__name__)

RETRIEVE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
USER_RE = re.compile(r"[A-Za-z0-9_]+")


def result_path(settings: Settings, user_id: str, retrieve_id: str) -> Path:
    """Where a user's result set lives; ids are checked, never joined into a path unchecked."""
    if not USER_RE.fullmatch(user_id):
        raise TaskFailed(f"user-id {user_id!r} is not [A-Za-z0-9_]+")
    if not RETRIEVE_ID_RE.fullmatch(retrieve_id):
        raise TaskFailed(
            f"field 'retrieve-id': {retrieve_id!r} is not a retrieve-id "
            "(letters, digits, '-' and '_', as a RETRMS assigned it)"
        )
    return settings.retrieve / user_id / f"{retrieve_id}.json"


def write_durably(target: Path, data: bytes, mode: int | None = None) -> None:
    """A small file written whole or not at all, and on disk when this returns (taskd.atomic:
    an exclusive, no-follow temp file beside it, fsynced, renamed over it, the folder fsynced).
    With `mode`, the file has exactly that mode whatever the umask."""
    atomic.write_atomic(target, data, chmod=mode)


def write_result_set(
    target: Path,
    scratch: Path,
    header: dict[str, Any],
    mails: Iterable[dict[str, Any]],
    mode: int = DEFAULT_OUTPUT_MODE,
) -> int:
    """Write `{...header, "count": N, "mails": [...]}` to `target` atomically; returns N.

    The result set has `mode` and a missing folder for it `folder_mode(mode)`, whatever the umask.
    """
    lines = scratch / "mails.jsonl"
    count = 0
    with open(lines, "w", encoding="utf-8", opener=_private) as out:
        for mail in mails:
            out.write(json.dumps(mail, ensure_ascii=False) + "\n")
            count += 1
    body = scratch / "result.json"
    with (
        open(body, "w", encoding="utf-8", opener=_private) as out,
        open(lines, encoding="utf-8") as src,
    ):
        os.fchmod(out.fileno(), mode)
        head = json.dumps({**header, "count": count}, ensure_ascii=False, indent=1)
        out.write(head[:-2] + ',\n "mails": [')
        for n, line in enumerate(src):
            out.write(("," if n else "") + "\n  " + line.rstrip("\n"))
        out.write("\n ]\n}\n")
        out.flush()
        os.fsync(out.fileno())
    atomic.make_dirs(target.parent, folder_mode(mode))
    os.replace(body, target)
    atomic.fsync_path(target.parent)
    lines.unlink()
    return count


def _private(path: str, flags: int) -> int:
    """Scratch files hold what a user searched for: their owner's alone, whatever the umask."""
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


_MAILS_LINE = ' "mails": ['


def _missing(retrieve_id: str, user_id: str) -> TaskFailed:
    return TaskFailed(
        f"field 'retrieve-id': {retrieve_id!r} is not a result set of user {user_id}; "
        "run the RETRMS first, or copy the retrieve-id from its task file"
    )


def _damaged(retrieve_id: str, why: object) -> TaskFailed:
    return TaskFailed(f"result set {retrieve_id!r} is damaged ({why}); run the RETRMS again")


class ResultSet:
    """A result set on disk, its mails read as a stream as often as asked.

    `write_result_set` puts each mail on a line of its own, so a reader holds one mail at a
    time; a result set laid out otherwise (written by another tool) is read whole.
    """

    def __init__(self, path: Path, retrieve_id: str, user_id: str) -> None:
        self.path = path
        self.retrieve_id = retrieve_id
        self.user_id = user_id
        self.header = self._read_header()

    def _lines(self) -> Iterator[str]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                yield from handle
        except FileNotFoundError:
            raise _missing(self.retrieve_id, self.user_id) from None
        except UnicodeDecodeError as exc:
            raise _damaged(self.retrieve_id, exc) from None

    def _read_header(self) -> dict[str, Any]:
        head: list[str] = []
        for line in self._lines():
            if line.rstrip("\n") == _MAILS_LINE:
                try:
                    header = json.loads("".join(head).rstrip().rstrip(",") + "\n}")
                except ValueError as exc:
                    # Not laid out as write_result_set writes: read whole below, which names
                    # any real damage.
                    log.debug("result set %s: header not on lines of its own: %s", self.path, exc)
                    break
                if isinstance(header, dict):
                    return header
                break
            head.append(line)
            if len(head) > 10_000:  # not our layout: no header is that long
                break
        data = self._whole()
        return {key: value for key, value in data.items() if key != "mails"}

    def _whole(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise _missing(self.retrieve_id, self.user_id) from None
        except ValueError as exc:
            raise _damaged(self.retrieve_id, exc) from None
        if not isinstance(data, dict) or not isinstance(data.get("mails"), list):
            raise TaskFailed(
                f"result set {self.retrieve_id!r} has no mails list; run the RETRMS again"
            )
        return data

    def mails(self) -> Iterator[dict[str, Any]]:
        """Every mail entry (objects only), in order."""
        lines = self._lines()
        for line in lines:
            if line.rstrip("\n") == _MAILS_LINE:
                break
        else:
            yield from (m for m in self._whole()["mails"] if isinstance(m, dict))
            return
        closed = False
        for line in lines:
            text = line.strip()
            if text == "]":
                closed = True
                break
            try:
                mail = json.loads(text.removesuffix(","))
            except ValueError as exc:
                raise _damaged(self.retrieve_id, exc) from None
            if isinstance(mail, dict):
                yield mail
        if not closed:
            raise _damaged(self.retrieve_id, "it ends inside the mails list")

    def pick(self, wanted: list[str]) -> Iterator[dict[str, Any]]:
        """The mails, or those of the `wanted` ids (each once), in the result set's order (the
        archive's: the store finds them fastest so); an unknown id is an error naming it,
        raised before any mail is returned."""
        if not wanted:
            yield from self.mails()
            return
        asked = set(wanted)
        found = {str(mail.get("id")) for mail in self.mails()} & asked
        missing = [m for m in dict.fromkeys(wanted) if m not in found]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise TaskFailed(
                f"field 'mails': {shown} not in result set {self.retrieve_id!r}; "
                "pick ids from its mails list"
            )
        for mail in self.mails():
            mail_id = str(mail.get("id"))
            if mail_id in asked:
                asked.discard(mail_id)
                yield mail


def read_result_set(path: Path, retrieve_id: str, user_id: str) -> dict[str, Any]:
    """A whole result set, mails and all (for tools and tests; tasks stream `ResultSet`)."""
    result = ResultSet(path, retrieve_id, user_id)
    return {**result.header, "mails": list(result.mails())}
