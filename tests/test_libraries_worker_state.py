"""Pure tests of the worker core's library part (``worker/libcore.py``): events in, exact
instructions and messages out, invariants validated after every step.

A StartLibrary commits the library's resources and pins its inputs; a call takes no
resources of its own; a StopLibrary gives the resources back at once (the next
StartLibrary may need them); a start that does not fit, or whose input is missing, is
answered LibraryEnded; a call for an instance that is not here is forsaken; a call
whose instance ends under it is reported "library exit"; a lost manager stops every
instance.
"""

from __future__ import annotations

from tests.test_worker_helpers import connected, one, sent
from vinework.constants import TaskResult
from vinework.protocol import RunTask, TaskDone
from vinework.protocol.messages import LibraryEnded, LibraryReady, StartLibrary
from vinework.worker import events as ev
from vinework.worker.outcome import Resources


def start_msg(iid: int = 1, cores: int = 4, inputs: list[tuple[str, str]] | None = None
              ) -> StartLibrary:
    return StartLibrary(instance_id=iid, name="lib", payload=b"fns", exec_mode="direct",
                        slots=4, cores=cores, memory=1000, disk=100, gpus=0,
                        inputs=inputs or [], env=[])


def call(task_id: int, iid: int = 1) -> RunTask:
    return RunTask(task_id=task_id, attempt=0, command="function:lib.f", inputs=[],
                   outputs=[], env=[], cores=0, memory=0, disk=0, gpus=0, time_max=0.0,
                   python_payload=b"args", library_instance=iid, function="f")


def test_a_library_holds_its_resources_and_a_call_takes_none() -> None:
    ws = connected()
    out = ws.handle(ev.LibraryStartRequested(now=1.0, library=start_msg(cores=4)))
    ws.validate_state()
    assert one(out, ev.StartLibraryProcess).library.instance_id == 1
    assert ws.ledger.committed == Resources(4, 1000, 100, 0)
    out = ws.handle(ev.RunRequested(now=1.0, task=call(7), wall=10.0))
    ws.validate_state()
    start = one(out, ev.StartTask)
    assert ws.ledger.committed == Resources(4, 1000, 100, 0)  # (unchanged by the call)
    out = ws.handle(ev.LibraryProcessReady(instance_id=1, pid=4242))
    assert sent(out, LibraryReady) == [LibraryReady(instance_id=1, pid=4242)]
    out = ws.handle(ev.TaskExited(run_id=start.run_id, wall=10.5, python_kind="inline",
                                  python_data=b"\x80\x05K\x02."))
    ws.validate_state()
    (done,) = sent(out, TaskDone)
    assert (done.result, done.python_result) == (TaskResult.SUCCESS, b"\x80\x05K\x02.")
    assert not [i for i in out if isinstance(i, ev.CollectOutputs)]  # nothing to collect


def test_stop_gives_the_resources_back_at_once_and_the_end_is_reported() -> None:
    ws = connected()
    ws.handle(ev.LibraryStartRequested(now=1.0, library=start_msg(iid=1, cores=4)))
    out = ws.handle(ev.LibraryStopRequested(now=2.0, instance_id=1, reason="evicted"))
    ws.validate_state()
    assert one(out, ev.StopLibraryProcess).instance_id == 1
    assert ws.ledger.committed == Resources()
    out = ws.handle(ev.LibraryStartRequested(now=2.0, library=start_msg(iid=2, cores=4)))
    ws.validate_state()
    assert one(out, ev.StartLibraryProcess).library.instance_id == 2  # fits: 1 gave way
    out = ws.handle(ev.LibraryProcessEnded(instance_id=1, reason="stopped", output="log"))
    ws.validate_state()
    (end,) = sent(out, LibraryEnded)
    assert (end.instance_id, end.output, end.setup_failed) == (1, "log", False)


def test_a_start_that_does_not_fit_or_misses_an_input_is_answered_ended() -> None:
    ws = connected()
    out = ws.handle(ev.LibraryStartRequested(now=1.0, library=start_msg(cores=64)))
    (end,) = sent(out, LibraryEnded)
    assert "cannot start" in end.reason and not end.setup_failed
    out = ws.handle(ev.LibraryStartRequested(
        now=1.0, library=start_msg(iid=2, inputs=[("file-x", "model.bin")])))
    (end,) = sent(out, LibraryEnded)
    assert end.instance_id == 2 and "not in the cache" in end.reason
    ws.validate_state()
    assert ws.ledger.committed == Resources()


def test_calls_for_a_missing_instance_are_forsaken_and_a_dead_one_is_library_exit() -> None:
    ws = connected()
    out = ws.handle(ev.RunRequested(now=1.0, task=call(1, iid=9), wall=10.0))
    (done,) = sent(out, TaskDone)
    assert done.result == TaskResult.FORSAKEN and "not running" in done.message
    ws.handle(ev.LibraryStartRequested(now=1.0, library=start_msg()))
    run_id = one(ws.handle(ev.RunRequested(now=1.0, task=call(2), wall=10.0)),
                 ev.StartTask).run_id
    out = ws.handle(ev.TaskExited(run_id=run_id, wall=11.0,
                                  library_exit="library lib ended: killed by signal 9"))
    ws.validate_state()
    (done,) = sent(out, TaskDone)
    assert done.result == TaskResult.LIBRARY_EXIT and "signal 9" in done.message


def test_a_lost_manager_stops_every_instance() -> None:
    ws = connected()
    ws.handle(ev.LibraryStartRequested(now=1.0, library=start_msg(iid=1, cores=2)))
    ws.handle(ev.LibraryStartRequested(now=1.0, library=start_msg(iid=2, cores=2)))
    out = ws.handle(ev.ConnectionLost(now=2.0, reason="gone"))
    ws.validate_state()
    assert sorted(i.instance_id for i in out if isinstance(i, ev.StopLibraryProcess)) == [1, 2]
    assert ws.ledger.committed == Resources() and not ws.libraries
