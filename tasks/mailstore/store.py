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
(make one store per task, or call `refresh()`) and the files of a day when it sizes that day
(or takes their names from the header cache, when the folder has not changed since they were
listed: `SETTLED_NS`), stat'ing each file once; it gives ids by walking the days in order, and
what it keeps about the mail already walked is a set of id digests that moves to a temporary
file when it grows, so memory does not grow with the archive.  A lookup by id is quickest with
the folder and day a result set gives with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import time
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO, NamedTuple

from tasks.mailstore.base import (
    MailStoreError,
    MailStoreUnavailable,
    MailSummary,
    Partition,
    UnknownGroup,
    UnknownMail,
)
from tasks.mailstore.cache import MailIndex, PartitionCache, no_cache
from tasks.mailstore.entry import RawFilter, Row, Stamp, as_entry, is_entry, stamp_of
from tasks.mailstore.mbox import split_mbox
from tasks.mailstore.message import Place, StoredMessage
from tasks.mailstore.names import check_day, check_name, is_day, is_id_shaped, is_valid_name
from tasks.mailstore.section import listing_digest
from tasks.spillset import SpillSet, digest

log = logging.getLogger(__name__)

GROUPS_FILE = "groups.json"
LABELS_FILE = "labels.json"
EML_SUFFIX = ".eml"
MBOX_SUFFIX = ".mbox"

_MBOX_FILE = re.compile(r"(\d{8})" + re.escape(MBOX_SUFFIX))
_MBOX_ID = re.compile(r"(?:(?P<folder>.+)\.)?(?P<day>\d{8})\.(?P<n>[1-9]\d*)")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_PLAIN_STEMS = re.compile(r"(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*\n)*[A-Za-z0-9_-][A-Za-z0-9_.-]*")
"""Lines that are each a valid id not starting with "." (`is_valid_name` less the ".." test)."""
_MBOX_SHAPED = re.compile(r"^(?:.+\.)?\d{8}\.[1-9]\d*$", re.MULTILINE)
"""A line that could be an mbox id of some archive (`_MBOX_ID`)."""
_STEM_LIMIT = 64
SETTLED_NS = 5_000_000_000
"""A day folder unchanged for this long (5 s) lists as before while its ctime stays the same:
a change made after it was listed (a file added, removed or renamed, the folder restored)
would give it a later ctime, whatever the clock's grain.  A search then takes the names from
the cache and stats each file, without listing the folder."""
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
    listed: _Listed | None = None
    """From sizing the day until it is read: what its `.eml` files were then (16 bytes a mail
    and a digest of their names), so that a search stats each file once and, when the header
    cache holds exactly those files, does not list the folder again."""


class _Listed(NamedTuple):
    digest: int
    """`listing_digest` of the `.eml` names."""
    stamps: array[int]
    """(size, ctime_ns) of each, flat."""
    mark: bytes
    """`_folder_mark` of the folder if it had been unchanged for `SETTLED_NS`, else b""."""


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
def _cached_splits(path: str, ctime_ns: int, size: int) -> tuple[tuple[int, int], ...]:
    # ctime and size are part of the key so that a rewritten mbox is split again.
    with open(path, "rb", buffering=1 << 20) as stream:
        return tuple(split_mbox(stream))


def mbox_splits(path: str | Path) -> tuple[tuple[int, int], ...]:
    """(offset, length) of each message of an mbox file, cached while the file is unchanged."""
    status = os.stat(path)
    return _cached_splits(os.fspath(path), status.st_ctime_ns, status.st_size)


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


def _is_eml_name(name: str) -> bool:
    """Whether a file of a day folder is taken for a mail by its name: `.eml` in any case,
    not hidden."""
    return name[-len(EML_SUFFIX) :].lower() == EML_SUFFIX and not name.startswith(".")


def _listed_names(fd: int) -> list[str]:
    """The names of the folder open as `fd` that could be `.eml` files, sorted."""
    names = [name for name in os.listdir(fd) if _is_eml_name(name)]
    names.sort()
    return names


def _open_folder(directory: str | None) -> int:
    """A descriptor of the day folder, or -1 if there is none."""
    if directory is None:
        return -1
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1


def _folder_files(
    fd: int, cache: PartitionCache
) -> tuple[Sequence[str], list[os.stat_result], bytes, int | None]:
    """The `.eml` files of the folder open as `fd`, their status, the folder's mark and the
    names' `listing_digest` if it is known already.  The names are the cache's while the folder
    is unchanged since they were listed (`SETTLED_NS`), else listed now; either way each file
    is stat'ed, by name in the open folder."""
    now = time.time_ns()
    changed = os.fstat(fd).st_ctime_ns
    mark = _folder_mark(changed) if now - changed >= SETTLED_NS else b""
    cached = cache.names_if(mark)
    if cached is not None:
        names, statuses = _stat_all(fd, cached[0])
        # All still there: the cache's listing as it was; else what is left of it.
        return names, statuses, mark, cached[1] if names is cached[0] else None
    listed = _listed_names(fd)
    names, statuses = _stat_all(fd, listed)
    # A name that is not a regular file (a dangling symlink, say) can become one without the
    # folder changing: such a folder is listed every time.
    return names, statuses, mark if names is listed else b"", None


def _stat_all(fd: int, names: Sequence[str]) -> tuple[Sequence[str], list[os.stat_result]]:
    """The names that are regular files in the folder open as `fd`, with their status (a
    name gone since listed is left out; `names` itself when none is)."""
    kept: Sequence[str] = names
    try:
        statuses = [os.stat(name, dir_fd=fd) for name in names]
    except FileNotFoundError:  # one went while listed: stat one by one
        kept, statuses = _statuses(fd, names)
    if not all(S_ISREG(status.st_mode) for status in statuses):
        pairs = [(n, s) for n, s in zip(kept, statuses, strict=True) if S_ISREG(s.st_mode)]
        return [n for n, _ in pairs], [s for _, s in pairs]
    return kept, statuses


def _folder_mark(ctime_ns: int) -> bytes:
    """What the cache keeps with a day's entries: the folder's ctime when they were listed."""
    return array("q", [ctime_ns]).tobytes()


def _statuses(fd: int, names: Sequence[str]) -> tuple[list[str], list[os.stat_result]]:
    """The names that are still there in the folder open as `fd`, and their status."""
    kept, statuses = [], []
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            statuses.append(os.stat(name, dir_fd=fd))
            kept.append(name)
    return kept, statuses


def _eml_names(day: _Day) -> tuple[str, ...]:
    """The `.eml` files of a day folder, sorted (not kept: listed again when needed)."""
    if day.directory is None:
        return ()
    try:
        with os.scandir(day.directory) as entries:
            names = [
                entry.name for entry in entries if _is_eml_name(entry.name) and entry.is_file()
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


class _DayIds(NamedTuple):
    """The ids of a day's `.eml` files, by position in `names` (the files, in name order)."""

    ids: Sequence[str]
    names: Sequence[str]

    def pairs(self) -> Iterator[tuple[str, str]]:
        """(id, file name) of each file."""
        return zip(self.ids, self.names, strict=True)


class _DayRead(NamedTuple):
    """What reading one day's `.eml` files goes by."""

    partition: Partition
    user_index: _UserIndex
    entry: _Day
    cache: PartitionCache
    ids: _DayIds


def _aligned(names: Sequence[str], keys: Sequence[str], found: list[tuple[int, Row]]) -> bool:
    """Whether the walker's names of a day are the files the cache describes (they can be
    older, if the day was read before in this store), where `found` looks."""
    return len(names) == len(keys) and all(names[n] == keys[n] for n, _ in found)


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
        self._recent: OrderedDict[tuple[str, str], _DayIds] = OrderedDict()

    def ids(self, key: tuple[str, str], names: Sequence[str] | None = None) -> _DayIds:
        """The ids of that day's `.eml` files; `names`: the day's `.eml` files as just listed,
        if the caller has them (the day's ids may be older)."""
        recent = self._recent
        known = recent.get(key)
        if known is not None:
            recent.move_to_end(key)
            return known
        position = self._index.position[key]
        if position < self._next:
            self.close()
            self._next, self._taken = 0, SpillSet(IDS_IN_MEMORY)
        days, order = self._index.days, self._index.order
        while self._next < position:  # days not asked for, whose ids come before
            self._remember(order[self._next], self._assign(days[order[self._next]], None))
            self._next += 1
        self._next += 1
        assigned = self._assign(days[key], names)
        self._remember(key, assigned)
        return assigned

    def _remember(self, key: tuple[str, str], assigned: _DayIds) -> None:
        self._recent[key] = assigned
        if len(self._recent) > RECENT_DAYS:
            self._recent.popitem(last=False)

    def find(self, mail_id: str) -> tuple[_Day, str] | None:
        """The day and file name of an `.eml` id, walking every day (for a lookup without a
        hint of where the mail is)."""
        for key in self._index.order:
            for candidate, name in self.ids(key).pairs():
                if candidate == mail_id:
                    return self._index.days[key], name
        return None

    def _assign(self, day: _Day, names: Sequence[str] | None) -> _DayIds:
        if names is None:
            names = _eml_names(day)
        cut = -len(EML_SUFFIX)
        stems = [name[:cut] for name in names]
        keys = set(map(digest, stems))
        if len(keys) == len(stems) and self._taken.isdisjoint(keys) and _plain(stems):
            # The common case, for a whole day at once: every stem is its own id.
            self._taken.update(keys)
            return _DayIds(stems, names)
        assigned = []
        for name in names:
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
            assigned.append(mail_id)
        return _DayIds(assigned, names)

    def close(self) -> None:
        self._taken.close()
        self._recent.clear()


def _plain(stems: list[str]) -> bool:
    """Whether every stem is a valid id and none could be taken for an mbox id."""
    joined = "\n".join(stems)
    return (
        _PLAIN_STEMS.fullmatch(joined) is not None
        and joined.count("\n") == len(stems) - 1  # no stem holds a line break
        and ".." not in joined
        and ("." not in joined or _MBOX_SHAPED.search(joined) is None)
    )


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

    def flush(self) -> None:
        """Write what the header cache still holds of a search; a search calls it at its end."""
        if self._mail_index is not None:
            self._mail_index.flush()

    def refresh(self) -> None:
        """Forget what was read of the archive, to see changes made since."""
        self.flush()
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
                    size = self._size_up(user, index.days[key])
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
        return self._cache_of(partition.user, partition.folder, partition.day, kind)

    def _cache_of(self, user: str, folder: str, day: str, kind: str) -> PartitionCache:
        if self._mail_index is None:
            return no_cache()
        return self._mail_index.partition(user, folder, day, kind)

    def _size_up(self, user: str, entry: _Day) -> int:
        """Bytes of mail in a day, keeping what its `.eml` files were for reading it."""
        entry.listed = self._eml_files(user, entry)
        size = sum(entry.listed.stamps[::2])
        if entry.mbox is not None:
            size += _file_size(entry.mbox) or 0
        return size

    def _eml_files(self, user: str, entry: _Day) -> _Listed:
        """The regular `.eml` files of a day folder, sorted, each with its (size, ctime_ns)."""
        names: Sequence[str] = []
        statuses: list[os.stat_result] = []
        mark, digest = b"", None
        fd = _open_folder(entry.directory)
        if fd >= 0:
            try:
                cache = self._cache_of(user, entry.folder, entry.day, "eml")
                names, statuses, mark, digest = _folder_files(fd, cache)
            finally:
                os.close(fd)
        stamps = array("q")
        for status in statuses:
            stamps.append(status.st_size)
            stamps.append(status.st_ctime_ns)
        return _Listed(listing_digest(names) if digest is None else digest, stamps, mark)

    def _eml_messages(
        self, partition: Partition, index: _UserIndex, entry: _Day, keep: RawFilter | None
    ) -> Iterator[StoredMessage]:
        cache = self._cache(partition, "eml")
        listed, entry.listed = entry.listed, None
        known = None
        if listed is not None:
            known = cache.listing_matches(listed.digest, listed.stamps.tobytes(), keep)
        complete = False
        try:
            key = (entry.folder, entry.day)
            if listed is not None and known is not None:
                names, found = known
                day = _DayRead(partition, index, entry, cache, self._walker(index).ids(key, names))
                if day.ids.names is names or _aligned(day.ids.names, names, found):
                    yield from self._eml_known(day, listed, found)
                    cache.set_extra(listed.mark)  # the entries are those of the whole listing
                    complete = True
                    return
            day = _DayRead(partition, index, entry, cache, self._walker(index).ids(key))
            yield from self._eml_read(day, listed, keep)
            complete = True
        finally:
            cache.save(complete)

    def _eml_known(
        self, day: _DayRead, listed: _Listed, found: list[tuple[int, Row]]
    ) -> Iterator[StoredMessage]:
        """The mails of a day whose cached fields all hold and that `found` lets through."""
        stamps = listed.stamps
        for position, row in found:
            stamp = (stamps[2 * position], stamps[2 * position + 1])
            yield self._eml_message(day, position, stamp, row)

    def _eml_read(
        self, day: _DayRead, listed: _Listed | None, keep: RawFilter | None
    ) -> Iterator[StoredMessage]:
        """The mails of a day, each from the cache if its entry there holds, else read."""
        names = day.ids.names
        same = listed is not None and listed.digest == listing_digest(names)
        stamps = listed.stamps if listed is not None and same else _stamps(day.entry, names)
        table = day.cache.fields_table(names)
        test = None if keep is None else keep.test
        for position, name in enumerate(names):
            stamp = (stamps[2 * position], stamps[2 * position + 1])
            if stamp[0] < 0:
                continue
            # The hot loop of a search from the cache: no call for a mail that cannot match.
            known = table.get(name)
            raw = known[1] if known is not None and known[0] == stamp else None
            if raw is not None and not is_entry(raw):
                raw = None
            if raw is not None and test is not None and not test(raw):
                continue
            yield self._eml_message(day, position, stamp, raw)
        # The folder's mark goes with entries of all of its files as listed when sizing it.
        whole = listed is not None and same and day.cache.holds_all(names)
        day.cache.set_extra(listed.mark if listed is not None and whole else b"")

    def _eml_message(
        self, day: _DayRead, position: int, stamp: Stamp, raw: Row | None
    ) -> StoredMessage:
        name = day.ids.names[position]
        return StoredMessage(
            self._base(day.partition, day.ids.ids[position], stamp[0], day.user_index),
            f"{day.entry.directory}/{name}",
            entry=as_entry(raw),
            keep=partial(day.cache.put, name, stamp) if day.cache.keeps else None,
        )

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
        complete = False
        try:
            splits = _splits_from(cache.extra, stamp)
            if splits is None:
                splits = list(self._splits(path))
                cache.set_extra(_splits_data(stamp, splits))
            known = cache.file_matches(stamp, len(splits), keep)
            numbered = None if known is None else _numbered(*known, len(splits))
            rows: Iterable[tuple[int, Row | None]] = (
                self._mbox_rows(cache, stamp, len(splits), keep) if numbered is None else numbered
            )
            for number, raw in rows:
                offset, length = splits[number - 1]
                yield StoredMessage(
                    self._base(partition, f"{prefix}{partition.day}.{number}", length, index),
                    path,
                    offset,
                    entry=as_entry(raw),
                    keep=partial(cache.put, str(number), stamp) if cache.keeps else None,
                )
            complete = True
        finally:
            cache.save(complete)

    @staticmethod
    def _mbox_rows(
        cache: PartitionCache, stamp: Stamp, count: int, keep: RawFilter | None
    ) -> Iterator[tuple[int, Row | None]]:
        """(number, cached entry or None) of each mail of an mbox that `keep` does not turn
        down on its cached entry."""
        for number in range(1, count + 1):
            raw = cache.get_fields(str(number), stamp)
            if raw is None or keep is None or keep.test(raw):
                yield number, raw

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
        for candidate, name in self._walker(index).ids((entry.folder, entry.day)).pairs():
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


def _splits_data(stamp: Stamp, splits: Sequence[tuple[int, int]]) -> bytes:
    """An mbox's splits as the cache keeps them: its stamp, then (offset, length) of each."""
    return array("q", [*stamp, *itertools.chain.from_iterable(splits)]).tobytes()


def _splits_from(data: bytes, stamp: Stamp) -> list[tuple[int, int]] | None:
    """The splits `_splits_data` kept, if they are for the mbox with this stamp."""
    if len(data) < 16 or len(data) % 16:
        return None
    values = array("q", data)
    if (values[0], values[1]) != stamp:
        return None
    return list(zip(values[2::2], values[3::2], strict=True))


def _numbered(
    keys: Sequence[str], found: list[tuple[int, Row]], count: int
) -> list[tuple[int, Row | None]] | None:
    """The (number, entry) of each mbox mail `found` gives by key position, in mbox order;
    None if a key is not the number of one of the `count` mails (not a cache of this store)."""
    numbered: list[tuple[int, Row | None]] = []
    for line, row in found:
        key = keys[line]
        if not (key.isdecimal() and key.isascii() and 0 < int(key) <= count):
            return None
        numbered.append((int(key), row))
    numbered.sort()
    return numbered


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _stamps(entry: _Day, names: Sequence[str]) -> array[int]:
    """(size, ctime_ns) of each named `.eml` file of a day, flat; (-1, -1) for one gone since."""
    stamps = array("q")
    directory = entry.directory
    for name in names:
        try:
            status = os.stat(f"{directory}/{name}")
            stamps.extend((status.st_size, status.st_ctime_ns))
        except FileNotFoundError:
            stamps.extend((-1, -1))
        except OSError as error:
            raise MailStoreUnavailable(f"cannot read {directory}/{name}: {error}") from error
    return stamps
