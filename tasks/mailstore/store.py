"""The reference mail store: an archive of plain files laid out as in mail-store.md.

```
<root>/groups.json                        {"sales": ["yukoh", "hank"]}
<root>/<user>/labels.json                 {"<mail-id>": ["label", ...]}
<root>/<user>/<folder>/<YYYYMMDD>/<stem>.eml
<root>/<user>/<folder>/<YYYYMMDD>.mbox
```
A day may have both a folder of `.eml` files and an `.mbox` file; they make one partition, the
`.eml` files first (by name), then the mbox messages in file order.  Other files, and names
starting with `.`, are not mail and are left alone.

Mail ids are unique within a user's archive and match `[A-Za-z0-9._-]+`.  They are given in
order of folder, day, then file name, so that an archive growing by new days keeps its old ids:

- mbox messages: `<YYYYMMDD>.<n>`, n counting from 1 in the day's file.  When several folders
  have an mbox for the same day, the first folder (by name) keeps these ids and the others are
  qualified with their folder: `<folder>.<YYYYMMDD>.<n>`.
- `.eml` files: the file's stem.  If the stem is taken already (the same stem on another day or
  in another folder), not a valid id (other characters, a leading `.`, `..`), or has the shape of
  an mbox id of this archive, the first free one of `<YYYYMMDD>.<stem>`,
  `<folder>.<YYYYMMDD>.<stem>` and `<YYYYMMDD>.<sanitised stem>.<hash>` is used instead, where
  the hash is the start of the SHA-1 of the file's path in the user's archive.

Ids are looked up, never joined into a path.  A store lists each user's folders and days once
(make one store per task, or call `refresh()`) and the files of a day when it reads that day,
giving ids by walking the days in order; what it keeps about the mail already walked is a set
of id digests that moves to a temporary file when it grows, so memory does not grow with the
archive.  A lookup by id is quickest with the folder and day a result set gives with it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import BinaryIO

from tasks.mailstore.base import (
    MailStoreError,
    MailStoreUnavailable,
    MailSummary,
    Partition,
    UnknownGroup,
    UnknownMail,
)
from tasks.mailstore.cache import (
    ENTRY_WIDTH,
    MailIndex,
    PartitionCache,
    RawFilter,
    as_entry,
    no_cache,
    stamp_of,
)
from tasks.mailstore.mbox import split_mbox
from tasks.mailstore.message import Place, StoredMessage
from tasks.mailstore.names import check_day, check_name, is_day, is_id_shaped, is_valid_name
from tasks.spillset import SpillSet, digest

log = logging.getLogger(__name__)

GROUPS_FILE = "groups.json"
LABELS_FILE = "labels.json"
EML_SUFFIX = ".eml"
MBOX_SUFFIX = ".mbox"

_MBOX_FILE = re.compile(r"(\d{8})" + re.escape(MBOX_SUFFIX))
_MBOX_ID = re.compile(r"(?:(?P<folder>.+)\.)?(?P<day>\d{8})\.(?P<n>[1-9]\d*)")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_STEM_LIMIT = 64
_SPLITS_KEY = "splits"
IDS_IN_MEMORY = 200_000
"""Ids given so far are checked in memory up to this many a user, then in a temp file."""
RECENT_DAYS = 4
"""Days whose (id, name) lists are kept, for lookups near each other."""


@dataclass
class _Day:
    """One (folder, day) of a user: its folder of `.eml` files and its mbox file, if any.  The
    names in the folder are listed when they are needed, not kept: an index of a user's days
    stays small however many mails they hold."""

    folder: str
    day: str
    directory: str | None = None
    mbox: str | None = None
    mbox_prefix: str = ""
    sized: tuple[int, array[int]] | None = None
    """From sizing the day until it is read: a digest of the `.eml` names then listed, and
    each one's (size, mtime_ns), flat (16 bytes a mail): a search stats each file once."""


@dataclass
class _UserIndex:
    days: dict[tuple[str, str], _Day] = field(default_factory=dict)
    order: list[tuple[str, str]] = field(default_factory=list)
    """The days' keys sorted: the order ids are given in."""
    position: dict[tuple[str, str], int] = field(default_factory=dict)
    mbox_owner: dict[str, str] = field(default_factory=dict)
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    walker: _IdWalker | None = None


@lru_cache(maxsize=128)
def _cached_splits(path: str, mtime_ns: int, size: int) -> tuple[tuple[int, int], ...]:
    # mtime and size are part of the key so that a rewritten mbox is split again.
    with open(path, "rb", buffering=1 << 20) as stream:
        return tuple(split_mbox(stream))


def mbox_splits(path: str | Path) -> tuple[tuple[int, int], ...]:
    """(offset, length) of each message of an mbox file, cached while the file is unchanged."""
    status = os.stat(path)
    return _cached_splits(os.fspath(path), status.st_mtime_ns, status.st_size)


def _sorted_entries(directory: str | Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(
                (entry for entry in entries if not entry.name.startswith(".")),
                key=lambda entry: entry.name,
            )
    except FileNotFoundError:
        return []


def _scan_folder(index: _UserIndex, folder: str, directory: str) -> None:
    for entry in _sorted_entries(directory):
        mbox = _MBOX_FILE.fullmatch(entry.name)
        if mbox and entry.is_file():
            key = (folder, mbox.group(1))
            index.days.setdefault(key, _Day(*key)).mbox = entry.path
        elif is_day(entry.name) and entry.is_dir():
            key = (folder, entry.name)
            index.days.setdefault(key, _Day(*key)).directory = entry.path


def _eml_names(day: _Day) -> tuple[str, ...]:
    """The `.eml` files of a day folder, sorted (not kept: listed again when needed)."""
    if day.directory is None:
        return ()
    try:
        with os.scandir(day.directory) as entries:
            names = [
                entry.name
                for entry in entries
                if entry.name[-4:].lower() == EML_SUFFIX
                and not entry.name.startswith(".")
                and entry.is_file()
            ]
    except FileNotFoundError:
        return ()
    except OSError as error:
        raise MailStoreUnavailable(f"cannot list {day.directory}: {error}") from error
    names.sort()
    return tuple(names)


def _could_be_mbox_id(candidate: str, index: _UserIndex) -> bool:
    match = _MBOX_ID.fullmatch(candidate)
    if match is None:
        return False
    if match["folder"] is None:
        return match["day"] in index.mbox_owner
    entry = index.days.get((match["folder"], match["day"]))
    return entry is not None and entry.mbox is not None


def _eml_candidates(folder: str, day: str, name: str) -> Iterator[str]:
    stem = name[: -len(EML_SUFFIX)]
    if is_valid_name(stem):
        yield stem
        yield f"{day}.{stem}"
        yield f"{folder}.{day}.{stem}"
    clean = _UNSAFE_ID_CHARS.sub("_", stem)[:_STEM_LIMIT].strip("_") or "mail"
    path = f"{folder}/{day}/{name}".encode("utf-8", errors="surrogateescape")
    digest = hashlib.sha1(path, usedforsecurity=False).hexdigest()
    for width in (8, 16, 40):
        yield f"{day}.{clean}.{digest[:width]}"
    for number in itertools.count(2):
        yield f"{day}.{clean}.{digest}.{number}"


def _mbox_owners(index: _UserIndex) -> None:
    for key in index.order:
        entry = index.days[key]
        if entry.mbox is not None:
            owner = index.mbox_owner.setdefault(entry.day, entry.folder)
            entry.mbox_prefix = "" if owner == entry.folder else f"{entry.folder}."


class _IdWalker:
    """Gives the `.eml` files of each day their ids, walking the days in order.

    An id depends on the ids of the days before it (a stem already taken gets qualified), so
    the walk keeps the ids given so far, as digests that spill to disk past `IDS_IN_MEMORY`,
    and the (id, name) lists of the last few days.  Reading days in order, as a search does,
    lists each folder once; asking for an earlier day starts the walk again.
    """

    def __init__(self, index: _UserIndex) -> None:
        self._index = index
        self._next = 0
        self._taken = SpillSet(IDS_IN_MEMORY)
        self._recent: OrderedDict[tuple[str, str], list[tuple[str, str]]] = OrderedDict()

    def ids(self, key: tuple[str, str]) -> list[tuple[str, str]]:
        """(id, file name) of each `.eml` file of that day, in name order."""
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key]
        position = self._index.position[key]
        if position < self._next:
            self.close()
            self._next, self._taken = 0, SpillSet(IDS_IN_MEMORY)
        while self._next <= position:
            day = self._index.days[self._index.order[self._next]]
            self._next += 1
            self._recent[(day.folder, day.day)] = self._assign(day)
            if len(self._recent) > RECENT_DAYS:
                self._recent.popitem(last=False)
        return self._recent[key]

    def find(self, mail_id: str) -> tuple[_Day, str] | None:
        """The day and file name of an `.eml` id, walking every day (for a lookup without a
        hint of where the mail is)."""
        for key in self._index.order:
            for candidate, name in self.ids(key):
                if candidate == mail_id:
                    return self._index.days[key], name
        return None

    def _assign(self, day: _Day) -> list[tuple[str, str]]:
        assigned = []
        for name in _eml_names(day):
            stem = name[: -len(EML_SUFFIX)]
            mbox_shaped = "." in stem and _could_be_mbox_id(stem, self._index)  # 20171025.3
            key = digest(stem)
            if key not in self._taken and not mbox_shaped and is_valid_name(stem):
                mail_id = stem  # the common case, without making the other candidates
            else:
                mail_id = next(
                    candidate
                    for candidate in _eml_candidates(day.folder, day.day, name)
                    if digest(candidate) not in self._taken
                    and not _could_be_mbox_id(candidate, self._index)
                )
                key = digest(mail_id)
            self._taken.add(key)
            assigned.append((mail_id, name))
        return assigned

    def close(self) -> None:
        self._taken.close()
        self._recent.clear()


def _load_labels(path: Path) -> dict[str, tuple[str, ...]]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable labels file %s: %s", path, error)
        return {}
    if not isinstance(data, dict):
        log.warning("ignoring labels file %s: not a JSON object of id -> [labels]", path)
        return {}
    labels: dict[str, tuple[str, ...]] = {}
    for mail_id, value in data.items():
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list):
            labels[str(mail_id)] = tuple(str(item) for item in items if str(item).strip())
    return labels


def _build_index(user_dir: Path) -> _UserIndex:
    """A user's days and mbox files, from listing their folders (not the days' contents)."""
    index = _UserIndex()
    for entry in _sorted_entries(user_dir):
        if is_valid_name(entry.name) and entry.is_dir():
            _scan_folder(index, entry.name, entry.path)
    index.order = sorted(index.days)
    index.position = {key: n for n, key in enumerate(index.order)}
    _mbox_owners(index)
    index.labels = _load_labels(user_dir / LABELS_FILE)
    return index


class FileMailStore:
    """The reference `MailStore` over a directory of `.eml` day folders and `.mbox` day files."""

    def __init__(self, root: Path | str, index_dir: Path | str | None = None) -> None:
        """`index_dir`: where to keep the header cache (see `cache.py`); None keeps none."""
        self.root = Path(root)
        self._indexes: dict[str, _UserIndex] = {}
        self._mail_index = None if index_dir is None else MailIndex(index_dir, self.root)

    def refresh(self) -> None:
        """Forget what was read of the archive, to see changes made since."""
        for index in self._indexes.values():
            if index.walker is not None:
                index.walker.close()
        self._indexes.clear()

    def _walker(self, index: _UserIndex) -> _IdWalker:
        if index.walker is None:
            index.walker = _IdWalker(index)
        return index.walker

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise MailStoreUnavailable(f"the mail archive {self.root} is not there (not mounted?)")

    def _index(self, user: str) -> _UserIndex:
        check_name("user", user)
        if user not in self._indexes:
            self._check_root()
            try:
                self._indexes[user] = _build_index(self.root / user)
            except OSError as error:
                raise MailStoreUnavailable(
                    f"cannot read the archive of {user!r}: {error}"
                ) from error
        return self._indexes[user]

    def users(self) -> list[str]:
        """Every user with an archive directory, sorted."""
        self._check_root()
        try:
            entries = _sorted_entries(self.root)
            return [e.name for e in entries if is_valid_name(e.name) and e.is_dir()]
        except OSError as error:
            raise MailStoreUnavailable(f"cannot list the archive {self.root}: {error}") from error

    def users_of_group(self, group: str) -> list[str]:
        groups = self._groups()
        if group not in groups:
            raise UnknownGroup(group)
        members = groups[group]
        if not isinstance(members, list):
            raise MailStoreError(f"{GROUPS_FILE}: group {group!r} must be a list of user names")
        valid = [m for m in members if isinstance(m, str) and is_valid_name(m)]
        if len(valid) != len(members):
            log.warning("%s: group %r lists names that are not users; skipped", GROUPS_FILE, group)
        return list(dict.fromkeys(valid))

    def _groups(self) -> dict[str, object]:
        self._check_root()
        try:
            data = json.loads((self.root / GROUPS_FILE).read_bytes())
        except FileNotFoundError:
            return {}
        except OSError as error:
            raise MailStoreUnavailable(f"cannot read {GROUPS_FILE}: {error}") from error
        except ValueError as error:
            raise MailStoreError(f"{GROUPS_FILE} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise MailStoreError(f'{GROUPS_FILE} must be an object like {{"sales": ["yukoh"]}}')
        return data

    def partitions(
        self,
        users: Sequence[str] | None = None,
        folder: str | None = None,
        days: Sequence[str] | None = None,
    ) -> Iterator[Partition]:
        """Partitions narrowed by each argument given (None: all), sorted by user, folder, day."""
        names = self.users() if users is None else sorted({check_name("user", u) for u in users})
        if folder is not None:
            check_name("folder", folder)
        wanted = None if days is None else {check_day(day) for day in days}
        for user in names:
            index = self._index(user)
            for key in index.order:
                folder_name, day = key
                if folder not in (None, folder_name) or (wanted is not None and day not in wanted):
                    continue
                try:
                    size = _size_up(index.days[key])
                except OSError as error:
                    where = f"{user}/{folder_name}/{day}"
                    raise MailStoreUnavailable(f"cannot list {where}: {error}") from error
                yield Partition(user, folder_name, day, size)

    def messages(self, partition: Partition) -> Iterator[StoredMessage]:
        return self.messages_where(partition, None)

    def messages_where(
        self, partition: Partition, keep: RawFilter | None
    ) -> Iterator[StoredMessage]:
        """`messages`, less mails whose cached header fields `keep` turns down: a search
        passes what its header criteria ask, and skips what the cache says cannot match."""
        index = self._index(partition.user)
        entry = index.days.get((partition.folder, partition.day))
        if entry is None:
            return
        yield from self._eml_messages(partition, index, entry, keep)
        if entry.mbox is not None:
            yield from self._mbox_messages(partition, index, entry, keep)

    def _cache(self, partition: Partition, kind: str) -> PartitionCache:
        if self._mail_index is None:
            return no_cache()
        return self._mail_index.partition(partition.user, partition.folder, partition.day, kind)

    def _eml_messages(
        self, partition: Partition, index: _UserIndex, entry: _Day, keep: RawFilter | None
    ) -> Iterator[StoredMessage]:
        cache = self._cache(partition, "eml")
        complete = False
        try:
            directory = entry.directory
            ids = self._walker(index).ids((entry.folder, entry.day))
            names = tuple(name for _, name in ids)
            sized, entry.sized = entry.sized, None
            same = sized is not None and sized[0] == hash(names)  # listed alike when sized
            stamps = sized[1] if sized is not None and same else _stamps(entry, names)
            table = cache.fields_table(names)
            for position, (mail_id, name) in enumerate(ids):
                stamp = (stamps[2 * position], stamps[2 * position + 1])
                if stamp[0] < 0:
                    continue
                # The hot loop of a search from the cache: no call for a mail that cannot match.
                found = table.get(name)
                raw = found[1] if found is not None and found[0] == stamp else None
                if raw is not None and len(raw) != ENTRY_WIDTH:
                    raw = None
                if raw is not None and keep is not None and not keep(raw):
                    continue
                base = self._base(partition, mail_id, stamp[0], index)
                yield StoredMessage(
                    base,
                    f"{directory}/{name}",
                    entry=as_entry(raw),
                    keep=None if cache.path is None else partial(cache.put, name, stamp),
                )
            complete = True
        finally:
            cache.save(complete)

    def _mbox_messages(
        self, partition: Partition, index: _UserIndex, entry: _Day, keep: RawFilter | None
    ) -> Iterator[StoredMessage]:
        path, prefix = str(entry.mbox), entry.mbox_prefix
        try:
            stamp = stamp_of(os.stat(path))
        except FileNotFoundError:
            return
        except OSError as error:
            raise MailStoreUnavailable(f"cannot read {path}: {error}") from error
        cache = self._cache(partition, "mbox")
        splits = cache.get_raw(_SPLITS_KEY, stamp)
        if splits is None:
            splits = self._splits(path)
            cache.put(_SPLITS_KEY, stamp, splits)
        complete = False
        try:
            for number, (offset, length) in enumerate(splits, start=1):
                mail_id = f"{prefix}{partition.day}.{number}"
                base = self._base(partition, mail_id, length, index)
                key = str(number)
                raw = cache.get_fields(key, stamp)
                if raw is not None and keep is not None and not keep(raw):
                    continue
                yield StoredMessage(
                    base,
                    path,
                    offset,
                    entry=as_entry(raw),
                    keep=None if cache.path is None else partial(cache.put, key, stamp),
                )
            complete = True
        finally:
            cache.save(complete)

    @staticmethod
    def _base(partition: Partition, mail_id: str, size: int, index: _UserIndex) -> Place:
        labels = index.labels.get(mail_id, ()) if index.labels else ()
        return Place(mail_id, partition.user, partition.folder, partition.day, size, labels)

    @staticmethod
    def _splits(path: str) -> tuple[tuple[int, int], ...]:
        try:
            return mbox_splits(path)
        except FileNotFoundError:
            return ()
        except OSError as error:
            raise MailStoreUnavailable(f"cannot read {path}: {error}") from error

    def message(
        self, user: str, mail_id: str, folder: str | None = None, day: str | None = None
    ) -> StoredMessage:
        """The mail of `user` with that id; `UnknownMail` if there is none.

        `folder` and `day` (as a result set gives them) say where to look first; without them
        an `.eml` id is looked for day by day.
        """
        index = self._index(user)
        if not isinstance(mail_id, str) or not is_id_shaped(mail_id):
            raise UnknownMail(str(mail_id), user)
        if _could_be_mbox_id(mail_id, index):
            return self._mbox_message(index, user, mail_id)
        found = self._hinted(index, mail_id, folder, day) or self._walker(index).find(mail_id)
        if found is None:
            raise UnknownMail(mail_id, user)
        entry, name = found
        path = f"{entry.directory}/{name}"
        size = _file_size(path)
        if size is None:
            raise UnknownMail(mail_id, user)
        partition = Partition(user, entry.folder, entry.day, 0)
        return StoredMessage(self._base(partition, mail_id, size, index), path)

    def _hinted(
        self, index: _UserIndex, mail_id: str, folder: str | None, day: str | None
    ) -> tuple[_Day, str] | None:
        entry = index.days.get((folder, day)) if folder and day else None
        if entry is None or entry.directory is None:
            return None
        for candidate, name in self._walker(index).ids((entry.folder, entry.day)):
            if candidate == mail_id:
                return entry, name
        return None

    def _mbox_message(self, index: _UserIndex, user: str, mail_id: str) -> StoredMessage:
        match = _MBOX_ID.fullmatch(mail_id)
        if match is None:
            raise UnknownMail(mail_id, user)
        day, number = match["day"], int(match["n"])
        folder = match["folder"] or index.mbox_owner.get(day, "")
        entry = index.days.get((folder, day))
        if entry is None or entry.mbox is None or f"{entry.mbox_prefix}{day}.{number}" != mail_id:
            raise UnknownMail(mail_id, user)
        splits = self._splits(entry.mbox)
        if number > len(splits):
            raise UnknownMail(mail_id, user)
        offset, length = splits[number - 1]
        base = self._base(Partition(user, folder, day, 0), mail_id, length, index)
        return StoredMessage(base, entry.mbox, offset)

    def open(self, user: str, mail_id: str) -> BinaryIO:
        message = self.message(user, mail_id)
        try:
            return message.open()
        except FileNotFoundError as error:
            raise UnknownMail(mail_id, user) from error
        except OSError as error:
            raise MailStoreUnavailable(f"cannot read mail {mail_id!r}: {error}") from error

    def summary(self, user: str, mail_id: str) -> MailSummary:
        try:
            return self.message(user, mail_id).summary
        except FileNotFoundError as error:
            raise UnknownMail(mail_id, user) from error
        except OSError as error:
            raise MailStoreUnavailable(f"cannot read mail {mail_id!r}: {error}") from error


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _stamps(entry: _Day, names: Sequence[str]) -> array[int]:
    """(size, mtime_ns) of each named `.eml` file of a day, flat; (-1, -1) for one gone since."""
    stamps = array("q")
    directory = entry.directory
    for name in names:
        try:
            status = os.stat(f"{directory}/{name}")
            stamps.extend((status.st_size, status.st_mtime_ns))
        except FileNotFoundError:
            stamps.extend((-1, -1))
    return stamps


def _size_up(entry: _Day) -> int:
    """Bytes of mail in a day, keeping its listing and stamps for reading it."""
    names = _eml_names(entry)
    stamps = _stamps(entry, names)
    entry.sized = (hash(names), stamps)
    size = sum(max(size, 0) for size in stamps[::2])
    if entry.mbox is not None:
        size += _file_size(entry.mbox) or 0
    return size
