"""The one guard every per-file action of every pass runs under.

What goes wrong with one file stays with that file. A file that vanished between looking and
acting (the UI deleted or renamed it) is simply gone. A passing trouble of the machine (a full or
read-only disk, permissions, too many open files) leaves the file as it is and tries it again
later, backing off to a cap, logged once per change of error. Anything else ends the file: the
caller's `end` writes it REJECTED or FAILURE with an error a person can act on, logged once with
its traceback. Nothing reaches the loop.

A file is held back by the step that failed (taking, mirroring...): only that step working again
releases it, so an earlier step that works (judging it again) neither logs nor restarts the
pauses. `held` lists what is held back, for /healthz and /metrics.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

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
STALE_S = 2 * BACKOFF_CAP_S
"""A file held back that no pass has tried for this long past its due time is no longer held:
its pass stopped asking (the file went, its task ended, Redis is away and nothing is mirrored)."""

Shown = Callable[[], str] | None


class Held(NamedTuple):
    """One file held back: the error (a label of few values) and the whole reason, which names
    the step and the file."""

    error: str
    reason: str


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


def _message(exc: BaseException) -> str:
    """`describe`, less the file names an OSError carries: a temp file's name is new on every
    try, and the file held back is named anyway. Two tries differ only if the error does."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return describe(exc)


def _error(exc: BaseException) -> str:
    """The error alone, in few words and few values (a metric's label)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return type(exc).__name__


@dataclass
class _Trouble:
    message: str
    error: str
    step: str  # the `what` whose failure holds the file; only its success releases it
    doing: str  # what failed, as reports say it
    shown: str  # what logs and reports call the file
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

    def held(self, now: float, root: Path | None = None) -> list[Held]:
        """The files held back now, their names relative to `root`; forgets those no pass has
        tried for `STALE_S` past their due time."""
        for key in [k for k, t in self.troubles.items() if now > t.retry_at + STALE_S]:
            del self.troubles[key]
        prefix = f"{root}/" if root is not None else None
        out = []
        for t in self.troubles.values():
            shown = t.shown.removeprefix(prefix) if prefix else t.shown
            out.append(Held(t.error, f"{t.error} {t.doing} {shown}"))
        return sorted(out)

    def run(
        self,
        key: str,
        what: str,
        now: float,
        action: Callable[[], T],
        end: Callable[[str], object] | None = None,
        log_ids: dict[str, str] | Callable[[], dict[str, str]] | None = None,
        shown: Shown = None,
    ) -> T | None:
        """`action()`; on failure hold the file back (passing error) or `end(error)` it.
        `log_ids` may be a function: the ids are worked out only when there is a line to log.
        `shown` names the file in logs and reports when `key` does not (a key that must stay
        the same while the file is renamed); it is called only when there is something to say.
        """
        try:
            value = action()
        except FileNotFoundError as exc:
            # Deleted or renamed by someone else between looking and acting: nothing to end.
            extra = _ids(log_ids)
            self.troubles.pop(key, None)
            name = shown() if shown else key
            log.info("%s %s: it went away meanwhile (%s)", what, name, exc.strerror, extra=extra)
            return None
        except Exception as exc:  # one file's failure never reaches the loop
            extra = _ids(log_ids)
            if transient(exc) or end is None:
                # Nothing to end it with: hold it back as a passing error, logged once.
                self._hold(key, what, what, now, exc, extra, shown, trace=not transient(exc))
                return None
            self.troubles.pop(key, None)
            name = shown() if shown else key
            log.error("%s %s failed: %s", what, name, describe(exc), exc_info=True, extra=extra)
            if end is not None:
                self._end(key, what, now, exc, end, extra, shown)
            return None
        trouble = self.troubles.get(key)
        if trouble is not None and trouble.step == what:
            del self.troubles[key]
            log.warning("%s %s works again", what, trouble.shown, extra=_ids(log_ids))
        return value

    def _hold(
        self,
        key: str,
        step: str,
        what: str,
        now: float,
        exc: BaseException,
        extra: dict[str, str],
        shown: Shown,
        trace: bool = False,
    ) -> None:
        message = _message(exc)
        old = self.troubles.get(key)
        delay = BACKOFF_FIRST_S if old is None else min(BACKOFF_CAP_S, old.delay * 2)
        name = shown() if shown else key
        if old is None or old.message != message:
            log.error(
                "%s %s failed: %s; trying again with growing pauses (at most %g s)",
                what,
                name,
                message,
                BACKOFF_CAP_S,
                exc_info=trace,
                extra=extra,
            )
        self.troubles[key] = _Trouble(message, _error(exc), step, what, name, now + delay, delay)

    def _end(
        self,
        key: str,
        what: str,
        now: float,
        exc: BaseException,
        end: Callable[[str], object],
        extra: dict[str, str],
        shown: Shown,
    ) -> None:
        error = f"internal error while the bridge was {what}: {describe(exc)}; report it"
        try:
            end(error)
        except Exception as again:  # the file could not even be ended: hold it back
            if transient(again):
                self._hold(key, what, f"ending after {what}", now, again, extra, shown)
            else:
                log.error(
                    "cannot end %s after %s: %s; leaving it as it is",
                    shown() if shown else key,
                    what,
                    describe(again),
                    exc_info=True,
                    extra=extra,
                )
