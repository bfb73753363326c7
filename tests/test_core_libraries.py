"""Pure tests of library placement in the manager's core: events in, exact commands out.

No process, no socket: a ``ManagerState`` (invariants validated after every event) is
fed workers, libraries and FunctionCalls, and the ``StartLibrary`` / ``StopLibrary`` /
``RunTask`` messages it sends are checked: instances start on demand, slots bound
the calls per instance, several instances share a worker, an idle instance is
evicted for another library (never a busy one), a library that ends is restarted
by the calls that need it and its calls are retried within their budget, and a call
naming no installed library ends "missing library" at once.
"""

from __future__ import annotations

from typing import Any

from tests.core_helpers import joined, task_done
from vinework.constants import TaskResult
from vinework.core.events import (
    Command,
    LibraryInstalled,
    LibraryLog,
    LibraryRemoved,
    LibraryReported,
    LibrarySpec,
    Send,
    TaskCollected,
    TaskReported,
    TaskReturned,
    TaskSpec,
    TaskSubmitted,
    Tick,
    WorkerLeft,
)
from vinework.core.state import ManagerState
from vinework.protocol import RunTask
from vinework.protocol.messages import LibraryEnded, LibraryReady, StartLibrary, StopLibrary


class Core:
    """A validated ManagerState and the messages it sent."""

    def __init__(self) -> None:
        self.s = ManagerState("/staging", validate=True)
        self.out: list[Command] = []

    def feed(self, ev: Any) -> list[Command]:
        out = self.s.handle(ev)
        self.out.extend(out)
        return out

    def join(self, wid: str, cores: int = 2) -> None:
        self.feed(joined(wid, cores=cores))

    def install(self, name: str, cores: int | None = None, slots: int = 0,
                inputs: list[tuple[str, str]] | None = None) -> None:
        self.feed(LibraryInstalled(spec=LibrarySpec(name=name, payload=b"fns",
                                                    exec_mode="direct", slots=slots,
                                                    cores=cores, inputs=inputs or [])))

    def call(self, tid: int, lib: str, retries: int = 0) -> list[Command]:
        return self.feed(TaskSubmitted(spec=TaskSpec(
            task_id=tid, command=f"function:{lib}.f", inputs=[], outputs=[],
            python_payload=b"args", library=lib, function="f", retries=retries)))

    def done(self, wid: str, tid: int, attempt: int = 0,
             result: int = int(TaskResult.SUCCESS)) -> list[Command]:
        d = task_done(tid, attempt, result=result,
                      exit_code=0 if result == TaskResult.SUCCESS else -1)
        return self.feed(TaskReported(worker_id=wid, done=d))


def msgs(cmds: list[Command], kind: type) -> list[Any]:
    return [c.message for c in cmds if isinstance(c, Send) and isinstance(c.message, kind)]


def where(cmds: list[Command], kind: type) -> list[tuple[str, Any]]:
    return [(c.worker_id, c.message) for c in cmds
            if isinstance(c, Send) and isinstance(c.message, kind)]


def returned(cmds: list[Command]) -> dict[int, TaskReturned]:
    return {c.task_id: c for c in cmds if isinstance(c, TaskReturned)}


def test_first_call_starts_an_instance_then_runs_on_it() -> None:
    c = Core()
    c.join("w1", cores=2)
    c.install("L")
    out = c.call(1, "L")
    starts = where(out, StartLibrary)
    runs = where(out, RunTask)
    assert len(starts) == 1 and starts[0][0] == "w1"
    start = starts[0][1]
    assert (start.cores, start.slots, start.exec_mode) == (2, 2, "direct")  # whole worker
    # StartLibrary goes before the call, and the call names the instance
    sends = [c_.message for c_ in out if isinstance(c_, Send)]
    assert sends.index(start) < sends.index(runs[0][1])
    assert runs[0][1].library_instance == start.instance_id
    assert (runs[0][1].cores, runs[0][1].function) == (0, "f")
    assert c.s.workers["w1"].free.cores == 0  # the library holds the worker


def test_slots_bound_the_calls_in_flight_and_a_finished_call_frees_one() -> None:
    c = Core()
    c.join("w1", cores=2)
    c.install("L", slots=3)
    sent = []
    for tid in range(1, 7):
        sent += msgs(c.call(tid, "L"), RunTask)
    assert [m.task_id for m in sent] == [1, 2, 3]
    assert len(msgs(c.out, StartLibrary)) == 1  # no room for a second instance
    out = c.done("w1", 2)
    assert returned(out)[2].result == TaskResult.SUCCESS
    assert [m.task_id for m in msgs(out, RunTask)] == [4]


def test_several_instances_share_a_worker_and_spread_over_workers() -> None:
    c = Core()
    c.join("w1", cores=2)
    c.join("w2", cores=2)
    c.install("L", cores=1, slots=1)
    for tid in range(1, 6):
        c.call(tid, "L")
    starts = where(c.out, StartLibrary)
    assert len(starts) == 4  # two one-core instances on each two-core worker
    assert sorted(w for w, _ in starts) == ["w1", "w1", "w2", "w2"]
    assert len(msgs(c.out, RunTask)) == 4  # the fifth waits for a slot


def test_an_idle_instance_is_evicted_for_another_library_never_a_busy_one() -> None:
    c = Core()
    c.join("w1", cores=2)
    c.install("A")
    c.install("B")
    a_start = msgs(c.call(1, "A"), StartLibrary)[0]
    out = c.call(2, "B")  # A is busy: B must wait
    assert not msgs(out, StartLibrary) and not msgs(out, StopLibrary)
    out = c.done("w1", 1)  # A idle now: B's call evicts it
    stops = msgs(out, StopLibrary)
    starts = msgs(out, StartLibrary)
    assert [s.instance_id for s in stops] == [a_start.instance_id]
    assert [s.name for s in starts] == ["B"]
    sends = [x.message for x in out if isinstance(x, Send)]
    assert sends.index(stops[0]) < sends.index(starts[0])
    assert [m.task_id for m in msgs(out, RunTask)] == [2]


def test_a_call_naming_no_installed_library_ends_missing_library_at_once() -> None:
    c = Core()
    c.join("w1")
    out = c.call(1, "nope")
    r = returned(out)[1]
    assert r.result == TaskResult.MISSING_LIBRARY and not msgs(out, RunTask)
    c.install("L")
    c.feed(LibraryRemoved(name="L"))
    assert returned(c.call(2, "L"))[2].result == TaskResult.MISSING_LIBRARY


def test_an_ended_library_is_restarted_by_its_calls_which_are_retried() -> None:
    c = Core()
    c.join("w1", cores=2)
    c.install("L", slots=2)
    c.call(1, "L")
    c.call(2, "L")
    first = msgs(c.out, StartLibrary)[0]
    c.feed(LibraryReported(worker_id="w1",
                           message=LibraryReady(instance_id=first.instance_id, pid=111)))
    assert c.s.library_instances()[0]["pid"] == 111
    # the worker reports the calls "library exit" first, then the instance's end
    c.done("w1", 1, result=int(TaskResult.LIBRARY_EXIT))
    c.done("w1", 2, result=int(TaskResult.LIBRARY_EXIT))
    out = c.feed(LibraryReported(worker_id="w1", message=LibraryEnded(
        instance_id=first.instance_id, reason="killed by signal 9", output="boom\n",
        pid=111)))
    logs = [x for x in out if isinstance(x, LibraryLog)]
    assert logs and "boom" in logs[0].text and "signal 9" in logs[0].text
    starts = msgs(out, StartLibrary)
    assert len(starts) == 1 and starts[0].instance_id != first.instance_id
    runs = msgs(out, RunTask)
    assert sorted((m.task_id, m.attempt) for m in runs) == [(1, 1), (2, 1)]
    assert all(m.library_instance == starts[0].instance_id for m in runs)
    assert c.s.workers["w1"].free.cores == 0
    assert not returned(c.out)  # nothing lost, nothing returned yet


def test_library_exit_retries_are_bounded_by_set_retries() -> None:
    c = Core()
    c.join("w1", cores=2)
    c.install("L")
    c.call(1, "L", retries=1)
    exit_ = int(TaskResult.LIBRARY_EXIT)
    for attempt in range(2):
        iid = c.s.tasks[1].run.instance
        out = c.done("w1", 1, attempt=attempt, result=exit_)
        c.feed(LibraryReported(worker_id="w1", message=LibraryEnded(
            instance_id=iid, reason="exited with status 3")))
    r = returned(c.out)[1]
    assert r.result == TaskResult.LIBRARY_EXIT and r.attempts == 2
    del out


def test_a_lost_worker_takes_its_instances_and_its_calls_go_elsewhere() -> None:
    c = Core()
    c.join("w1", cores=2)
    c.install("L")
    c.call(1, "L")
    c.feed(WorkerLeft(worker_id="w1", reason="gone"))
    assert c.s.library_instances() == []
    c.join("w2", cores=2)
    starts = where(c.out, StartLibrary)
    assert [w for w, _ in starts] == ["w1", "w2"]
    assert where(c.out, RunTask)[-1][0] == "w2"


def test_a_library_input_is_staged_before_its_instance_starts() -> None:
    from vinework.core.events import FileDeclared, FileSpec, ReplicaReady
    from vinework.protocol import Fetch
    c = Core()
    c.join("w1", cores=2)
    c.feed(FileDeclared(spec=FileSpec(name="file-model", kind="file", path="/m", size=10)))
    c.install("L", inputs=[("file-model", "model.bin")])
    out = c.call(1, "L")
    assert msgs(out, Fetch) and not msgs(out, StartLibrary) and not msgs(out, RunTask)
    fetch = msgs(out, Fetch)[0]
    out = c.feed(ReplicaReady(worker_id="w1", name="file-model", size=10, seconds=0.1,
                              transfer_id=fetch.transfer_id))
    start = msgs(out, StartLibrary)[0]
    assert start.inputs == [("file-model", "model.bin")]
    assert [m.task_id for m in msgs(out, RunTask)] == [1]


def test_an_idle_instance_makes_room_for_a_task_that_needs_the_worker() -> None:
    c = Core()
    c.join("w1", cores=2)
    c.install("L")
    c.call(1, "L")
    c.done("w1", 1)
    c.feed(TaskCollected(task_id=1))
    out = c.feed(TaskSubmitted(spec=TaskSpec(task_id=2, command="true", inputs=[],
                                             outputs=[], cores=2)))
    assert not msgs(out, StopLibrary)  # idle for less than the grace: calls come in waves
    out = c.feed(Tick(now=1.0))
    assert not msgs(out, StopLibrary)
    out = c.feed(Tick(now=2.5))
    assert msgs(out, StopLibrary)
    assert [m.task_id for m in msgs(out, RunTask)] == [2]


def test_a_library_whose_set_up_keeps_failing_is_broken_and_its_calls_end() -> None:
    c = Core()
    c.join("w1", cores=2)
    c.install("L", slots=1)
    for tid in range(1, 4):
        c.call(tid, "L", retries=10)
    exit_ = int(TaskResult.LIBRARY_EXIT)
    for n in range(3):  # three instances in a row fail their set-up
        (start,) = msgs(c.out, StartLibrary)[n:n + 1]
        (run,) = [r for r in msgs(c.out, RunTask) if r.library_instance == start.instance_id]
        c.done("w1", run.task_id, attempt=run.attempt, result=exit_)
        c.feed(LibraryReported(worker_id="w1", message=LibraryEnded(
            instance_id=start.instance_id, reason="set-up failed: KeyError: 'x'",
            setup_failed=True)))
    back = returned(c.out)
    assert sorted(back) == [1, 2, 3]
    assert all(r.result == TaskResult.LIBRARY_EXIT for r in back.values())
    assert all("KeyError" in r.message and "broken" in r.message for r in back.values())
    assert returned(c.call(4, "L"))[4].result == TaskResult.LIBRARY_EXIT  # at once
    assert len(msgs(c.out, StartLibrary)) == 3


def test_a_task_that_could_not_run_there_anyway_evicts_nothing() -> None:
    c = Core()
    c.join("w1", cores=2)
    c.install("L")
    c.call(1, "L")
    c.done("w1", 1)
    out = c.feed(TaskSubmitted(spec=TaskSpec(task_id=2, command="true", inputs=[],
                                             outputs=[], cores=2, features=("gpu",))))
    assert not msgs(out, StopLibrary) and not msgs(out, RunTask)
    assert len(c.s.library_instances()) == 1


def test_hungry_counts_function_slots_for_calls() -> None:
    c = Core()
    c.join("w1", cores=2)
    c.install("L", slots=50)
    for tid in range(1, 41):
        c.call(tid, "L")
    # 40 calls run in a 50-slot instance holding the whole worker: room for
    # factor * 50 - 40 more, though no core is free
    assert c.s.workers["w1"].free.cores == 0
    assert c.s.hungry() == int(c.s.tune.hungry_minimum_factor * 50) - 40


def test_a_library_no_worker_could_hold_is_explained_once_and_its_calls_wait() -> None:
    from vinework.core.events import Notice
    c = Core()
    c.join("w1", cores=2)
    c.install("big", cores=8)
    c.call(1, "big")
    c.call(2, "big")
    notes = [x for x in c.out if isinstance(x, Notice)]
    assert len(notes) == 1 and "library big" in notes[0].text and "cores=8" in notes[0].text
    assert not msgs(c.out, StartLibrary) and not returned(c.out)
    c.join("w2", cores=8)  # a worker big enough: the calls go there
    assert [w for w, _ in where(c.out, StartLibrary)] == ["w2"]
