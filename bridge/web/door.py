"""The task door: tasks handed in and looked at over HTTP, on the bridge's HTTP port.

Open only with `TASKD_HTTP_TOKEN`; a client sends it as `Authorization: Bearer <token>`.

- `POST /api/tasks/<user-id>/<task-id>.<TYPE>` with the task's JSON: the name and the body are
  judged as the bridge judges a file (the same size, name and schema rules, the same words in
  the error); a good one is written into `task_queue/<user-id>/` whole, as the UI would write
  it, and the answer names it. Intake then takes it like any other file: the door adds no path
  of its own into the bridge.
- `GET /api/tasks/<user-id>/<task-id>.<TYPE>`: the task's file as it is now, under whatever name
  it has; `?wait=S` answers as soon as the task ends, or after S seconds with what it is then.

The door runs on the HTTP server's threads and only reads and writes files: the loop is never
touched. Requests are bounded in number, size and time, and a refused token is logged once per
client address a minute.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from bridge import contract, files, waiting, watch
from bridge.judge import judge, too_large
from bridge.logs import escape_controls
from bridge.taskfiles import read_one
from taskd import formats
from taskd.settings import Settings
from taskd.tasktypes import TaskType

log = logging.getLogger(__name__)

PREFIX = "/api/tasks/"
MAX_WAIT_S = 300.0
MAX_AT_ONCE = 32
"""Door requests served at once (long polls included); more are told to come back."""
MAX_WAITING = 8
"""Long polls waiting at once; another is answered at once with what the task is then."""
WAIT_POLL_S = 1.0  # the bridge rewrites a task's file at most once a second
REFUSED_LOG_EVERY_S = 60.0
WAIT_RE = re.compile(r"(?:^|&)wait=([^&]*)")

Reply = tuple[int, str, bytes]


def _json(status: int, body: object) -> Reply:
    return status, "application/json", json.dumps(body, ensure_ascii=False).encode()


def _error(status: int, text: str) -> Reply:
    return _json(status, {"error": text})


CLOSED = _error(HTTPStatus.NOT_FOUND, "no task door here: ops open it by setting TASKD_HTTP_TOKEN")


def is_door(path: str) -> bool:
    return path.startswith(PREFIX)


@dataclass(frozen=True)
class Named:
    """The task a door path names."""

    user: str
    name: contract.TaskName


@dataclass
class Door:
    settings: Settings
    types: Mapping[str, TaskType]
    checker: Any = None
    slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_AT_ONCE)
    )
    refused: dict[str, float] = field(default_factory=dict)  # client -> when last logged
    writing: threading.Lock = field(default_factory=threading.Lock)
    waits: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_WAITING)
    )

    def __post_init__(self) -> None:
        if self.checker is None:
            self.checker = formats.checker(self.settings.mail_db_path)

    def allowed(self, authorization: str | None, client: str, path: str) -> bool:
        """The token matches (compared in constant time); a refusal is logged."""
        token = (self.settings.http_token or "").encode()
        scheme, _, given = (authorization or "").partition(" ")
        offered = given.strip().encode("utf-8", "replace")  # any text a header can carry
        if token and scheme.lower() == "bearer" and hmac.compare_digest(offered, token):
            return True
        now = time.monotonic()
        if now - self.refused.get(client, -REFUSED_LOG_EVERY_S) >= REFUSED_LOG_EVERY_S:
            if len(self.refused) > 1000:
                self.refused.clear()  # bounded, whoever knocks
            self.refused[client] = now
            why = "a wrong token" if authorization else "no token"
            log.warning(
                "task door: refused %s from %s (%s); more from it this minute go unlogged",
                _shown(path[:200]),
                client,
                why,
            )
        return False

    def target(self, path: str) -> Named | Reply:
        """The user and task name a door path names, or why it names none."""
        parts = _segments(path[len(PREFIX) :])
        if parts is None:
            return _error(
                HTTPStatus.BAD_REQUEST,
                "the path is not UTF-8 once its %-escapes are decoded; name the task in UTF-8",
            )
        if len(parts) != 2 or not contract.USER_RE.fullmatch(parts[0]):
            return _error(
                HTTPStatus.BAD_REQUEST,
                "name a task as /api/tasks/<user-id>/<task-id>.<TYPE>, the user-id [A-Za-z0-9_]+",
            )
        name = contract.parse_name((parts[0], parts[1]))
        if name is None:
            return _error(
                HTTPStatus.BAD_REQUEST,
                f"{_shown(parts[1][:100])} is not a task name: write <task-id>.<TYPE>, "
                "TYPE upper case",
            )
        return Named(parts[0], name)

    def post(self, user: str, name: contract.TaskName, body: bytes) -> Reply:
        verdict = judge(body, name, self.types, self.checker)
        if not verdict.ok:
            return _error(HTTPStatus.UNPROCESSABLE_ENTITY, str(verdict.error))
        queue = self.settings.task_queue
        if not queue.is_dir():
            return _error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"{queue} does not exist: is the data root mounted? (taskd never creates it)",
            )
        folder, file_name = queue / user, _file_name(name)
        try:
            with self.writing:  # two requests for one task-id: one file, one 201
                _make_folder(folder)
                holder = _holder(folder, name)
                if holder is None:
                    try:
                        files.write_new_in(folder, file_name, body)
                    except FileExistsError:
                        holder = file_name
        except OSError as exc:
            log.error("task door: cannot write %s/%s: %s", user, file_name, exc)
            why = exc.strerror or type(exc).__name__
            return _error(
                HTTPStatus.SERVICE_UNAVAILABLE, f"cannot write the task file ({why}); tell ops"
            )
        if holder is not None:
            return _error(
                HTTPStatus.CONFLICT,
                f"task-id {name.stem!r} is in use by {holder}; use another task-id",
            )
        log.info("task door: wrote %s/%s", user, file_name)
        return _json(HTTPStatus.CREATED, {"user-id": user, "name": file_name})

    def get(self, user: str, name: contract.TaskName, query: str) -> Reply:
        wait = _wait_of(query)
        if isinstance(wait, tuple):
            return wait
        max_bytes = self.settings.max_task_bytes * 8
        args = (self.settings.task_queue, user, name.stem, name.type, max_bytes)
        real = _real_folder(self.settings.task_queue / user)  # a link there is never followed
        task = waiting.look_once(*args, None) if real else None
        if task is not None and wait > 0 and waiting.ended(task) is None:
            task = self._waited(args, task, wait)
        if task is None:
            return _error(HTTPStatus.NOT_FOUND, f"no task {_file_name(name)} of user {user}")
        return HTTPStatus.OK, "application/json", _body_of(task.fields, task.name)

    def _waited(self, args: tuple[Path, str, str, str, int], task: Any, wait: float) -> Any:
        """The task once it ended or `wait` passed; as it is now when too many wait already."""
        if not self.waits.acquire(blocking=False):
            return task
        try:
            return waiting.wait(*args, wait, interval=WAIT_POLL_S).task
        finally:
            self.waits.release()

    def too_large(self, length: int) -> Reply | None:
        if length > self.settings.max_task_bytes:
            return _error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                too_large(length, self.settings.max_task_bytes),
            )
        return None


def _segments(path: str) -> list[str] | None:
    """The path's parts, %-escapes decoded, as UTF-8 (http.server hands the request line over
    decoded as latin-1); None when they are not UTF-8."""
    try:
        raw = [unquote_to_bytes(part) for part in path.encode("latin-1").split(b"/")]
        parts = [part.decode("utf-8") for part in raw]
    except (UnicodeDecodeError, UnicodeEncodeError):
        return None
    # A `/` or NUL escaped into a part names no file: such a part is no name at all.
    return [part if not {"/", "\0"} & set(part) else "" for part in parts]


def _real_folder(folder: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(folder).st_mode)
    except OSError:
        return False


def _make_folder(folder: Path) -> None:
    """The user's folder, made if missing; OSError when something else has its name."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir()
    if not _real_folder(folder):
        raise NotADirectoryError(errno.ENOTDIR, "not a folder (a link or a file?)", str(folder))


def _holder(folder: Path, name: contract.TaskName) -> str | None:
    """The file of this user's that holds the task-id, of any type (the bridge would reject a
    second one)."""
    for entry in watch.listed(folder):
        if not entry.name.startswith((f"{name.stem}.", f"{name.stem}-")):
            continue
        task = read_one(folder.name, entry, 2**24)
        if task is not None and task.task_id == name.stem:
            return entry.name
    return None


def _file_name(name: contract.TaskName) -> str:
    return f"{name.stem}.{name.type}"


def _shown(text: str) -> str:
    return repr(escape_controls(text))


def _wait_of(query: str) -> float | Reply:
    found = WAIT_RE.search(query)
    if found is None:
        return 0.0
    try:
        seconds = float(found.group(1))
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_S:  # NaN fails this too
        return _error(
            HTTPStatus.BAD_REQUEST,
            f"wait={_shown(found.group(1)[:40])}: give seconds from 0 to {MAX_WAIT_S:g}",
        )
    return seconds


def _body_of(fields: Mapping[str, Any], name: str) -> bytes:
    return json.dumps({"name": name, "task": fields}, ensure_ascii=False).encode()


def open_door(settings: Settings, types: Mapping[str, TaskType]) -> Door | None:
    """The door when ops gave it a token; none otherwise."""
    return Door(settings, types) if settings.http_token else None
