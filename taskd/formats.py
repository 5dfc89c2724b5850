"""Formats a task type's schema may ask for beyond JSON Schema's own: values that can only fail
are rejected when the file is taken, not after a worker ran.

`taskd-day` is a real calendar day, `YYYY-MM-DD` or `YYYYMMDD`; `taskd-archive-group` a group of
the archive's `groups.json`. Both accept "" (an empty criterion is no criterion).
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema

DAY = "taskd-day"
ARCHIVE_GROUP = "taskd-archive-group"
GROUPS_FILE = "groups.json"
GROUPS_LIMIT = 16 << 20


class FormatProblem(ValueError):
    """A value of the right type that cannot mean anything; the message says why."""


def parse_day(text: str) -> date:
    digits = text.replace("-", "")
    if len(digits) != 8 or not digits.isdigit() or len(text) not in (8, 10):
        raise FormatProblem(f"{text!r} is not a day; write YYYY-MM-DD or YYYYMMDD")
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        raise FormatProblem(f"{text!r} is not a day of the calendar") from None


class _Groups:
    """groups.json, read again only when it changes."""

    def __init__(self, mail_db: Path) -> None:
        self.path = mail_db / GROUPS_FILE
        self.mail_db = mail_db
        self.stamp: tuple[int, int, int] | None = None
        self.names: frozenset[str] = frozenset()

    def check(self, value: object) -> bool:
        if not isinstance(value, str) or value == "" or not self.mail_db.is_dir():
            return True  # no archive here to ask: the worker decides
        names = self._load()
        if value not in names:
            raise FormatProblem(
                f"no group {value!r} in the archive's {GROUPS_FILE}; "
                f"groups: {', '.join(sorted(names)[:20]) or 'none'}"
            )
        return True

    def _load(self) -> frozenset[str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return frozenset()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self.stamp and st.st_size <= GROUPS_LIMIT:
            try:
                value: Any = json.loads(self.path.read_bytes())
            except (OSError, ValueError):
                value = {}
            self.names = frozenset(value) if isinstance(value, dict) else frozenset()
            self.stamp = stamp
        return self.names


def _day(value: object) -> bool:
    if isinstance(value, str) and value:
        parse_day(value)
    return True


def checker(mail_db: Path | None = None) -> jsonschema.FormatChecker:
    """The format checker for task files; group names are checked when the archive is here."""
    formats = jsonschema.FormatChecker(formats=())
    formats.checks(DAY, raises=FormatProblem)(_day)
    if mail_db is not None:
        formats.checks(ARCHIVE_GROUP, raises=FormatProblem)(_Groups(mail_db).check)
    return formats
