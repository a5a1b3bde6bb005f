"""A pytest plugin for the GPU check (``-p test_timeout`` with this folder on PYTHONPATH): a test
that runs past FASTOPT_TEST_TIMEOUT seconds (default 120) fails with TimeoutError, so that one
hung test cannot take the whole check's time. (A kernel that never returns is not interrupted:
the check's stage limit ends that, with a SIGTERM that pytest takes as an interrupt, so that the
failures so far and the summary are still printed; a test stuck inside a C call cannot take it,
and its SIGKILL leaves the log as it is.)"""

from __future__ import annotations

import os
import signal

import pytest

LIMIT = int(os.environ.get("FASTOPT_TEST_TIMEOUT", "120"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    def expire(signum, frame):
        raise TimeoutError(f"{item.nodeid} ran past {LIMIT} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(LIMIT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}: the GPU check's stage limit")


signal.signal(signal.SIGTERM, _interrupted)  # (Python's default for SIGTERM ends it with no report)
