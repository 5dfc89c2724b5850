"""The least an intake can do, as a process of its own: the intake latency's baseline.

It reads inotify itself (IN_CLOSE_WRITE, through libc: no library's event grouping) and, for each
new task file closed after writing, reads and parses it, writes it back with the bridge's fields
through a temp file (fsync, rename), renames it `<stem>-0.NOOP` and fsyncs the directory: the
bridge's durable steps, nothing else. `python -m bench.floor DIR` runs until SIGTERM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import select
import signal
import struct
import sys
import uuid
from pathlib import Path

TEMP_SUFFIX = ".taskd-tmp"
IN_CLOSE_WRITE = 0x08
EVENT = struct.Struct("iIII")


def take(path: Path) -> None:
    fields = json.loads(path.read_bytes())
    fields.update({"task-id": path.stem, "state": "QUEUED", "job-id": str(uuid.uuid4())})
    tmp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, json.dumps(fields).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    os.rename(path, path.with_name(f"{path.stem}-0{path.suffix}"))
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def events(fd: int) -> list[str]:
    """Names closed after writing, from one read of the inotify descriptor."""
    buf = os.read(fd, 65536)
    names, offset = [], 0
    while offset < len(buf):
        _, mask, _, length = EVENT.unpack_from(buf, offset)
        raw = buf[offset + EVENT.size : offset + EVENT.size + length]
        offset += EVENT.size + length
        if mask & IN_CLOSE_WRITE:
            names.append(raw.rstrip(b"\0").decode())
    return names


def main(argv: list[str]) -> int:
    directory = Path(argv[0])
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, os.fsencode(directory), IN_CLOSE_WRITE) < 0:
        raise OSError(ctypes.get_errno(), "inotify")
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    print("ready", flush=True)
    while not stopping:
        if not select.select([fd], [], [], 0.2)[0]:
            continue
        for name in events(fd):
            path = directory / name
            if not name.startswith(".") and "-" not in path.stem and path.exists():
                take(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
