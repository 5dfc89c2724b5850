"""Logging for taskd processes: readable text for people, one JSON object a line for machines.

A line about one task carries its ids (`task_id`, `user_id`, `job_id`, those known) as separate
fields: pass `extra=ids(...)` to the log call. JSON lines have them as keys of their own; text
lines end with them as `key=value`, so both can be searched for one task.
"""

from __future__ import annotations

import json
import logging
import sys

ID_KEYS = ("task_id", "user_id", "job_id")


def ids(
    task_id: str | None = None, user_id: str | None = None, job_id: str | None = None
) -> dict[str, str]:
    """`extra=` for a log call about one task: the ids that are known."""
    known = {"task_id": task_id, "user_id": user_id, "job_id": job_id}
    return {key: value for key, value in known.items() if value}


def ids_of(record: logging.LogRecord) -> dict[str, str]:
    """The task ids a record was logged with, in ID_KEYS order."""
    out = {}
    for key in ID_KEYS:
        value = getattr(record, key, None)
        if value:
            out[key] = str(value)
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **ids_of(record),
        }
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


# Control characters in a message (a file name with a newline or a terminal escape) would
# forge log lines or drive the reader's terminal: text lines show them escaped.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}


def escape_controls(text: str) -> str:
    return text.translate(_CONTROLS)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = escape_controls(super().formatMessage(record))
        known = ids_of(record)
        if not known:
            return line
        pairs = " ".join(f"{key}={value}" for key, value in known.items())
        return line + " " + escape_controls(pairs)


def setup(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
