"""File names both the bridge and the workers use beside task files, spelled once.

- `<task-id>.notify.eml`: the UI's notify mail, sent when its task ends.
- `.<task-id>.notify.sent`: a worker's record that the mail was sent (and to whom), so the
  outcome reaches the task file even if the bridge or Redis forgot the notify job.
- `<data-root>/.taskd/outputs/<user-id>/<job-id>`: which output a PACKMS job published, so a
  second delivery of the job publishes nothing new.
- `<data-root>/rejected/`: originals of rejected task files too large to keep inline.
- `<data-root>/redis/`: the files of the private Redis `taskd up` starts.
"""

from __future__ import annotations

NOTIFY_SUFFIX = ".notify.eml"
SENT_SUFFIX = ".notify.sent"
PRIVATE_DIR = ".taskd"
OUTPUTS_DIR = "outputs"
REJECTED_DIR = "rejected"
REDIS_DIR = "redis"


def notify_mail(task_id: str) -> str:
    return f"{task_id}{NOTIFY_SUFFIX}"


def is_notify_mail(name: str) -> bool:
    return name.endswith(NOTIFY_SUFFIX) and not name.startswith(".")


def notify_task_id(name: str) -> str:
    """The task-id a notify mail's name gives."""
    return name[: -len(NOTIFY_SUFFIX)]


def sent_marker(task_id: str) -> str:
    return f".{task_id}{SENT_SUFFIX}"


def is_sent_marker(name: str) -> bool:
    return name.startswith(".") and name.endswith(SENT_SUFFIX)


def sent_marker_task_id(name: str) -> str:
    return name[1 : -len(SENT_SUFFIX)]
