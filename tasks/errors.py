"""How a task says why it stopped, so the task file's `error` is a sentence a person can act on."""

from __future__ import annotations


class TaskFailed(Exception):
    """A failure no retry can mend (a bad criterion, an unknown mail id): fails the job at once.

    The message is what the task file's `error` shows; say which field is wrong and how to fix it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Retryable(Exception):
    """A passing failure (SMTP or Redis unreachable, disk briefly full, a store that timed out).

    Retried on the type's intervals; the message is shown while it waits.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Cancelled(Exception):
    """The task file was deleted: stop, clean up, write nothing."""
