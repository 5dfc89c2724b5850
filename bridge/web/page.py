"""The bridge's status page: one self-contained HTML document, no external assets.

It draws nothing itself: its script fetches `/api/tasks` every second and builds the counts and
progress bars with `textContent` and `setAttribute`, so text from task files is never parsed as
HTML. The status line says what /healthz says: healthy, or its problems (a standby's reason, the
files held back by a full disk).
"""

from __future__ import annotations

from importlib import resources

API_PATH = "/api/tasks"
REFRESH_MS = 1000

PAGE = (
    resources.files(__package__)
    .joinpath("page.html")
    .read_text(encoding="utf-8")
    .replace("__API__", API_PATH)
    .replace("__REFRESH__", str(REFRESH_MS))
)
"""The page (`page.html`, package data beside this module), its API path and refresh filled in."""
