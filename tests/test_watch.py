"""Watched outputs with a real worker: ``add_output(f, name, watch=True)`` streams what a
running task appends into the manager's file while it runs; the whole file is there
when it ends; only local files can be watched; a stale chunk is never written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import vinework as vine
from tests.state_helpers import fresh, join, spec, step, submit
from vinework.core.events import FileDeclared, FileSpec
from vinework.manager.watch import chunk_target
from vinework.protocol.messages import OutputChunk

try:
    from conftest import poll_until, wait_all, wait_running, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, wait_all, wait_running, wait_workers

pytestmark = pytest.mark.timeout(60)


def test_a_watched_output_grows_at_the_manager_while_the_task_runs(
        manager: vine.Manager, workers: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VINEWORK_WATCH_INTERVAL", "0.1")
    m = manager
    workers(m)
    wait_workers(m, 1)
    log = tmp_path / "progress.log"
    log.write_text("old content that must go\n")
    stop = tmp_path / "stop"
    # the task writes two lines, then waits until the test has seen them at the manager
    t = vine.Task(f"echo step 1 > log; echo step 2 >> log; "
                  f"while [ ! -e {stop} ]; do sleep 0.05; done; echo done >> log")
    t.add_output(m.declare_file(str(log)), "log", watch=True)
    tid = m.submit(t)
    wait_running(m, tid)
    poll_until(lambda: log.read_text() == "step 1\nstep 2\n", 20,
               "the watched lines to reach the manager while the task runs")
    assert m.wait(0) is None  # still running
    stop.touch()
    (done,) = wait_all(m, 1)
    assert done.successful()
    assert log.read_text() == "step 1\nstep 2\ndone\n"


def test_only_a_local_file_can_be_watched(manager: vine.Manager) -> None:
    with pytest.raises(ValueError, match="local file"):
        vine.Task("true").add_output(manager.declare_temp(), "x", watch=True)


def test_only_a_chunk_of_a_watched_output_of_a_task_running_there_is_written() -> None:
    s = fresh()
    step(s, join("w1"), join("w2"),
         FileDeclared(spec=FileSpec(name="out-log", kind="file", path="/home/u/log")),
         FileDeclared(spec=FileSpec(name="out-res", kind="file", path="/home/u/res")))
    step(s, submit(spec(1, outputs=["out-log", "out-res"],
                        mount_flags=(("out-out-log", vine.VINE_WATCH),))))
    wid = s.tasks[1].worker
    other = "w2" if wid == "w1" else "w1"

    def chunk(**kw: Any) -> OutputChunk:
        args: dict[str, Any] = {"task_id": 1, "attempt": 0, "name": "out-log", "offset": 0,
                                "data": b"x"}
        args.update(kw)
        return OutputChunk(**args)
    assert chunk_target(s, wid, chunk()) == "/home/u/log"
    assert chunk_target(s, other, chunk()) is None  # not where it runs
    assert chunk_target(s, wid, chunk(attempt=1)) is None  # another attempt
    assert chunk_target(s, wid, chunk(name="out-res")) is None  # not watched
    assert chunk_target(s, wid, chunk(task_id=2)) is None
    assert chunk_target(s, wid, chunk(offset=-1)) is None
