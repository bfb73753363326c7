"""Pure core tests of the manager's own deadlines: a task past its time limit plus a
grace, or missing from its worker's heartbeat, is taken back and run elsewhere."""

from __future__ import annotations

from tests.state_helpers import fresh, join, sends, spec, step, submit
from vinework.constants import TaskResult
from vinework.core.deadlines import DEADLINE_GRACE
from vinework.core.events import TaskCollected, TaskReturned, Tick, WorkerHeard
from vinework.core.records import TaskState
from vinework.protocol import Kill, RunTask


def _running(time_max: float = 0.0, retries: int = 0) -> tuple[object, str]:
    s = fresh()
    step(s, join("w1", cores=1), join("w2", cores=1))
    step(s, submit(spec(1, cores=1, time_max=time_max, retries=retries)))
    return s, s.tasks[1].worker  # type: ignore[attr-defined]


def _heard(s: object, now: float, running: tuple[int, ...] | None = None) -> None:
    for w in ("w1", "w2"):
        step(s, WorkerHeard(now=now, worker_id=w, running=running if running is not None
                            else tuple(s.workers[w].running)))  # type: ignore[attr-defined]


def test_a_task_past_its_time_limit_and_the_grace_is_taken_back() -> None:
    s, first = _running(time_max=10.0)
    other = "w2" if first == "w1" else "w1"
    _heard(s, 10.0 + DEADLINE_GRACE - 1)
    assert not sends(step(s, Tick(now=10.0 + DEADLINE_GRACE - 1)), Kill)
    _heard(s, 10.0 + DEADLINE_GRACE + 1)
    cmds = step(s, Tick(now=10.0 + DEADLINE_GRACE + 1))
    [kill] = sends(cmds, Kill)
    assert kill.worker_id == first and kill.message.task_id == 1
    [run] = sends(cmds, RunTask)
    assert run.worker_id == other  # never on the worker that did not answer
    assert s.tasks[1].state is TaskState.RUNNING  # type: ignore[attr-defined]


def test_a_task_its_worker_no_longer_lists_is_taken_back_after_the_grace() -> None:
    s, first = _running()
    _heard(s, DEADLINE_GRACE - 1, running=())  # (too early to tell: maybe crossing)
    assert s.tasks[1].worker == first  # type: ignore[attr-defined]
    cmds = step(s, WorkerHeard(now=DEADLINE_GRACE + 1, worker_id=first, running=(5,)))
    assert [k.message.task_id for k in sends(cmds, Kill)] == [1]
    assert s.tasks[1].worker != first  # type: ignore[attr-defined]


def test_a_listed_task_without_a_limit_is_left_alone() -> None:
    s, first = _running()
    cmds = step(s, WorkerHeard(now=10 * DEADLINE_GRACE, worker_id=first, running=(1,)),
                Tick(now=10 * DEADLINE_GRACE))
    assert not sends(cmds, Kill) and s.tasks[1].worker == first  # type: ignore[attr-defined]


def test_taking_back_spends_the_retry_budget() -> None:
    s, first = _running(time_max=5.0, retries=1)
    t1 = 5.0 + DEADLINE_GRACE + 1
    _heard(s, t1)
    cmds = step(s, Tick(now=t1))  # taken back once: run again (one retry allowed)
    assert sends(cmds, RunTask) and not [c for c in cmds if isinstance(c, TaskReturned)]
    _heard(s, 2 * t1)
    cmds = step(s, Tick(now=2 * t1))  # and again: the budget is spent
    [ret] = [c for c in cmds if isinstance(c, TaskReturned)]
    assert ret.result == TaskResult.MAX_WALL_TIME and "past its time limit" in ret.message


def test_the_core_clock_never_goes_back() -> None:
    """An event stamped before one already applied (the user's thread posts one, then a
    worker's message is applied first; ``wait()``'s quiet hand-over waits up to a tick)
    is applied at the later time: time measured by the core never runs backwards."""
    s, _ = _running()
    _heard(s, 30.0)
    assert s.now == 30.0  # type: ignore[attr-defined]
    step(s, TaskCollected(now=5.0, task_id=99))  # stamped 25 s earlier, applied now
    assert s.now == 30.0  # type: ignore[attr-defined]
    step(s, Tick(now=31.0))
    assert s.now == 31.0  # type: ignore[attr-defined]
