"""The performance log's interval is TaskVine's ``perf-log-interval`` tunable.

No worker is needed: a submitted task changes the numbers, and the manager's hint
that no worker is connected (tuned to come after 0.6 s of its ticks) shows that
ticks passed after the change. With the default interval a row for the change is
written by then; with an interval of an hour only the first and the last rows are.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

import vinework as vine

try:
    from conftest import poll_until
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until

pytestmark = pytest.mark.timeout(60)


def _rows(m: vine.Manager) -> list[list[float]]:
    m._txn.flush()
    with open(os.path.join(m.logging_directory, "performance")) as f:
        return [[float(x) for x in ln.split()] for ln in f if ln.strip() and ln[0] != "#"]


def _run(tmp_path: Any, interval: float | None) -> list[list[float]]:
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run-info"), shutdown=True)
    try:
        if interval is not None:
            assert m.tune("perf-log-interval", interval) == 0
        m.tune("no-worker-hint-delay", 0.6)
        m.submit(vine.Task("true"))
        poll_until(lambda: m.notices, 10, "the no-worker hint")
        during = _rows(m)
        m.cancel_all()
        while m.wait(0) is not None:
            pass
    finally:
        m.close()
    return during + [[-1.0]] + _rows(m)[len(during):]


def test_rows_follow_changes_at_the_default_interval(tmp_path: Any) -> None:
    rows = _run(tmp_path, None)
    split = rows.index([-1.0])
    during = rows[:split]
    submitted = 17  # tasks_submitted's column (perflog.COLUMNS)
    assert during[0][submitted] == 0 and during[-1][submitted] == 1  # the change, in time


def test_perf_log_interval_holds_rows_back(tmp_path: Any) -> None:
    rows = _run(tmp_path, 3600.0)
    split = rows.index([-1.0])
    assert len(rows[:split]) == 1  # only the first row while running
    assert len(rows[split + 1:]) == 1  # and the last, at close
    assert rows[split + 1][17] == 1
