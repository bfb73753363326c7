"""The core when a worker reports a copy lost (a task changed it in the cache) that
other tasks use: a run with it keeps its pinned copy, a task staging there is placed
again, and no new task is given that copy. Pure: events in, commands out."""

from __future__ import annotations

from tests.state_helpers import done, fresh, join, ready, spec, step, submit, temp, validate
from vinework.core import TaskState as TState
from vinework.core.events import ReplicaFailed, Send
from vinework.protocol import RunTask, TransferFailure


def test_an_input_lost_on_its_worker_while_tasks_run_with_it() -> None:
    # a task changed a shared input in the cache: its worker reports the copy lost while
    # another task still runs with it (the worker keeps it pinned for that task)
    s = fresh()
    step(s, temp("t1"))
    step(s, join("w1", cores=2, cached=[("t1", 100)]), join("w2", cores=1, cached=[("t1", 100)]))
    step(s, submit(spec(1, inputs=["t1"])), submit(spec(2, inputs=["t1"])))
    on_w1 = [tid for tid in (1, 2) if s.tasks[tid].worker == "w1"]
    assert on_w1 and all(s.tasks[tid].state is TState.RUNNING for tid in on_w1)
    step(s, ReplicaFailed(now=1.0, worker_id="w1", name="t1", transfer_id=0,
                          reason="t1: changed in the cache", cause=TransferFailure.LOCAL_IO))
    validate(s)  # (the running tasks' inputs: lost while they ran, not a broken core)
    assert s.replicas.state("t1", "w1") is None and s.replicas.state("t1", "w2") is not None
    assert all(s.tasks[tid].run.lost_inputs == {"t1"} for tid in on_w1)
    for tid in on_w1:  # they end as usual
        step(s, done("w1", tid))
    validate(s)
    # a new consumer is not given w1's copy (LOCAL_IO: not put there again): it runs on w2,
    # with w2's copy, once w2 has room
    on_w2 = [tid for tid in (1, 2) if s.tasks[tid].worker == "w2"]
    cmds = step(s, submit(spec(3, inputs=["t1"]), now=2.0))
    for tid in on_w2:
        cmds += step(s, done("w2", tid))
    assert [(c.worker_id, c.message.task_id) for c in cmds
            if isinstance(c, Send) and isinstance(c.message, RunTask)] == [("w2", 3)], cmds
    validate(s)



def test_a_task_staging_where_its_input_is_lost_is_placed_again() -> None:
    # w1 had t1 when task 1 was placed there (only t2 had to come); w1 then reports t1
    # lost: task 1 must not start on w1 without it
    s = fresh()
    step(s, temp("t1"), temp("t2"))
    step(s, join("w1", cores=1, cached=[("t1", 100)]),
         join("w2", cores=0, cached=[("t1", 100), ("t2", 100)]))
    step(s, submit(spec(1, inputs=["t1", "t2"])))
    t = s.tasks[1]
    assert t.state is TState.STAGING and t.worker == "w1" and t.staging == {"t2"}
    step(s, ReplicaFailed(now=1.0, worker_id="w1", name="t1", transfer_id=0,
                          reason="t1: changed in the cache", cause=TransferFailure.LOCAL_IO))
    validate(s)
    assert t.state is not TState.RUNNING and t.runs[0].outcome is not None  # placed again
    # the old transfer of t2 ends; the task starts only where t1 is too
    step(s, ready("w1", "t2", 100, 1, now=2.0))
    validate(s)
    assert t.state is not TState.RUNNING or s.replicas.state("t1", t.worker) is not None
