"""The opt-in progress display: drawn inside ``wait()`` on a terminal (a rich Console
forced to be one, writing to a buffer), from a real run with a real worker; a
no-op when the console is not a terminal."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

import vinework as vine

try:
    from conftest import wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import wait_workers

pytestmark = pytest.mark.timeout(90)


def run(m: vine.Manager) -> list[vine.Task]:
    for i in range(4):
        t = vine.Task(f"echo {i}")
        t.set_cores(1)
        m.submit(t)
    bad = vine.Task("true")
    bad.add_output(m.declare_temp(), "never-made")  # fails: its output is missing
    m.submit(bad)
    got = []
    while not m.empty():
        t = m.wait(5)
        if t is not None:
            got.append(t)
    return got


def test_progress_on_a_terminal_shows_the_counts(manager: vine.Manager, workers: Any) -> None:
    m = manager
    out = io.StringIO()
    assert m.enable_progress(Console(file=out, force_terminal=True, width=120))
    workers(m)
    wait_workers(m, 1)
    got = run(m)
    assert len(got) == 5
    text = out.getvalue()
    assert "done 4  failed 1  running 0  waiting 0" in text  # the last drawing
    assert "5/5" in text
    assert m._progress is not None and m._progress.counts["submitted"] == 5
    m.disable_progress()
    assert m._progress is None


def test_progress_is_off_when_not_a_terminal(manager: vine.Manager, workers: Any) -> None:
    m = manager
    out = io.StringIO()
    assert m.enable_progress(Console(file=out, force_terminal=False)) is False
    workers(m)
    wait_workers(m, 1)
    assert len(run(m)) == 5
    assert out.getvalue() == ""


def test_manager_progress_argument_off_under_pytest(tmp_path: Any) -> None:
    """``Manager(progress=True)`` draws on stdout, which is not a terminal here: off."""
    with vine.Manager(port=0, run_info_path=str(tmp_path / "ri"), progress=True) as m:
        assert m._progress is not None and m._progress.active is False
        assert m.wait(0) is None
