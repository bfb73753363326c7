"""Randomized event sequences against the manager's pure core.

``CoreMachine`` plays the shell, the user and a cluster of fake workers at once:
workers join (with fresh ids, as the shell gives them), go silent, leave or are
drained; the user declares temps, buffers and output files, submits tasks over
them, cancels, collects, fetches, releases and undeclares; the fake workers
answer what the core asked for (the RunTask, Fetch and Retrieve commands it
sent), sometimes with failures, sometimes late (stale answers after the task
moved or the worker left). The core runs ``validate_state`` after every event
(``validate=True``), the driver checks that every command carries its event's
stimulus id and that no task is returned twice, and the invariants below hold
between any two steps. At the end of every run, the cluster stops misbehaving:
a fresh worker joins, every request is answered with success, and every task
the user submitted must come back (nothing is stuck).

Runs quickly by default; for a long bug hunt::

    VINEWORK_CORE_FUZZ_EXAMPLES=3000 VINEWORK_CORE_FUZZ_STEPS=80 \\
        python -m pytest -q -p no:cacheprovider tests/test_core_fuzz.py
"""

from __future__ import annotations

import os
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.core_helpers import Driver, joined, messages, task_done, task_spec
from vinework.constants import TaskResult
from vinework.core.events import (
    Command,
    DropWorker,
    FetchDone,
    FetchRequested,
    FileDeclared,
    FileReleased,
    FileSpec,
    FileUndeclared,
    HoistRequested,
    ReplicaFailed,
    ReplicaReady,
    RetrievalDone,
    Send,
    TaskCancelled,
    TaskCollected,
    TaskReported,
    TaskSubmitted,
    Tick,
    Tuned,
    WorkerHeard,
    WorkerLeaving,
    WorkerLeft,
)
from vinework.core.records import TaskState
from vinework.protocol import RunTask, Shutdown, TransferFailure, Unlink

EXAMPLES = int(os.environ.get("VINEWORK_CORE_FUZZ_EXAMPLES", "40"))
STEPS = int(os.environ.get("VINEWORK_CORE_FUZZ_STEPS", "40"))
MAX_WORKERS = 4
SETTLE_ROUNDS = 400

T = TaskState
OUTCOMES = ["success", "success", "success", "fail", "missing", "forsaken", "disk"]
CAUSES = [TransferFailure.NONE,  # what a worker answers to a Fetch it cancelled for an Unlink
          TransferFailure.SOURCE_MISSING, TransferFailure.SOURCE_UNREACHABLE,
          TransferFailure.SOURCE_BROKEN, TransferFailure.DISK_FULL, TransferFailure.LOCAL_IO,
          TransferFailure.UNKNOWN]


class CoreMachine(RuleBasedStateMachine):
    """The core under a random cluster (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.d = Driver(validate=True)
        self.d.s.tune.keepalive_timeout = 30.0
        self.next_worker = 1
        self.next_task = 1
        self.next_file = 1
        self.next_request = 1
        self.size: dict[str, int] = {}
        self.inputs: list[str] = []  # files a new task may read (live, with a source)
        self.unmade: list[str] = []  # declared temps no task produces yet
        self.out_files: list[str] = []  # manager-side output files no task produces yet
        self.handles: list[str] = []  # files the user still holds (may release/undeclare)
        self.buffers: dict[str, FileSpec] = {}  # every buffer declared (by name)
        self.submitted: list[int] = []
        self.collected: set[int] = set()
        self.answered_fetch: set[int] = set()
        self.answered_retrieval: set[int] = set()
        self.requests: set[int] = set()
        self.fetch_answers: dict[int, int] = {}
        self.gone: list[str] = []  # workers that left (their stale messages may still come)
        self.told_to_stop: set[str] = set()

    # ------------------------------------------------------------------ plumbing
    @property
    def s(self) -> Any:
        return self.d.s

    def alive(self) -> list[str]:
        return list(self.s.workers)

    def ev(self, event_type: type, **kw: Any) -> list[Command]:
        before = set(self.s.workers)
        out = self.d.ev(event_type, **kw)
        self.after(out, before)
        return out

    def after(self, out: list[Command], before: set[str]) -> None:
        dropped = {c.worker_id for c in out if isinstance(c, DropWorker)}
        for c in out:
            if isinstance(c, Send):
                # a command goes to a worker that is connected (or was, until this event)
                assert c.worker_id in self.s.workers or c.worker_id in before, c
                if isinstance(c.message, Shutdown):
                    self.told_to_stop.add(c.worker_id)
            elif isinstance(c, FetchDone):
                self.fetch_answers[c.request_id] = self.fetch_answers.get(c.request_id, 0) + 1
                assert c.request_id in self.requests, c
                assert self.fetch_answers[c.request_id] == 1, f"fetch {c.request_id} answered twice"
        for wid in before - set(self.s.workers):
            self.gone.append(wid)
        for wid in dropped:  # the shell closes the connection, and sees it closed
            assert wid not in self.s.workers
            self.d.ev(WorkerLeft, worker_id=wid, reason="dropped")

    def heard_all(self, silent: str | None = None) -> None:
        for wid in self.alive():
            if wid != silent:
                self.ev(WorkerHeard, worker_id=wid)

    # ------------------------------------------------------------------ workers
    @precondition(lambda self: len(self.s.workers) < MAX_WORKERS)
    @rule(cores=st.sampled_from([0, 1, 1, 2, 3]), data=st.data())
    def join(self, cores: int, data: st.DataObject) -> None:
        wid = f"w{self.next_worker}"
        self.next_worker += 1
        cached: list[tuple[str, int]] = []
        known = [n for n in self.size if n in self.s.files]
        if known and data.draw(st.booleans(), label="comes with a cache"):
            names = data.draw(st.lists(st.sampled_from(known), max_size=2, unique=True))
            cached = [(n, self.size[n]) for n in names]
        before = set(self.s.workers)
        self.d.n += 1
        out = self.d.feed(joined(wid, cores=cores, memory=4000, disk=4000, cached=cached,
                                 now=self.d.now, stimulus_id=f"WorkerJoined#{self.d.n}"))
        self.after(out, before)

    @precondition(lambda self: bool(self.s.workers))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        wid = data.draw(st.sampled_from(self.alive()))
        self.ev(WorkerLeft, worker_id=wid, reason="killed")

    @precondition(lambda self: bool(self.s.workers))
    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        wid = data.draw(st.sampled_from(self.alive()))
        self.ev(WorkerLeaving, worker_id=wid, reason="SIGTERM")

    @precondition(lambda self: any(w in self.s.workers for w in self.told_to_stop))
    @rule(data=st.data())
    def obey_shutdown(self, data: st.DataObject) -> None:
        wid = data.draw(st.sampled_from(sorted(w for w in self.told_to_stop
                                               if w in self.s.workers)))
        self.ev(WorkerLeft, worker_id=wid, reason="shut down")

    @precondition(lambda self: bool(self.s.workers))
    @rule(data=st.data(), disk=st.integers(-1, 5000))
    def heartbeat(self, data: st.DataObject, disk: int) -> None:
        wid = data.draw(st.sampled_from(self.alive()))
        self.ev(WorkerHeard, worker_id=wid, disk_used=disk)

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0, 6.0, 11.0, 31.0]), data=st.data())
    def tick(self, dt: float, data: st.DataObject) -> None:
        silent = None
        if self.s.workers and data.draw(st.booleans(), label="one worker goes silent"):
            silent = data.draw(st.sampled_from(self.alive()))
        self.d.now += dt
        self.heard_all(silent)
        self.ev(Tick)

    @rule(name=st.sampled_from(["temp-replica-count", "durability", "peer-transfers",
                                "transfer-source-max"]), data=st.data())
    def tune(self, name: str, data: st.DataObject) -> None:
        value = data.draw({
            "temp-replica-count": st.integers(1, 3),
            "durability": st.sampled_from(["auto", "manual"]),
            "peer-transfers": st.booleans(),
            "transfer-source-max": st.integers(1, 3),
        }[name])
        self.ev(Tuned, name=name, value=value)

    @rule()
    def hoist(self) -> None:
        self.ev(HoistRequested, modules=["json"])

    # ------------------------------------------------------------------ files
    @rule(kind=st.sampled_from(["temp", "temp", "buffer", "file"]),
          checkpoint=st.booleans())
    def declare(self, kind: str, checkpoint: bool) -> None:
        name = f"{kind[0]}{self.next_file}"
        self.next_file += 1
        self.size[name] = 10 * self.next_file
        if kind == "temp":
            spec = FileSpec(name=name, kind="temp", cache_level=2,
                            checkpoint=checkpoint and self.next_file % 3 == 0)
            self.unmade.append(name)
        elif kind == "buffer":  # (cache=False ones are dropped from a worker after a task)
            spec = FileSpec(name=name, kind="buffer", path=f"/staging/{name}",
                            size=self.size[name], peer_transfer=not checkpoint,
                            cache_level=self.next_file % 2)
            self.inputs.append(name)
            self.buffers[name] = spec
        else:  # an output file, brought back to the manager
            spec = FileSpec(name=name, kind="file", path=f"/results/{name}")
            self.out_files.append(name)
        self.handles.append(name)
        self.ev(FileDeclared, spec=spec)

    @precondition(lambda self: bool(self.handles))
    @rule(data=st.data(), undeclare=st.booleans())
    def release(self, data: st.DataObject, undeclare: bool) -> None:
        name = data.draw(st.sampled_from(self.handles))
        self.handles.remove(name)
        for pool in (self.inputs, self.unmade, self.out_files):
            if name in pool:
                pool.remove(name)
        if undeclare:
            self.ev(FileUndeclared, name=name)
        else:
            self.ev(FileReleased, name=name)

    @precondition(lambda self: any(n not in self.handles for n in self.buffers))
    @rule(data=st.data())
    def declare_same_bytes_again(self, data: st.DataObject) -> None:
        """A buffer of bytes declared before, and undeclared since (two DaskVine runs of
        equal values do this): the same name, live again while old transfers may linger."""
        name = data.draw(st.sampled_from(sorted(n for n in self.buffers
                                                if n not in self.handles)))
        self.handles.append(name)
        self.inputs.append(name)
        self.ev(FileDeclared, spec=self.buffers[name])

    @precondition(lambda self: bool(self.size))
    @rule(data=st.data())
    def fetch_file(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.size)))
        req = self.next_request
        self.next_request += 1
        self.requests.add(req)
        self.ev(FetchRequested, request_id=req, name=name)

    # ------------------------------------------------------------------ tasks
    @rule(data=st.data(), cores=st.sampled_from([1, 1, 2, None]),
          retries=st.sampled_from([0, 0, 1]), priority=st.sampled_from([0.0, 0.0, 1.0]))
    def submit(self, data: st.DataObject, cores: int | None, retries: int,
               priority: float) -> None:
        tid = self.next_task
        self.next_task += 1
        ins = data.draw(st.lists(st.sampled_from(self.inputs), max_size=3, unique=True)
                        if self.inputs else st.just([]), label="inputs")
        outs = data.draw(st.lists(st.sampled_from(self.unmade), max_size=2, unique=True)
                         if self.unmade else st.just([]), label="outputs")
        if self.out_files and data.draw(st.booleans(), label="writes an output file"):
            outs.append(self.out_files.pop(0))
        for n in outs:
            if n in self.unmade:
                self.unmade.remove(n)
                self.inputs.append(n)  # it has a producer now: later tasks may read it
        self.submitted.append(tid)
        self.ev(TaskSubmitted, spec=task_spec(tid, ins, outs, cores=cores, retries=retries,
                                              priority=priority))

    @precondition(lambda self: bool(self.d.running()))
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def report(self, data: st.DataObject, outcome: str) -> None:
        tid = data.draw(st.sampled_from(self.d.running()))
        t = self.s.tasks[tid]
        outs = [(n, self.size.get(n, 7)) for n, _ in t.spec.outputs]
        if outcome == "success":
            done = task_done(tid, t.attempt, True, outs)
        elif outcome == "fail":
            done = task_done(tid, t.attempt, False)
        elif outcome == "missing":
            done = task_done(tid, t.attempt, True, outs[:-1],
                             result=int(TaskResult.OUTPUT_MISSING), exit_code=0)
        elif outcome == "forsaken":
            done = task_done(tid, t.attempt, True, result=int(TaskResult.FORSAKEN),
                             exit_code=0)
        else:
            done = task_done(tid, t.attempt, True, result=int(TaskResult.DISK_EXHAUSTION),
                             exit_code=0)
        self.ev(TaskReported, worker_id=t.worker, done=done)

    @precondition(lambda self: bool(self.d.runs))
    @rule(data=st.data(), ok=st.booleans())
    def stale_report(self, data: st.DataObject, ok: bool) -> None:
        """A report of any run ever started (its worker may have left, or it moved on)."""
        (tid, attempt), wid = data.draw(st.sampled_from(sorted(self.d.runs.items())))
        t = self.s.tasks.get(tid)
        outs = [(n, self.size.get(n, 7)) for n, _ in t.spec.outputs] if t and ok else []
        self.ev(TaskReported, worker_id=wid, done=task_done(tid, attempt, ok, outs))

    @precondition(lambda self: bool(self.submitted))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.ev(TaskCancelled, task_id=data.draw(st.sampled_from(self.submitted)))

    @precondition(lambda self: any(t not in self.collected for t in self.d.returned))
    @rule(data=st.data())
    def collect(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from([t for t in self.d.returned if t not in self.collected]))
        self.collected.add(tid)
        self.ev(TaskCollected, task_id=tid)

    # ------------------------------------------------------------------ transfers
    def open_fetches(self) -> list[int]:
        return sorted(t for t in self.d.fetches if t not in self.answered_fetch)

    @precondition(lambda self: bool(self.open_fetches()))
    @rule(data=st.data(), ok=st.sampled_from([True, True, False]),
          cause=st.sampled_from(CAUSES))
    def answer_fetch(self, data: st.DataObject, ok: bool, cause: TransferFailure) -> None:
        tr = data.draw(st.sampled_from(self.open_fetches()))
        self.answered_fetch.add(tr)
        dest, msg = self.d.fetches[tr]
        if ok:
            self.ev(ReplicaReady, worker_id=dest, name=msg.name,
                    size=self.size.get(msg.name, 7), seconds=0.01, transfer_id=tr)
        else:
            self.ev(ReplicaFailed, worker_id=dest, name=msg.name, transfer_id=tr,
                    reason="fuzz", cause=cause)

    def open_retrievals(self) -> list[int]:
        return sorted(r for r in self.d.retrievals if r not in self.answered_retrieval)

    @precondition(lambda self: bool(self.open_retrievals()))
    @rule(data=st.data(), ok=st.sampled_from([True, True, False]),
          cause=st.sampled_from(CAUSES))
    def answer_retrieval(self, data: st.DataObject, ok: bool, cause: TransferFailure) -> None:
        rid = data.draw(st.sampled_from(self.open_retrievals()))
        self.answered_retrieval.add(rid)
        r = self.d.retrievals[rid]
        if ok and r.worker_id in self.s.workers:
            self.ev(RetrievalDone, retrieval_id=rid, ok=True, size=self.size.get(r.name, 7),
                    seconds=0.01)
        else:
            self.ev(RetrievalDone, retrieval_id=rid, ok=False, error="fuzz", cause=cause)

    # ------------------------------------------------------------------ invariants
    @invariant()
    def every_task_comes_back_once(self) -> None:
        returned = self.d.returned
        assert len(set(returned)) == len(returned)
        assert set(returned) <= set(self.submitted)
        assert self.s.unreturned() == len(self.submitted) - len(returned)
        for tid in returned:  # what was returned is never running for the user again
            t = self.s.tasks.get(tid)
            assert t is None or t.state in (T.RETRIEVED, T.DONE) or t.run.recovery, (tid, t)
        for tid in self.collected:
            t = self.s.tasks.get(tid)
            assert t is None or t.state is T.DONE or (t.run.recovery
                                                      and t.run.return_to is T.DONE), tid

    @invariant()
    def stats_agree(self) -> None:
        st_ = self.s.stats
        assert st_.tasks_submitted == len(self.submitted)
        assert st_.tasks_done == len(self.d.returned)
        assert st_.workers_connected == len(self.s.workers)

    # ------------------------------------------------------------------ the end
    def teardown(self) -> None:
        self.settle()

    def settle(self) -> None:
        """Stop the chaos: one more worker, every request answered with success, until
        nothing moves; then every submitted task must have come back."""
        before = set(self.s.workers)
        self.d.n += 1
        self.after(self.d.feed(joined(f"w{self.next_worker}", cores=4, memory=4000,
                                      disk=4000, now=self.d.now,
                                      stimulus_id=f"WorkerJoined#{self.d.n}")), before)
        self.next_worker += 1
        self.d.s.tune.temp_replica_count = 1
        for _ in range(SETTLE_ROUNDS):
            moved = False
            for tr in self.open_fetches():
                self.answered_fetch.add(tr)
                dest, msg = self.d.fetches[tr]
                if dest in self.s.workers:
                    moved = True
                    self.ev(ReplicaReady, worker_id=dest, name=msg.name,
                            size=self.size.get(msg.name, 7), seconds=0.01, transfer_id=tr)
            for rid in self.open_retrievals():
                self.answered_retrieval.add(rid)
                moved = True
                r = self.d.retrievals[rid]
                if r.worker_id in self.s.workers:
                    self.ev(RetrievalDone, retrieval_id=rid, ok=True,
                            size=self.size.get(r.name, 7), seconds=0.01)
                else:
                    self.ev(RetrievalDone, retrieval_id=rid, ok=False, error="gone",
                            cause=TransferFailure.SOURCE_UNREACHABLE)
            for tid in self.d.running():
                t = self.s.tasks[tid]
                if t.state is T.RUNNING:
                    moved = True
                    outs = [(n, self.size.get(n, 7)) for n, _ in t.spec.outputs]
                    self.ev(TaskReported, worker_id=t.worker,
                            done=task_done(tid, t.attempt, True, outs))
            for wid in sorted(self.told_to_stop & set(self.s.workers)):
                moved = True
                self.ev(WorkerLeft, worker_id=wid, reason="shut down")
            self.d.now += 1.0
            self.heard_all()
            self.ev(Tick)
            if not moved and not self.open_fetches() and not self.open_retrievals():
                break
        stuck = {tid: (t.state.value, sorted(t.missing), t.message)
                 for tid, t in self.s.tasks.items()
                 if tid in set(self.submitted) - set(self.d.returned)}
        assert self.s.unreturned() == 0, f"tasks never came back: {stuck}"
        unanswered = self.requests - set(self.fetch_answers)
        assert not unanswered, f"fetch_file requests never answered: {sorted(unanswered)}"


CoreMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large])
TestCoreMachine = CoreMachine.TestCase


# ------------------------------------------------------------------ what the machine found


@pytest.mark.parametrize("kind", ["buffer", "temp"])
def test_undeclaring_an_input_of_a_running_task_keeps_the_state_valid(kind: str) -> None:
    d = Driver()
    d.join("w1")
    if kind == "buffer":
        d.ev(FileDeclared, spec=FileSpec(name="x", kind="buffer", path="/staging/x", size=10))
        d.submit(2, inputs=["x"])
        ((tr, _),) = d.fetches.items()
        d.ev(ReplicaReady, worker_id="w1", name="x", size=10, seconds=0.1, transfer_id=tr)
    else:
        d.temp("x")
        d.submit(1, outputs=["x"])
        d.submit(2, inputs=["x"])
        d.report(1, size=10)
    assert d.s.tasks[2].state is T.RUNNING
    out = d.ev(FileUndeclared, name="x")  # validate_state fails inside handle
    assert messages(out, Unlink) == [("w1", Unlink(name="x"))]  # the worker keeps it pinned
    assert d.s.tasks[2].state is T.RUNNING  # the task already has its input
    d.report(2)
    assert d.returns[2].result == int(TaskResult.SUCCESS)


def test_the_same_bytes_declared_again_while_a_task_runs_with_them() -> None:
    """Two DaskVine runs of equal values: one undeclares a buffer a task of the other is
    running with, then declares it again; the running task keeps its linked copy."""
    d = Driver()
    d.join("w1")
    spec = FileSpec(name="x", kind="buffer", path="/staging/x", size=10)
    d.ev(FileDeclared, spec=spec)
    d.submit(1, inputs=["x"])
    ((tr, _),) = d.fetches.items()
    d.ev(ReplicaReady, worker_id="w1", name="x", size=10, seconds=0.1, transfer_id=tr)
    d.ev(FileUndeclared, name="x")
    d.ev(FileDeclared, spec=spec)  # validate_state failed here: a running task's input gone
    d.submit(2, inputs=["x"])
    d.report(1)
    assert d.returns[1].result == int(TaskResult.SUCCESS)
    assert len(d.fetches) == 2  # the new task gets its own copy (the old one was unlinked)


def test_a_recovery_whose_input_was_undeclared_ends_the_consumers_not_the_core() -> None:
    """Task 1 made temp ``t`` from buffer ``x`` and was collected; ``x`` is undeclared
    (DaskVine's pruning does it), then ``t``'s only worker is lost. Remaking ``t`` cannot
    start: the core said DONE -> DONE and stopped (the manager died); now the consumer
    ends with a message saying why."""
    d = Driver()
    d.join("w1")
    d.ev(FileDeclared, spec=FileSpec(name="x", kind="buffer", path="/staging/x", size=3))
    d.temp("t")
    d.submit(1, inputs=["x"], outputs=["t"])
    ((tr, _),) = d.fetches.items()
    d.ev(ReplicaReady, worker_id="w1", name="x", size=3, seconds=0.1, transfer_id=tr)
    d.report(1, size=10)
    d.ev(TaskCollected, task_id=1)
    d.ev(FileUndeclared, name="x")
    d.ev(WorkerLeft, worker_id="w1", reason="killed")
    d.join("w2")
    d.submit(2, inputs=["t"])
    assert d.returns[2].result == int(TaskResult.INPUT_MISSING)
    assert "task 1 could not run again" in d.returns[2].message
    assert "x was undeclared" in d.returns[2].message
    assert d.s.tasks[1].state is T.DONE


def test_a_cancelled_staging_task_calls_off_the_copy_coming_for_it_alone() -> None:
    """A cache=False input on its way to a task that is cancelled before it runs: the
    transfer is called off with the copy (it was left in flight with no pending copy)."""
    d = Driver()
    d.join("w1")
    d.ev(FileDeclared, spec=FileSpec(name="x", kind="buffer", path="/staging/x", size=10,
                                     cache_level=0))
    d.submit(1, inputs=["x"])
    ((tr, _),) = d.fetches.items()
    out = d.ev(TaskCancelled, task_id=1)  # validate_state failed here
    assert messages(out, Unlink) == [("w1", Unlink(name="x"))]
    assert not d.s.replicas.transfers
    d.ev(ReplicaFailed, worker_id="w1", name="x", transfer_id=tr, reason="cancelled",
         cause=TransferFailure.NONE)  # the worker's answer to the Unlink: stale
    d.submit(2, inputs=["x"])
    assert len(d.fetches) == 2 and d.s.tasks[2].state is T.STAGING


def test_a_source_that_says_it_lost_a_file_takes_its_staging_task_with_it() -> None:
    """Task 2 stages on w2, which has ``x``, waiting for ``y``; w2 then answers w1's Fetch
    of ``x`` with SOURCE_MISSING: task 2 is placed again, not run on w2 without ``x``."""
    d = Driver()
    d.temp("x")
    d.temp("y")
    d.join("w1", cores=1)
    d.submit(9, outputs=["y"])  # runs on w1
    d.join("w2", cores=1, cached=[("x", 1000)])
    d.submit(2, inputs=["x", "y"])
    d.report(9, size=10)
    assert (d.s.tasks[2].state, d.s.tasks[2].worker, d.s.tasks[2].staging) \
        == (T.STAGING, "w2", {"y"})
    d.submit(1, inputs=["x"])  # on w1: x is fetched from w2
    [(tr, _)] = [(k, m) for k, (dest, m) in d.fetches.items() if m.name == "x"]
    d.ev(ReplicaFailed, worker_id="w1", name="x", transfer_id=tr, reason="no such file",
         cause=TransferFailure.SOURCE_MISSING)
    assert d.s.tasks[2].worker is None and d.s.tasks[2].state is T.WAITING
    # (before, y's arrival ran task 2 on w2 without x: validate_state failed there)
    [(ty, _)] = [(k, m) for k, (dest, m) in d.fetches.items() if m.name == "y"]
    d.ev(ReplicaReady, worker_id="w2", name="y", size=10, seconds=0.1, transfer_id=ty)
    assert d.s.tasks[2].state is not T.RUNNING


def resourced_fetch() -> Driver:
    """w3 fetches ``a`` from w1; w1 is lost, so the core fetches it again from w2."""
    d = Driver()
    d.temp("a")
    d.join("w1", cores=0, cached=[("a", 10)])
    d.join("w2", cores=0, cached=[("a", 10)])
    d.join("w3", cores=1)
    d.submit(1, inputs=["a"])
    assert [(dest, m.host) for dest, m in d.fetches.values()] == [("w3", "h-w1")]
    d.ev(WorkerLeft, worker_id="w1", reason="killed")
    assert [(dest, m.host) for dest, m in d.fetches.values()] == [("w3", "h-w1"), ("w3", "h-w2")]
    return d


@pytest.mark.parametrize("answer", ["ready", "failed"])
def test_a_late_answer_to_a_replaced_transfer_keeps_the_state_valid(answer: str) -> None:
    d = resourced_fetch()
    if answer == "ready":  # the copy from w1 made it before w1's loss was seen
        out = d.ev(ReplicaReady, worker_id="w3", name="a", size=10, seconds=0.1, transfer_id=1)
        assert messages(out, RunTask) and d.s.tasks[1].state is T.RUNNING
    else:  # the worker joined both fetches and tells the one naming w1 that w1 is gone
        d.ev(ReplicaFailed, worker_id="w3", name="a", transfer_id=1, reason="refused",
             cause=TransferFailure.SOURCE_UNREACHABLE)
        assert d.s.tasks[1].state is T.STAGING  # still waiting for the copy from w2
    d.ev(ReplicaReady, worker_id="w3", name="a", size=10, seconds=0.1, transfer_id=2)
    assert d.s.tasks[1].state is T.RUNNING and not d.s.replicas.transfers
    d.report(1)
    assert d.returned == [1]
