"""One Redis db serves one data root: which one, and a clear refusal when it is another's.

Every key and queue taskd uses is global to its Redis db, so two data roots on one db would run
each other's jobs against the wrong archive and cancel each other's work. Each data root has an
identity: a UUID made once in `<data-root>/.taskd/root-id` (by whichever process needs it first;
hosts sharing the data root over NFS read the same file), which every job carries. The Redis db
records the root it serves in `taskd:root`: the UUID and the data root's path, so a copy of a
data root (`cp -a`, a restored backup beside the original) is another root although it carries
the same file. Every host therefore names a shared data root by the same path. The bridge and
every worker claim the db for their root when it serves none (a Redis that came back empty
serves none) and refuse to act when it serves another.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from taskd import names, states
from taskd.settings import SettingsError, redact_url

ROOT_ID_FILE = "root-id"
REMAKE = (
    "remove it to make a new one (the data root is then a new one to Redis: once its queues "
    "are drained, DEL taskd:root in its Redis db)"
)
MAX_ROOT_RECORD = 4096


class RootConflict(SettingsError):
    """The Redis db already serves another data root; the message says what to do."""


@dataclass(frozen=True)
class RootClaim:
    """What `taskd:root` says: the identity, path and host of the data root a db serves."""

    id: str
    path: str
    host: str

    def dump(self) -> str:
        return json.dumps({"id": self.id, "path": self.path, "host": self.host})

    @classmethod
    def parse(cls, raw: object) -> RootClaim | None:
        if not isinstance(raw, (bytes, str)) or len(raw) > MAX_ROOT_RECORD:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            return None
        return cls(data["id"], str(data.get("path", "?")), str(data.get("host", "?")))


def _valid_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def root_path(data_root: Path) -> str:
    """The data root's path as claims name it: absolute and normalised, links not resolved
    (hosts may reach a share through a link of their own)."""
    return os.path.abspath(data_root)


def root_id(data_root: Path) -> str:
    """The UUID of `.taskd/root-id`, made once: written aside, then linked in without
    replacing, so two processes starting together agree on one. Jobs carry it; the claim in
    Redis carries it with `root_path`."""
    folder = data_root / names.PRIVATE_DIR
    path = folder / ROOT_ID_FILE
    for _ in range(3):
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            _make_root_id(folder, path)
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read {path}: {exc}; {REMAKE}") from exc
        if not _valid_id(text):
            raise SettingsError(f"{path} holds no data root identity; {REMAKE}")
        return text
    raise SettingsError(f"cannot create {path}")


def _make_root_id(folder: Path, path: Path) -> None:
    try:
        _write_root_id(folder, path)
    except OSError as exc:
        raise SettingsError(
            f"cannot create {path} ({exc.strerror or exc}): the data root needs a few bytes "
            "of free space and write access for taskd's user"
        ) from exc


def _write_root_id(folder: Path, path: Path) -> None:
    folder.mkdir(mode=0o750, exist_ok=True)
    aside = folder / f".{ROOT_ID_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        with open(aside, "x", encoding="ascii") as handle:
            handle.write(f"{uuid.uuid4()}\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: theirs stands
            os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)


def claim(client: Any, data_root: Path, ident: str) -> RootClaim | None:
    """Claim the db for this root if it serves none; the other root's claim if it serves one.

    One round trip. Raises Redis's own errors (the caller knows whether Redis may be away)."""
    mine = RootClaim(ident, root_path(data_root), socket.gethostname())
    with client.pipeline(transaction=False) as pipe:
        pipe.set(states.KEY_ROOT, mine.dump(), nx=True)
        pipe.get(states.KEY_ROOT)
        _, raw = pipe.execute()
    return other_root(raw, ident, mine.path)


def other_root(raw: object, ident: str, path: str) -> RootClaim | None:
    """The claim in `raw` when it is another root's: another identity, or the same identity at
    another path (a copy of the data root). An unreadable claim counts as another's."""
    held = RootClaim.parse(raw)
    if held is None:
        return RootClaim("?", "(an unreadable taskd:root)", "?") if raw is not None else None
    return None if held.id == ident and os.path.normpath(held.path) == path else held


FIX = (
    "one Redis db serves one data root. Give each data root a Redis db of its own (another db "
    "number at the end of TASKD_REDIS_URL, or another Redis), or, if the other data root is gone "
    "for good, delete the key taskd:root"
)


def serves_another(client: Any, data_root: Path, redis_url: str) -> str | None:
    """For the tools (which never claim a db): why the db answers for another data root, if it
    does, judged by the root's path alone (a tool does not make the root's identity)."""
    held = RootClaim.parse(client.get(states.KEY_ROOT))
    if held is None or os.path.normpath(held.path) == root_path(data_root):
        return None
    return str(conflict(redis_url, data_root, held))


def conflict(redis_url: str, data_root: Path, other: RootClaim) -> RootConflict:
    return RootConflict(
        f"the Redis db at {redact_url(redis_url)} already serves the data root {other.path} "
        f"(identity {other.id}, of host {other.host}), not {data_root}: {FIX}"
    )


def foreign_job(redis_url: str, data_root: Path, job_id: str) -> RootConflict:
    return RootConflict(
        f"job {job_id} on the Redis db at {redact_url(redis_url)} was published for another "
        f"data root than {data_root}: {FIX}"
    )


def refuse_if_taken(client: Any, data_root: Path, redis_url: str) -> str:
    """At a process's start: claim the db, or raise RootConflict; returns this root's identity.
    Redis away decides nothing (each job checks again)."""
    ident = root_id(data_root)
    try:
        other = claim(client, data_root, ident)
    except redis.exceptions.RedisError:
        return ident
    if other is not None:
        raise conflict(redis_url, data_root, other)
    return ident
