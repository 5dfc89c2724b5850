"""The RETRMS criterion: parse and validate it, pick the partitions it names, match one mail.

Pure apart from asking the store.  Every non-empty field filters and all of them must hold;
`""`, `[]` and `null` do not filter (`"has-attachment": false` does: it asks for mails without
one).  Text fields match a case-insensitive substring of the decoded text, compared after NFKC
normalisation and case folding with runs of whitespace as one space, so `ＡＢＣ` finds `abc`
and a phrase is found across a folded line.  `label` matches one whole label the same way.
`since` (inclusive) and `before` (exclusive) compare the UTC day of the mail's Date; a mail
without a parseable Date is taken to be of its partition's day.

Who is searched: `user` if given (narrowed to `group`'s members when both are), else `group`'s
members, else the `owner` the caller passes (the task's own user), else every user of the
archive.  Users and groups are looked up in the archive only: a name shaped like a path is an
error, a user without an archive matches nothing, a group missing from groups.json is an error.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import cached_property

from tasks.mailstore.base import MailStore, Message, Partition, UnknownGroup
from tasks.mailstore.entry import FOLDED_POSITION, RawFilter, raw_filter
from tasks.mailstore.names import is_day, is_valid_name

_WHITESPACE = re.compile(r"\s+")
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")

NAME_HINT = 'use letters, digits, "_", "-" and "." (not "..")'


class CriterionError(ValueError):
    """A criterion field that is wrong; the message says which and how to put it right."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        where = f"criterion.{field}" if field else "criterion"
        super().__init__(f"{where}: {message}")


def _show(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return "null" if value is None else repr(value)


def _text(field: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CriterionError(field, f'{_show(value)} is not text; write it in quotes, like "haha"')
    return value


def _name(field: str, value: object) -> str:
    text = _text(field, value).strip()
    if text and not is_valid_name(text):
        raise CriterionError(field, f"{_show(text)} is not a {field} name; {NAME_HINT}")
    return text


def _days(field: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise CriterionError(field, f'{_show(value)} is not a list; write days like ["20171025"]')
    days = []
    for position, item in enumerate(value):
        if not isinstance(item, str) or not is_day(item) or _calendar_day(item) is None:
            digits = re.sub(r"\D", "", item) if isinstance(item, str) else ""
            example = digits if _calendar_day(digits) is not None else "20171025"
            raise CriterionError(
                f"{field}[{position}]",
                f'{_show(item)} is not a day; write YYYYMMDD like "{example}"',
            )
        days.append(item)
    return tuple(days)


def _calendar_day(text: str) -> date | None:
    match = _DATE.fullmatch(text.strip())
    if match is None:
        return None
    try:
        return date(*(int(part) for part in match.groups()))
    except ValueError:
        return None


def _date(field: str, value: object) -> date | None:
    if value is None or value == "":
        return None
    parsed = _calendar_day(value) if isinstance(value, str) else None
    if parsed is None:
        raise CriterionError(
            field, f'{_show(value)} is not a date; write "2017-10-25" or "20171025"'
        )
    return parsed


def _flag(field: str, value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise CriterionError(
        field, f"{_show(value)} is not true or false; write true or false, no quotes"
    )


_FIELDS: dict[str, Callable[[str, object], object]] = {
    "user": _name,
    "group": _name,
    "folder": _name,
    "file": _days,
    "label": _text,
    "subject": _text,
    "session": _text,
    "from": _text,
    "to": _text,
    "body": _text,
    "since": _date,
    "before": _date,
    "has-attachment": _flag,
}
_ATTRIBUTES = {"from": "from_", "has-attachment": "has_attachment"}


def fold(text: str) -> str:
    """Text as compared: NFKC, case-folded, whitespace runs as one space."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return _WHITESPACE.sub(" ", folded).strip()


@dataclass(frozen=True)
class Criterion:
    """A validated RETRMS criterion; see the module docstring for what each field does."""

    user: str = ""
    group: str = ""
    folder: str = ""
    file: tuple[str, ...] = ()
    label: str = ""
    subject: str = ""
    session: str = ""
    from_: str = ""
    to: str = ""
    body: str = ""
    since: date | None = None
    before: date | None = None
    has_attachment: bool | None = None

    @classmethod
    def from_json(cls, data: object) -> Criterion:
        """Validate a criterion as found in a task file; `CriterionError` names what is wrong."""
        if not isinstance(data, Mapping):
            raise CriterionError("", f'{_show(data)} is not an object; write {{"user": "yukoh"}}')
        values: dict[str, object] = {}
        for key, value in data.items():
            parse = _FIELDS.get(key)
            if parse is None:
                known = ", ".join(_FIELDS)
                raise CriterionError(str(key), f"unknown field; the fields are {known}")
            values[_ATTRIBUTES.get(str(key), str(key))] = parse(str(key), value)
        criterion = cls(**values)  # type: ignore[arg-type]
        if criterion.since and criterion.before and criterion.since >= criterion.before:
            raise CriterionError(
                "before",
                f"{criterion.before} is not after since ({criterion.since}): nothing matches",
            )
        return criterion

    def to_json(self) -> dict[str, object]:
        """The criterion as given, normalised, to record with a result set."""
        out: dict[str, object] = {}
        for key in _FIELDS:
            value = getattr(self, _ATTRIBUTES.get(key, key))
            if isinstance(value, date):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            if value not in ("", [], None):
                out[key] = value
        return out

    @cached_property
    def folded_headers(self) -> tuple[tuple[str, str], ...]:
        """(field, folded needle) of each header field that filters, folded once."""
        needles = (("subject", self.subject), ("from", self.from_), ("to", self.to))
        return tuple((field, fold(needle)) for field, needle in needles if fold(needle))

    def raw_filter(self) -> RawFilter | None:
        """The header fields' test on a cached entry (see `cache.py`); None if none filters."""
        return raw_filter(
            tuple((FOLDED_POSITION[field], wanted) for field, wanted in self.folded_headers)
        )

    @property
    def reads_body(self) -> bool:
        """Whether matching needs more than the headers."""
        return bool(self.body.strip()) or self.has_attachment is not None


def searched_users(store: MailStore, criterion: Criterion, owner: str | None) -> list[str] | None:
    """The users a criterion searches (None: all of the archive)."""
    if criterion.group:
        try:
            members = store.users_of_group(criterion.group)
        except UnknownGroup as error:
            raise CriterionError(
                "group", f"{error}; name a group from it or leave it empty"
            ) from None
        if criterion.user:
            return [criterion.user] if criterion.user in members else []
        return members
    if criterion.user:
        return [criterion.user]
    return [owner] if owner else None


def select_partitions(
    store: MailStore, criterion: Criterion, owner: str | None = None
) -> list[Partition]:
    """The partitions a criterion's `user`, `group`, `folder` and `file` leave to scan."""
    users = searched_users(store, criterion, owner)
    if users == []:
        return []
    return list(store.partitions(users, criterion.folder or None, criterion.file or None))


def _contains(needle: str, haystack: str) -> bool:
    wanted = fold(needle)
    return not wanted or wanted in fold(haystack)


def _mail_day(message: Message) -> date | None:
    text = _header(message, "date")
    return _calendar_day(text[:10]) if text else _calendar_day(message.summary.day)


def _in_period(criterion: Criterion, message: Message) -> bool:
    if criterion.since is None and criterion.before is None:
        return True
    day = _mail_day(message)
    if day is None:
        return False
    after_start = criterion.since is None or day >= criterion.since
    return after_start and (criterion.before is None or day < criterion.before)


def _has_label(criterion: Criterion, message: Message) -> bool:
    wanted = fold(criterion.label)
    return not wanted or any(fold(label) == wanted for label in message.summary.labels)


def _header(message: Message, field: str) -> str:
    """A decoded header the cheap way when the store offers one (see StoredMessage)."""
    quick = getattr(message, "header_text", None)
    if quick is not None:
        return str(quick(field))
    return str(message.summary.to_json()[field])


def _folded_header(message: Message, field: str) -> str:
    quick = getattr(message, "folded_header", None)
    if quick is not None:
        return str(quick(field))
    return fold(_header(message, field))


def _headers_match(criterion: Criterion, message: Message) -> bool:
    for field, wanted in criterion.folded_headers:
        if wanted not in _folded_header(message, field):
            return False
    return True


def matches(criterion: Criterion, message: Message) -> bool:
    """Whether a mail meets every filtering field; the body is read only if a field needs it."""
    if not (
        _headers_match(criterion, message)
        and _has_label(criterion, message)
        and _in_period(criterion, message)
    ):
        return False
    if (
        criterion.has_attachment is not None
        and message.has_attachment() != criterion.has_attachment
    ):
        return False
    return _contains(criterion.body, message.body_text()) if criterion.body.strip() else True
