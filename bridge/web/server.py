"""The bridge's HTTP endpoint: `/metrics`, `/healthz`, the status page `/` and its `/api/tasks`.

It runs on a thread of its own and reads nothing but `Metrics.snapshot()`: the bridge's loop is
the only code that touches task files and Redis. It is started before the bridge knows whether it
is the active one, so a standby answers too (/healthz 503, `"role": "standby"` and why).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bridge.metrics import ENDED, REJECTED, Metrics, Snapshot, TaskRow, exposition, health
from bridge.schedule import parse_time
from bridge.web.door import CLOSED, Door, Named, is_door
from bridge.web.page import API_PATH, PAGE
from taskd import states

log = logging.getLogger(__name__)

MAX_ROWS = 500
"""The page lists at most this many tasks (running ones first) and says how many it left out."""
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ACTIVE_ORDER = (states.PROGRESS, states.STARTED, states.RETRY, states.QUEUED)
WAITING_STATES = (states.QUEUED, states.RETRY)

Reply = tuple[int, str, bytes]
CLIENT_TIMEOUT_S = 30.0
REQUEST_DEADLINE_S = 30.0
"""A request must be read whole within this (a long poll's wait comes after)."""
MAX_CONNECTIONS = 64
DRAIN_BYTES = 4 << 20
"""A body over the limit is read and dropped up to this, so the client hears the 413."""
LENGTH_RE = re.compile(r"[0-9]{1,12}")


def _json(status: int, body: object) -> Reply:
    return status, "application/json", json.dumps(body, ensure_ascii=False).encode()


UNAUTHORIZED = _json(
    HTTPStatus.UNAUTHORIZED, {"error": "send the door's token: Authorization: Bearer <token>"}
)
BUSY = _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the task door is busy; try again"})


def _rank(row: TaskRow) -> tuple[int, str, str]:
    order = ACTIVE_ORDER.index(row.state) if row.state in ACTIVE_ORDER else len(ACTIVE_ORDER)
    return order, row.user_id, row.task_id


def _epoch(text: str) -> float | None:
    """A time from a task file as epoch seconds, read as the bridge reads it (UTC without a
    zone), so the page never parses it in the viewer's zone."""
    when = parse_time(text)
    return when.timestamp() if when is not None else None


def _task(row: TaskRow) -> dict[str, Any]:
    return {
        "task_id": row.task_id,
        "user_id": row.user_id,
        "type": row.type,
        "state": row.state,
        "progress": row.progress,
        "doing": row.doing,
        "description": row.description,
        "worker": row.worker,
        "started_at": row.started_at,
        "queued_at": row.queued_at,
        "due_at": row.due_at,
        "started": _epoch(row.started_at),
        "queued": _epoch(row.queued_at),
        "due": row.due,
    }


def tasks_view(
    snap: Snapshot,
    last_hour: list[dict[str, Any]] | None = None,
    recent: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What the status page draws: counts by state, health, the running tasks, those waiting,
    the last ended, workers and queues, and the last hour a minute at a time."""
    active = {state: 0 for state in ACTIVE_ORDER}
    for row in snap.tasks:
        active[row.state] = active.get(row.state, 0) + 1
    ended = {state: int(snap.count(ENDED, state)) for state in ENDED.values}
    ended[states.REJECTED] = int(snap.count(REJECTED))
    running = sorted((r for r in snap.tasks if r.state not in WAITING_STATES), key=_rank)
    # The longest waiting first: those a cut list must never hide.
    waiting = sorted(
        (r for r in snap.tasks if r.state in WAITING_STATES),
        key=lambda r: (r.waiting_since is None, r.waiting_since or 0.0, r.user_id, r.task_id),
    )
    return {
        "now": snap.at,
        "active": active,
        "ended": ended,
        "health": health(snap)[1],
        "tasks": [_task(r) for r in running[:MAX_ROWS]],
        "more": max(0, len(running) - MAX_ROWS),
        "waiting": [_task(r) for r in waiting[:MAX_ROWS]],
        "waiting_more": max(0, len(waiting) - MAX_ROWS),
        "waiting_by_type": snap.waiting_by_type(),
        "queue_oldest_s": round(snap.queue_oldest(), 1),
        "workers_alive": snap.workers_alive,
        "recent": recent or [],
        "last_hour": last_hour or [],
    }


class PageView:
    """The page's JSON, made at most once a second and once per set of tasks the loop
    observed, however many pages poll it (made on the HTTP threads, never on the loop's)."""

    def __init__(self, drawn: Callable[[], tuple[list[Any], list[Any]]] | None = None) -> None:
        self.drawn = drawn
        self._lock = threading.Lock()
        self._made: tuple[tuple[int, int], Reply] | None = None

    def reply(self, snap: Snapshot) -> Reply:
        key = (snap.version, int(snap.at))
        with self._lock:
            if self._made is not None and self._made[0] == key:
                return self._made[1]
            last_hour, recent = self.drawn() if self.drawn is not None else ([], [])
            made = _json(HTTPStatus.OK, tasks_view(snap, last_hour, recent))
            self._made = (key, made)
            return made


def route(path: str, snap: Snapshot, view: PageView | None = None) -> Reply:
    """The answer to a GET of `path`, from one snapshot."""
    if path == "/metrics":
        return HTTPStatus.OK, PROMETHEUS_TYPE, exposition(snap).encode()
    if path == "/healthz":
        ok, body = health(snap)
        return _json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body)
    if path == API_PATH:
        return (view or PageView()).reply(snap)
    if path in ("/", "/index.html"):
        return HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode()
    return _json(HTTPStatus.NOT_FOUND, {"error": f"no such page; try / {API_PATH} /metrics"})


class Handler(BaseHTTPRequestHandler):
    """One request; `_handler` binds the snapshot and the door it serves."""

    server_version = "taskd-bridge"
    timeout = CLIENT_TIMEOUT_S  # a client that stops sending mid-request is let go
    snapshot: Callable[[], Snapshot]
    view: PageView | None = None
    door: Door | None = None

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def setup(self) -> None:
        super().setup()
        # One deadline for reading the whole request, however slowly it trickles in.
        self._deadline = threading.Timer(REQUEST_DEADLINE_S, self._cut)
        self._deadline.daemon = True
        self._deadline.start()

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if not is_door(path):
            self._send(*_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "GET only here"}))
            return
        self._through_door(path, "", post=True)

    def _answer(self, send_body: bool) -> None:
        self._deadline.cancel()  # read whole: what follows may wait (a long poll)
        path, _, query = self.path.partition("?")
        if is_door(path):
            self._through_door(path, query, post=False, send_body=send_body)
            return
        self._send(*route(path, self.snapshot(), self.view), send_body=send_body)

    def _through_door(self, path: str, query: str, post: bool, send_body: bool = True) -> None:
        door = self.door
        if door is None:
            reply = CLOSED
        elif not door.allowed(self.headers.get("Authorization"), self.client_address[0], path):
            reply = UNAUTHORIZED
        elif not door.slots.acquire(blocking=False):
            reply = BUSY
        else:
            try:
                reply = self._door_reply(door, path, query, post)
            finally:
                door.slots.release()
        self._send(*reply, send_body=send_body)

    def _door_reply(self, door: Door, path: str, query: str, post: bool) -> Reply:
        named = door.target(path)
        if not isinstance(named, Named):
            return named
        if not post:
            return door.get(named.user, named.name, query)
        body = self._body(door)
        if not isinstance(body, bytes):
            return body
        return door.post(named.user, named.name, body)

    def _body(self, door: Door) -> bytes | Reply:
        length = self.headers.get("Content-Length")
        if length is None or not LENGTH_RE.fullmatch(length.strip()):
            self.close_connection = True
            return _json(HTTPStatus.LENGTH_REQUIRED, {"error": "send a Content-Length"})
        size = int(length)
        too_large = door.too_large(size)
        if too_large is not None:
            self.close_connection = True
            if size <= DRAIN_BYTES:  # read and dropped, so the client hears the answer
                self.rfile.read(size)
            return too_large
        body = self.rfile.read(size)
        self._deadline.cancel()
        if len(body) != size:
            return _json(HTTPStatus.BAD_REQUEST, {"error": "the body ended early"})
        return body

    def _send(self, status: int, content_type: str, body: bytes, send_body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="taskd"')
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", PAGE_POLICY)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("http %s: " + format, self.address_string(), *args)


def _handler(metrics: Metrics, door: Door | None) -> type[Handler]:
    bound = {"snapshot": staticmethod(metrics.snapshot), "door": door}
    return type("BoundHandler", (Handler,), {**bound, "view": PageView(metrics.drawn)})


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most MAX_CONNECTIONS of them: one more is closed at once."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops a burst of connects for seconds

    def __init__(self, address: Any, handler: Any) -> None:
        super().__init__(address, handler)
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class StatusServer:
    """Serves one `Metrics` on host:port from a daemon thread until `stop`."""

    def __init__(self, host: str, port: int, metrics: Metrics, door: Door | None = None) -> None:
        kind = _Server6 if ":" in host else _Server
        self._server = kind((host, port), _handler(metrics, door))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="bridge-http", daemon=True
        )
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; a second call does nothing (the bridge and its command both may)."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(
    host: str, port: int | None, metrics: Metrics, door: Door | None = None
) -> StatusServer | None:
    """Start the endpoint if a port is set; a port that cannot be bound is logged, not fatal:
    the bridge's work matters more than its dashboard."""
    if port is None:
        return None
    try:
        server = StatusServer(host, port, metrics, door)
    except OSError as exc:
        log.error(
            "cannot serve HTTP on %s:%s (%s); set TASKD_HTTP_PORT to a free port", host, port, exc
        )
        return None
    server.start()
    log.info("status page, /metrics and /healthz on http://%s:%s/", host, server.port)
    if door is not None:
        log.info("task door open on http://%s:%s/api/tasks/ to holders of the token", host, port)
    return server
