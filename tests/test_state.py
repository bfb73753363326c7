"""Pure tests of the manager's state machine: events in, exact commands out.

No sockets, no clock, no disk: each test builds a ``ManagerState``, feeds it
events and compares the commands it returns (``Log`` records are left out).
``validate`` checks the state's invariants after every step.
"""

from __future__ import annotations

from tests.state_helpers import (
    buffer,
    done,
    fetch,
    fresh,
    host,
    join,
    port,
    produce_temp_on,
    ready,
    returned,
    run,
    sends,
    spec,
    step,
    submit,
    temp,
    validate,
)
from vinework.constants import CacheLevel, TaskResult
from vinework.core import TaskState as TState
from vinework.core.events import (
    FetchDone,
    FetchRequested,
    FileDeclared,
    FileSpec,
    Log,
    ReplicaFailed,
    ReplicaReady,
    RetrievalDone,
    Retrieve,
    Send,
    TaskCancelled,
    TaskReturned,
    Tick,
    WorkerLeft,
)
from vinework.core.replicas import MANAGER
from vinework.protocol import Heartbeat, Kill, RunTask, TransferFailure, Unlink

STAGING = "/staging"

# ------------------------------------------------------------------ dispatch order and packing


def test_priority_then_submission_order() -> None:
    s = fresh()
    specs = [spec(1, priority=0), spec(2, priority=5), spec(3, priority=5), spec(4, priority=0),
             spec(5, priority=-1), spec(6, priority=10)]
    assert step(s, *(submit(x) for x in specs)) == []  # no worker yet
    assert s.count(TState.READY) == 6
    assert step(s, join("w1", cores=1)) == [run(s, "w1", 6)]
    order = [6]
    for _ in range(5):
        cmds = step(s, done("w1", order[-1]))
        assert cmds[0] == returned(order[-1], "w1")
        (nxt,) = sends(cmds, RunTask)
        order.append(nxt.message.task_id)  # type: ignore[attr-defined]
        assert cmds == [returned(order[-2], "w1"), run(s, "w1", order[-1])]
        if len(order) == 6:
            break
    assert order == [6, 2, 3, 1, 4, 5]
    assert step(s, done("w1", 5)) == [returned(5, "w1")]
    assert s.unreturned() == 0
    assert s.stats.tasks_done == 6 and s.stats.tasks_submitted == 6


def test_packing_two_one_core_tasks_on_a_two_core_worker() -> None:
    s = fresh()
    step(s, join("w1", cores=2, memory=2000, disk=4000))
    assert step(s, submit(spec(1))) == [run(s, "w1", 1)]
    assert s.tasks[1].run.alloc is not None
    assert (s.tasks[1].run.alloc.cores, s.tasks[1].run.alloc.memory, s.tasks[1].run.alloc.disk,
            s.tasks[1].run.alloc.gpus) == (1, 1000, 2000, 0)
    assert step(s, submit(spec(2))) == [run(s, "w1", 2)]
    assert step(s, submit(spec(3))) == []  # the worker is full
    assert step(s, submit(spec(4))) == []
    assert s.tasks[3].state is TState.READY
    assert step(s, done("w1", 2)) == [returned(2, "w1"), run(s, "w1", 3)]
    assert step(s, done("w1", 1)) == [returned(1, "w1"), run(s, "w1", 4)]
    assert step(s, done("w1", 3), done("w1", 4)) == [returned(3, "w1"), returned(4, "w1")]
    assert s.workers["w1"].free == s.workers["w1"].total


def test_task_without_resources_takes_the_whole_worker() -> None:
    s = fresh()
    step(s, join("w1", cores=4, memory=8000, disk=16000, gpus=1))
    cmds = step(s, submit(spec(1, cores=None)), submit(spec(2, cores=None)))
    assert cmds == [run(s, "w1", 1)]
    msg = cmds[0].message  # type: ignore[attr-defined]
    assert (msg.cores, msg.memory, msg.disk, msg.gpus) == (4, 8000, 16000, 1)
    assert step(s, submit(spec(3, cores=1))) == []  # not even one core is left
    assert step(s, done("w1", 1)) == [returned(1, "w1"), run(s, "w1", 2)]
    assert step(s, done("w1", 2)) == [returned(2, "w1"), run(s, "w1", 3)]


def test_task_too_big_for_any_worker_stays_ready() -> None:
    s = fresh()
    step(s, join("w1", cores=2))
    assert step(s, submit(spec(1, cores=3))) == []
    assert s.tasks[1].state is TState.READY
    assert step(s, join("w2", cores=4)) == [run(s, "w2", 1)]


# ------------------------------------------------------------------ lost workers and recovery


def test_worker_lost_mid_task_is_redispatched() -> None:
    s = fresh()
    step(s, join("w1", cores=1), submit(spec(1)), join("w2", cores=1))
    assert s.tasks[1].worker == "w1"
    assert step(s, WorkerLeft(worker_id="w1", reason="connection reset")) == [
        run(s, "w2", 1, attempt=1)]
    assert s.stats.workers_lost == 1 and s.stats.workers_connected == 1
    assert step(s, done("w1", 1, attempt=0)) == []  # a stale report from the dead worker
    assert step(s, done("w2", 1, attempt=0)) == []  # a stale attempt
    assert step(s, done("w2", 1, attempt=1)) == [returned(1, "w2", attempts=2)]


def test_worker_lost_with_no_other_worker_waits() -> None:
    s = fresh()
    step(s, join("w1", cores=1), submit(spec(1)))
    assert step(s, WorkerLeft(worker_id="w1", reason="gone")) == []
    assert s.tasks[1].state is TState.READY
    assert step(s, join("w2", cores=1)) == [run(s, "w2", 1, attempt=1)]


def test_worker_lost_while_staging_from_it() -> None:
    """The consumer was fetching the only copy from the worker that died."""
    s = fresh()
    step(s, join("w1", cores=1))
    produce_temp_on(s, "w1", 1, "t1", 100)
    step(s, submit(spec(2)))  # w1 busy
    step(s, join("w2", cores=2))
    assert step(s, submit(spec(3, inputs=["t1"]))) == [fetch("w2", 1, "t1", "w1", 100)]
    cmds = step(s, WorkerLeft(worker_id="w1", reason="killed"))
    # task 2 moves to w2; the producer re-runs there (once) to remake t1
    assert sorted(cmds, key=lambda c: c.message.task_id) == [  # type: ignore[attr-defined]
        run(s, "w2", 1, attempt=1), run(s, "w2", 2, attempt=1)]
    assert s.stats.tasks_recovery == 1
    assert s.stats.files_lost == 1
    assert s.tasks[3].state is TState.WAITING
    # task 3's staging run ended with its source: it runs as its second run (attempt 1)
    assert step(s, done("w2", 1, attempt=1, outputs=[("t1", 100)])) == [
        run(s, "w2", 3, attempt=1)]
    assert step(s, done("w2", 2, attempt=1), done("w2", 3, attempt=1)) == [
        returned(2, "w2", attempts=2), returned(3, "w2", attempts=2)]
    assert s.stats.tasks_recovery == 1
    assert s.unreturned() == 0


def test_lost_temp_needed_by_waiting_consumer_is_recomputed_once() -> None:
    s = fresh()
    step(s, join("w1", cores=1))
    produce_temp_on(s, "w1", 1, "t1", 100)  # task 1 is returned to the user here
    step(s, join("w2", cores=2))
    assert step(s, temp("t2"), submit(spec(2, outputs=["t2"]))) == [run(s, "w2", 2)]
    # the consumer needs t1 (on w1) and t2 (not made yet): it waits
    assert step(s, submit(spec(3, inputs=["t1", "t2"]))) == []
    assert s.tasks[3].state is TState.WAITING
    cmds = step(s, WorkerLeft(worker_id="w1", reason="preempted"))
    assert cmds == [run(s, "w2", 1, attempt=1)]  # the producer of t1 runs again
    assert s.stats.tasks_recovery == 1 and s.stats.files_lost == 1
    assert s.tasks[3].missing == {"t1", "t2"}
    # t2 arrives first: the consumer still waits for t1
    assert step(s, done("w2", 2, outputs=[("t2", 5)])) == [returned(2, "w2")]
    assert s.tasks[3].state is TState.WAITING and s.tasks[3].missing == {"t1"}
    # the recovery run finishes: not returned to the user a second time
    cmds = step(s, done("w2", 1, attempt=1, outputs=[("t1", 100)]))
    assert cmds == [run(s, "w2", 3)]
    assert step(s, done("w2", 3)) == [returned(3, "w2")]
    assert s.stats.tasks_recovery == 1
    assert s.stats.tasks_done == 3
    assert s.stats.files_lost == 1
    assert s.unreturned() == 0


def test_recovery_waits_for_room_and_runs_once() -> None:
    s = fresh()
    step(s, join("w1", cores=1))
    produce_temp_on(s, "w1", 1, "t1", 100)
    step(s, join("w2", cores=1), submit(spec(2)))  # w1 (first of two idle) gets task 2
    assert s.tasks[2].worker == "w1"
    step(s, submit(spec(4)))  # w2 busy
    assert s.tasks[4].worker == "w2"
    assert step(s, submit(spec(3, inputs=["t1"]))) == []  # READY, no room anywhere
    assert s.tasks[3].state is TState.READY
    cmds = step(s, WorkerLeft(worker_id="w1", reason="gone"))
    assert cmds == []  # task 2 and the recovery of task 1 wait for w2
    assert s.tasks[3].state is TState.WAITING
    assert s.tasks[1].state is TState.READY and s.tasks[1].attempt == 1
    assert s.stats.tasks_recovery == 1
    # the recovery run (submitted first) goes before task 2's second attempt
    assert step(s, done("w2", 4)) == [returned(4, "w2"), run(s, "w2", 1, attempt=1)]
    assert step(s, done("w2", 1, attempt=1, outputs=[("t1", 100)])) == [run(s, "w2", 2,
                                                                             attempt=1)]
    assert s.tasks[3].state is TState.READY
    assert step(s, done("w2", 2, attempt=1)) == [returned(2, "w2", attempts=2), run(s, "w2", 3)]
    assert step(s, done("w2", 3)) == [returned(3, "w2")]
    assert s.stats.tasks_recovery == 1 and s.unreturned() == 0


def test_lost_temp_nobody_needs_is_not_recomputed() -> None:
    s = fresh()
    step(s, join("w1", cores=1))
    produce_temp_on(s, "w1", 1, "t1", 100)
    step(s, join("w2", cores=1))
    assert step(s, WorkerLeft(worker_id="w1", reason="gone")) == []
    assert s.stats.tasks_recovery == 0
    # needed later: recovered then
    assert step(s, submit(spec(2, inputs=["t1"]))) == [run(s, "w2", 1, attempt=1)]
    assert s.stats.tasks_recovery == 1
    assert step(s, done("w2", 1, attempt=1, outputs=[("t1", 100)])) == [run(s, "w2", 2)]


def test_recovery_is_recursive() -> None:
    """t2 is made from t1; both lost: t1's producer runs, then t2's, then the consumer."""
    s = fresh()
    step(s, join("w1", cores=1))
    produce_temp_on(s, "w1", 1, "t1", 10)
    step(s, temp("t2"))
    assert step(s, submit(spec(2, inputs=["t1"], outputs=["t2"]))) == [run(s, "w1", 2)]
    assert step(s, done("w1", 2, outputs=[("t2", 20)])) == [returned(2, "w1")]
    step(s, join("w2", cores=1))
    assert step(s, WorkerLeft(worker_id="w1", reason="gone")) == []
    assert step(s, submit(spec(3, inputs=["t2"]))) == [run(s, "w2", 1, attempt=1)]
    assert s.tasks[2].state is TState.WAITING
    assert step(s, done("w2", 1, attempt=1, outputs=[("t1", 10)])) == [
        run(s, "w2", 2, attempt=1)]
    assert step(s, done("w2", 2, attempt=1, outputs=[("t2", 20)])) == [run(s, "w2", 3)]
    assert step(s, done("w2", 3)) == [returned(3, "w2")]
    assert s.stats.tasks_recovery == 2
    assert s.stats.tasks_done == 3


# ------------------------------------------------------------------ failures and retries


def test_nonzero_exit_without_retries_is_returned() -> None:
    s = fresh()
    step(s, join("w1"), submit(spec(1)))
    assert step(s, done("w1", 1, exit_code=3, output="boom")) == [
        returned(1, "w1", exit_code=3, output="boom")]
    # TaskVine's counters: done counts every returned task; a non-zero exit is "success"
    assert s.stats.tasks_failed == 0 and s.stats.tasks_done == 1


def test_nonzero_exit_is_never_retried_even_with_retries() -> None:
    # TaskVine's set_retries covers worker loss and resource exhaustion, not exit codes
    s = fresh()
    step(s, join("w1"), submit(spec(1, retries=2)))
    assert step(s, done("w1", 1, attempt=0, exit_code=7, output="e")) == [
        returned(1, "w1", exit_code=7, output="e", attempts=1)]


def test_worker_loss_is_retried_up_to_retries_then_max_retries() -> None:
    s = fresh()
    step(s, join("w1"), submit(spec(1, retries=1)))
    step(s, WorkerLeft(worker_id="w1", reason="gone"), join("w2"))
    assert s.tasks[1].state.value == "RUNNING" and s.tasks[1].worker == "w2"
    out = step(s, WorkerLeft(worker_id="w2", reason="gone"))
    back = [c for c in out if isinstance(c, TaskReturned)]
    assert len(back) == 1 and back[0].result == TaskResult.MAX_RETRIES
    assert back[0].exit_code == -1 and back[0].attempts == 2
    assert "set_retries(1)" in back[0].message


def test_worker_loss_without_retries_set_is_retried_without_limit() -> None:
    s = fresh()
    step(s, submit(spec(1)))
    for i in range(5):
        step(s, join(f"w{i}"))
        assert s.tasks[1].worker == f"w{i}"
        step(s, WorkerLeft(worker_id=f"w{i}", reason="gone"))
    assert s.tasks[1].state.value in ("READY", "WAITING")


def test_output_missing() -> None:
    s = fresh()
    step(s, join("w1"), temp("t1"), submit(spec(1, outputs=["t1"])))
    step(s, submit(spec(2, inputs=["t1"])))
    cmds = step(s, done("w1", 1, result=int(TaskResult.OUTPUT_MISSING), exit_code=0,
                        message="out-t1 was not created"))
    msg2 = "input t1 is missing: its producer task 1 failed"
    assert cmds == [  # the producer is settled first; the failure then cascades
        returned(1, "w1", result=int(TaskResult.OUTPUT_MISSING), message="out-t1 was not created"),
        returned(2, "", result=int(TaskResult.INPUT_MISSING), exit_code=-1, start=0.0,
                 end=0.0, message=msg2),
    ]


def test_python_task_failure_fails_consumers_of_its_temp_output() -> None:
    s = fresh()
    step(s, join("w1", cores=1), temp("pyres-1"))
    p = spec(1, python_payload=b"fn", python_output="pyres-1", temp_output=True)
    assert step(s, submit(p)) == [run(s, "w1", 1)]
    step(s, submit(spec(2, inputs=["pyres-1"])), submit(spec(3, inputs=["pyres-1"])))
    tb = "Traceback (most recent call last):\nZeroDivisionError: division by zero"
    cmds = step(s, done("w1", 1, exit_code=1, python_error=tb))
    msg = "input pyres-1 is missing: its producer task 1 failed"
    consumer_returns = [c for c in cmds if isinstance(c, TaskReturned) and c.task_id != 1]
    assert sorted(consumer_returns, key=lambda c: c.task_id) == [
        returned(2, "", result=int(TaskResult.INPUT_MISSING), exit_code=-1, start=0.0,
                 end=0.0, message=msg),
        returned(3, "", result=int(TaskResult.INPUT_MISSING), exit_code=-1, start=0.0,
                 end=0.0, message=msg),
    ]
    # the producer is settled first; the failure then cascades to its consumers
    assert cmds[0] == returned(1, "w1", exit_code=1, python_error=tb)
    assert len(cmds) == 3
    # a consumer submitted later fails at once
    assert step(s, submit(spec(4, inputs=["pyres-1"]))) == [
        returned(4, "", result=int(TaskResult.INPUT_MISSING), exit_code=-1, start=0.0,
                 end=0.0, message=msg)]
    assert s.unreturned() == 0


def test_python_task_result_inline() -> None:
    s = fresh()
    step(s, join("w1", cores=1))
    assert step(s, submit(spec(1, python_payload=b"fn"))) == [
        run(s, "w1", 1, python_output="pyout-1-0")]
    assert step(s, done("w1", 1, python_result=b"\x80\x05K*.")) == [
        returned(1, "w1", python_result=b"\x80\x05K*.")]


def test_python_task_large_result_is_retrieved() -> None:
    s = fresh()
    step(s, join("w1", cores=1))
    step(s, submit(spec(1, python_payload=b"fn")))
    cmds = step(s, done("w1", 1, outputs=[("pyout-1-0", 10_000_000)]))
    assert cmds == [Retrieve(1, "w1", host("w1"), port("w1"), "pyout-1-0",
                             f"{STAGING}/pyout-1-0", 10_000_000)]
    assert s.tasks[1].state is TState.WAITING_RETRIEVAL
    cmds = step(s, RetrievalDone(retrieval_id=1, ok=True, size=10_000_000))
    assert cmds == [Send("w1", Unlink(name="pyout-1-0")),
                    returned(1, "w1", python_result_path=f"{STAGING}/pyout-1-0")]
    assert s.stats.bytes_received == 10_000_000


# ------------------------------------------------------------------ cancel


def test_cancel_running_task_kills_it_and_frees_the_worker() -> None:
    s = fresh()
    step(s, join("w1", cores=1), submit(spec(1)), submit(spec(2)))
    assert s.tasks[1].state is TState.RUNNING and s.tasks[2].state is TState.READY
    cmds = step(s, TaskCancelled(task_id=1))
    assert cmds == [
        Send("w1", Kill(task_id=1)),
        returned(1, "", result=int(TaskResult.CANCELLED), exit_code=-1, start=0.0, end=0.0,
                 message="cancelled by the user"),
        run(s, "w1", 2),
    ]
    assert step(s, done("w1", 1)) == []  # the killed attempt's late report is ignored
    assert step(s, TaskCancelled(task_id=1)) == []  # cancelling twice does nothing
    assert s.stats.tasks_failed == 1


def test_cancel_ready_and_staging_tasks() -> None:
    s = fresh()
    step(s, buffer("buf", 10), join("w1", cores=1))
    assert step(s, submit(spec(1, inputs=["buf"]))) == [fetch("w1", 1, "buf", MANAGER, 10)]
    step(s, submit(spec(2)))
    cancelled = dict(result=int(TaskResult.CANCELLED), exit_code=-1, start=0.0, end=0.0,
                     message="cancelled by the user")
    assert step(s, TaskCancelled(task_id=2)) == [returned(2, "", **cancelled)]  # type: ignore[arg-type]
    # staging: no Kill (nothing runs yet); the fetch that arrives later starts nothing
    assert step(s, TaskCancelled(task_id=1)) == [returned(1, "", **cancelled)]  # type: ignore[arg-type]
    assert step(s, ready("w1", "buf", 10, 1)) == []
    assert s.workers["w1"].free == s.workers["w1"].total


# ------------------------------------------------------------------ outputs and fetch_file


def test_local_file_output_is_retrieved_before_return() -> None:
    s = fresh()
    step(s, FileDeclared(spec=FileSpec(name="out1", kind="file", path="/home/u/out.txt")))
    step(s, join("w1"), submit(spec(1, outputs=["out1"])))
    cmds = step(s, done("w1", 1, outputs=[("out1", 42)]))
    assert cmds == [Retrieve(1, "w1", host("w1"), port("w1"), "out1", "/home/u/out.txt", 42)]
    assert s.tasks[1].state is TState.WAITING_RETRIEVAL
    assert step(s, RetrievalDone(retrieval_id=1, ok=True, size=42, seconds=0.1)) == [
        returned(1, "w1")]
    assert s.stats.bytes_received == 42 and s.stats.transfers_received == 1
    assert s.files["out1"].at_manager


def test_task_level_output_is_unlinked_after_retrieval() -> None:
    s = fresh()
    step(s, FileDeclared(spec=FileSpec(name="out1", kind="file", path="/tmp/o",
                                       cache_level=int(CacheLevel.TASK))))
    step(s, join("w1"), submit(spec(1, outputs=["out1"])))
    step(s, done("w1", 1, outputs=[("out1", 5)]))
    assert step(s, RetrievalDone(retrieval_id=1, ok=True, size=5)) == [
        Send("w1", Unlink(name="out1")), returned(1, "w1")]


def test_failed_retrieval_is_an_output_transfer_error() -> None:
    s = fresh()
    step(s, FileDeclared(spec=FileSpec(name="out1", kind="file", path="/home/u/out.txt")))
    step(s, join("w1"), submit(spec(1, outputs=["out1"])))
    step(s, done("w1", 1, outputs=[("out1", 42)]))
    assert step(s, RetrievalDone(retrieval_id=1, ok=False, error="refused")) == [
        returned(1, "w1", result=int(TaskResult.OUTPUT_TRANSFER_ERROR),
                 message="could not retrieve output out1: refused")]
    assert s.stats.bytes_received == 0


def test_fetch_file_of_a_temp() -> None:
    s = fresh()
    step(s, join("w1", cores=1))
    produce_temp_on(s, "w1", 1, "t1", 100)
    cmds = step(s, FetchRequested(request_id=7, name="t1"))
    assert cmds == [Retrieve(1, "w1", host("w1"), port("w1"), "t1", f"{STAGING}/t1", 100)]
    # a second request while the first is in flight joins it
    assert step(s, FetchRequested(request_id=8, name="t1")) == []
    assert step(s, RetrievalDone(retrieval_id=1, ok=True, size=100)) == [
        FetchDone(7, f"{STAGING}/t1"), FetchDone(8, f"{STAGING}/t1")]
    assert s.stats.bytes_received == 100
    # now the manager has it: answered at once
    assert step(s, FetchRequested(request_id=9, name="t1")) == [FetchDone(9, f"{STAGING}/t1")]


def test_fetch_file_of_an_unknown_file() -> None:
    s = fresh()
    (cmd,) = step(s, FetchRequested(request_id=1, name="nope"))
    assert isinstance(cmd, FetchDone) and cmd.request_id == 1 and cmd.path is None
    assert "nope" in cmd.error


def test_fetch_file_of_a_temp_not_made_yet_waits_for_its_producer() -> None:
    s = fresh()
    step(s, join("w1", cores=1), temp("t1"), submit(spec(1, outputs=["t1"])))
    assert step(s, FetchRequested(request_id=3, name="t1")) == []
    cmds = step(s, done("w1", 1, outputs=[("t1", 9)]))
    assert cmds == [Retrieve(1, "w1", host("w1"), port("w1"), "t1", f"{STAGING}/t1", 9),
                    returned(1, "w1")]
    assert step(s, RetrievalDone(retrieval_id=1, ok=True, size=9)) == [
        FetchDone(3, f"{STAGING}/t1")]


def test_temp_at_the_manager_is_served_by_it_without_peers() -> None:
    s = fresh()
    s.tune.peer_transfers = False
    step(s, join("w1", cores=1))
    produce_temp_on(s, "w1", 1, "t1", 100)
    step(s, FetchRequested(request_id=1, name="t1"), RetrievalDone(retrieval_id=1, ok=True,
                                                                   size=100))
    step(s, submit(spec(2)))  # w1 busy
    step(s, join("w2", cores=1))
    assert step(s, submit(spec(3, inputs=["t1"]))) == [fetch("w2", 1, "t1", MANAGER, 100)]
    assert step(s, ready("w2", "t1", 100, 1)) == [run(s, "w2", 3)]
    assert s.stats.bytes_sent == 100 and s.stats.bytes_peer == 0
    assert s.stats.bytes_received == 100


def test_stats_count_where_the_bytes_went() -> None:
    s = fresh()
    step(s, buffer("buf", 10), join("w1", cores=1))
    step(s, FileDeclared(spec=FileSpec(name="out", kind="file", path="/o")))
    step(s, temp("t1"), submit(spec(1, inputs=["buf"], outputs=["t1"])))  # buf: manager -> w1
    step(s, ready("w1", "buf", 10, 1))
    step(s, done("w1", 1, outputs=[("t1", 100)]))
    step(s, submit(spec(2)), join("w2", cores=1))  # w1 busy
    step(s, submit(spec(3, inputs=["t1"], outputs=["out"])))  # t1: w1 -> w2
    step(s, ready("w2", "t1", 100, 2))
    step(s, done("w2", 3, outputs=[("out", 1000)]))  # out: w2 -> manager
    step(s, RetrievalDone(retrieval_id=1, ok=True, size=1000))
    st = s.stats
    assert (st.bytes_sent, st.transfers_sent) == (10, 1)
    assert (st.bytes_peer, st.transfers_peer) == (100, 1)
    assert (st.bytes_received, st.transfers_received) == (1000, 1)
    assert s.workers["w1"].bytes_out == 100 and s.workers["w2"].bytes_in == 100
    assert s.workers["w2"].bytes_out == 1000


def test_temp_goes_through_the_manager_when_peer_transfers_are_off() -> None:
    s = fresh()
    s.tune.peer_transfers = False
    step(s, join("w1", cores=1))
    produce_temp_on(s, "w1", 1, "t1", 100)
    step(s, submit(spec(2)))  # w1 busy
    step(s, join("w2", cores=1))
    # the temp is only on w1: it must first come to the manager
    cmds = step(s, submit(spec(3, inputs=["t1"])))
    assert cmds == [Retrieve(1, "w1", host("w1"), port("w1"), "t1", f"{STAGING}/t1", 100)]
    assert s.tasks[3].state is TState.STAGING
    cmds = step(s, RetrievalDone(retrieval_id=1, ok=True, size=100))
    assert cmds == [fetch("w2", 1, "t1", MANAGER, 100)]
    assert step(s, ready("w2", "t1", 100, 1)) == [run(s, "w2", 3)]
    assert (s.stats.bytes_received, s.stats.bytes_sent, s.stats.bytes_peer) == (100, 100, 0)


def test_a_loss_is_logged_before_the_recovery_it_causes() -> None:
    """The consumer ran on the worker that held its only input: loss first, then recovery."""
    s = fresh()
    step(s, join("w1", cores=2))
    produce_temp_on(s, "w1", 1, "t1", 100)
    assert step(s, submit(spec(2, inputs=["t1"]))) == [run(s, "w1", 2)]
    step(s, join("w2", cores=2))
    out = s.handle(WorkerLeft(worker_id="w1", reason="killed"))
    validate(s)
    logs = [(c.kind, c.fields) for c in out if isinstance(c, Log)]
    lost = logs.index(("FILE", ("t1", "LOST", "last copy was on w1")))
    recovery = next(i for i, (k, f) in enumerate(logs) if k == "TASK" and f[1] == "RECOVERY")
    assert logs[recovery][1][0] == 1
    assert lost < recovery
    assert [c for c in out if not isinstance(c, Log)] == [run(s, "w2", 1, attempt=1)]
    assert s.tasks[2].state is TState.WAITING and s.tasks[2].attempt == 1
    assert s.stats.files_lost == 1 and s.stats.tasks_recovery == 1
    assert step(s, done("w2", 1, attempt=1, outputs=[("t1", 100)])) == [
        run(s, "w2", 2, attempt=1)]
    assert step(s, done("w2", 2, attempt=1)) == [returned(2, "w2", attempts=2)]


def test_missing_manager_copy_fails_the_consumer() -> None:
    s = fresh()
    step(s, buffer("buf", 10), join("w1", cores=1))
    assert step(s, submit(spec(1, inputs=["buf"]))) == [fetch("w1", 1, "buf", MANAGER, 10)]
    cmds = step(s, ReplicaFailed(worker_id="w1", name="buf", transfer_id=1,
                                 reason="no such file /staging/buf",
                                 cause=TransferFailure.SOURCE_MISSING))
    assert cmds == [returned(
        1, "", result=int(TaskResult.INPUT_MISSING), exit_code=-1, start=0.0, end=0.0,
        message="input buf could not be read at the manager: no such file /staging/buf")]
    assert not s.files["buf"].at_manager


def test_cached_files_known_are_recorded_unknown_kept_until_declared() -> None:
    # a worker that outlived an earlier manager keeps its worker/forever cache entries:
    # unknown names are not unlinked, and count as copies once a file of that name exists
    s = fresh()
    step(s, temp("t1"))
    cmds = step(s, join("w1", cached=[("t1", 7), ("kept", 3)]))
    assert sends(cmds, Unlink) == []
    assert s.replicas.ready_workers("t1") == ["w1"]
    assert s.files["t1"].size == 7
    assert "kept" not in s.files
    step(s, buffer("kept", 3))
    assert s.replicas.ready_workers("kept") == ["w1"]


def test_cached_temp_of_another_manager_is_unlinked() -> None:
    s = fresh()
    assert sends(step(s, join("w1", cached=[("temp-abc-1", 3)])), Unlink) == [
        Send("w1", Unlink(name="temp-abc-1"))]


def test_stale_and_unknown_events_are_harmless() -> None:
    s = fresh()
    step(s, join("w1", cores=1), submit(spec(1)))
    assert step(
        s,
        WorkerLeft(worker_id="nobody", reason="?"),
        ReplicaReady(worker_id="nobody", name="x", size=1, seconds=0.0, transfer_id=0),
        ReplicaFailed(worker_id="nobody", name="x", transfer_id=99, reason="?",
                      cause=TransferFailure.SOURCE_MISSING),
        RetrievalDone(retrieval_id=42, ok=True, size=5),
        TaskCancelled(task_id=99),
        done("w1", 99),
        done("w1", 1, attempt=5),
        Tick(now=10.0),  # (within the keepalive timeout: w1 is not silent yet)
    ) == [Send("w1", Heartbeat(seq=1))]  # the core's own keepalive, nothing else
    assert s.tasks[1].state is TState.RUNNING
    assert step(s, WorkerLeft(worker_id="w1", reason="gone")) == []
    assert step(s, WorkerLeft(worker_id="w1", reason="again")) == []
    assert s.stats.workers_lost == 1 and s.stats.workers_connected == 0


def test_a_forsaken_task_runs_elsewhere_then_everywhere_again() -> None:
    s = fresh()
    step(s, join("w1"), join("w2"), submit(spec(1)))
    first = s.tasks[1].worker
    other = "w2" if first == "w1" else "w1"
    step(s, done(first, 1, result=int(TaskResult.FORSAKEN), exit_code=-1))
    assert s.tasks[1].worker == other  # not where it was forsaken
    step(s, done(other, 1, attempt=1, result=int(TaskResult.FORSAKEN), exit_code=-1))
    assert s.tasks[1].worker in ("w1", "w2")  # every worker forsook it: all are tried again
    assert s.tasks[1].state is TState.RUNNING and s.tasks[1].attempt == 2


def test_set_max_forsaken_returns_the_task_as_forsaken() -> None:
    s = fresh()
    step(s, join("w1"), join("w2"), submit(spec(1, max_forsaken=1)))
    step(s, done(s.tasks[1].worker, 1, result=int(TaskResult.FORSAKEN), exit_code=-1))
    out = step(s, done(s.tasks[1].worker, 1, attempt=1, result=int(TaskResult.FORSAKEN),
                       exit_code=-1, message="could not set up the sandbox"))
    (back,) = [c for c in out if isinstance(c, TaskReturned)]
    assert back.result == TaskResult.FORSAKEN and back.exit_code == -1 and back.attempts == 2
    assert "forsaken 2 times" in back.message


def test_resource_exhaustion_charges_retries_and_keeps_its_result() -> None:
    s = fresh()
    step(s, join("w1"), submit(spec(1, retries=1)))
    step(s, done("w1", 1, result=int(TaskResult.RESOURCE_EXHAUSTION), exit_code=-1))
    assert s.tasks[1].state is TState.RUNNING and s.tasks[1].attempt == 1
    out = step(s, done("w1", 1, attempt=1, result=int(TaskResult.RESOURCE_EXHAUSTION),
                       exit_code=-1))
    (back,) = [c for c in out if isinstance(c, TaskReturned)]
    assert back.result == TaskResult.RESOURCE_EXHAUSTION and back.attempts == 2

