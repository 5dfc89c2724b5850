"""One supervised child process of `taskd up`: started in its own process group, told to stop
should `up` die, restarted with a back-off when it dies young, stopped within a grace."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("taskcli.up")
REFUSED_EXIT = 2
"""What a taskd process (and Celery's command line) exits with when its setup is wrong: a
setting, or a Redis db that serves another data root. Restarting it cannot help."""

RESTART_BACKOFF_MAX_S = 30.0
STOP_GRACE_S = 15.0
"""Bridge, Flower and Redis: time to stop after SIGTERM before they are killed."""
WORKER_STOP_GRACE_S = 60.0
"""A worker's warm shutdown: time for its running jobs to finish (others are run again)."""
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when `up` dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: up's own stop still works
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    role: str = ""
    proc: subprocess.Popen[bytes] | None = None
    grace: float = STOP_GRACE_S
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)
    refused: bool = False  # it exited saying its setup is wrong: not started again

    def start(self, now: float) -> None:
        log.info("starting %s", self.name)
        self.proc = subprocess.Popen(
            self.argv, env=self.env, process_group=0, preexec_fn=_die_with_parent
        )
        self.started_at = now

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poll_once(self, now: float) -> None:
        """Restart a child that died, waiting longer each time it dies young."""
        if self.proc is None or self.proc.poll() is None:
            if self.proc is None and now >= self.next_start:
                self.start(now)
            return
        code = self.proc.returncode
        self.proc = None
        if code == REFUSED_EXIT:
            self.refused = True  # it said why above; starting it again would say it again
            log.error("%s refused to start (exit %s): see its message above", self.name, code)
            return
        young = now - self.started_at < 60
        self.restarts = self.restarts + 1 if young else 0
        delay = min(RESTART_BACKOFF_MAX_S, 2.0**self.restarts) if young else 1.0
        log.warning("%s exited with %s; restarting in %.0f s", self.name, code, delay)
        self.next_start = now + delay

    def stop(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, started: float, tick: Callable[[], None]) -> None:
        """Wait out the child's grace from `started`, then kill it; `tick` meanwhile."""
        if self.proc is None:
            return
        deadline = started + self.grace
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                log.warning("%s did not stop within %.0f s; killing it", self.name, self.grace)
                self.proc.kill()
                self.proc.wait(5)
                break
            tick()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.2)
        log.info("%s stopped (exit %s)", self.name, self.proc.returncode)
