"""Counting the task files the bridge reads, by either of its two ways of reading them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge import files


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path `files.read_regular` or `files.read_plain` reads from now on, in order."""
    seen: list[Path] = []
    real_read, real_plain = files.read_regular, files.read_plain

    def counting(path: Path, limit: int, expect: Any = None) -> bytes:
        seen.append(path)
        return real_read(path, limit, expect)

    def counting_plain(path: str, limit: int) -> Any:
        seen.append(Path(path))
        return real_plain(path, limit)

    monkeypatch.setattr(files, "read_regular", counting)
    monkeypatch.setattr(files, "read_plain", counting_plain)
    return seen
