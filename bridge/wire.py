"""A job's Celery message and its `task-sent` event, built by the bridge, routed by kombu.

Celery's `send_task` costs about half a millisecond of Python a job (its routing and options,
`saferepr` of the arguments, its event dispatcher, kombu's producer), more than the rest of
taking a file together. The bridge sends one kind of message only: a task by name, one
positional argument (the job's spec), no keyword arguments, to a queue through the anonymous
exchange, with a priority and time limits. So it builds Celery's task message (protocol 2:
headers, properties, body) and its event itself, field for field what Celery builds, and hands
both to a Redis pipeline the way kombu's channel publishes, with the channel's own encoders,
delivery tags, priority lists and event topics: kombu's wire format, one round trip.

This ties the bridge to the task protocol of the Celery it is pinned to (pyproject: 5.7.x);
`tests/integration/test_wire.py` compares what this builds with what `send_task` sends, field
by field, on a real Redis, and the suite runs real workers and Flower against it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.events.event import get_exchange
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from celery.utils.time import utcoffset
from kombu.utils.json import dumps

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
TASK_SENT = "task-sent"
PERSISTENT, TRANSIENT = 2, 1


class Wire:
    """Builds and routes messages for one app (one process: its node name and pid)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.hostname = anon_nodename()
        self.pid = os.getpid()
        self.argsrepr_max = int(app.amqp.argsrepr_maxsize)
        self.repr_levels = int(app.conf.task_repr_maxlevels)
        self.events = bool(app.conf.task_send_sent_event)
        with app.connection_for_write() as connection:
            self.event_exchange = get_exchange(connection, app.conf.event_exchange)
        self.event_key = TASK_SENT.replace("-", ".")

    def declare(self, producer: Any) -> None:
        """The events exchange, as Celery's dispatcher declares it (kombu routes by its type)."""
        if self.events:
            producer.maybe_declare(self.event_exchange)

    def send(
        self,
        pipe: Any,
        channel: Any,
        *,
        name: str,
        job_id: str,
        arg: dict[str, Any],
        queue: str,
        priority: int,
        limits: tuple[float | None, float | None],
        kwargsrepr: str,
    ) -> None:
        """Buffer one job's message, and its event, in the Redis pipeline `pipe`."""
        args = [arg]
        argsrepr = _argsrepr(args, self.argsrepr_max, self.repr_levels)
        headers = {
            "lang": "py",
            "task": name,
            "id": job_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": list(limits),
            "root_id": job_id,
            "parent_id": None,
            "argsrepr": argsrepr,
            "kwargsrepr": kwargsrepr,
            "origin": self.hostname,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        properties = {
            "correlation_id": job_id,
            "reply_to": self.app.thread_oid,
            "kwargsrepr": kwargsrepr,  # Celery passes its options on; kept for the same bytes
            "delivery_mode": PERSISTENT,
        }
        body = dumps([args, {}, EMBED])
        message = channel.prepare_message(
            body, priority, CONTENT_TYPE, CONTENT_ENCODING, headers, properties
        )
        _put(pipe, channel, message, queue)
        if self.events:
            self._event(pipe, channel, name, job_id, argsrepr, kwargsrepr, queue)

    def _event(
        self,
        pipe: Any,
        channel: Any,
        name: str,
        job_id: str,
        argsrepr: str,
        kwargsrepr: str,
        queue: str,
    ) -> None:
        event = {
            "hostname": self.hostname,
            "utcoffset": utcoffset(),
            "pid": self.pid,
            "clock": self.app.clock.forward(),
            "uuid": job_id,
            "root_id": job_id,
            "parent_id": None,
            "name": name,
            "args": argsrepr,
            "kwargs": kwargsrepr,
            "retries": 0,
            "eta": None,
            "expires": None,
            "queue": queue,
            "exchange": "",
            "routing_key": queue,
            "timestamp": time.time(),
            "type": TASK_SENT,
        }
        message = channel.prepare_message(
            dumps(event),
            0,
            CONTENT_TYPE,
            CONTENT_ENCODING,
            {"hostname": self.hostname},
            {"delivery_mode": TRANSIENT},
        )
        _put_fanout(pipe, channel, message, self.event_exchange.name, self.event_key)


# What kombu 5.7's virtual channel does to publish (`basic_publish`, then the Redis transport's
# `_put` and `_put_fanout`), with the channel's own encoders, tags, priority lists and topics:
# only its routing by exchange type is left out, the bridge knowing where each message goes.


def _augment(channel: Any, message: dict[str, Any], exchange: str, routing_key: str) -> None:
    message["body"], encoding = channel.encode_body(message["body"], channel.body_encoding)
    properties = message["properties"]
    properties.update(body_encoding=encoding, delivery_tag=channel._next_delivery_tag())
    properties["delivery_info"].update(exchange=exchange, routing_key=routing_key)


def _put(pipe: Any, channel: Any, message: dict[str, Any], queue: str) -> None:
    """A message to `queue` through the anonymous exchange, in its priority's list."""
    _augment(channel, message, "", queue)
    priority = channel._get_message_priority(message, reverse=False)
    pipe.lpush(channel._q_for_pri(queue, priority), dumps(message))


def _put_fanout(
    pipe: Any, channel: Any, message: dict[str, Any], exchange: str, routing_key: str
) -> None:
    """An event to every subscriber of the fanout `exchange` (Flower, `celery events`)."""
    _augment(channel, message, exchange, routing_key)
    payload = dumps(message)
    for topic in channel._get_publish_topics(exchange, routing_key):
        pipe.publish(topic, payload)


def _argsrepr(args: list[Any], limit: int, levels: int) -> str:
    """What Flower shows as the job's arguments: Celery's `saferepr(args, limit, levels)`,
    without its cost (70 us) where plain `repr` gives the same: short, and no container nested
    deeper than `levels` (which `saferepr` shows as `[...]`)."""
    if _within(args, levels):
        text = repr(args)
        if len(text) <= limit:
            return text
    return saferepr(args, limit, maxlevels=levels)


def _within(value: Any, levels: int) -> bool:
    if isinstance(value, dict):
        return levels > 0 and all(_within(v, levels - 1) for v in value.values())
    if isinstance(value, list | tuple):
        return levels > 0 and all(_within(v, levels - 1) for v in value)
    return True
