"""How a task says why it stopped, so the task file's `error` is a sentence a person can act on."""

from __future__ import annotations

import errno
from typing import Any

import kombu.exceptions
import redis


class TaskFailed(Exception):
    """A failure no retry can mend (a bad criterion, an unknown mail id): fails the job at once.

    The message is what the task file's `error` shows; say which field is wrong and how to fix it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Retryable(Exception):
    """A passing failure (SMTP or Redis unreachable, disk briefly full, a store that timed out).

    Retried on the type's intervals; the message is shown while it waits. `meta` travels with
    the retry (notify: the recipients still to send to).
    """

    def __init__(self, message: str, meta: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.meta = meta or {}


RETRYABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.ETIMEDOUT})


CONNECTION_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)
"""Redis or the broker out of reach: passing, so the job is retried or redelivered. Any other
exception from Redis (a WRONGTYPE answer, say) comes back the same every time."""


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, CONNECTION_ERRORS)


def internal_error(type_name: str, exc: BaseException, job_id: str) -> TaskFailed:
    """An exception no code expected (a bug): the job fails rather than running again and again.

    The message names the exception only; the traceback goes to the worker log, under the job id.
    """
    return TaskFailed(
        f"internal error in {type_name}: {type(exc).__name__}: {exc}; report it "
        f"(job {job_id}; the worker log has the details)"
    )


def as_retryable(exc: BaseException) -> Retryable | None:
    """The passing failures a task does not name itself: Redis blinks, a full disk."""
    if isinstance(exc, Retryable):
        return exc
    if is_connection_error(exc):
        return Retryable(f"Redis could not be reached ({exc}); will try again")
    if isinstance(exc, OSError) and exc.errno in RETRYABLE_ERRNOS:
        return Retryable(f"{exc.strerror or exc} ({exc.filename or 'disk'}); will try again")
    return None


class Cancelled(Exception):
    """The task file was deleted: stop, clean up, write nothing."""
