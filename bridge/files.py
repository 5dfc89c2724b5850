"""The only code that writes task files: atomic rewrite, no-clobber rename, fsync.

A rewrite goes to a hidden temp file in the same directory (a new one, or the file's spare: see
`Spare`) and is swapped with the target by an atomic exchange, so a reader sees the old content
or the new, never a mix, and a file deleted meanwhile is never brought back. Writes that change
the state are durable: file and directory are fsynced before the next step. A rewritten file
keeps the mode and the group the UI gave it (the owner becomes the bridge's user, as with any
new file).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import signal
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from bridge.ownmoves import FROM, OWN, TO
from taskd import atomic

log = logging.getLogger(__name__)

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)

_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # never a link, never a FIFO's wait
_READ_FLAGS = os.O_RDONLY | _OPEN_FLAGS

SYNCFS_BATCH = 8
"""From this many new files on, a batch of durable rewrites flushes the file system once
(`atomic.syncfs`, where `_Flush` trusts it) instead of fsyncing each file: on a virtual disk
each fsync is a flush of the device, and costs more than all the rest of a take."""


class NotRegularFile(OSError):
    """A symlink, FIFO, device or directory where a task file was expected."""


class TooLarge(OSError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes, over the limit of {limit}")
        self.size, self.limit = size, limit


def fsync_dir(directory: Path) -> None:
    atomic.fsync_path(directory)


def signature(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a file is written: inode, size, mtime and ctime (ns); None if gone."""
    st = regular_or_none(path)
    return None if st is None else signature_of(st)


def regular_or_none(path: Path) -> os.stat_result | None:
    """The lstat of a regular file; None if gone (a symlink, FIFO or directory is refused)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
    return st


def not_regular_kind(path: Path) -> str | None:
    """What stands at `path` when it is not a regular file ("a folder", "a symbolic link", "a
    FIFO"...); None for a regular file or nothing at all. Never follows a link."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a folder" if stat.S_ISDIR(mode) else "not a regular file"


def signature_of(st: os.stat_result) -> tuple[int, int, int, int]:
    """`signature` of a stat already made."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_regular(path: Path, limit: int, expect: os.stat_result | None = None) -> bytes:
    """Read a regular file of at most `limit` bytes; never opens a FIFO or follows a symlink.
    With `expect`, what is opened must be that very file (else FileChangedError): its lstat,
    just made, stands for the one made here first."""
    st = os.lstat(path) if expect is None else expect
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
    if st.st_size > limit:
        raise TooLarge(st.st_size, limit)
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link or a socket swapped in since
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path)) from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
        if expect is not None and (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino):
            raise FileChangedError(errno.EAGAIN, "replaced while it was being read", str(path))
        # Plain reads sized from fstat: a rescan reads thousands of small files, and a
        # buffered file object costs more than the read (one byte more shows a file grown).
        chunks: list[bytes] = []
        wanted = limit + 1
        while wanted > 0:
            chunk = os.read(fd, min(wanted, max(st.st_size + 1, 4096)))
            if not chunk:
                break
            chunks.append(chunk)
            wanted -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise TooLarge(len(data), limit)
    return data


def read_plain(path: str, limit: int) -> tuple[bytes, os.stat_result] | None:
    """A regular file with one name, of at most `limit` bytes, read whole in one go, and its
    fstat; None for anything else (a link, a FIFO, a file with other names, one too large or
    changing while read, any error): the caller then reads it the careful way."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > limit:
            return None
        data = os.read(fd, st.st_size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return (data, st) if len(data) == st.st_size else None


def atomic_write(path: Path, data: bytes, durable: bool, sync_dir: bool = True) -> None:
    """Replace a task file's content, keeping its mode and group (see `kept_permissions`).
    The temp file landing on `path` is announced to the watcher (`bridge/ownmoves.py`)."""
    chmod, chgrp = kept_permissions(path)
    keys = OWN.expect(None, path)
    try:
        atomic.write_atomic(
            path,
            data,
            durable=durable,
            sync_dir=sync_dir,
            suffix=atomic.BRIDGE_TEMP_SUFFIX,
            chmod=chmod,
            chgrp=chgrp,
        )
    except BaseException:
        OWN.cancel(keys)
        raise


_SET_ID_BITS = stat.S_ISUID | stat.S_ISGID


def kept_permissions(path: Path) -> tuple[int | None, int | None]:
    """The mode (less setuid and setgid) and group a rewrite of `path` must keep; (None, None)
    when it is not a regular file (a new file then gets the default less the umask).

    Without this a rewrite would take the bridge's umask: a 0600 or 0640 file would turn 0644,
    and under umask 077 a UI reading through a shared group would lose the file.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    return permissions_of(st)


def permissions_of(st: os.stat_result) -> tuple[int | None, int | None]:
    """`kept_permissions` of a stat already made."""
    if not stat.S_ISREG(st.st_mode):
        return None, None
    return stat.S_IMODE(st.st_mode) & ~_SET_ID_BITS, st.st_gid


def keep_aside(path: Path, folder: Path, expect: os.stat_result) -> Path:
    """Keep a file's bytes under `folder` before its name is reused: a hard link when the file
    is the one judged (same inode), else a copy read through a no-follow descriptor.

    The kept name comes from the file's identity, so doing it again after a crash finds the
    first copy rather than making a second.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    kept = folder / kept_name(expect)
    if _same_file(kept, expect):
        return kept
    try:
        os.link(path, kept, follow_symlinks=False)
    except FileExistsError:
        kept.unlink()
        return keep_aside(path, folder, expect)
    except OSError:
        _copy_regular(path, kept, expect)
        return kept
    if not _same_file(kept, expect):  # swapped between the judging and the link
        kept.unlink()
        raise FileChangedError(errno.EAGAIN, "changed while it was being kept", str(path))
    return kept


class FileChangedError(OSError):
    """The file is no longer the one that was judged; judge it again."""


def _same_file(path: Path, expect: os.stat_result) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (expect.st_dev, expect.st_ino)


def _copy_regular(path: Path, kept: Path, expect: os.stat_result) -> None:
    src = os.open(path, _READ_FLAGS)
    try:
        st = os.fstat(src)
        if (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino):
            raise FileChangedError(errno.EAGAIN, "changed while it was being kept", str(path))
        tmp = atomic.temp_beside(kept, atomic.BRIDGE_TEMP_SUFFIX)
        dst = os.open(tmp, atomic.TEMP_FLAGS, 0o640)
        try:
            while os.sendfile(dst, src, None, 1 << 24):
                pass
            os.fsync(dst)
            os.replace(tmp, kept)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(dst)
    finally:
        os.close(src)


def kept_name(st: os.stat_result) -> str:
    return f"{st.st_ino}-{st.st_mtime_ns}.original"


def foreign_links(path: Path, st: os.stat_result, kept_folder: Path) -> bool:
    """Whether the file has names other than `path` and the bridge's own kept copy of it."""
    if st.st_nlink <= 1:
        return False
    own = 1 if _same_file(kept_folder / kept_name(st), st) else 0
    return st.st_nlink - own > 1


def identity(path: Path) -> os.stat_result:
    """The lstat of a regular file (a symlink, FIFO or directory is refused)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
    return st


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename that fails with FileExistsError rather than replace another task's file; announced
    to the watcher (`bridge/ownmoves.py`)."""
    old, new = os.fsencode(src), os.fsencode(dst)
    if old == new:
        return
    keys = OWN.expect_keys(TO + new, FROM + old)
    try:
        _rename_noreplace_at(_AT_FDCWD, old, new)
    except BaseException:
        OWN.cancel(keys)
        raise


def place_new(tmp: Path, target: Path) -> None:
    """A file the bridge writes for its intake to take, as the UI would (a schedule's task):
    renamed in without replacing anything, and not announced as the bridge's own, so the
    watcher hands it to intake like any new file."""
    _rename_noreplace(tmp, target)


def write_new_in(folder: Path, name: str, data: bytes) -> None:
    """A new file `name` in `folder`, written whole and durable, as the UI would write it (not
    announced: intake takes it like any new file). Everything goes through a handle on the
    folder itself, so a link put in the folder's place is never followed; FileExistsError if
    the name is taken. Its temp name is not the loop's own (this runs on other threads): a
    temp a crash leaves is swept after a minute, not while it is written."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        tmp = atomic.temp_beside(folder / name, atomic.WORKER_TEMP_SUFFIX).name
        out = os.open(tmp, atomic.TEMP_FLAGS, 0o644, dir_fd=fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view) :]
                os.fsync(out)
            finally:
                os.close(out)
            _rename_noreplace_at(fd, tmp, name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_noreplace_at(fd: int, src: str | bytes, dst: str | bytes) -> None:
    """Rename `src` to `dst` (relative to the folder `fd`, or absolute with _AT_FDCWD),
    failing with FileExistsError rather than replacing anything."""
    if _renameat2 is not None:
        rc = _renameat2(fd, os.fsencode(src), fd, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), os.fsdecode(src), None, os.fsdecode(dst))
    # No renameat2 on this file system (NFS): check, then rename. (A hard link would fail on a
    # taken name too, but intake rejects a file it finds with two links.)
    try:
        os.stat(dst, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=fd, dst_dir_fd=fd)
        return
    raise FileExistsError(errno.EEXIST, "target exists", os.fsdecode(dst))


def _announced(src: Path, dst: Path, move: Callable[[], None]) -> None:
    """`move()`, a rename of `src` to `dst` the watcher is told of first; told again if it
    fails."""
    keys = OWN.expect(src, dst)
    try:
        move()
    except BaseException:
        OWN.cancel(keys)
        raise


def _rename_noreplace(src: Path, dst: Path) -> None:
    _rename_noreplace_at(_AT_FDCWD, str(src), str(dst))


class Rewritten(NamedTuple):
    """What a rewrite left: the file's signature as written, and the next spare (None: none
    kept)."""

    written: tuple[int, int, int, int] | None
    spare: Spare | None


def rewrite_existing(
    path: Path,
    data: bytes,
    durable: bool,
    seen: os.stat_result | None = None,
    sync_dir: bool = True,
    spare: Spare | None = None,
) -> Rewritten:
    """Replace a tracked file's content, keeping its mode and group (from `seen`, its lstat
    just made, if given), only if the file is still there: FileNotFoundError when it was
    deleted (a cancel), never a file brought back. The folder is fsynced too when `durable`,
    unless `sync_dir` is False: the caller then fsyncs it (`fsync_dirs`) before it acts on the
    write.

    The new content goes into `spare` when it can be refilled (see `Spare`), else into a new
    temp file (`stage`), then is swapped in (`land`). What the swap took out is kept as the next
    spare where spares are kept (`keep_spares`), else removed."""
    if seen is None:
        try:
            seen = os.lstat(path)
        except FileNotFoundError:
            seen = None
    return land(stage(path, data, seen, spare, durable), durable and sync_dir, durable)


def stage(
    path: Path, data: bytes, seen: os.stat_result | None, spare: Spare | None, durable: bool
) -> Staged:
    """`data` beside `path`, fsynced if `durable`: in `spare` if it can be refilled, else in a
    new temp file (the spare then goes); with the mode and group `seen` gives the file."""
    chmod, chgrp = (None, None) if seen is None else permissions_of(seen)
    if spare is not None:
        if _refill(spare, data, durable, chmod, chgrp):
            return Staged(path, spare.path, data, seen, (spare.dev, spare.ino))
        drop_spare(spare)
    tmp = atomic.write_temp(
        path, data, durable=durable, suffix=atomic.BRIDGE_TEMP_SUFFIX, chmod=chmod, chgrp=chgrp
    )
    try:
        st = os.lstat(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Staged(path, tmp, data, seen, (st.st_dev, st.st_ino))


class Staged(NamedTuple):
    """A rewrite's new content beside its file, not yet flushed nor swapped in (`Durable`)."""

    path: Path  # the task file
    tmp: Path  # its refilled spare, or a new temp file
    data: bytes
    seen: os.stat_result | None
    identity: tuple[int, int]  # device and inode of `tmp`: what `land` must swap in


class StagedChanged(OSError):
    """What sat at a staged temp file's name was not the content staged (a hand put another
    file there): it was swapped back out, and the task file is as it was."""


_NO_FOLDER = -1  # a file system whose batch is made durable by an fsync a file


class Durable:
    """Rewrites that change a state, made durable together: each new content is written
    unflushed (`stage`), then one flush of each file system makes them all durable (syncfs,
    from `SYNCFS_BATCH` files on where `_FLUSH` trusts it; else an fsync of each), and only
    then is each swapped in (`land`), so the file's name never shows content that a crash could
    lose. On a virtual disk each fsync is a flush of the device: 2,000 jobs starting at once
    cost 2,000 of them, seconds, where one syncfs costs one."""

    def __init__(self) -> None:
        self._folders: dict[int, int] = {}  # a folder open on each file system, before its writes

    def stage(
        self, path: Path, data: bytes, seen: os.stat_result | None, spare: Spare | None
    ) -> Staged:
        """`data` beside `path`, unflushed (`stage`). syncfs reports the write errors since its
        descriptor was opened: the folder is opened before the first write on its file system."""
        if seen is not None and seen.st_dev not in self._folders:
            # Decided once a file system and a batch: a syncfs must cover all its files.
            self._folders[seen.st_dev] = (
                os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                if self._trusted(seen.st_dev)
                else _NO_FOLDER
            )
        return stage(path, data, seen, spare, durable=False)

    @staticmethod
    def _trusted(device: int) -> bool:
        return _FLUSH.allowed() and _FLUSH.trusted(device)

    def flush(self, staged: Sequence[Staged]) -> list[OSError | None]:
        """Make every staged content durable; what failed, in order (its temp file removed)."""
        errors: list[OSError | None] = [None] * len(staged)
        by_device: dict[int | None, list[int]] = {}
        for i, item in enumerate(staged):
            by_device.setdefault(None if item.seen is None else item.seen.st_dev, []).append(i)
        try:
            for device, members in by_device.items():
                folder = self._folders.get(device, _NO_FOLDER) if device is not None else _NO_FOLDER
                if folder != _NO_FOLDER and len(members) >= SYNCFS_BATCH:
                    _flush_device(folder, members, errors)
                else:
                    _fsync_each(staged, members, errors)
        finally:
            for fd in self._folders.values():
                if fd != _NO_FOLDER:
                    os.close(fd)
            self._folders.clear()
        for item, error in zip(staged, errors, strict=True):
            if error is not None:
                discard(item)
        return errors


def _flush_device(folder: int, members: list[int], errors: list[OSError | None]) -> None:
    try:
        _FLUSH.sync(folder)
    except OSError as exc:
        for i in members:
            errors[i] = exc


def _fsync_each(staged: Sequence[Staged], members: list[int], errors: list[OSError | None]) -> None:
    for i in members:
        try:
            _fsync_careful(staged[i].tmp)
        except OSError as exc:
            errors[i] = exc


def land(staged: Staged, sync_dir: bool, durable: bool = True, again: bool = True) -> Rewritten:
    """Swap staged content into its file, `durable` as it was staged: FileNotFoundError when
    the file was deleted meanwhile (a cancel), never a file brought back. Content whose temp
    file went from under it (a sweep, a hand) is staged again once in a new one; anything else
    put at its name is swapped back out and removed (StagedChanged), the task file left as it
    was."""
    path = staged.path
    tmp, target = os.fsencode(staged.tmp), os.fsencode(path)
    try:
        _swap_in(tmp, target)
    except FileNotFoundError:
        if not again or not os.path.lexists(path):
            raise  # the task file is gone: a cancel
        anew = stage(path, staged.data, staged.seen, None, durable)
        return land(anew, sync_dir, durable, again=False)
    st = os.lstat(path)
    if (st.st_dev, st.st_ino) != staged.identity:
        _swap_in(tmp, target)  # the task file back; on failure the stranger is removed
        discard(staged)
        raise StagedChanged(errno.ESTALE, "its staged content was replaced", str(path))
    return Rewritten(signature_of(st), _kept(staged.tmp, staged.seen, sync_dir))


def discard(staged: Staged) -> None:
    """Staged content that will not be swapped in."""
    with contextlib.suppress(OSError):
        os.unlink(staged.tmp)


def _fsync_careful(path: Path) -> None:
    """fsync a temp file of the bridge's by name, never through a link nor waiting on a FIFO."""
    fd = os.open(path, _READ_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(tmp: bytes, path: bytes) -> None:
    """Exchange `tmp` into `path`, announced; `tmp` is removed if that fails."""
    keys = OWN.expect_keys(TO + path, FROM + path)
    try:
        _exchange_raw(tmp, path)
    except BaseException:
        OWN.cancel(keys)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Spare(NamedTuple):
    """A tracked file's previous content, which its last rewrite swapped out into a hidden temp
    file beside it, kept to take its next content: refilling a file costs no new inode and no
    removal, where a new temp file costs both (a tick of 2,000 progress writes on ext4: 60 ms
    against 390 ms). Only a file of the bridge's own user with one link is kept (as the lstat
    made before the swap saw it), on a local file system. It is refilled only while it is
    still that file (same inode, one link, the bridge's) and no process has it open (a write
    lease), and its old bytes are put in new pages first (`_detach_pages`), so pages a reader
    queued with `sendfile` or `splice` keep them: a reader that opened the task file before
    the swap still reads the old content whole, as with a new temp file. It waits with the
    mode the task file had: it holds only what that file showed a moment before, to whoever
    could read it then, and a reader holding it open only makes the next write use a new temp
    file."""

    path: Path
    dev: int
    ino: int


_spares = False
_no_leases: set[int] = set()  # devices where a lease cannot be taken: no spares there
_no_zero_range: set[int] = set()  # devices without FALLOC_FL_ZERO_RANGE: truncated instead
_FALLOC_FL_ZERO_RANGE = 0x10
_fallocate = getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_EUID = os.geteuid()


def keep_spares() -> None:
    """Keep spares from now on; from the main thread of the bridge's process. A lease broken by
    another process's open signals SIGIO, which would end the process: it is ignored."""
    global _spares
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    _spares = True


def drop_spare(spare: Spare | None) -> None:
    """A tracked file that needs its spare no more (ended, cancelled, forgotten), or one that
    cannot be refilled: whatever has its name goes, as the sweep of leftovers would remove it
    (an inode number alone cannot tell the spare from a file made after it was removed)."""
    if spare is not None:
        with contextlib.suppress(OSError):
            spare.path.unlink()


def _kept(tmp: Path, was: os.stat_result | None, sync_dir: bool) -> Spare | None:
    """What the swap took out into `tmp` (the file `was` saw, unless it was replaced meanwhile,
    which the next refill finds): the next spare, or removed."""
    spare = None
    if _spares and was is not None and _ours(was):
        device = was.st_dev
        if device not in _no_leases and _FLUSH.trusted(device):  # a network file system's
            spare = Spare(tmp, device, was.st_ino)  # lease would see no other host's reader
    if spare is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if sync_dir:
        fsync_dir(tmp.parent)
    return spare


def _ours(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == _EUID


def _refill(spare: Spare, data: bytes, durable: bool, chmod: int | None, chgrp: int | None) -> bool:
    """`data` in the spare if it is still the file kept and no one has it open (a lease is held
    while it is written); False otherwise, and the caller drops it. It is closed before it is
    swapped in: a close after the swap would reach the watcher as a write to the task file."""
    try:
        fd = os.open(spare.path, os.O_WRONLY | _OPEN_FLAGS)
    except OSError:
        return False  # gone, or replaced by a link
    try:
        st = os.fstat(fd)
        if not _ours(st) or (st.st_dev, st.st_ino) != (spare.dev, spare.ino) or chmod is None:
            return False
        if not _leased(fd, st.st_dev):
            return False  # a reader holds the old content: leave it to it
        try:
            _detach_pages(fd, st)
            if chgrp is not None and st.st_gid != chgrp:
                atomic.set_permissions(fd, chmod, chgrp, spare.path)
            elif stat.S_IMODE(st.st_mode) != chmod:
                os.fchmod(fd, chmod)
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], written)
            os.ftruncate(fd, len(data))
            if durable:
                os.fsync(fd)
        finally:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True
    finally:
        os.close(fd)


def _detach_pages(fd: int, st: os.stat_result) -> None:
    """Make the spare's old bytes zeros in new pages, so pages a reader queued on a socket or a
    pipe (`sendfile`, `splice`) keep the old bytes: `FALLOC_FL_ZERO_RANGE` drops them from the
    page cache and keeps the blocks (ext4, XFS, btrfs: 3 us, where a truncation that frees them
    costs 150 us on ext4); elsewhere (tmpfs) a truncation, cheap there."""
    if not st.st_size:
        return
    if _fallocate is not None and st.st_dev not in _no_zero_range:
        if _fallocate(fd, _FALLOC_FL_ZERO_RANGE, 0, st.st_size) == 0:
            return
        _no_zero_range.add(st.st_dev)
    os.ftruncate(fd, 0)


def _leased(fd: int, device: int) -> bool:
    """A write lease on `fd`: granted only while no other open of the file exists."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except BlockingIOError:
        return False
    except OSError:
        _no_leases.add(device)  # leases not offered here (a network file system, say)
        return False
    return True


def fsync_dirs(folders: Iterable[Path]) -> None:
    """Each folder's entries on disk: what `rewrite_existing(..., sync_dir=False)` left to do.
    A folder that cannot be flushed is logged, and the others are still flushed."""
    for folder in folders:
        try:
            fsync_dir(folder)
        except FileNotFoundError:
            continue  # removed since: nothing of it to keep
        except OSError as exc:
            log.error(
                "cannot flush folder %s (%s): its last state changes may not survive a "
                "crash of the machine",
                folder,
                exc,
            )


def rewrite_then_rename(old: Path, new: Path, data: bytes, sync_dir: bool = True) -> None:
    """Taking a new file: the content must carry the task-id before the name stops saying it.

    Were the bridge killed between the two steps, the file keeps its name and already says what
    it is; the other order would leave a renamed file nobody could trace back to its task-id.
    The content is fsynced before either rename; the directory is fsynced at the end, or, with
    `sync_dir=False`, by the caller once for a batch of files (before it acts on any of them):
    the file system applies the two renames in order, so no crash shows the second without
    the first.
    """
    atomic_write(old, data, durable=True, sync_dir=False)
    rename_noreplace(old, new)
    if sync_dir:
        fsync_dir(new.parent)


class Take(NamedTuple):
    """A new file to take: `old` as it was judged (`judged`), its new `data` and `new` name."""

    old: Path
    new: Path
    data: bytes
    judged: os.stat_result
    keep: bool = False  # the content swapped out is kept as the file's first spare


def rewrite_then_rename_many(batch: Sequence[Take]) -> list[Exception | Spare | None]:
    """Take each file of a batch as `rewrite_then_rename` does: what each raised, in order
    (None or a Spare: done; FileExistsError: `new` was another file's; FileNotFoundError: `old`
    was deleted or replaced since it was judged; either way `old` is left as it is). The caller
    fsyncs the folders once all are done, before it acts on any of them, as with one file.
    A take that says `keep` gets the content it swapped out (the file as the UI wrote it) as
    its spare where spares are kept (`Spare`): the job's start, its first write, then costs no
    new file (2,000 jobs starting at once: 2,000 files not made in one second).

    Each new content is written to a temp file and made durable, then lands on `old` by an
    atomic exchange that fails if `old` is gone (nothing deleted is brought back) and is undone
    if the file there is not the one judged (a file replaced meanwhile is judged again); then
    the file is renamed. From `SYNCFS_BATCH` files on, on a local file system, the temp files
    are made durable by one flush of the file system (syncfs) instead of an fsync each.
    """
    flush = len(batch) >= SYNCFS_BATCH and _FLUSH.allowed()
    folders = _open_folders({take.old.parent for take in batch}) if flush else {}
    try:
        staged = [_stage(take, durable=not flush) for take in batch]
        if flush:
            failed = _flush_devices(folders, batch, staged)
            staged = [failed.get(i, tmp) for i, tmp in enumerate(staged)]
        return [
            tmp if isinstance(tmp, Exception) else _land(tmp, take)
            for take, tmp in zip(batch, staged, strict=True)
        ]
    finally:
        for fd in folders.values():
            if isinstance(fd, int):
                os.close(fd)


def _stage(take: Take, durable: bool) -> Path | Exception:
    """The new content of `take.old` in a temp file beside it, keeping the judged file's mode
    and group; fsynced if `durable`."""
    judged = take.judged
    try:
        if os.path.lexists(take.new):  # its new name is another file's: left as it is
            raise FileExistsError(errno.EEXIST, "the new name is taken", str(take.new))
        return atomic.write_temp(
            take.old,
            take.data,
            durable=durable,
            suffix=atomic.BRIDGE_TEMP_SUFFIX,
            chmod=stat.S_IMODE(judged.st_mode) & ~_SET_ID_BITS,
            chgrp=judged.st_gid,
        )
    except Exception as exc:  # handed back to the caller, whose guard ends that file alone
        return exc


def _open_folders(folders: Iterable[Path]) -> dict[Path, int | Exception]:
    """Each folder open before anything is written in it: syncfs reports the write errors of
    the file system since the descriptor it is given was opened (Linux 5.8 and later)."""
    out: dict[Path, int | Exception] = {}
    for folder in folders:
        try:
            out[folder] = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            out[folder] = exc
    return out


def _flush_devices(
    folders: dict[Path, int | Exception], batch: Sequence[Take], staged: list[Path | Exception]
) -> dict[int, Exception]:
    """One syncfs for each file system the batch wrote on, or an fsync of each temp file
    where syncfs cannot be trusted; what failed, by position in the batch (only the files on
    a folder or file system that failed). Their temp files are removed."""
    failed: dict[int, Exception] = {}
    by_device: dict[int, tuple[int, list[int]]] = {}
    for i, (take, tmp) in enumerate(zip(batch, staged, strict=True)):
        fd = folders[take.old.parent]
        if isinstance(fd, Exception):
            failed[i] = fd
        elif not isinstance(tmp, Exception):
            by_device.setdefault(os.fstat(fd).st_dev, (fd, []))[1].append(i)
    for device, (fd, members) in by_device.items():
        try:
            if _FLUSH.trusted(device):
                _FLUSH.sync(fd)
            else:
                for i in members:
                    atomic.fsync_path(staged[i])  # type: ignore[arg-type]
        except OSError as exc:
            failed.update(dict.fromkeys(members, exc))
    for i in failed:
        tmp = staged[i]
        if isinstance(tmp, Path):
            tmp.unlink(missing_ok=True)
    return failed


def _land(tmp: Path, take: Take) -> Exception | Spare | None:
    """Put the durable temp file in `take.old`'s place, if that is still the file judged, and
    rename it; what went wrong, else the spare kept (`take.keep`) or None."""
    old = take.old
    try:
        kept = exchange_in(tmp, old, take.judged, take.keep)
    except Exception as exc:
        return exc
    try:
        rename_noreplace(old, take.new)
    except Exception as exc:
        drop_spare(kept)
        return exc
    return kept


def exchange_in(
    tmp: Path, target: Path, expect: os.stat_result | None = None, keep: bool = False
) -> Spare | None:
    """Swap the new content in `tmp` into `target` atomically (renameat2 RENAME_EXCHANGE) and
    remove what was there: unlike a rename over it, this fails (FileNotFoundError) when
    `target` is gone, so a file deleted meanwhile is never brought back. With `expect`, a file
    at `target` that is not that one (replaced meanwhile) is swapped back and left as it is,
    and FileNotFoundError is raised too. `tmp` is gone afterwards, whatever happens, unless
    `keep` and it is kept as the target's spare (returned; see `Spare`)."""
    try:
        _announced(target, target, lambda: _exchange(tmp, target))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    kept = None
    try:
        if expect is not None:
            was = os.lstat(tmp)
            if (was.st_dev, was.st_ino) != (expect.st_dev, expect.st_ino):
                _announced(target, target, lambda: _exchange(tmp, target))  # put it back
                raise FileNotFoundError(errno.ENOENT, "replaced meanwhile", str(target))
            if keep:
                kept = _kept(tmp, was, sync_dir=False)
    finally:
        if kept is None:
            tmp.unlink(missing_ok=True)
    return kept


def _exchange(a: Path, b: Path) -> None:
    _exchange_raw(os.fsencode(a), os.fsencode(b))


def _exchange_raw(a: bytes, b: bytes) -> None:
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is missing: cannot exchange files", os.fsdecode(b))
    if _renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(b), None, os.fsdecode(a))


class _Flush:
    """When one syncfs may stand for the fsyncs of a batch: on a local file system whose type
    is known to write back reliably, on a kernel that reports write errors from syncfs (5.8 and
    later), and not while a syncfs has lately been slow (it flushes whatever else is dirty on
    the file system: a packer's archive, say), which falls back to an fsync a file for a while.
    """

    SLOW_S = 1.0
    BACKOFF_S = 60.0

    def __init__(self) -> None:
        self.until = 0.0
        self.types: dict[int, bool] = {}

    def allowed(self) -> bool:
        return atomic.SYNCFS_REPORTS_ERRORS and time.monotonic() >= self.until

    def trusted(self, device: int) -> bool:
        known = self.types.get(device)
        if known is None:
            known = self.types[device] = atomic.file_system_type(device) in SYNCFS_TYPES
        return known

    def sync(self, fd: int) -> None:
        started = time.monotonic()
        atomic.syncfs(fd)
        took = time.monotonic() - started
        if took > self.SLOW_S:
            self.until = time.monotonic() + self.BACKOFF_S
            log.warning(
                "flushing the file system took %.1f s (other writes on it); taking files with "
                "an fsync each for %.0f s",
                took,
                self.BACKOFF_S,
            )


SYNCFS_TYPES = frozenset({"ext4", "ext3", "xfs", "btrfs", "f2fs", "tmpfs"})
_FLUSH = _Flush()
