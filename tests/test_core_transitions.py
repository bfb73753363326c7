"""The tables of allowed state changes, and that the core keeps to them.

Every (from, to) pair of task states is either in ``transitions.TASK`` (and
``check_task`` lets it through) or not (and it raises ``InvalidTransition``);
likewise for replica states, both through ``check_replica`` and through the
``ReplicaTable`` operations. ``ManagerState._transition`` is tried directly on
records the core really holds in each state (no event sequence we know of
makes the core attempt an illegal move), and a table of stale or repeated
events shows that none of them makes it try one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from tests.core_helpers import Driver, joined, stimulus_of, task_done, task_spec
from vinework.core.events import (
    FetchRequested,
    FileDeclared,
    FileReleased,
    FileSpec,
    HoistRequested,
    ReplicaFailed,
    ReplicaReady,
    RetrievalDone,
    TaskCancelled,
    TaskCollected,
    TaskReported,
    TaskReturned,
    TaskSubmitted,
    Tick,
    WorkerHeard,
    WorkerLeaving,
    WorkerLeft,
)
from vinework.core.records import TaskRecord, TaskState
from vinework.core.replicas import MANAGER, ReplicaState, ReplicaTable
from vinework.core.transitions import (
    REPLICA,
    TASK,
    InvalidTransition,
    check_replica,
    check_task,
)
from vinework.protocol import TaskDone

T = TaskState

# The lifecycle as the module docstring of ``transitions`` draws it.
DOCUMENTED = {
    T.INITIAL: {T.WAITING, T.READY, T.RETRIEVED},
    T.WAITING: {T.READY, T.RETRIEVED},
    T.READY: {T.STAGING, T.RUNNING, T.WAITING, T.RETRIEVED},
    T.STAGING: {T.RUNNING, T.READY, T.WAITING, T.RETRIEVED},
    T.RUNNING: {T.WAITING_RETRIEVAL, T.RETRIEVED, T.READY, T.WAITING, T.DONE},
    T.WAITING_RETRIEVAL: {T.RETRIEVED, T.READY, T.WAITING},
    T.RETRIEVED: {T.DONE, T.READY, T.WAITING},
    T.DONE: {T.READY, T.WAITING},
}
TASK_PAIRS = list(itertools.product(TaskState, TaskState))
REPLICA_STATES: list[str | None] = [None, "pending", "ready"]
REPLICA_PAIRS = list(itertools.product(REPLICA_STATES, REPLICA_STATES))


def pair_id(p: tuple[object, object]) -> str:
    a, b = p
    return f"{getattr(a, 'value', a)}->{getattr(b, 'value', b)}"


# ------------------------------------------------------------------ the tables


def test_task_table_is_the_documented_lifecycle() -> None:
    assert {(a, b) for a, bs in DOCUMENTED.items() for b in bs} == set(TASK)
    assert not any(a is b for a, b in TASK)  # no state "moves" to itself
    assert all((a, T.INITIAL) not in TASK for a in TaskState)  # nothing goes back to INITIAL


@pytest.mark.parametrize("pair", TASK_PAIRS, ids=[pair_id(p) for p in TASK_PAIRS])
def test_check_task_allows_exactly_the_listed_pairs(pair: tuple[TaskState, TaskState]) -> None:
    old, new = pair
    if pair in TASK:
        check_task(old, new)
    else:
        with pytest.raises(InvalidTransition, match=f"{old.value} -> {new.value}"):
            check_task(old, new)


def test_replica_table_is_the_documented_one() -> None:
    assert set(REPLICA) == {(None, "pending"), (None, "ready"), ("pending", "ready"),
                            ("pending", None), ("ready", None), ("ready", "ready")}


@pytest.mark.parametrize("pair", REPLICA_PAIRS, ids=[pair_id(p) for p in REPLICA_PAIRS])
def test_check_replica_allows_exactly_the_listed_pairs(pair: tuple[str | None, str | None]
                                                       ) -> None:
    old, new = pair
    if pair in REPLICA:
        check_replica(old, new)
    else:
        with pytest.raises(InvalidTransition, match="replica transition"):
            check_replica(old, new)


def test_invalid_transition_is_an_assertion_error() -> None:
    # a bug in the core, never a user error: it must not be caught as a ValueError
    assert issubclass(InvalidTransition, AssertionError)
    assert not issubclass(InvalidTransition, ValueError)


# ------------------------------------------------------------------ ReplicaTable

def replica_table_in(start: str | None) -> ReplicaTable:
    r = ReplicaTable()
    r.set_ready("other", "w1", 7)  # an unrelated replica that must stay as it is
    if start == "pending":
        r.set_pending("f", "w1")
    elif start == "ready":
        r.set_ready("f", "w1", 10)
    return r


def snapshot(r: ReplicaTable) -> tuple[object, ...]:
    return ({k: dict(v) for k, v in r.where.items()}, dict(r.sizes),
            {k: list(v) for k, v in r.by_worker.items()}, dict(r.bytes_by_worker))


OPS: dict[str, tuple[str | None, Callable[[ReplicaTable], None]]] = {
    "set_pending": ("pending", lambda r: r.set_pending("f", "w1")),
    "set_ready": ("ready", lambda r: r.set_ready("f", "w1", 20)),
    "drop": (None, lambda r: r._set("f", "w1", None)),
}
REPLICA_OPS = list(itertools.product(REPLICA_STATES, OPS))


@pytest.mark.parametrize("start,op", REPLICA_OPS,
                         ids=[f"{s}-{o}" for s, o in REPLICA_OPS])
def test_replica_table_changes_follow_the_table(start: str | None, op: str) -> None:
    r = replica_table_in(start)
    new, fn = OPS[op]
    before = snapshot(r)
    if (start, new) in REPLICA:
        fn(r)
        st = r.state("f", "w1")
        assert (st.value if st is not None else None) == new
        assert r.state("other", "w1") is ReplicaState.READY
        assert r.bytes_on("w1") == 7 + (20 if new == "ready" else 0)
        assert ("f" in r.files_on("w1")) is (new is not None)
    else:
        with pytest.raises(InvalidTransition):
            fn(r)
        assert snapshot(r) == before  # a refused change leaves the table as it was


def test_a_ready_replica_cannot_become_pending() -> None:
    r = replica_table_in("ready")
    with pytest.raises(InvalidTransition, match="ready -> pending"):
        r.set_pending("f", "w1")
    assert r.state("f", "w1") is ReplicaState.READY
    # nor can a transfer be started into a worker that already holds the file
    with pytest.raises(InvalidTransition, match="ready -> pending"):
        r.start_transfer("f", "w1", MANAGER, 0.0)
    assert r.state("f", "w1") is ReplicaState.READY


def test_a_pending_replica_cannot_be_made_pending_again() -> None:
    r = ReplicaTable()
    r.start_transfer("f", "w2", MANAGER, 0.0)
    with pytest.raises(InvalidTransition, match="pending -> pending"):
        r.set_pending("f", "w2")


def test_remove_of_no_replica_is_a_no_op_but_dropping_it_is_refused() -> None:
    r = ReplicaTable()
    r.remove("f", "w1")  # guarded: nothing there, nothing to do
    assert r.where == {} and r.bytes_on("w1") == 0
    with pytest.raises(InvalidTransition, match="None -> None"):
        r._set("f", "w1", None)


def test_a_re_announced_replica_replaces_its_size() -> None:
    r = ReplicaTable()
    r.set_ready("f", "w1", 10)
    r.set_ready("f", "w1", 30)  # a produced file made again (ready -> ready)
    assert r.bytes_on("w1") == 30 and r.sizes[("f", "w1")] == 30
    assert r.files_on("w1") == ["f"]


# ------------------------------------------------------------------ records in every state


def reach(state: TaskState) -> tuple[Driver, int]:
    """A driver whose task 9 is in ``state``, reached by events only."""
    d = Driver()
    d.temp("a")
    d.ev(FileDeclared, spec=FileSpec(name="out", kind="file", path="/results/out"))
    if state is T.READY:
        d.submit(9)  # no worker at all
    elif state is T.WAITING:
        d.submit(1, outputs=["a"])
        d.submit(9, inputs=["a"])  # its producer has not run
    elif state is T.STAGING:
        d.join("w1", cores=0, cached=[("a", 10)])  # holds the input, runs nothing
        d.join("w2")
        d.submit(9, inputs=["a"])
    elif state is T.RUNNING:
        d.join("w1")
        d.submit(9)
    elif state is T.WAITING_RETRIEVAL:
        d.join("w1")
        d.submit(9, outputs=["out"])
        d.report(9)
    elif state is T.RETRIEVED:
        d.join("w1")
        d.submit(9)
        d.report(9)
    elif state is T.DONE:
        d.join("w1")
        d.submit(9, outputs=["a"])  # a temp producer: its record is kept for its lineage
        d.report(9)
        d.ev(TaskCollected, task_id=9)
    assert d.s.tasks[9].state is state, (state, d.s.tasks[9].state)
    return d, 9


REACHABLE = [s for s in TaskState if s is not T.INITIAL]


@pytest.mark.parametrize("state", REACHABLE, ids=[s.value for s in REACHABLE])
def test_transition_refuses_every_move_not_in_the_table(state: TaskState) -> None:
    d, tid = reach(state)
    s = d.s
    t = s.tasks[tid]
    counts = dict(s._counts)
    story = list(t.story)
    refused = [new for new in TaskState if (state, new) not in TASK]
    assert refused, state
    for new in refused:
        with pytest.raises(InvalidTransition, match=f"{state.value} -> {new.value}"):
            s._transition(t, new, "an illegal move")
        assert t.state is state
        assert s._counts == counts
        assert t.story == story
        assert s._out == []  # no log record for a move that did not happen
    s.validate_state()  # nothing was half-done


def test_transition_from_initial_is_checked_too() -> None:
    # INITIAL lasts only inside the submission's event: try a record made for the purpose
    d = Driver()
    t = TaskRecord(task_spec(5), seq=1)
    for new in TaskState:
        if (T.INITIAL, new) in TASK:
            continue
        with pytest.raises(InvalidTransition):
            d.s._transition(t, new)
        assert t.state is T.INITIAL and t.story == []


def test_every_story_move_is_in_the_table() -> None:
    # the records reached above went through many transitions: each one was a listed pair
    for state in REACHABLE:
        d, tid = reach(state)
        story = d.s.task_story(tid)
        assert story[0][1:3] == ("", "INITIAL")
        for line in story[1:]:
            assert (TaskState(line[1]), TaskState(line[2])) in TASK, line


# ------------------------------------------------------------------ stale events


STALE: dict[str, tuple[TaskState, Callable[[Driver, int], None]]] = {
    "collect a running task": (T.RUNNING, lambda d, t: d.ev(TaskCollected, task_id=t)),
    "collect a waiting task": (T.WAITING, lambda d, t: d.ev(TaskCollected, task_id=t)),
    "collect twice": (T.DONE, lambda d, t: d.ev(TaskCollected, task_id=t)),
    "cancel a finished task": (T.RETRIEVED, lambda d, t: d.ev(TaskCancelled, task_id=t)),
    "cancel a collected task": (T.DONE, lambda d, t: d.ev(TaskCancelled, task_id=t)),
    "report a waiting task": (T.WAITING, lambda d, t: d.ev(
        TaskReported, worker_id="w1", done=TaskDone(
            task_id=t, attempt=0, result=0, exit_code=0, output="", start=0, end=1,
            outputs=[]))),
    "report a staging task": (T.STAGING, lambda d, t: d.ev(
        TaskReported, worker_id="w2", done=TaskDone(
            task_id=t, attempt=0, result=0, exit_code=0, output="", start=0, end=1,
            outputs=[]))),
    "report a finished task again": (T.RETRIEVED, lambda d, t: d.ev(
        TaskReported, worker_id="w1", done=TaskDone(
            task_id=t, attempt=0, result=0, exit_code=0, output="", start=0, end=1,
            outputs=[]))),
    "report a waiting-retrieval task again": (T.WAITING_RETRIEVAL, lambda d, t: d.ev(
        TaskReported, worker_id="w1", done=TaskDone(
            task_id=t, attempt=0, result=0, exit_code=0, output="", start=0, end=1,
            outputs=[("out", 5)]))),
    "replica ready for no transfer": (T.STAGING, lambda d, t: d.ev(
        ReplicaReady, worker_id="w2", name="zzz", size=1, seconds=0.1, transfer_id=999)),
    "replica failed for no transfer": (T.STAGING, lambda d, t: d.ev(
        ReplicaFailed, worker_id="w2", name="zzz", transfer_id=999, reason="?")),
    "retrieval done twice": (T.RETRIEVED, lambda d, t: d.ev(
        RetrievalDone, retrieval_id=1, ok=True, size=5)),
}


@pytest.mark.parametrize("what", list(STALE))
def test_stale_events_never_attempt_an_illegal_move(what: str) -> None:
    state, fn = STALE[what]
    if what == "retrieval done twice":
        d, tid = reach(T.WAITING_RETRIEVAL)
        (rid,) = d.retrievals
        d.ev(RetrievalDone, retrieval_id=rid, ok=True, size=5)
        assert d.s.tasks[tid].state is T.RETRIEVED
    else:
        d, tid = reach(state)
    if what == "collect twice":
        assert d.s.tasks[tid].state is T.DONE
    story = d.s.task_story(tid)
    fn(d, tid)  # validate_state runs inside handle
    assert d.s.tasks[tid].state is state
    assert d.s.task_story(tid) == story
    assert d.returned.count(tid) <= 1


# ------------------------------------------------------------------ the stimulus trail


def test_every_command_carries_the_stimulus_of_its_event() -> None:
    """Provoke every kind of command; the driver checks each one's stimulus id."""
    d = Driver()
    d.ev(HoistRequested, modules=["json"])
    d.temp("a")
    d.join("w1", cached=[("a", 10), ("temp-stray-1", 3)])  # Hoist; Unlink of a file it should not hold
    d.join("w2")
    d.submit(1, inputs=["a"])  # runs on w1, where its input is
    d.submit(2, inputs=["a"])  # w1 is busy: fetched to w2
    (tr,) = d.fetches
    d.ev(ReplicaReady, stimulus_id="a-on-w2", worker_id="w2", name="a", size=10, seconds=0.1,
         transfer_id=tr)
    staged = [line for line in d.s.task_story(2) if line[1] == "STAGING" or line[2] == "STAGING"]
    assert [line[1:3] for line in staged] == [("READY", "STAGING"), ("STAGING", "RUNNING")]
    assert caused_by(staged[0], "TaskSubmitted#6") and caused_by(staged[1], "a-on-w2")
    d.ev(TaskCancelled, task_id=2)  # Kill
    d.report(1)  # TaskReturned
    d.ev(FetchRequested, request_id=1, name="a")  # Retrieve
    (rid,) = d.retrievals
    d.ev(RetrievalDone, retrieval_id=rid, ok=True, size=10)  # FetchDone
    d.ev(FetchRequested, request_id=2, name="nope")  # FetchDone with an error
    d.submit(3, cores=64)  # no worker could ever run it
    d.now = 6.0
    d.ev(WorkerHeard, worker_id="w1")
    d.ev(WorkerHeard, worker_id="w2")
    d.ev(Tick)  # Heartbeats; a Notice that task 3 cannot be placed
    d.ev(WorkerLeaving, worker_id="w2", reason="SIGTERM")  # w1 holds a too: Shutdown at once
    d.now = 40.0
    d.ev(Tick)  # w1 and w2 went silent: DropWorker
    d.ev(TaskCancelled, task_id=3)
    kinds = {"RunTask", "Fetch", "Unlink", "Kill", "Heartbeat", "Hoist", "Shutdown",
             "Retrieve", "TaskReturned", "FetchDone", "DropWorker", "Log", "Notice"}
    assert kinds <= d.kinds, kinds - d.kinds
    assert sorted(d.returned) == [1, 2, 3]
    assert {stimulus_of(c) for c in d.cmds} <= set(d.stimuli)
    assert len(set(d.stimuli)) == len(d.stimuli)  # one id per event: each cause is traceable


def test_an_event_without_a_stimulus_id_gets_one_named_for_it() -> None:
    d = Driver()
    d.join("w1")
    out = d.s.handle(TaskSubmitted(spec=task_spec(1)))
    assert out and {stimulus_of(c) for c in out} == {d.s.stimulus}
    assert d.s.stimulus.startswith("TaskSubmitted-")
    first = d.s.stimulus
    out = d.s.handle(TaskReported(worker_id="w1", done=task_done(1, 0)))
    assert {stimulus_of(c) for c in out} == {d.s.stimulus} != {first}
    assert d.s.stimulus.startswith("TaskReported-")
    (ret,) = [c for c in out if isinstance(c, TaskReturned)]
    assert [line[3].split(":")[0] for line in ret.story] == [first] * 3 + [d.s.stimulus]


def caused_by(line: tuple[object, ...], stim: str) -> bool:
    why = str(line[-1])
    return why == stim or why.startswith(stim + ": ")


def test_a_task_story_lists_each_transition_with_its_time_and_cause() -> None:
    d = Driver()
    d.temp("a")
    d.now = 1.0
    d.ev(TaskSubmitted, stimulus_id="submit-1", spec=task_spec(1, outputs=["a"]))
    d.now = 2.0
    d.ev(TaskSubmitted, stimulus_id="submit-2", spec=task_spec(2, inputs=["a"]))
    d.now = 3.0
    d.feed(joined("w1", now=3.0, stimulus_id="join-w1"))
    d.now = 4.0
    d.feed(joined("w2", now=4.0, stimulus_id="join-w2"))
    d.now = 5.0
    d.ev(WorkerLeft, stimulus_id="lose-w1", worker_id="w1", reason="killed")  # 1 runs elsewhere
    d.now = 6.0
    d.ev(TaskReported, stimulus_id="report-1", worker_id="w2",
         done=task_done(1, 1, outputs=[("a", 10)]))
    d.now = 7.0
    d.ev(TaskCollected, stimulus_id="collect-1", task_id=1)
    expect1 = [(1.0, "", "INITIAL", "submit-1"), (1.0, "INITIAL", "READY", "submit-1"),
               (3.0, "READY", "RUNNING", "join-w1"), (5.0, "RUNNING", "READY", "lose-w1"),
               (5.0, "READY", "RUNNING", "lose-w1"), (6.0, "RUNNING", "RETRIEVED", "report-1"),
               (7.0, "RETRIEVED", "DONE", "collect-1")]
    expect2 = [(2.0, "", "INITIAL", "submit-2"), (2.0, "INITIAL", "WAITING", "submit-2"),
               (6.0, "WAITING", "READY", "report-1"), (6.0, "READY", "RUNNING", "report-1")]
    for tid, expect in ((1, expect1), (2, expect2)):
        story = d.s.task_story(tid)
        assert [line[:3] for line in story] == [e[:3] for e in expect], (tid, story)
        for line, e in zip(story, expect, strict=True):
            assert caused_by(line, e[3]), (tid, line, e)
    assert d.returns[1].story == tuple(d.s.task_story(1)[:-1])  # as it was when returned
    assert d.s.tasks[1].runs[0].worker is None and len(d.s.tasks[1].runs) == 2
    assert d.s.task_story(999) == []


def test_a_file_story_says_what_happened_to_it_and_why() -> None:
    d = Driver(durability="manual")
    d.temp("a")
    d.feed(joined("w1", cores=1, stimulus_id="join-w1"))
    d.now = 1.0
    d.ev(TaskSubmitted, stimulus_id="submit-1", spec=task_spec(1, outputs=["a"]))
    d.now = 2.0
    d.ev(TaskReported, stimulus_id="report-1", worker_id="w1",
         done=task_done(1, 0, outputs=[("a", 10)]))
    d.now = 3.0
    d.feed(joined("w2", cores=1, now=3.0, stimulus_id="join-w2"))
    d.now = 4.0
    d.ev(WorkerLeft, stimulus_id="lose-w1", worker_id="w1", reason="killed")
    d.now = 5.0
    d.ev(TaskSubmitted, stimulus_id="submit-2", spec=task_spec(2, inputs=["a"]))
    d.now = 6.0
    d.ev(TaskReported, stimulus_id="report-1-again", worker_id="w2",
         done=task_done(1, 1, outputs=[("a", 10)]))
    d.now = 7.0
    d.ev(FileReleased, stimulus_id="release-a", name="a")
    d.report(2)  # its last consumer is done: the released temp is pruned
    story = d.s.file_story("a")
    expect = [
        (2.0, "made by task 1 on w1", "report-1"),
        (4.0, "lost", "lose-w1"),
        (5.0, "re-running task 1", "submit-2"),
        (6.0, "made by task 1 on w2", "report-1-again"),
        (6.0, "recomputed by task 1", "report-1-again"),
        (7.0, "pruned from 1 worker", d.s.stimulus),
    ]
    picked = [next((line for line in story if line[0] == t and text in line[1]), None)
              for t, text, _ in expect]
    assert None not in picked, (story, expect)
    for line, (_, _, stim) in zip(picked, expect, strict=True):
        assert line is not None and line[2] == stim, (line, stim)
    assert [line[0] for line in story] == sorted(line[0] for line in story)  # in time order
    assert [story.index(p) for p in picked if p is not None] == sorted(
        story.index(p) for p in picked if p is not None)
    assert d.returned == [1, 2]


@pytest.mark.parametrize("collected", [True, False], ids=["DONE", "RETRIEVED"])
def test_a_recovery_run_shows_as_new_transitions_of_the_finished_task(collected: bool) -> None:
    d = Driver(durability="manual")
    d.temp("a")
    d.join("w1")
    d.submit(1, outputs=["a"])
    d.report(1)
    finished = T.RETRIEVED
    if collected:
        d.ev(TaskCollected, task_id=1)
        finished = T.DONE
    before = d.s.task_story(1)
    d.join("w2")
    d.now = 10.0
    d.ev(WorkerLeft, stimulus_id="lose", worker_id="w1", reason="killed")
    d.now = 11.0
    d.ev(TaskSubmitted, stimulus_id="need", spec=task_spec(2, inputs=["a"]))
    vine = {T.RETRIEVED: 4, T.DONE: 5}[finished]
    assert d.s.task_state(1) == vine  # the user still sees the finished task
    d.now = 12.0
    d.report(1)
    story = d.s.task_story(1)
    assert story[:len(before)] == before  # the history is extended, never rewritten
    new = story[len(before):]
    assert [line[1:3] for line in new] == [
        (finished.value, "READY"), ("READY", "RUNNING"), ("RUNNING", finished.value)]
    assert [line[0] for line in new] == [11.0, 11.0, 12.0]
    assert all(caused_by(line, "need") for line in new[:2])
    assert caused_by(new[2], d.s.stimulus)
    t = d.s.tasks[1]
    assert [(r.attempt, r.recovery) for r in t.runs] == [(0, False), (1, True)]
    assert t.state is finished and d.s.task_state(1) == vine
    assert d.returned == [1]  # the recovery run is not returned a second time
    assert d.s.stats.tasks_recovery == 1
    d.report(2)
    assert d.returned == [1, 2]
