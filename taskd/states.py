"""State names, the fields the bridge owns, and every Redis key taskd uses.

Pure constants, no I/O: the one place both the bridge and the workers read them from.
"""

from __future__ import annotations

# States written into task files (file-contract.md).
QUEUED = "QUEUED"
STARTED = "STARTED"
PROGRESS = "PROGRESS"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REJECTED = "REJECTED"

FILE_STATES = frozenset({QUEUED, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE, REJECTED})
TERMINAL = frozenset({SUCCESS, FAILURE, REJECTED})
ACTIVE = FILE_STATES - TERMINAL
FAILED = frozenset({FAILURE, REJECTED})

# Celery's own state names that the bridge reads back from the result backend.
CELERY_PENDING = "PENDING"
CELERY_RECEIVED = "RECEIVED"
CELERY_REVOKED = "REVOKED"

# Fields the bridge writes into a task file, in the order they are appended after the UI's own.
TASK_ID = "task-id"
STATE = "state"
PROGRESS_FIELD = "progress"
# While a task runs: which step it is at, of how many, and what it is doing, in a few words
# (`searching 12/30 MB`). Written by the bridge from the worker's report; gone once it ends.
PROGRESS_STEP = "progress-step"
PROGRESS_STEPS = "progress-steps"
PROGRESS_TEXT = "progress-text"
STEP_FIELDS = (PROGRESS_STEP, PROGRESS_STEPS, PROGRESS_TEXT)
PROGRESS_TEXT_MAX = 120
JOB_ID = "job-id"
QUEUED_AT = "queued-at"
STARTED_AT = "started-at"
FINISHED_AT = "finished-at"
WORKER = "worker"
ERROR = "error"
RETRIES = "retries"
RETRY_AT = "retry-at"
NOTIFIED_AT = "notified-at"
NOTIFY_RETRY_AT = "notify-retry-at"
NOTIFY_ERROR = "notify-error"
PREVIOUS_ERRORS = "previous-errors"
ORIGINAL = "original"
# Optional fields the UI may add (file-contract.md), read by the bridge itself.
RUN_AT = "run-at"
DELAY = "delay"
PRIORITY = "priority"
NOTIFY = "notify"
ORIGINAL_B64 = "original-base64"

BRIDGE_FIELDS: tuple[str, ...] = (
    TASK_ID,
    STATE,
    PROGRESS_FIELD,
    PROGRESS_STEP,
    PROGRESS_STEPS,
    PROGRESS_TEXT,
    JOB_ID,
    QUEUED_AT,
    STARTED_AT,
    FINISHED_AT,
    WORKER,
    RETRIES,
    RETRY_AT,
    ERROR,
    PREVIOUS_ERRORS,
    NOTIFIED_AT,
    NOTIFY_RETRY_AT,
    NOTIFY_ERROR,
)
# A file carrying any of these was written by the bridge; the UI never writes them.
OWNED_MARKERS = frozenset({TASK_ID, STATE, JOB_ID, QUEUED_AT})
# What tasks report into their files (file-contract.md): a new file's own values for these, like
# those of the bridge's fields, never stand, or the file would show an outcome nobody produced.
TMP_SPACE = "tmp-space"
RESULT_FIELDS = ("output", "matched", TMP_SPACE)
# The task's tmp-space is removed when its job ends, whatever the ending: the field goes with it.
GONE_WHEN_ENDED = {TMP_SPACE: None}

# What a job's message carries beside the task's spec: the identity of its data root, so a worker
# of another data root never runs it (taskd/roots.py).
SPEC_ROOT = "root"

# Keys of the meta a task stores with state PROGRESS (and returns on SUCCESS).
META_PROGRESS = "progress"
META_FIELDS = "fields"  # task-specific fields to mirror into the file (output, matched, ...)
META_WORKER = "worker"
META_STARTED_AT = "started-at"
META_STEP = "step"
META_STEPS = "steps"
META_TEXT = "text"

# Keys of the meta a task stores with state RETRY (the bridge publishes the next try when due).
META_RETRIES = "retries"
META_RETRY_AT = "retry-at"
META_ERROR = "error"
META_RECIPIENTS = "recipients"  # notify: who still has to get the mail
META_PROBLEMS = "problems"  # notify: what earlier tries could not deliver

# Custom Celery event a task sends with each progress report.
EVENT_PROGRESS = "task-progress"

# Redis keys. The result backend's own key prefix is Celery's default.
BACKEND_META_PREFIX = "celery-task-meta-"
KEY_JOB = "taskd:job:{job_id}"  # hash: what the bridge published (status, user, task-id, type)
KEY_ACTIVE = "taskd:active"  # set of job ids the bridge mirrors
KEY_CANCEL = "taskd:cancel:{job_id}"  # durable revoke: a worker never runs (or stops) this job
KEY_CLAIM = "taskd:claim:{job_id}"  # which worker process runs the job now
KEY_DONE = "taskd:done:{job_id}"  # final outcome, so a second delivery does not redo the work
# Whose task a job runs for, written by its worker with every state it stores: what Redis still
# knows of a job after losing the bridge's record (taskd/jobs.py `whose`).
KEY_WHOSE = "taskd:whose:{job_id}"
KEY_ROOT = "taskd:root"  # the data root this Redis db serves (taskd/roots.py)
KEY_WORKERS = "taskd:workers"  # sorted set: each worker's node name, scored by its last beat
WORKER_BEAT_S = 5.0  # how often a worker says it is alive (taskd/alive.py)
WORKER_ALIVE_S = 20.0  # a worker not heard from for this long is not counted alive

JOB_ATTEMPT = "attempt"  # field of the job record: which retry was published last
JOB_PUBLISHING = "publishing"
JOB_PUBLISHED = "published"

CANCEL_TTL_S = 7 * 24 * 3600
DONE_TTL_S = 7 * 24 * 3600


def job_key(job_id: str) -> str:
    return KEY_JOB.format(job_id=job_id)


def cancel_key(job_id: str) -> str:
    return KEY_CANCEL.format(job_id=job_id)


def claim_key(job_id: str) -> str:
    return KEY_CLAIM.format(job_id=job_id)


def done_key(job_id: str) -> str:
    return KEY_DONE.format(job_id=job_id)


def whose_key(job_id: str) -> str:
    return KEY_WHOSE.format(job_id=job_id)


def meta_key(job_id: str) -> str:
    return BACKEND_META_PREFIX + job_id
