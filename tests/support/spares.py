"""Spares kept in the test's process, as the bridge's process keeps them (`files.keep_spares`)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from bridge import files


@pytest.fixture
def spares(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Spares kept, as in the bridge's process (`files.keep_spares`), for this test only."""
    before = signal.getsignal(signal.SIGIO)
    monkeypatch.setattr(files, "_spares", False)  # as it was, afterwards
    files.keep_spares()
    yield
    signal.signal(signal.SIGIO, before)
