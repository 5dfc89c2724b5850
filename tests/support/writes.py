"""Counting the bridge's writes to task files through inotify, as the UI would see them."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from watchdog.events import FileMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from bridge.contract import BRIDGE_TEMP_SUFFIX


class WriteLog(FileSystemEventHandler):
    """Every content write lands as a rename of a hidden temp file onto the task file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.writes: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.observer = Observer()

    def __enter__(self) -> WriteLog:
        self.observer.schedule(self, str(self.directory), recursive=False)
        self.observer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.observer.stop()
        self.observer.join(5)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent) and os.fsdecode(event.src_path).endswith(
            BRIDGE_TEMP_SUFFIX
        ):
            with self.lock:
                self.writes.append((time.monotonic(), Path(os.fsdecode(event.dest_path)).name))

    def of(self, task_id: str) -> list[tuple[float, str]]:
        with self.lock:
            return [(t, n) for t, n in self.writes if n.startswith(task_id + "-")]
