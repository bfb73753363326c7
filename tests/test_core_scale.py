"""Chains of 100,000 dependent tasks through the pure core: no processes, no recursion.

Task i reads temp ``t{i-1}`` and makes temp ``t{i}``. A failure at the head
ends every consumer downstream in one event; a chain that ran to the end and
then lost every copy of every temp re-runs its whole lineage as recovery runs
when a consumer of the last temp comes, and none of them is returned to the
user again. At this size the state is built with ``validate=False`` and
``validate_state()`` runs halfway and at the ends of each phase (at 100,000
tasks one call costs about as much as 15,000 events). The garbage collector is paused while a
chain is built: the core makes no cycles, and each full collection would
walk every record.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator

import pytest

from tests.core_helpers import STAGING, joined, task_done
from vinework.constants import TaskResult
from vinework.core.events import (
    Command,
    Send,
    TaskCancelled,
    TaskCollected,
    TaskReported,
    TaskReturned,
    TaskSpec,
    TaskSubmitted,
    WorkerLeft,
)
from vinework.core.records import TaskState
from vinework.core.state import ManagerState
from vinework.protocol import RunTask

N = 100_000  # the failing head: one event, the whole chain ended
# The lost lineage runs at full size too (100,000 links that run, are lost and re-run:
# about 28 s on a 2-core machine). The cancelled chain, which only shows that a cancel in
# the middle ends what follows, is smaller by default; VINEWORK_SCALE_N sets its size.
LOST = 100_000
DEEP = int(os.environ.get("VINEWORK_SCALE_N", "10000"))
T = TaskState


@pytest.fixture(autouse=True)
def no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def link(i: int) -> TaskSubmitted:
    return TaskSubmitted(stimulus_id=f"submit-{i}", spec=TaskSpec(
        task_id=i, command=f"step {i}", cores=1,
        inputs=[(f"t{i - 1}", "in")] if i else [], outputs=[(f"t{i}", "out")]))


def submit_chain(s: ManagerState, n: int) -> None:
    handle = s.handle
    for i in range(n):
        out = handle(link(i))
        assert not any(type(c) is TaskReturned for c in out), i
        if i == n // 2:
            s.validate_state()


def report(s: ManagerState, wid: str, i: int, attempt: int) -> list[Command]:
    return s.handle(TaskReported(worker_id=wid, stimulus_id=f"done-{i}-{attempt}",
                                 done=task_done(i, attempt, True, [(f"t{i}", 8)])))


def runs_in(out: list[Command]) -> list[tuple[str, int, int]]:
    return [(c.worker_id, c.message.task_id, c.message.attempt) for c in out
            if type(c) is Send and type(c.message) is RunTask]


def returned_in(out: list[Command]) -> list[TaskReturned]:
    return [c for c in out if type(c) is TaskReturned]


def stack_depth() -> int:
    f, n = sys._getframe(), 0
    while f is not None:
        f, n = f.f_back, n + 1
    return n


# ------------------------------------------------------------------ a failing head


def test_a_failing_head_ends_100k_consumers_in_one_event_in_order() -> None:
    s = ManagerState(STAGING, validate=False)
    submit_chain(s, N)
    assert s.count(T.READY) == 1 and s.count(T.WAITING) == N - 1
    assert runs_in(s.handle(joined("w1", cores=1))) == [("w1", 0, 0)]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(stack_depth() + 150)  # a recursive cascade could not go 100k deep
    try:
        out = s.handle(TaskReported(worker_id="w1", stimulus_id="head-fails",
                                    done=task_done(0, 0, ok=False)))
    finally:
        sys.setrecursionlimit(limit)
    rets = returned_in(out)
    assert [r.task_id for r in rets] == list(range(N))  # each once, in chain order
    # it exited 1 without making its output: "output missing" (TaskVine's rule)
    assert rets[0].result == int(TaskResult.OUTPUT_MISSING) and rets[0].exit_code == 1
    assert all(r.result == int(TaskResult.INPUT_MISSING) for r in rets[1:])
    assert rets[1].message == "input t0 is missing: its producer task 0 failed"
    assert rets[-1].message == f"input t{N - 2} is missing: its producer task {N - 2} failed"
    assert all(c.stimulus_id == "head-fails" for c in out)
    assert not runs_in(out)
    assert s.unreturned() == 0 and s.stats.tasks_failed == N and s.stats.tasks_done == N
    assert s.count(T.RETRIEVED) == N
    assert s.tasks[N - 1].story[-1][1:3] == ("WAITING", "RETRIEVED")
    s.validate_state()


def test_a_cancel_in_the_middle_of_a_deep_chain_ends_only_what_follows() -> None:
    n, mid = DEEP, DEEP * 5 // 8 + 7
    s = ManagerState(STAGING, validate=False)
    submit_chain(s, n)
    out = s.handle(TaskCancelled(task_id=mid, stimulus_id="cancel"))
    rets = returned_in(out)
    assert [r.task_id for r in rets] == list(range(mid, n))
    assert rets[0].result == int(TaskResult.CANCELLED)
    assert all(r.result == int(TaskResult.INPUT_MISSING) for r in rets[1:])
    assert s.unreturned() == mid and s.count(T.WAITING) == mid - 1
    s.validate_state()
    # what comes before the cancelled task still runs to the end
    s.handle(joined("w1", cores=1))
    for i in range(mid):
        out = report(s, "w1", i, 0)
        assert [r.task_id for r in returned_in(out)] == [i]
        assert runs_in(out) == ([("w1", i + 1, 0)] if i + 1 < mid else [])
    assert s.unreturned() == 0 and s.stats.tasks_done == n  # failed ones included
    s.validate_state()


# ------------------------------------------------------------------ a lost lineage


def test_a_lost_lineage_is_re_run_as_recovery_runs_never_returned_again() -> None:
    N = LOST  # noqa: N806
    s = ManagerState(STAGING, validate=False)
    s.tune.durability = "manual"  # one copy, recomputation on loss: nothing else to do
    s.handle(joined("w1", cores=1))
    submit_chain(s, N)
    collected = set(range(0, N, 997))  # some finished tasks were returned by wait() too
    for i in range(N):
        out = report(s, "w1", i, 0)
        assert [r.task_id for r in returned_in(out)] == [i]
        assert runs_in(out) == ([("w1", i + 1, 0)] if i + 1 < N else [])
        if i in collected:
            s.handle(TaskCollected(task_id=i))
        if i == N // 2:
            s.validate_state()
    assert s.unreturned() == 0 and s.stats.tasks_done == N
    s.validate_state()

    out = s.handle(WorkerLeft(worker_id="w1", reason="killed", stimulus_id="lose-all"))
    assert not returned_in(out) and not runs_in(out)
    assert s.stats.files_lost == N and s.stats.tasks_recovery == 0  # nothing needs them yet
    s.handle(joined("w2", cores=1))
    out = s.handle(TaskSubmitted(stimulus_id="need-last", spec=TaskSpec(
        task_id=N, command="consumer", cores=1, inputs=[(f"t{N - 1}", "in")], outputs=[])))
    assert s.stats.tasks_recovery == N  # the whole lineage, each task once
    assert runs_in(out) == [("w2", 0, 1)]  # the oldest lost link first, as its attempt 1
    assert not returned_in(out)
    assert s.count(T.WAITING) == N  # N - 1 recovery runs and the consumer
    s.validate_state()

    for i in range(N):
        out = report(s, "w2", i, 1)
        assert not returned_in(out), i  # a recovery run is the core's business
        assert runs_in(out) == [("w2", i + 1, 0 if i + 1 == N else 1)]
        if i == N // 2:
            s.validate_state()
    assert s.stats.tasks_recovery == N and s.unreturned() == 1
    out = s.handle(TaskReported(worker_id="w2", done=task_done(N, 0)))
    assert [r.task_id for r in returned_in(out)] == [N]
    assert s.unreturned() == 0 and s.stats.tasks_done == N + 1
    for i in (0, 1, 997, N // 2, N - 1):
        t = s.tasks[i]
        assert [(r.attempt, r.recovery) for r in t.runs] == [(0, False), (1, True)]
        end = (T.DONE if i in collected else T.RETRIEVED).value
        assert t.state.value == end, (i, t.state)
        tail = [(end, "WAITING"), ("WAITING", "READY")] if i else [(end, "READY")]
        tail += [("READY", "RUNNING"), ("RUNNING", end)]  # its input is on w2 already
        assert [line[1:3] for line in t.story[-len(tail):]] == tail, (i, t.story)
        assert t.story[-len(tail)][3].startswith("need-last: ")  # the consumer caused it
    s.validate_state()
