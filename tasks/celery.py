"""Lets `celery -A tasks worker` find the app without importing it for every `tasks.*` import."""

from tasks.app import app

__all__ = ["app"]
