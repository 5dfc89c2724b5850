"""What user, folder, day and mail id names may look like, so that none leads out of the archive."""

from __future__ import annotations

import re

from tasks.mailstore.base import InvalidName

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_DAY = re.compile(r"\d{8}")


def is_valid_name(name: str) -> bool:
    """Whether a user, folder or mail id can be used as is: no path tricks, no hidden names."""
    return _NAME.fullmatch(name) is not None and not name.startswith(".") and ".." not in name


def is_id_shaped(text: str) -> bool:
    """Whether text could be a mail id at all (`[A-Za-z0-9._-]+`); ids are still looked up."""
    return _NAME.fullmatch(text) is not None


def check_name(kind: str, name: object) -> str:
    """The name itself, or `InvalidName` if it could point outside the archive."""
    if not isinstance(name, str) or not is_valid_name(name):
        raise InvalidName(kind, str(name))
    return name


def is_day(text: str) -> bool:
    """Whether text is a day partition name, `YYYYMMDD`."""
    return _DAY.fullmatch(text) is not None


def check_day(day: object) -> str:
    if not isinstance(day, str) or not is_day(day):
        raise InvalidName("day", str(day))
    return day
