"""The least an intake can do, as a process of its own: the intake latency's baseline.

On each inotify close-after-write of a new task file (through watchdog, as the bridge), it reads
the file, parses it, writes it back with the bridge's fields through a temp file (fsync, rename)
and renames it `<stem>-0.NOOP`, then fsyncs the directory: the bridge's durable steps, nothing
else. `python -m bench.floor DIR` runs until SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import uuid
from pathlib import Path

from watchdog.events import FileClosedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

TEMP_SUFFIX = ".taskd-tmp"


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


class _Handler(FileSystemEventHandler):
    def on_any_event(self, event: FileSystemEvent) -> None:
        if not isinstance(event, FileClosedEvent):
            return
        path = Path(os.fsdecode(event.src_path))
        if path.name.startswith(".") or "-" in path.stem or not path.exists():
            return
        take(path)


def main(argv: list[str]) -> int:
    root = Path(argv[0])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    observer = Observer()
    observer.schedule(_Handler(), str(root), recursive=True)
    observer.start()
    print("ready", flush=True)
    stop.wait()
    observer.stop()
    observer.join(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
