"""Pure core tests of cache eviction: a worker's cached files stay within the disk it
offered, least recently used first, never an input in use nor the last copy of a temp."""

from __future__ import annotations

from tests.state_helpers import buffer, done, fresh, join, ready, sends, spec, step, submit, temp
from vinework.core.events import ReplicaFailed, TaskReturned
from vinework.protocol import Fetch, RunTask, TransferFailure, Unlink

MB = 1 << 20


def _run_with_input(s: object, tid: int, name: str, wid: str = "w1") -> None:
    """Submit task ``tid`` reading ``name``, deliver the input, finish the task."""
    cmds = step(s, submit(spec(tid, inputs=[name], disk=1)))  # type: ignore[arg-type]
    fetches = [c.message for c in sends(cmds, Fetch)]
    for f in fetches:
        assert isinstance(f, Fetch)
        step(s, ready(wid, f.name, 2 * MB, f.transfer_id))  # type: ignore[arg-type]
    [ret] = [c for c in step(s, done(wid, tid)) if isinstance(c, TaskReturned)]  # type: ignore[arg-type]
    assert ret.result == 0


def test_least_recently_used_inputs_go_first_to_make_room() -> None:
    s = fresh()
    step(s, join("w1", disk=5), *(buffer(n, 2 * MB) for n in "abcd"))
    _run_with_input(s, 1, "a")
    _run_with_input(s, 2, "b")
    # "a" is used again: "b" is now the least recently used
    cmds = step(s, submit(spec(3, inputs=["a"], disk=1)))
    assert sends(cmds, RunTask) and not sends(cmds, Unlink)
    step(s, done("w1", 3))
    # 4 MB cached and 2 MB more do not fit in 5 MB: "b" goes
    cmds = step(s, submit(spec(4, inputs=["c"], disk=1)))
    assert [c.message.name for c in sends(cmds, Unlink)] == ["b"]
    assert s.stats.files_evicted == 1
    assert s.replicas.bytes_on("w1") == 2 * MB


def test_an_input_of_a_running_task_is_never_evicted() -> None:
    s = fresh()
    step(s, join("w1", disk=3), *(buffer(n, 2 * MB) for n in "ab"))
    cmds = step(s, submit(spec(1, inputs=["a"], disk=1)))
    [f] = [c.message for c in sends(cmds, Fetch)]
    step(s, ready("w1", "a", 2 * MB, f.transfer_id))  # type: ignore[union-attr]
    # task 1 runs with "a"; task 2 needs 2 MB more than fits: nothing may go, it waits
    cmds = step(s, submit(spec(2, inputs=["b"], disk=1)))
    assert not sends(cmds, Unlink) and not sends(cmds, RunTask)
    assert s.tasks[2].worker is None
    # once task 1 is done, "a" may go and task 2 runs
    cmds = step(s, done("w1", 1))
    assert [c.message.name for c in sends(cmds, Unlink)] == ["a"]
    assert [c.message.name for c in sends(cmds, Fetch)] == ["b"]


def test_the_last_copy_of_a_temp_stays_and_a_worker_over_budget_is_trimmed() -> None:
    s = fresh()
    step(s, join("w1", disk=5), temp("t"), buffer("a", 2 * MB))
    step(s, submit(spec(1, outputs=["t"], disk=1)))
    step(s, done("w1", 1, outputs=[("t", 3 * MB)]))
    _run_with_input(s, 2, "a")
    # 5 MB held within 5 MB: nothing over; a 1 MB output more puts it over: "a" goes,
    # never the temp (its only copy)
    step(s, temp("u"))
    step(s, submit(spec(3, outputs=["u"], disk=1)))
    cmds = step(s, done("w1", 3, outputs=[("u", 1 * MB)]))
    assert [c.message.name for c in sends(cmds, Unlink)] == ["a"]
    assert s.replicas.is_ready("t", "w1") and s.replicas.is_ready("u", "w1")


def test_files_left_by_an_earlier_manager_go_before_anything_else() -> None:
    s = fresh()
    step(s, join("w1", disk=6, cached=[("old-1", 3 * MB)]), buffer("a", 2 * MB),
         buffer("b", 2 * MB))
    _run_with_input(s, 1, "a")
    cmds = step(s, submit(spec(2, inputs=["b"], disk=1)))
    [f] = [c.message for c in sends(cmds, Fetch)]
    # 3 MB unclaimed + 2 + 2 MB is over 6 MB once "b" is there: the unclaimed file goes
    cmds = step(s, ready("w1", "b", 2 * MB, f.transfer_id))  # type: ignore[union-attr]
    assert [c.message.name for c in sends(cmds, Unlink)] == ["old-1"]
    assert not s._unclaimed


def test_a_full_disk_sends_the_task_elsewhere_without_a_storm() -> None:
    s = fresh()
    step(s, join("w1", disk=100), buffer("a", 2 * MB))
    cmds = step(s, submit(spec(1, inputs=["a"], disk=1)))
    [f] = [c.message for c in sends(cmds, Fetch)]
    step(s, join("w2", disk=100))
    cmds = step(s, ReplicaFailed(worker_id="w1", name="a", transfer_id=f.transfer_id,  # type: ignore[union-attr]
                                 reason="No space left on device",
                                 cause=TransferFailure.DISK_FULL))
    fetches = [c for c in sends(cmds, Fetch)]
    assert [c.worker_id for c in fetches] == ["w2"]  # not w1 again
    assert "no room on w1" in "\n".join(t for _, t, _ in s.file_story("a"))
    # a second task is not sent to the full worker for a while either
    cmds = step(s, submit(spec(2, inputs=["a"], disk=1)))
    assert all(c.worker_id != "w1" for c in sends(cmds, Fetch))
    assert s.tasks[2].worker == "w2"
