"""``wait_for_idle_cpu``: the benchmarks' wait for a quiet machine returns a measured
idle fraction, at once when the bar is met and after ``timeout`` when it cannot be."""

from __future__ import annotations

import time

import pytest

from vinework.testing.netns import wait_for_idle_cpu

pytestmark = pytest.mark.timeout(30)


def test_met_bar_returns_after_one_window() -> None:
    t0 = time.monotonic()
    frac = wait_for_idle_cpu(idle=0.0, window=0.05, timeout=5)
    assert 0.0 <= frac <= 1.0
    assert time.monotonic() - t0 < 2.0  # one window, not the timeout


def test_unreachable_bar_gives_up_at_the_timeout() -> None:
    t0 = time.monotonic()
    frac = wait_for_idle_cpu(idle=1.01, window=0.05, timeout=0.3)
    took = time.monotonic() - t0
    assert 0.0 <= frac <= 1.0
    assert 0.3 <= took < 3.0
