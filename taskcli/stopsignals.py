"""SIGTERM, SIGINT and SIGHUP as one graceful stop, logged outside the signal handler."""

from __future__ import annotations

import logging
import queue
import signal
import threading

log = logging.getLogger("taskcli.up")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Each asks for the one graceful stop; SIGHUP is a closed terminal, not a reason to die."""
UP_STOPPING = (
    "stopping workers (running jobs may finish), then bridge and Flower, then the Redis up started"
)


class StopSignals:
    """SIGTERM, SIGINT and SIGHUP each ask for one graceful stop: they set `requested`.

    The handler only records the signal; it is logged outside the handler (a handler that logs
    could interrupt a half-written line): by `report`, called from the main loop, or by a thread
    of its own (`report_in_background`, for a process whose loop has no place for it). A second
    signal is noted without cutting the stop short.
    """

    def __init__(
        self, requested: threading.Event | None = None, stopping: str = UP_STOPPING
    ) -> None:
        self.requested = requested if requested is not None else threading.Event()
        self.stopping = stopping
        self._arrived: queue.SimpleQueue[int] = queue.SimpleQueue()  # safe in a handler
        self.first: str | None = None

    def install(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        self._arrived.put(signum)
        self.requested.set()

    def report(self) -> None:
        """Log the signals that arrived since the last call."""
        while True:
            try:
                self._tell(self._arrived.get_nowait())
            except queue.Empty:
                return

    def report_in_background(self) -> StopSignals:
        def tell_forever() -> None:
            while True:
                self._tell(self._arrived.get())

        threading.Thread(target=tell_forever, name="stop-signals", daemon=True).start()
        return self

    def _tell(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.first is None:
            self.first = name
            log.info("%s received: %s", name, self.stopping)
        else:
            log.info("%s received: already stopping, in order", name)
