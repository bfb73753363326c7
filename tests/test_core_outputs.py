"""Pure core tests of the mount flags: failure_only / success_only outputs, strict inputs,
symlinked inputs (what the core retrieves, sends and ends; no process, no socket)."""

from __future__ import annotations

from tests.state_helpers import done, fresh, host, join, port, sends, spec, step, submit
from vinework.constants import (
    VINE_FAILURE_ONLY,
    VINE_FIXED_LOCATION,
    VINE_MOUNT_SYMLINK,
    VINE_SUCCESS_ONLY,
    TaskResult,
)
from vinework.core.events import FileDeclared, FileSpec, RetrievalDone, Retrieve, TaskReturned
from vinework.core.mountflags import (
    optional_outputs,
    strict_inputs,
    symlink_inputs,
    unwanted_outputs,
)
from vinework.protocol import RunTask, Unlink


def _outfile(name: str) -> FileDeclared:
    return FileDeclared(spec=FileSpec(name=name, kind="file", path=f"/home/u/{name}"))


def _flagged(tid: int, outs: dict[str, int]) -> object:
    return spec(tid, outputs=list(outs),
                mount_flags=tuple((f"out-{n}", fl) for n, fl in outs.items() if fl))


def test_the_flag_helpers() -> None:
    s = spec(1, inputs=["a", "b"], outputs=["x", "y", "z"],
             mount_flags=(("in-a", VINE_FIXED_LOCATION | VINE_MOUNT_SYMLINK),
                          ("out-x", VINE_FAILURE_ONLY), ("out-y", VINE_SUCCESS_ONLY)))
    assert optional_outputs(s) == {"x": VINE_FAILURE_ONLY, "y": VINE_SUCCESS_ONLY}
    assert strict_inputs(s) == ("a",) and symlink_inputs(s) == ["in-a"]
    assert unwanted_outputs(optional_outputs(s), succeeded=True) == {"x"}
    assert unwanted_outputs(optional_outputs(s), succeeded=False) == {"y"}


def _run_to_report(exit_code: int, made: list[tuple[str, int]]) -> tuple[object, list[object]]:
    s = fresh()
    step(s, join("w1"), _outfile("log"), _outfile("res"), _outfile("plain"))
    ts = _flagged(1, {"log": VINE_FAILURE_ONLY, "res": VINE_SUCCESS_ONLY, "plain": 0})
    cmds = step(s, submit(ts))  # type: ignore[arg-type]
    [send] = sends(cmds, RunTask)
    assert isinstance(send.message, RunTask)
    assert sorted(send.message.optional_outputs) == ["log", "res"]
    return s, step(s, done("w1", 1, exit_code=exit_code, outputs=made))


def test_success_brings_back_success_only_outputs_and_drops_failure_only_ones() -> None:
    s, cmds = _run_to_report(0, [("log", 5), ("res", 6), ("plain", 7)])
    got = sorted(c.name for c in cmds if isinstance(c, Retrieve))
    assert got == ["plain", "res"]
    assert [c.message.name for c in sends(cmds, Unlink)] == ["log"]


def test_a_non_zero_exit_brings_back_failure_only_outputs() -> None:
    s, cmds = _run_to_report(3, [("log", 5), ("res", 6), ("plain", 7)])
    assert sorted(c.name for c in cmds if isinstance(c, Retrieve)) == ["log", "plain"]
    assert [c.message.name for c in sends(cmds, Unlink)] == ["res"]


def test_optional_outputs_are_never_missing() -> None:
    s, cmds = _run_to_report(0, [("plain", 7)])  # neither optional output was made
    [r] = [c for c in cmds if isinstance(c, Retrieve)]
    assert r.name == "plain"
    out = step(s, RetrievalDone(retrieval_id=r.retrieval_id, ok=True, size=7))
    [ret] = [c for c in out if isinstance(c, TaskReturned)]
    assert ret.result == TaskResult.SUCCESS and ret.exit_code == 0
    # a required output missing is still "output missing"
    s2 = fresh()
    step(s2, join("w1"), _outfile("log"), _outfile("plain"))
    step(s2, submit(_flagged(1, {"log": VINE_FAILURE_ONLY, "plain": 0})))  # type: ignore[arg-type]
    cmds2 = step(s2, done("w1", 1, outputs=[("log", 1)]))
    assert not [c for c in cmds2 if isinstance(c, TaskReturned)]  # its log comes back first
    [r2] = [c for c in cmds2 if isinstance(c, Retrieve)]
    assert r2.name == "log"
    [ret2] = [c for c in step(s2, RetrievalDone(retrieval_id=r2.retrieval_id, ok=True, size=1))
              if isinstance(c, TaskReturned)]
    assert ret2.result == TaskResult.OUTPUT_MISSING


def test_a_failed_task_brings_back_its_failure_only_outputs_then_ends_failed() -> None:
    s = fresh()
    step(s, join("w1"), _outfile("log"), _outfile("res"), _outfile("plain"))
    step(s, submit(_flagged(1, {"log": VINE_FAILURE_ONLY, "res": VINE_SUCCESS_ONLY,
                                "plain": 0})))  # type: ignore[arg-type]
    # killed at its time limit: the worker kept only the failure_only output
    cmds = step(s, done("w1", 1, result=TaskResult.MAX_WALL_TIME, exit_code=9,
                        outputs=[("log", 5)]))
    assert not [c for c in cmds if isinstance(c, TaskReturned)]
    [r] = [c for c in cmds if isinstance(c, Retrieve)]
    assert r.name == "log" and not sends(cmds, Unlink)
    [ret] = [c for c in step(s, RetrievalDone(retrieval_id=r.retrieval_id, ok=True, size=5))
             if isinstance(c, TaskReturned)]
    assert ret.result == TaskResult.MAX_WALL_TIME and ret.exit_code == 9


def test_the_worker_is_told_which_outputs_are_failure_only() -> None:
    s = fresh()
    step(s, join("w1"), _outfile("log"), _outfile("plain"))
    [send] = sends(step(s, submit(_flagged(1, {"log": VINE_FAILURE_ONLY, "plain": 0}))),  # type: ignore[arg-type]
                   RunTask)
    assert isinstance(send.message, RunTask) and send.message.failure_outputs == ["log"]


def test_a_retried_failure_drops_its_failure_only_outputs() -> None:
    s = fresh()
    step(s, join("w1"), join("w2"), _outfile("log"))
    step(s, submit(_flagged(1, {"log": VINE_FAILURE_ONLY})))  # type: ignore[arg-type]
    wid = s.tasks[1].worker
    # a worker fault (disk full) is retried elsewhere: the output is not wanted
    cmds = step(s, done(wid, 1, result=TaskResult.DISK_EXHAUSTION, outputs=[("log", 5)]))
    assert not [c for c in cmds if isinstance(c, (TaskReturned, Retrieve))]
    assert [c.message.name for c in sends(cmds, Unlink)] == ["log"]


def test_a_consumer_of_an_output_not_brought_back_ends_input_missing() -> None:
    s, _ = _run_to_report(0, [("log", 5), ("res", 6), ("plain", 7)])
    cmds = step(s, submit(spec(2, inputs=["log"])))
    [ret] = [c for c in cmds if isinstance(c, TaskReturned)]
    assert ret.task_id == 2 and ret.result == TaskResult.INPUT_MISSING


def _strict_state() -> object:
    s = fresh()
    step(s, join("w1"), join("w2", cached=[("data", 10)]),
         FileDeclared(spec=FileSpec(name="data", kind="buffer", path="/staging/data", size=10)))
    return s


def test_a_strict_input_places_the_task_where_the_file_is() -> None:
    s = _strict_state()
    flags = (("in-data", VINE_FIXED_LOCATION),)
    for tid in (1, 2):  # w2 has 2 cores
        [send] = sends(step(s, submit(spec(tid, inputs=["data"], mount_flags=flags))),  # type: ignore[attr-defined]
                       RunTask)
        assert send.worker_id == "w2"
    # w2 is full: the third waits for it rather than running on w1 (which has room)
    assert step(s, submit(spec(3, inputs=["data"], mount_flags=flags))) == []  # type: ignore[attr-defined]
    assert s.tasks[3].state.value == "READY"  # type: ignore[attr-defined]


def test_a_strict_input_no_worker_holds_ends_the_task() -> None:
    s = fresh()
    step(s, join("w1"), FileDeclared(spec=FileSpec(name="data", kind="buffer",
                                                   path="/staging/data", size=10)))
    cmds = step(s, submit(spec(1, inputs=["data"], mount_flags=(("in-data", VINE_FIXED_LOCATION),))))
    [ret] = [c for c in cmds if isinstance(c, TaskReturned)]
    assert ret.result == TaskResult.FIXED_LOCATION_MISSING and ret.exit_code == -1
    assert not sends(cmds, RunTask)
    # without the flag the same task is sent the file
    cmds = step(s, submit(spec(2, inputs=["data"])))
    assert not [c for c in cmds if isinstance(c, TaskReturned)] and cmds


def test_symlink_inputs_travel_in_run_task() -> None:
    s = _strict_state()
    cmds = step(s, submit(spec(1, inputs=["data"],  # type: ignore[attr-defined]
                               mount_flags=(("in-data", VINE_MOUNT_SYMLINK),))))
    runs = sends(cmds, RunTask)
    if runs:  # placed on w2 (has it): runs at once
        assert runs[0].message.symlink_inputs == ["in-data"]  # type: ignore[attr-defined]
    assert host("w2") and port("w2")
