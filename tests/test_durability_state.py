"""Pure tests of the durability decisions in ``ManagerState``: no processes, no clock.

Recovery of lost temps (once per loss, never returned twice, only what is lost
and needed), the auto policy's cost model, re-replication after a loss, and
pruning of temps whose user handle is gone.
"""

from __future__ import annotations

import math

from vinework.constants import TaskResult
from vinework.core import TaskState as TState
from vinework.core.events import (
    FileDeclared,
    FileReleased,
    FileSpec,
    Log,
    ReplicaReady,
    RetrievalDone,
    Retrieve,
    Send,
    TaskReported,
    TaskReturned,
    TaskSpec,
    TaskSubmitted,
    Tick,
    WorkerHeard,
    WorkerJoined,
    WorkerLeft,
)
from vinework.core.state import RECOVERY_ATTEMPTS, ManagerState
from vinework.protocol import Fetch, RunTask, TaskDone, TransferFailure, Unlink

STAGING = "/staging"
MB = 1 << 20


class Sim:
    """A ManagerState driven by hand, with the commands of every event kept."""

    def __init__(self) -> None:
        self.st = ManagerState(STAGING, validate=True)
        self.now = 0.0
        self.cmds: list[object] = []

    def ev(self, event_type: type, **kw: object) -> list[object]:
        kw.setdefault("now", self.now)
        out = self.st.handle(event_type(**kw))
        self.cmds.extend(out)
        return out

    def join(self, wid: str, cores: int = 1, disk: int = 1000) -> list[object]:
        return self.ev(WorkerJoined, worker_id=wid, host=f"h-{wid}", transfer_port=9000,
                       cores=cores, memory=1000, disk=disk, gpus=0)

    def leave(self, wid: str) -> list[object]:
        return self.ev(WorkerLeft, worker_id=wid, reason="killed")

    def temp(self, name: str) -> None:
        self.ev(FileDeclared, spec=FileSpec(name=name, kind="temp", cache_level=2))

    def submit(self, tid: int, ins: list[str] = (), outs: list[str] = ()) -> list[object]:
        return self.ev(TaskSubmitted, spec=TaskSpec(
            task_id=tid, command=f"task {tid}", cores=1,
            inputs=[(n, f"in{i}") for i, n in enumerate(ins)],
            outputs=[(n, f"out{i}") for i, n in enumerate(outs)]))

    def report(self, tid: int, size: int = 100, ok: bool = True, run: float = 1.0
               ) -> list[object]:
        t = self.st.tasks[tid]
        assert t.state is TState.RUNNING, (tid, t.state)
        d = TaskDone(task_id=tid, attempt=t.attempt,
                     result=int(TaskResult.SUCCESS), exit_code=0 if ok else 1, output="",
                     start=0.0, end=run,
                     outputs=[(n, size) for n, _ in t.spec.outputs] if ok else [])
        return self.ev(TaskReported, worker_id=t.worker, done=d)

    def replica_ready(self, fetch: Fetch, wid: str, size: int = 100) -> list[object]:
        return self.ev(ReplicaReady, worker_id=wid, name=fetch.name, size=size, seconds=0.1,
                       transfer_id=fetch.transfer_id)


def runs(cmds: list[object]) -> list[tuple[str, int]]:
    return [(c.worker_id, c.message.task_id) for c in cmds
            if isinstance(c, Send) and isinstance(c.message, RunTask)]


def fetches(cmds: list[object]) -> list[tuple[str, Fetch]]:
    return [(c.worker_id, c.message) for c in cmds
            if isinstance(c, Send) and isinstance(c.message, Fetch)]


def returned(cmds: list[object]) -> list[int]:
    return [c.task_id for c in cmds if isinstance(c, TaskReturned)]


def unlinks(cmds: list[object]) -> list[tuple[str, str]]:
    return [(c.worker_id, c.message.name) for c in cmds
            if isinstance(c, Send) and isinstance(c.message, Unlink)]


def logs(cmds: list[object], kind: str) -> list[tuple[object, ...]]:
    return [c.fields for c in cmds if isinstance(c, Log) and c.kind == kind]


# ---------------------------------------------------------------------- recovery
def test_recovery_run_is_not_returned_and_counted_once() -> None:
    s = Sim()
    s.temp("F")
    s.join("w1")
    s.join("w2")
    s.submit(1, outs=["F"])
    assert s.st.tasks[1].worker == "w1"
    assert returned(s.report(1)) == [1]
    s.leave("w1")
    assert s.st.stats.files_lost == 1 and s.st.stats.tasks_recovery == 0
    cmds = s.submit(2, ins=["F"])
    assert runs(cmds) == [("w2", 1)]  # the producer again, as attempt 1
    assert s.st.stats.tasks_recovery == 1
    assert s.st.tasks[2].state is TState.WAITING
    cmds = s.report(1)
    assert returned(cmds) == []
    assert runs(cmds) == [("w2", 2)]
    assert returned(s.report(2)) == [2]
    assert s.st.unreturned() == 0
    assert s.st.stats.tasks_done == 2 and s.st.stats.tasks_recovery == 1


def test_a_lost_chain_recovers_from_its_oldest_lost_link() -> None:
    s = Sim()
    for n in "ABC":
        s.temp(n)
    s.join("w1")
    s.submit(1, outs=["A"])
    s.report(1)
    s.submit(2, ins=["A"], outs=["B"])
    s.report(2)
    s.submit(3, ins=["B"], outs=["C"])
    s.report(3)
    s.join("w2")
    s.leave("w1")
    assert s.st.stats.files_lost == 3
    cmds = s.submit(4, ins=["C"])
    assert s.st.stats.tasks_recovery == 3
    assert runs(cmds) == [("w2", 1)]  # only the head of the chain can run
    assert s.st.tasks[2].state is TState.WAITING and s.st.tasks[3].state is TState.WAITING
    assert runs(s.report(1)) == [("w2", 2)]
    assert runs(s.report(2)) == [("w2", 3)]
    assert runs(s.report(3)) == [("w2", 4)]
    assert returned(s.report(4)) == [4]
    assert s.st.stats.tasks_recovery == 3 and s.st.unreturned() == 0


def test_a_failed_recovery_fails_the_consumer_and_is_not_returned() -> None:
    s = Sim()
    s.temp("F")
    s.join("w1")
    s.join("w2")
    s.submit(1, outs=["F"])
    s.report(1)
    s.leave("w1")
    s.submit(2, ins=["F"])
    for _ in range(RECOVERY_ATTEMPTS):  # a failed recovery run is retried, uncharged
        assert returned(s.report(1, ok=False)) == []
    cmds = s.report(1, ok=False)
    assert returned(cmds) == [2]
    r = next(c for c in cmds if isinstance(c, TaskReturned))
    assert r.result == TaskResult.INPUT_MISSING
    assert s.st.unreturned() == 0 and s.st.stats.tasks_failed == 1


def test_a_loss_is_counted_once_when_a_transfer_from_the_lost_worker_was_in_flight() -> None:
    s = Sim()
    s.temp("F")
    s.join("w1")
    s.submit(1, outs=["F"])
    s.report(1)
    s.submit(9, outs=[])  # keeps w1 busy, so the consumer goes to w2
    s.join("w2")
    cmds = s.submit(2, ins=["F"])
    assert [(w, f.name) for w, f in fetches(cmds)] == [("w2", "F")]
    cmds = s.leave("w1")
    assert s.st.stats.files_lost == 1
    assert len([f for f in logs(cmds, "FILE") if f[1] == "LOST"]) == 1
    assert s.st.stats.tasks_recovery == 1
    assert runs(cmds) == [("w2", 1)]  # the recovery run (submitted before task 9)


# ---------------------------------------------------------------------- auto policy
def _auto_after_one_loss(workers: int, size: int, run: float) -> tuple[Sim, str]:
    """``workers`` workers for 1000 s, one of them lost, then a temp made in ``run`` s."""
    s = Sim()
    s.st.tune.set("durability", "auto")
    for i in range(workers + 1):
        s.join(f"w{i + 1}", disk=10000)
    s.now = 1000.0
    for i in range(workers + 1):  # (they kept sending heartbeats meanwhile)
        s.ev(WorkerHeard, worker_id=f"w{i + 1}")
    s.ev(Tick)
    s.st.workers[f"w{workers + 1}"].tasks_done = 1  # it had worked: its loss counts
    s.leave(f"w{workers + 1}")
    s.temp("F")
    s.submit(1, outs=["F"])
    s.report(1, size=size, run=run)
    return s, s.st.files["F"].decision


def test_workers_that_leave_without_working_do_not_count_as_losses() -> None:
    s = Sim()
    s.st.tune.set("durability", "auto")
    s.join("w1", disk=10000)
    for i in range(2, 12):  # ten peers that connect and go without doing anything
        s.join(f"w{i}", disk=10000)
        s.leave(f"w{i}")
    s.now = 1000.0
    s.ev(WorkerHeard, worker_id="w1")
    s.ev(Tick)
    s.temp("F")
    s.submit(1, outs=["F"])
    s.report(1, size=200 * 1000 * 1000, run=100.0)
    assert s.st.stats.workers_lost == 10 and s.st.durability.losses == 0
    assert s.st.files["F"].decision == "one"  # no loss seen: one copy


def _expected_choice(workers: int, size: int, run: float) -> str:
    """The docstring's cost model, computed here independently."""
    lam = 1 / (1000.0 * (workers + 1))
    p = 1 - math.exp(-lam * max(10.0, 10 * run))
    c_peer = size / 100e6
    costs = {"one": p * run, "replicate": c_peer + p * p * run,
             "checkpoint": size / 100e6 * workers}
    return min(costs, key=lambda k: costs[k])


def test_auto_keeps_one_copy_while_no_worker_was_lost() -> None:
    s = Sim()
    s.st.tune.set("durability", "auto")
    s.join("w1")
    s.join("w2")
    s.temp("F")
    s.submit(1, outs=["F"])
    cmds = s.report(1, run=100.0)
    assert s.st.files["F"].decision == "one"
    assert not fetches(cmds) and not any(isinstance(c, Retrieve) for c in cmds)
    (line,) = logs(cmds, "DURABILITY")
    assert line[:2] == ("F", "ONE") and "p=0" in line


def test_auto_checkpoints_a_small_file_with_a_costly_lineage() -> None:
    s, choice = _auto_after_one_loss(workers=4, size=1000, run=100.0)
    assert choice == _expected_choice(4, 1000, 100.0) == "checkpoint"
    (r,) = [c for c in s.cmds if isinstance(c, Retrieve) and c.name == "F"]
    assert r.dest == f"{STAGING}/F"


def test_auto_replicates_a_large_file_at_moderate_risk() -> None:
    size = 200 * 1000 * 1000  # 2 s to a peer, 8 s (x4 workers) to the manager
    s, choice = _auto_after_one_loss(workers=4, size=size, run=100.0)
    assert choice == _expected_choice(4, size, 100.0) == "replicate"
    (f,) = fetches(s.cmds)
    assert f[1].name == "F"


def test_auto_keeps_one_copy_of_a_file_cheap_to_remake() -> None:
    s, choice = _auto_after_one_loss(workers=4, size=500 * 1000 * 1000, run=0.5)
    assert choice == _expected_choice(4, 500 * 1000 * 1000, 0.5) == "one"
    assert not fetches(s.cmds)


def test_auto_replicated_file_is_replicated_again_after_losing_a_copy() -> None:
    size = 200 * 1000 * 1000
    s, choice = _auto_after_one_loss(workers=4, size=size, run=100.0)
    assert choice == "replicate"
    (wid, f) = fetches(s.cmds)[0]
    s.replica_ready(f, wid, size)
    assert s.st.replicas.count_ready("F") == 2
    producer_worker = next(w for w in s.st.replicas.ready_workers("F") if w != wid)
    s.cmds.clear()
    s.leave(producer_worker)
    assert s.st.replicas.count_ready("F") == 1
    again = [(w, m.name) for w, m in fetches(s.cmds)]
    assert len(again) == 1 and again[0][1] == "F", again


# ---------------------------------------------------------------------- pruning
def test_a_released_temp_waits_for_its_pending_consumer() -> None:
    s = Sim()
    s.temp("F")
    s.temp("G")
    s.join("w1", cores=2)
    s.submit(1, outs=["G"])  # slow
    s.submit(2, outs=["F"])
    s.submit(3, ins=["F", "G"])
    s.report(2)
    cmds = s.ev(FileReleased, name="F")
    assert not unlinks(cmds) and s.st.stats.files_pruned == 0
    s.report(1)
    cmds = s.report(3)
    assert returned(cmds) == [3]
    assert unlinks(cmds) == [("w1", "F")]
    assert s.st.stats.files_pruned == 1


def test_a_remade_released_temp_is_pruned_after_the_recovery_that_needs_it() -> None:
    s = Sim()
    s.temp("A")
    s.temp("B")
    s.join("w1")
    s.submit(1, outs=["A"])
    s.report(1)
    s.submit(2, ins=["A"], outs=["B"])
    s.report(2)
    assert unlinks(s.ev(FileReleased, name="A")) == [("w1", "A")]
    s.join("w2")
    s.leave("w1")
    s.submit(3, ins=["B"])
    assert s.st.stats.tasks_recovery == 2
    cmds = s.report(1)  # A again: task 2's recovery needs it
    assert not unlinks(cmds)
    cmds = s.report(2)  # B again: A is not needed any more
    assert unlinks(cmds) == [("w2", "A")]
    assert returned(s.report(3)) == [3]
    assert s.st.stats.files_pruned == 2


# ---------------------------------------------------------------------- retrievals and loss
def test_output_retrieval_failing_before_the_worker_loss_is_seen_reruns_the_task() -> None:
    """A SIGKILLed worker: its transfer server refuses the retrieval before the manager
    reads the end of its control connection. The task must run again, not fail."""
    s = Sim()
    s.join("w1")
    s.join("w2")
    s.ev(FileDeclared, spec=FileSpec(name="file-out-1", kind="file", path="/out/r1"))
    s.submit(1, outs=["file-out-1"])
    assert s.st.tasks[1].worker == "w1"
    cmds = s.report(1)
    (r,) = [c for c in cmds if isinstance(c, Retrieve)]
    cmds = s.ev(RetrievalDone, retrieval_id=r.retrieval_id, ok=False,
                error="h-w1:9000 unreachable: [Errno 111] Connection refused",
                cause=TransferFailure.SOURCE_UNREACHABLE)
    assert returned(cmds) == []
    assert [tid for _, tid in runs(cmds)] == [1]  # run again (on w1, if it is still there)
    cmds = s.leave("w1")
    assert returned(cmds) == []
    assert s.st.tasks[1].worker == "w2" and s.st.tasks[1].state is TState.RUNNING
    cmds = s.report(1)
    (r,) = [c for c in cmds if isinstance(c, Retrieve)]
    assert r.worker_id == "w2"
    cmds = s.ev(RetrievalDone, retrieval_id=r.retrieval_id, ok=True, size=100, seconds=0.1)
    (back,) = [c for c in cmds if isinstance(c, TaskReturned)]
    assert back.task_id == 1 and back.result == TaskResult.SUCCESS


def test_an_output_the_worker_never_serves_fails_the_task_in_the_end() -> None:
    s = Sim()
    s.join("w1")
    s.ev(FileDeclared, spec=FileSpec(name="file-out-1", kind="file", path="/out/r1"))
    s.submit(1, outs=["file-out-1"])
    for _ in range(10):
        cmds = s.report(1)
        (r,) = [c for c in cmds if isinstance(c, Retrieve)]
        cmds = s.ev(RetrievalDone, retrieval_id=r.retrieval_id, ok=False,
                    error="h-w1:9000 has no file-out-1: not found",
                    cause=TransferFailure.SOURCE_MISSING)
        if returned(cmds):
            break
    (back,) = [c for c in cmds if isinstance(c, TaskReturned)]
    assert back.result == TaskResult.OUTPUT_TRANSFER_ERROR
    assert back.attempts <= 4


def test_every_loss_is_logged_before_any_recovery_it_sets_off() -> None:
    """One worker held whole chains; their heads have waiting consumers. Recovering a
    head recovers its lineage: each file's LOST line must come before its RECOVERY."""
    s = Sim()
    s.join("w1")
    tid = 0
    heads = []
    for c in range(5):
        prev: list[str] = []
        for k in range(5):
            name = f"C{c}-{k}"
            s.temp(name)
            tid += 1
            s.submit(tid, ins=prev, outs=[name])
            s.report(tid)
            prev = [name]
        heads.append(prev[0])
    s.submit(99)  # keeps w1 busy
    s.join("w2")
    s.temp("G")
    s.submit(100, outs=["G"])  # runs on w2 while the consumers wait for it
    assert s.st.tasks[100].worker == "w2"
    for c, head in enumerate(heads):
        s.submit(200 + c, ins=[head, "G"])
    cmds = s.leave("w1")
    lines = [(f[0], f[1], f[-1]) for f in
             (c.fields for c in cmds if isinstance(c, Log) and c.kind in ("FILE", "TASK"))]
    lost_at = {name: i for i, (name, what, _) in enumerate(lines) if what == "LOST"}
    recoveries = [(i, detail.split()[-1]) for i, (_, what, detail) in enumerate(lines)
                  if what == "RECOVERY"]
    assert len(recoveries) == 25 == s.st.stats.tasks_recovery == s.st.stats.files_lost
    for i, name in recoveries:
        assert name in lost_at and lost_at[name] < i, (name, lines)
