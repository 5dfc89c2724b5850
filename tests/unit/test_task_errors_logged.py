"""No `except` in the task modules swallows an error unseen: it logs, re-raises, or says why not.

A handler that only passes, continues, breaks or returns must carry a comment on that line
saying why the exception is the normal path (a best-effort unlink finding nothing, say).
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from tasks.base import _later_try_waits

TASKS = Path(__file__).resolve().parents[2] / "tasks"
MODULES = ["base", "errors", "notify", "pack", "packms", "results", "retrms", "smtp"]
QUIET = (ast.Pass, ast.Continue, ast.Break, ast.Return)


def _unexplained(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ExceptHandler) and all(isinstance(s, QUIET) for s in node.body):
            line = node.body[-1].lineno
            if "#" not in lines[line - 1]:
                found.append(f"{path.name}:{line}: {lines[line - 1].strip()}")
    return found


@pytest.mark.parametrize("module", MODULES)
def test_every_quiet_except_says_why(module: str) -> None:
    assert _unexplained(TASKS / f"{module}.py") == []


def test_a_damaged_job_meta_is_logged_not_silently_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tasks.base"):
        assert _later_try_waits(b"{not json", 0) is False
    assert "job meta is not a JSON object" in caplog.text
