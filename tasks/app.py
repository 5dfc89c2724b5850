"""The Celery app workers run: `celery -A tasks worker` (or `taskd worker`).

Configured from the TASKD_* environment when Celery first needs its configuration, not at
import, so tools can import task modules without a broker. The task modules to load come from
the task types' schemas: a new type's module is picked up without touching this file.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, signals

from taskd import alive, redisconn, roots
from taskd.celeryconf import CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S, config
from taskd.settings import Settings, SettingsError
from taskd.tasktypes import load_types
from tasks import brokerfix, fileroots

NOTIFY_MODULE = "tasks.notify"

brokerfix.apply()


class TaskdCelery(Celery):
    def on_configure(self) -> None:
        settings = Settings.from_env(os.environ)
        types = load_types(settings.type_dirs)
        modules = sorted({t.module for t in types.values()} | {NOTIFY_MODULE})
        self.conf.update(config(settings, include=modules))


app = TaskdCelery("taskd")


@signals.worker_init.connect
def refuse_wrong_setup(sender: Any = None, **_: Any) -> None:
    """A worker never starts without its data root (a typo or an unmounted share), nor on a
    Redis db that serves another data root (taskd/roots.py); it pins PACKMS's allowed roots
    (tasks/fileroots.py)."""
    try:
        settings = Settings.from_env(os.environ)
        settings.require_data_root()
        _refuse_another_root(settings)
        fileroots.pin(settings)
    except SettingsError as exc:
        logging.getLogger(__name__).critical("not starting: %s", exc)
        raise SystemExit(2) from None


def _refuse_another_root(settings: Settings) -> None:
    client = redisconn.client(settings, SOCKET_TIMEOUT_S, CONNECT_TIMEOUT_S)
    try:
        roots.refuse_if_taken(client, settings.data_root, settings.redis_url)
    finally:
        client.close()


_ALIVE_STOP = threading.Event()


@signals.worker_ready.connect
def say_alive(sender: Any = None, **_: Any) -> None:
    """From now on the worker tells Redis it is alive (taskd/alive.py)."""
    hostname = getattr(sender, "hostname", None)
    if hostname:
        alive.start(app.backend.client, str(hostname), _ALIVE_STOP)


@signals.worker_shutdown.connect
def stop_saying_alive(**_: Any) -> None:
    _ALIVE_STOP.set()
