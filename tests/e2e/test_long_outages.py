"""The minutes-long outage tests (`tests/long`) ran beside this suite and passed."""

from __future__ import annotations

import pytest

from tests.long.test_worker_outage import OUTAGES
from tests.support import background


@pytest.mark.background
@pytest.mark.timeout(sum(OUTAGES) + 900)
def test_tests_that_wait_for_minutes_passed_in_the_background() -> None:
    code, output = background.result(timeout=sum(OUTAGES) + 840)
    assert code == 0, output[-8000:]
    assert " passed" in output, output[-8000:]
