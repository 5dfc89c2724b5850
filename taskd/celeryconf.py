"""The Celery configuration both sides use, as data built from Settings.

Each setting that the guarantees rest on says why next to it (docs/guarantees.md walks through
them as a whole).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu import Queue

from taskd import redisconn
from taskd.settings import Settings

QUEUES = ("retrieve", "pack", "notify")
PRIORITY_STEPS = list(range(10))
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
RESULT_EXPIRES_S = 7 * 24 * 3600


def kombu_priority(file_priority: int) -> int:
    """The contract's 9 is the most urgent; kombu's Redis transport serves 0 first."""
    return 9 - max(0, min(9, file_priority))


def redis_options(settings: Settings) -> dict[str, Any]:
    return {
        # Sentinels: the master's name (taskd/redisconn.py).
        **redisconn.transport_options(settings),
        # A job taken by a worker that dies without acking comes back after this long. It must
        # outlast the longest time limit, or a healthy long job would be handed out twice.
        "visibility_timeout": settings.visibility_timeout,
        # Bounded waits: a silent Redis must never hang the bridge's loop or a worker.
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "retry_on_timeout": True,
        "health_check_interval": 10,
        # `priority` from the file becomes one Redis list per level, served highest first.
        "queue_order_strategy": "priority",
        "priority_steps": PRIORITY_STEPS,
        "sep": ":",
    }


def config(settings: Settings, include: Iterable[str] = ()) -> dict[str, Any]:
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "include": list(include),
        # JSON only: the file contract is JSON and pickle would run code from the wire.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        # Late acks: the message is acknowledged only when the job has ended, so a worker
        # killed mid-job leaves it to be redelivered instead of losing it.
        "task_acks_late": True,
        # A child process killed under a job requeues it rather than failing it for good.
        "task_reject_on_worker_lost": True,
        # One message per process: nothing sits prefetched in a worker that might die.
        "worker_prefetch_multiplier": 1,
        # STARTED is stored by the task itself the moment it holds the job's claim and knows
        # it is the try due (tasks/base.py): the file shows it within a tick. Celery's own
        # would be stored before that check, by a stale copy too, over the RETRY that says a
        # later try waits.
        "task_track_started": False,
        # Plain results: the bridge reads every active job's state each tick, so the meta
        # stays small (the task's arguments are not copied into every state write).
        "result_extended": False,
        "result_expires": RESULT_EXPIRES_S,
        # Redis away while a job's outcome is stored: the store is tried again until Redis is
        # back, however long that takes, instead of failing a job whose work is done. (The
        # outcome is on disk already, taskd/outcomes.py, should the worker die meanwhile.)
        "result_backend_always_retry": True,
        "result_backend_max_retries": math.inf,
        "result_backend_max_sleep_between_retries_ms": 5000,
        "result_backend_transport_options": redis_options(settings),
        "redis_socket_timeout": SOCKET_TIMEOUT_S,
        "redis_socket_connect_timeout": CONNECT_TIMEOUT_S,
        "redis_retry_on_timeout": True,
        "redis_backend_health_check_interval": 10,
        "broker_transport_options": redis_options(settings),
        "broker_connection_retry_on_startup": True,
        # A worker waits out a Redis outage of any length (Celery's default gives up after 100
        # tries, about 45 minutes); `tasks/brokerfix.py` keeps the reconnect itself from failing.
        "broker_connection_max_retries": None,
        "broker_connection_timeout": CONNECT_TIMEOUT_S,
        # Publishing waits a bounded time: the bridge keeps the file QUEUED and tries again
        # from its reconcile pass rather than blocking on a dead broker.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        # Events feed Flower: sent, started, progress, succeeded, failed.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_queues": [Queue(name, routing_key=name) for name in QUEUES],
        "task_default_queue": QUEUES[0],
        "task_create_missing_queues": True,
        "task_default_priority": kombu_priority(0),
        "worker_hijack_root_logger": False,
        # rediss://: the server's certificate is always checked (taskd/redisconn.py).
        **redisconn.celery_tls(settings),
    }


def make_app(settings: Settings, include: Iterable[str] = ()) -> Celery:
    """The app tools publish and inspect with (workers use `tasks.app`, the bridge
    `publishing_app`)."""
    app = Celery("taskd", set_as_current=False)
    app.conf.update(config(settings, include))
    return app


class _PublishingCelery(Celery):
    """Celery as the bridge uses it: it publishes, and never waits for a result (the mirror
    reads states itself), so sending a job does not subscribe to its result's channel, which
    would be two more Redis commands a job and a subscription held until the job ends."""

    def _get_backend(self) -> Any:
        backend = super()._get_backend()
        backend.on_task_call = _no_subscription
        return backend


def _no_subscription(producer: Any, task_id: str) -> None:
    """In place of the Redis backend's `on_task_call`: nothing to subscribe to."""


def publishing_app(settings: Settings) -> Celery:
    """The bridge's app (`make_app`, tuned for publishing passes of jobs)."""
    app = _PublishingCelery("taskd", set_as_current=False)
    app.conf.update(config(settings))
    # kombu sends a pass's messages in one pipeline (`Producer.batch`, bridge/publish.py) only
    # when a timed-out pipeline is not retried, which could push a message twice. The bridge
    # does not need that retry: a publish that fails part way leaves its jobs recorded
    # `publishing`, and reconcile looks for each in its queue before sending it again.
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "retry_on_timeout": False,
    }
    return app
