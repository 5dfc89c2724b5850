"""The bridge's HTTP endpoint: `/metrics`, `/healthz`, the status page `/` and its `/api/tasks`.

It runs on a thread of its own and reads nothing but `Metrics.snapshot()`: the bridge's loop is
the only code that touches task files and Redis. It is started before the bridge knows whether it
is the active one, so a standby answers too (/healthz 503, `"role": "standby"` and why).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bridge.metrics import ENDED, REJECTED, Metrics, Snapshot, TaskRow, exposition, health
from bridge.page import API_PATH, PAGE
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

Reply = tuple[int, str, bytes]


def _json(status: int, body: object) -> Reply:
    return status, "application/json", json.dumps(body, ensure_ascii=False).encode()


def _rank(row: TaskRow) -> tuple[int, str, str]:
    order = ACTIVE_ORDER.index(row.state) if row.state in ACTIVE_ORDER else len(ACTIVE_ORDER)
    return order, row.user_id, row.task_id


def tasks_view(snap: Snapshot) -> dict[str, Any]:
    """What the status page draws: counts by state, health, and the active tasks."""
    active = {state: 0 for state in ACTIVE_ORDER}
    for row in snap.tasks:
        active[row.state] = active.get(row.state, 0) + 1
    ended = {state: int(snap.count(ENDED, state)) for state in ENDED.values}
    ended[states.REJECTED] = int(snap.count(REJECTED))
    rows = sorted(snap.tasks, key=_rank)
    return {
        "active": active,
        "ended": ended,
        "health": health(snap)[1],
        "tasks": [
            {
                "task_id": r.task_id,
                "user_id": r.user_id,
                "type": r.type,
                "state": r.state,
                "progress": r.progress,
                "doing": r.doing,
            }
            for r in rows[:MAX_ROWS]
        ],
        "more": max(0, len(rows) - MAX_ROWS),
    }


def route(path: str, snap: Snapshot) -> Reply:
    """The answer to a GET of `path`, from one snapshot."""
    if path == "/metrics":
        return HTTPStatus.OK, PROMETHEUS_TYPE, exposition(snap).encode()
    if path == "/healthz":
        ok, body = health(snap)
        return _json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body)
    if path == API_PATH:
        return _json(HTTPStatus.OK, tasks_view(snap))
    if path in ("/", "/index.html"):
        return HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode()
    return _json(HTTPStatus.NOT_FOUND, {"error": f"no such page; try / {API_PATH} /metrics"})


def _handler(snapshot: Callable[[], Snapshot]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "taskd-bridge"

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self._answer(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(send_body=False)

        def _answer(self, send_body: bool) -> None:
            status, content_type, body = route(self.path.split("?", 1)[0], snapshot())
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if content_type.startswith("text/html"):
                self.send_header("Content-Security-Policy", PAGE_POLICY)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("http %s: " + format, self.address_string(), *args)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class StatusServer:
    """Serves one `Metrics` on host:port from a daemon thread until `stop`."""

    def __init__(self, host: str, port: int, metrics: Metrics) -> None:
        kind = _Server6 if ":" in host else _Server
        self._server = kind((host, port), _handler(metrics.snapshot))
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


def serve(host: str, port: int | None, metrics: Metrics) -> StatusServer | None:
    """Start the endpoint if a port is set; a port that cannot be bound is logged, not fatal:
    the bridge's work matters more than its dashboard."""
    if port is None:
        return None
    try:
        server = StatusServer(host, port, metrics)
    except OSError as exc:
        log.error(
            "cannot serve HTTP on %s:%s (%s); set TASKD_HTTP_PORT to a free port", host, port, exc
        )
        return None
    server.start()
    log.info("status page, /metrics and /healthz on http://%s:%s/", host, server.port)
    return server
