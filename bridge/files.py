"""The only code that writes task files: atomic rewrite, no-clobber rename, fsync.

A rewrite goes to a hidden temp file in the same directory and is renamed over the target, so a
reader sees the old content or the new, never a mix. Writes that change the state are durable:
file and directory are fsynced before the next step. A rewritten file keeps the mode and the
group the UI gave it (the owner becomes the bridge's user, as with any new file).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from bridge.ownmoves import OWN
from taskd import atomic

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)

SYNCFS_BATCH = 8
"""From this many new files on, a batch of durable rewrites flushes the file system once
(`atomic.sync_file_system`) instead of fsyncing each file: on a virtual disk each fsync is a
flush of the device, and costs more than all the rest of a take."""


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
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
    return signature_of(st)


def signature_of(st: os.stat_result) -> tuple[int, int, int, int]:
    """`signature` of a stat already made."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_regular(path: Path, limit: int, expect: os.stat_result | None = None) -> bytes:
    """Read a regular file of at most `limit` bytes; never opens a FIFO or follows a symlink.
    With `expect`, what is opened must be that very file (else FileChangedError)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
    if st.st_size > limit:
        raise TooLarge(st.st_size, limit)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
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
    src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
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
    if src == dst:
        return
    keys = OWN.expect(src, dst)
    try:
        _rename_noreplace(src, dst)
    except BaseException:
        OWN.cancel(keys)
        raise


def _rename_noreplace(src: Path, dst: Path) -> None:
    if _renameat2 is not None:
        rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    # No renameat2 on this file system: check, then rename (the bridge is the only renamer).
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "target exists", str(dst))
    os.rename(src, dst)


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


def rewrite_then_rename_many(batch: Sequence[tuple[Path, Path, bytes]]) -> list[Exception | None]:
    """`rewrite_then_rename(old, new, data, sync_dir=False)` for each of a batch: what each
    raised, in order (None: done; FileExistsError: `new` was another file's, and `old` is left
    as it was). From `SYNCFS_BATCH` files on, every new content is written
    to its temp file, the file system is flushed once, and only then is any file renamed: the
    same order, and so the same guarantee, as one file's. The caller fsyncs the folders once
    all are done, before it acts on any of them, as with one file."""
    if len(batch) < SYNCFS_BATCH:
        return [_rewrite_one(item) for item in batch]
    staged: list[Path | Exception] = [_stage(old, data) for old, _, data in batch]
    try:
        for device_folder in _one_folder_per_device(old for old, _, _ in batch):
            atomic.sync_file_system(device_folder)
    except OSError as exc:
        for tmp in staged:
            if isinstance(tmp, Path):
                tmp.unlink(missing_ok=True)
        return [exc for _ in batch]
    return [
        tmp if isinstance(tmp, Exception) else _land_then_rename(tmp, old, new)
        for (old, new, _), tmp in zip(batch, staged, strict=True)
    ]


def _rewrite_one(item: tuple[Path, Path, bytes]) -> Exception | None:
    old, new, data = item
    try:
        if os.path.lexists(new):  # its new name is another file's: left as it is
            raise FileExistsError(errno.EEXIST, "the new name is taken", str(new))
        rewrite_then_rename(old, new, data, sync_dir=False)
    except Exception as exc:  # handed back to the caller, whose guard ends that file alone
        return exc
    return None


def _stage(old: Path, data: bytes) -> Path | Exception:
    """The new content of `old` in a temp file beside it, not yet flushed."""
    chmod, chgrp = kept_permissions(old)
    try:
        return atomic.write_temp(
            old, data, durable=False, suffix=atomic.BRIDGE_TEMP_SUFFIX, chmod=chmod, chgrp=chgrp
        )
    except Exception as exc:
        return exc


def _land_then_rename(tmp: Path, old: Path, new: Path) -> Exception | None:
    keys = OWN.expect(None, old)
    try:
        if not os.path.lexists(old):  # deleted since it was judged: never brought back
            raise FileNotFoundError(errno.ENOENT, "deleted meanwhile", str(old))
        if os.path.lexists(new):  # its new name is another file's: left as it is
            raise FileExistsError(errno.EEXIST, "the new name is taken", str(new))
        os.replace(tmp, old)
    except Exception as exc:
        OWN.cancel(keys)
        tmp.unlink(missing_ok=True)
        return exc
    try:
        rename_noreplace(old, new)
    except Exception as exc:
        return exc
    return None


def _one_folder_per_device(paths: Iterable[Path]) -> list[Path]:
    folders: dict[int, Path] = {}
    for folder in {path.parent for path in paths}:
        folders.setdefault(os.stat(folder).st_dev, folder)
    return list(folders.values())
