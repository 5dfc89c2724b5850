"""The Celery app workers run: `celery -A tasks worker` (or `taskd worker`).

Configured from the TASKD_* environment when Celery first needs its configuration, not at
import, so tools can import task modules without a broker. The task modules to load come from
the task types' schemas: a new type's module is picked up without touching this file.
"""

from __future__ import annotations

import os

from celery import Celery

from taskd.celeryconf import config
from taskd.settings import Settings
from taskd.tasktypes import load_types

NOTIFY_MODULE = "tasks.notify"


class TaskdCelery(Celery):
    def on_configure(self) -> None:
        settings = Settings.from_env(os.environ)
        types = load_types(settings.schema_dirs)
        modules = sorted({t.module for t in types.values()} | {NOTIFY_MODULE})
        self.conf.update(config(settings, include=modules))


app = TaskdCelery("taskd")
