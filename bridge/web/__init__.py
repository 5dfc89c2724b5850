"""The bridge's HTTP side: the server (`server.py`) with `/metrics`, `/healthz`, the status page
(`page.py`, its HTML in `page.html`) and its API, and the task door (`door.py`)."""

from bridge.web.server import StatusServer, route, serve, tasks_view

__all__ = ["StatusServer", "route", "serve", "tasks_view"]
