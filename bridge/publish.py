"""Publishing jobs and asking Redis what it knows of them.

A job is recorded in `taskd:job:<id>` as `publishing` before the message is sent and
`published` after. Reconcile uses that record to publish a job exactly once: a job with no record
and no result was never sent (or was lost with Redis); a job left `publishing` by a crash is looked
for in its queue before it is sent again.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from bridge.model import Tracked
from bridge.schedule import Known
from bridge.wire import Wire
from taskd import jobs, states
from taskd.celeryconf import PRIORITY_STEPS, kombu_priority
from taskd.jobs import JobRecord

log = logging.getLogger(__name__)

UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"  # kombu's: each delivery tag by when it was handed out
PUBLISH_CHUNK = 1000
"""Jobs one pipeline carries (each its message, LPUSH, and its `task-sent` event, PUBLISH, for
Flower: `bridge/wire.py`), one round trip: a failure leaves whole chunks sent and marked, the
rest not."""
Copy = tuple[bytes, int | None]
"""A delivered copy of a job in kombu's unacked set: its delivery tag, and the attempt it
carries (None if unreadable)."""
LOOK_CHUNK = 1000
"""Jobs one `LOOKS` call reads: Redis runs nothing else meanwhile (a few milliseconds)."""
LOOKS = """
local out, n = {}, #KEYS / 2
for i = 1, n do
  local record = redis.call('HMGET', KEYS[i], ARGV[1], ARGV[2])
  out[3 * i - 2] = record[1]
  out[3 * i - 1] = record[2]
  out[3 * i] = redis.call('EXISTS', KEYS[n + i])
end
return out
"""
"""Each job's record (status, attempt) and whether its lease is held, for the jobs whose record
keys come first in KEYS and lease keys after: one command for many jobs, where a command a key
cost the bridge more than Redis's work."""
REDIS_PUBLISH_ERRORS = (RedisError, OSError)
# What kombu's Redis transport raises from a channel whose connection was lost under it (after
# a Redis restart the channel can hold `connection = None`): an outage, not a bug of the job.
BROKEN_CHANNEL = (AttributeError,)  # kombu's Redis transport: messages delivered but not yet acked


def _copy_of(delivered: bytes | None) -> tuple[str, int | None] | None:
    """The job id of a message as kombu keeps it in its unacked set, `[message, exchange,
    routing key]`, and the attempt it carries (the `retries` its body's spec says; None if that
    cannot be read); None for anything else."""
    if delivered is None:
        return None
    try:
        message = json.loads(delivered)[0]
        job_id = message["headers"]["id"]
    except (ValueError, LookupError, TypeError):
        return None
    if not isinstance(job_id, str):
        return None
    try:
        spec = json.loads(base64.b64decode(message["body"]))[0][0]
        attempt = spec[states.RETRIES]
    except (ValueError, LookupError, TypeError, binascii.Error):
        return job_id, None
    return job_id, attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None


def job_label(task: Tracked) -> dict[str, str]:
    """Who asked for a job and which file it is, as monitors (Flower) show it."""
    return {"user-id": task.user, "task-id": task.task_id, "type": task.type.name}


class Metas:
    """Each job's state parsed once a change: ticks and glances read the same bytes again and
    again while a job runs. The parsed dicts are shared: callers read them, never change them."""

    def __init__(self) -> None:
        self._by_job: dict[str, tuple[bytes, dict[str, Any] | None]] = {}

    def parsed(self, job_id: str, raw: bytes | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        hit = self._by_job.get(job_id)
        if hit is not None and hit[0] == raw:
            return hit[1]
        meta = jobs.parse_meta(raw)
        self._by_job[job_id] = (raw, meta)
        return meta

    def keep_only(self, job_ids: Iterable[str]) -> None:
        """Forget the jobs not named (no longer mirrored): the cache never outgrows the table."""
        by_job = self._by_job
        self._by_job = {j: hit for j in job_ids if (hit := by_job.get(j)) is not None}


class Publisher:
    def __init__(self, app: Celery, client: Any, root: str = "") -> None:
        self.app = app
        self.client = client
        self.root = root  # the data root's identity, carried by every record and message
        self._wire: Wire | None = None  # made at the first send: it asks the app for its setup
        self.metas = Metas()

    def publish(self, task: Tracked, attempt: int = 0) -> None:
        """Record, then send; `attempt` is the retry this sends (0 for the first try)."""
        self.publish_many([task], attempt)

    def publish_many(self, tasks: list[Tracked], attempt: int = 0) -> None:
        """`publish` for several jobs: one round trip records them all as `publishing`, one
        sends every message (`PUBLISH_CHUNK` a pipeline), one records them `published`. A crash
        or an outage part way leaves records saying `publishing`, which reconcile looks into (module
        docstring): a message sent is found in its queue, one not sent is sent again."""
        for start in range(0, len(tasks), PUBLISH_CHUNK):
            self._publish_chunk(tasks[start : start + PUBLISH_CHUNK], attempt)

    def _publish_chunk(self, tasks: list[Tracked], attempt: int) -> None:
        """One pipeline's worth: every task of it is sent and marked, or none is marked."""
        if not tasks:
            return
        with self.client.pipeline(transaction=True) as pipe:
            for task in tasks:
                record = JobRecord(
                    task.user, task.task_id, task.type.name, attempt=attempt, root=self.root
                )
                pipe.hset(states.job_key(task.job_id), mapping=record.mapping())
            pipe.sadd(states.KEY_ACTIVE, *[task.job_id for task in tasks])
            pipe.execute()
        try:
            self._send_all(tasks, attempt)
        except BROKEN_CHANNEL as exc:
            self._reset_broker()
            raise OperationalError(f"the broker connection broke ({exc!r})") from exc
        with self.client.pipeline(transaction=False) as pipe:
            for task in tasks:
                pipe.hset(states.job_key(task.job_id), jobs.RECORD_STATUS, states.JOB_PUBLISHED)
            pipe.execute()
        for task in tasks:
            task.published = True

    def _reset_broker(self) -> None:
        """Drop the app's broker connections so the next send builds fresh ones."""
        pool, self.app._pool = self.app._pool, None
        self.app.amqp._producer_pool = None
        if pool is not None:
            try:
                pool.force_close_all()
            except Exception as exc:  # noqa: BLE001 - closing what is already broken
                log.debug("closing the broken broker pool: %s", exc)

    def _send_all(self, tasks: list[Tracked], attempt: int) -> None:
        """Every task's message and `task-sent` event in one pipeline (`bridge/wire.py`)."""
        if self._wire is None:
            self._wire = Wire(self.app)
        with self.app.producer_or_acquire() as producer:
            self._wire.declare(producer)
            channel = producer.channel
            with channel.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
                for task in tasks:
                    self._send(self._wire, task, attempt, pipe, channel)
                try:
                    pipe.execute()
                except REDIS_PUBLISH_ERRORS as exc:  # Redis went away while the pipeline ran
                    raise OperationalError(f"publishing failed part way ({exc!r})") from exc

    def _send(self, wire: Wire, task: Tracked, attempt: int, pipe: Any, channel: Any) -> None:
        priority = task.fields.get("priority")
        wire.send(
            pipe,
            channel,
            name=task.type.task,
            job_id=task.job_id,
            arg={**task.spec(), states.RETRIES: attempt, states.SPEC_ROOT: self.root},
            # The anonymous exchange routes by queue name alone. A named exchange needs its
            # bindings, which a Redis that came back empty has lost until a worker declares
            # them again: a message published in between would be dropped silently.
            queue=task.type.queue,
            priority=kombu_priority(priority if isinstance(priority, int) else 0),
            limits=(task.type.time_limit, task.type.soft_time_limit),
            # What Flower shows as the job's kwargs (the task takes none): ops find "user 3,
            # task 0001" with the search `kwargs:user-id=3 kwargs:task-id=0001`.
            kwargsrepr=repr(job_label(task)),
        )

    def known(
        self, job_ids: Iterable[str], quiet: Mapping[str, Known] | None = None
    ) -> tuple[dict[str, Known], str]:
        """What Redis knows of each job, and its run_id (which changes when it restarts).

        One round trip, however many jobs: a pipeline of one script (`LOOKS`) a thousand jobs
        reading each job's record and whether its lease is held, one MGET of all their states
        and one INFO. Jobs in `quiet` (queued, published,
        not started when last looked at: what they were is given) cost only their place in the
        MGET: while their state is still empty they are answered with what was given.
        """
        ids = list(job_ids)
        still = list(quiet or ())
        chunks = [ids[i : i + LOOK_CHUNK] for i in range(0, len(ids), LOOK_CHUNK)]
        with self.client.pipeline(transaction=False) as pipe:
            pipe.info("server")
            for chunk in chunks:
                keys = [states.job_key(j) for j in chunk] + [states.claim_key(j) for j in chunk]
                pipe.eval(LOOKS, len(keys), *keys, jobs.RECORD_STATUS, jobs.RECORD_ATTEMPT)
            if ids or still:
                pipe.mget([states.meta_key(j) for j in [*ids, *still]])
            replies = pipe.execute()
        run_id = str(replies[0].get("run_id", ""))
        metas = replies[-1] if ids or still else []
        looks = [item for reply in replies[1 : 1 + len(chunks)] for item in reply]
        out: dict[str, Known] = {}
        parsed = self.metas.parsed
        for job_id, status, attempt, leased, raw in zip(
            ids, looks[0::3], looks[1::3], looks[2::3], metas[: len(ids)], strict=True
        ):
            out[job_id] = Known(
                record=_text(status),
                meta=parsed(job_id, raw),
                attempt=jobs.count(_text(attempt)),
                leased=bool(leased),
                raw=raw,
            )
        given = quiet or {}
        for job_id, raw in zip(still, metas[len(ids) :], strict=True):
            was = given[job_id]
            # A state now: a worker took it (and holds its lease, or the mirror's next full
            # look says otherwise).
            out[job_id] = (
                was if raw is None else replace(was, meta=parsed(job_id, raw), leased=True, raw=raw)
            )
        self.metas.keep_only(out)
        return out, run_id

    def in_flight(self, task: Tracked) -> bool:
        """Is the message of this job in its queue or delivered to a worker? (rare, O(queue))"""
        needle = task.job_id.encode()
        queue = task.type.queue
        names = [queue] + [f"{queue}:{p}" for p in PRIORITY_STEPS if p]
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.lrange(name, 0, -1)
            pipe.hvals(UNACKED_KEY)
            replies = pipe.execute()
        return any(needle in item for items in replies for item in items)

    def recover(
        self, task: Tracked, attempt: int, held_for: float, stale: list[bytes] | None = None
    ) -> None:
        """Run again a job whose worker died: publish the same id, then drop the dead
        worker's copies (`drop_copies`). A job that had started (`stale` not given) has its
        stale state forgotten first; one its worker took and never started keeps its state
        (none, or the RETRY that asked for this try). Sent before anything is dropped: a crash
        in between leaves a duplicate, never a job with no message; a copy that still comes
        back is kept to one run by the worker-side guard."""
        if stale is None:
            self.client.delete(states.meta_key(task.job_id))
        self.publish(task, attempt)
        self.drop_copies(task.job_id, held_for, stale)

    def states_of(self, job_ids: list[str]) -> list[bytes | None]:
        """Each job's state as stored (raw), in one MGET: all a glance reads."""
        return list(self.client.mget([states.meta_key(j) for j in job_ids])) if job_ids else []

    def handed_out(self, job_ids: Iterable[str], held_for: float) -> dict[str, list[Copy]]:
        """Which of these jobs sit delivered-but-unacked, handed out at least `held_for`
        seconds ago (kombu's unacked set, and its index of when each was handed out), with each
        such copy's delivery tag and attempt: a job a live worker took a moment ago, after a
        long wait in its queue, is not one a dead worker holds, and a copy of an earlier try is
        not the try now due, nor is a job whose lease a worker holds (it runs, whatever its
        state says yet). One round trip."""
        ids = list(job_ids)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(UNACKED_KEY)
            pipe.zrangebyscore(UNACKED_INDEX_KEY, "-inf", time.time() - held_for)
            for job_id in ids:
                pipe.exists(states.claim_key(job_id))
            unacked, long_ago, *leased = pipe.execute()
        wanted = {job_id for job_id, held in zip(ids, leased, strict=True) if not held}
        held: dict[str, list[Copy]] = {}
        for tag in long_ago:
            copy = _copy_of(unacked.get(tag))
            if copy is not None and copy[0] in wanted:
                held.setdefault(copy[0], []).append((tag, copy[1]))
        return held

    def drop_copies(self, job_id: str, held_for: float, tags: list[bytes] | None = None) -> None:
        """Take out of kombu's unacked set a job's dead workers' copies: `tags`, or those
        handed out at least `held_for` ago. Left there, one would come back after the
        visibility timeout and run a job that was run again already, or given up, and would be
        taken for a copy the next try's dead worker holds. (A worker's later ack of a dropped
        copy is a no-op.)"""
        if tags is None:
            tags = [tag for tag, _ in self.handed_out([job_id], held_for).get(job_id, [])]
        self.drop(tags)

    def drop(self, tags: list[bytes]) -> None:
        """Take delivered copies out of kombu's unacked set."""
        if tags:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hdel(UNACKED_KEY, *tags)
                pipe.zrem(UNACKED_INDEX_KEY, *tags)
                pipe.execute()

    def mark_published(self, job_id: str) -> None:
        self.client.hset(states.job_key(job_id), jobs.RECORD_STATUS, states.JOB_PUBLISHED)

    def cancel(self, job_ids: list[str]) -> None:
        """Mark jobs cancelled for good (a worker drops them), and stop mirroring them."""
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.set(states.cancel_key(job_id), "1", ex=states.CANCEL_TTL_S)
            pipe.execute()
        self.forget(job_ids)

    def forget(self, job_ids: Iterable[str]) -> None:
        """A job the bridge no longer mirrors (ended, or its file is gone)."""
        ids = list(job_ids)
        if not ids:
            return
        with self.client.pipeline(transaction=False) as pipe:
            pipe.srem(states.KEY_ACTIVE, *ids)
            pipe.delete(*[states.job_key(j) for j in ids])
            pipe.execute()

    def owners_of(self, job_ids: Iterable[str]) -> dict[str, tuple[str, str] | None]:
        """Whose each job is, for those Redis knows: (user, task-id) from its record or, where
        Redis lost the record (it restarted under a running job), from what the job's worker
        stored beside its state (`jobs.whose`); ("", "") when only its result or outcome is
        left (it cannot be told whose); None for a job cancelled (its file was deleted, moved
        out or replaced). One round trip."""
        ids = list(job_ids)
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(states.job_key(job_id), [jobs.RECORD_USER, jobs.RECORD_TASK_ID])
                pipe.get(states.whose_key(job_id))
                pipe.exists(states.meta_key(job_id), states.done_key(job_id))
                pipe.exists(states.cancel_key(job_id))
            replies = pipe.execute()
        out: dict[str, tuple[str, str] | None] = {}
        answers = zip(ids, *(replies[i::4] for i in range(4)), strict=True)
        for job_id, (user, task_id), whose, traces, cancelled in answers:
            if cancelled:
                out[job_id] = None
            elif user is not None or task_id is not None:
                out[job_id] = (_text(user) or "", _text(task_id) or "")
            elif (worker_said := jobs.parse_whose(whose)) is not None:
                out[job_id] = worker_said
            elif traces:
                out[job_id] = ("", "")
        return out

    def active_ids(self) -> set[str]:
        return {_text(m) or "" for m in self.client.smembers(states.KEY_ACTIVE)}


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
