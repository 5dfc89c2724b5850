"""The small interface a site implements to put its own mail archive behind the workers.

Workers only ever see a `MailStore`: partitions (a user's folder on one day) to scan, the
`Message`s in each, and a way to open one mail byte for byte by its id.  `FileMailStore` in
`store.py` is the reference implementation over plain files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class Partition:
    """One user's folder on one day: the unit a search is narrowed to and reports progress by."""

    user: str
    folder: str
    day: str
    """`YYYYMMDD`."""
    size: int
    """Bytes of mail in it, for progress."""


@dataclass(frozen=True)
class MailSummary:
    """What a result set says about one mail: decoded header text, cheap to get."""

    id: str
    user: str
    folder: str
    day: str
    date: str = ""
    """ISO 8601 UTC (`2017-10-25T08:30:00Z`); "" when the mail has no parseable Date."""
    from_: str = ""
    to: str = ""
    """To and Cc, joined with ", "."""
    subject: str = ""
    size: int = 0
    labels: tuple[str, ...] = ()
    message_id: str = ""

    def to_json(self) -> dict[str, str | int]:
        """The entry of a result set's `mails` list."""
        return {
            "id": self.id,
            "user": self.user,
            "folder": self.folder,
            "day": self.day,
            "date": self.date,
            "from": self.from_,
            "to": self.to,
            "subject": self.subject,
            "size": self.size,
        }


class Message(Protocol):
    """One mail of a partition; anything beyond the headers is read only when asked for."""

    @property
    def summary(self) -> MailSummary: ...

    @property
    def raw_size(self) -> int: ...

    def read_raw(self) -> bytes:
        """The mail exactly as stored."""
        ...

    def body_text(self) -> str:
        """The decoded text of its text parts (attachments left out)."""
        ...

    def has_attachment(self) -> bool: ...


class MailStore(Protocol):
    """A mail archive: users with folders split into days.

    Two methods are optional, and `search` uses them when a store has them:
    `messages_where(partition, keep)`, the messages less those a cached `RawFilter` turns down,
    and `flush()`, called when a search ends, to write what the store cached meanwhile."""

    def users_of_group(self, group: str) -> list[str]:
        """Members of a group; raises `UnknownGroup` if there is no such group."""
        ...

    def partitions(
        self,
        users: Sequence[str] | None = None,
        folder: str | None = None,
        days: Sequence[str] | None = None,
    ) -> Iterator[Partition]:
        """Partitions narrowed by each argument given (None: all), sorted by user, folder, day."""
        ...

    def messages(self, partition: Partition) -> Iterator[Message]:
        """The mails of a partition in a stable order."""
        ...

    def open(self, user: str, mail_id: str) -> BinaryIO:
        """The mail's bytes as stored; raises `UnknownMail` for an id the user does not have."""
        ...

    def summary(self, user: str, mail_id: str) -> MailSummary: ...


class MailStoreError(Exception):
    """Something is wrong with a request to the store or with the archive; not worth a retry."""


class UnknownMail(MailStoreError):
    """No mail with that id in that user's archive."""

    def __init__(self, mail_id: str, user: str | None = None) -> None:
        self.mail_id = mail_id
        self.user = user
        where = f" in the archive of user {user!r}" if user is not None else ""
        super().__init__(f"no mail with id {mail_id!r}{where}")


class UnknownGroup(MailStoreError):
    """No group of that name."""

    def __init__(self, group: str) -> None:
        self.group = group
        super().__init__(f"no group {group!r} in the archive's groups.json")


class InvalidName(MailStoreError, ValueError):
    """A user or folder name that could point outside the archive, or is not a name at all."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(
            f"{kind} {name!r} is not valid: use letters, digits, '_', '-' and '.', "
            "not starting with '.' and without '..'"
        )


class MailStoreUnavailable(MailStoreError):
    """The archive cannot be reached right now (missing root, I/O error, time-out): retry later."""

    retryable = True
