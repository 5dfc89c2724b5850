"""Celery workers' side of taskd: the app, the task types, the mail store and packing."""
