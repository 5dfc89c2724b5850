"""The tests that mostly wait (`tests/long`: minutes-long outages, a Sentinel failover, caps
waiting on programs that sleep, Redis behind an ACL and TLS) ran beside this suite and passed."""

from __future__ import annotations

import pytest

from tests.long.test_worker_outage import LONG_TIMEOUT_S
from tests.support import background

OTHERS_S = 300
"""Room for the background run's other tests, beside the outages' own limit."""


@pytest.mark.background
@pytest.mark.timeout(LONG_TIMEOUT_S + OTHERS_S + 120)
def test_tests_that_wait_for_minutes_passed_in_the_background() -> None:
    if background.inside():
        pytest.skip("TASKD_TEST_LONG is set: tests/long runs in this session itself")
    code, output = background.result(timeout=LONG_TIMEOUT_S + OTHERS_S + 60)
    assert code == 0, output[-8000:]
    assert " passed" in output, output[-8000:]
