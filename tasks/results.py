"""Result sets: `retrieve/<user-id>/<retrieve-id>.json`, written by RETRMS, read by PACKMS.

Written aside and renamed into place, so a reader sees a whole result set or none. The mails are
streamed to a scratch file first: a search has no cap on its matches and memory stays flat.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from taskd.settings import Settings
from tasks.errors import TaskFailed

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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_result_set(
    target: Path, scratch: Path, header: dict[str, Any], mails: Iterable[dict[str, Any]]
) -> int:
    """Write `{...header, "count": N, "mails": [...]}` to `target` atomically; returns N."""
    lines = scratch / "mails.jsonl"
    count = 0
    with open(lines, "w", encoding="utf-8") as out:
        for mail in mails:
            out.write(json.dumps(mail, ensure_ascii=False) + "\n")
            count += 1
    body = scratch / "result.json"
    with open(body, "w", encoding="utf-8") as out, open(lines, encoding="utf-8") as src:
        head = json.dumps({**header, "count": count}, ensure_ascii=False, indent=1)
        out.write(head[:-2] + ',\n "mails": [')
        for n, line in enumerate(src):
            out.write(("," if n else "") + "\n  " + line.rstrip("\n"))
        out.write("\n ]\n}\n")
        out.flush()
        os.fsync(out.fileno())
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(body, target)
    _fsync_dir(target.parent)
    lines.unlink()
    return count


def read_result_set(path: Path, retrieve_id: str, user_id: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise TaskFailed(
            f"field 'retrieve-id': {retrieve_id!r} is not a result set of user {user_id}; "
            "run the RETRMS first, or copy the retrieve-id from its task file"
        ) from None
    except ValueError as exc:
        raise TaskFailed(
            f"result set {retrieve_id!r} is damaged ({exc}); run the RETRMS again"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("mails"), list):
        raise TaskFailed(f"result set {retrieve_id!r} has no mails list; run the RETRMS again")
    return data


def pick(data: dict[str, Any], wanted: list[str]) -> Iterator[dict[str, Any]]:
    """The result set's mails, or the `wanted` ids of it; an unknown id is an error naming it."""
    mails = [m for m in data["mails"] if isinstance(m, dict)]
    if not wanted:
        yield from mails
        return
    by_id: dict[str, dict[str, Any]] = {}
    for mail in mails:
        by_id.setdefault(str(mail.get("id")), mail)
    missing = [m for m in wanted if m not in by_id]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise TaskFailed(
            f"field 'mails': {shown} not in result set {data.get('retrieve-id')!r}; "
            "pick ids from its mails list"
        )
    for mail_id in dict.fromkeys(wanted):
        yield by_id[mail_id]
