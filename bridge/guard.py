"""The one guard every per-file action of every pass runs under.

What goes wrong with one file stays with that file. A file that vanished between looking and
acting (the UI deleted or renamed it) is simply gone. A passing trouble of the machine (a full or
read-only disk, permissions, too many open files) leaves the file as it is and tries it again
later, backing off to a cap, logged once per change of error. Anything else ends the file: the
caller's `end` writes it REJECTED or FAILURE with an error a person can act on, logged once with
its traceback. Nothing reaches the loop.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bridge.logs import ids

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors of the machine, not of the file: the same action can succeed once they pass.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.EAGAIN,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.ESTALE,
    }
)
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0


def _ids(given: dict[str, str] | Callable[[], dict[str, str]] | None) -> dict[str, str]:
    if given is None:
        return ids()
    return given() if callable(given) else given


def transient(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def describe(exc: BaseException) -> str:
    """One line for a person: the kind of error and its message, never a traceback."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, OSError) else f"{type(exc).__name__}: {text}"


@dataclass
class _Trouble:
    message: str
    retry_at: float
    delay: float


@dataclass
class Guard:
    """Per-file isolation with back-off; `key` names the file (its path, as text)."""

    troubles: dict[str, _Trouble] = field(default_factory=dict)

    def ready(self, key: str, now: float) -> bool:
        """Whether a file held back by a passing error may be tried again."""
        trouble = self.troubles.get(key)
        return trouble is None or now >= trouble.retry_at

    def degraded(self) -> list[str]:
        """What the files held back are waiting for, for health reports."""
        return sorted({t.message for t in self.troubles.values()})

    def run(
        self,
        key: str,
        what: str,
        now: float,
        action: Callable[[], T],
        end: Callable[[str], object] | None = None,
        log_ids: dict[str, str] | Callable[[], dict[str, str]] | None = None,
    ) -> T | None:
        """`action()`; on failure hold the file back (passing error) or `end(error)` it.
        `log_ids` may be a function: the ids are worked out only when there is a line to log."""
        try:
            value = action()
        except FileNotFoundError as exc:
            # Deleted or renamed by someone else between looking and acting: nothing to end.
            extra = _ids(log_ids)
            self.troubles.pop(key, None)
            log.info("%s %s: it went away meanwhile (%s)", what, key, exc.strerror, extra=extra)
            return None
        except Exception as exc:  # one file's failure never reaches the loop
            extra = _ids(log_ids)
            if transient(exc) or end is None:
                # Nothing to end it with: hold it back as a passing error, logged once.
                self._hold(key, what, now, exc, extra, trace=not transient(exc))
                return None
            self.troubles.pop(key, None)
            log.error("%s %s failed: %s", what, key, describe(exc), exc_info=True, extra=extra)
            if end is not None:
                self._end(key, what, now, exc, end, extra)
            return None
        if key in self.troubles:
            del self.troubles[key]
            log.warning("%s %s works again", what, key, extra=_ids(log_ids))
        return value

    def _hold(
        self,
        key: str,
        what: str,
        now: float,
        exc: BaseException,
        extra: dict[str, str],
        trace: bool = False,
    ) -> None:
        message = describe(exc)
        old = self.troubles.get(key)
        delay = BACKOFF_FIRST_S if old is None else min(BACKOFF_CAP_S, old.delay * 2)
        if old is None or old.message != message:
            log.error(
                "%s %s failed: %s; trying again with growing pauses (at most %g s)",
                what,
                key,
                message,
                BACKOFF_CAP_S,
                exc_info=trace,
                extra=extra,
            )
        self.troubles[key] = _Trouble(message, now + delay, delay)

    def _end(
        self,
        key: str,
        what: str,
        now: float,
        exc: BaseException,
        end: Callable[[str], object],
        extra: dict[str, str],
    ) -> None:
        error = f"internal error while the bridge was {what}: {describe(exc)}; report it"
        try:
            end(error)
        except Exception as again:  # the file could not even be ended: hold it back
            if transient(again):
                self._hold(key, f"ending after {what}", now, again, extra)
            else:
                log.error(
                    "cannot end %s after %s: %s; leaving it as it is",
                    key,
                    what,
                    describe(again),
                    exc_info=True,
                    extra=extra,
                )
