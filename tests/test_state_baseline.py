"""Pure tests of ``ManagerState`` for the "no peer transfers" baseline.

With peer transfers disabled (globally, or for one file with ``peer_transfer=False``)
a temp that lives only on the worker that produced it must come back to the manager
first and then go out from the manager to the worker that needs it.
"""

from __future__ import annotations

import posixpath

import pytest

from vinework.constants import TaskResult
from vinework.core import TaskState as TState
from vinework.core.events import (
    FileDeclared,
    FileSpec,
    ReplicaReady,
    RetrievalDone,
    Retrieve,
    Send,
    TaskReported,
    TaskReturned,
    TaskSpec,
    TaskSubmitted,
    Tick,
    WorkerJoined,
)
from vinework.core.replicas import MANAGER
from vinework.core.state import ManagerState
from vinework.protocol import Fetch, RunTask, TaskDone

STAGING = "/staging"
SIZE = 1000


def join(st: ManagerState, wid: str, cores: int = 1) -> list[object]:
    return st.handle(WorkerJoined(now=1.0, worker_id=wid, host=f"h-{wid}", transfer_port=9000,
                                  cores=cores, memory=1000, disk=1000, gpus=0))


def run_msgs(cmds: list[object]) -> list[tuple[str, RunTask]]:
    return [(c.worker_id, c.message) for c in cmds
            if isinstance(c, Send) and isinstance(c.message, RunTask)]


def fetches(cmds: list[object]) -> list[tuple[str, Fetch]]:
    return [(c.worker_id, c.message) for c in cmds
            if isinstance(c, Send) and isinstance(c.message, Fetch)]


def done(st: ManagerState, wid: str, tid: int, outputs: list[tuple[str, int]]) -> list[object]:
    d = TaskDone(task_id=tid, attempt=st.tasks[tid].attempt, result=int(TaskResult.SUCCESS),
                 exit_code=0, output="", start=0.0, end=1.0, outputs=outputs)
    return st.handle(TaskReported(now=2.0, worker_id=wid, done=d))


def test_local_consumer_needs_no_transfer_when_peers_are_off() -> None:
    st = ManagerState(STAGING)
    st.tune.peer_transfers = False
    st.handle(FileDeclared(now=1.0, spec=FileSpec(name="temp-x", kind="temp", cache_level=2)))
    join(st, "w1")
    cmds = st.handle(TaskSubmitted(now=1.0, spec=TaskSpec(
        task_id=1, command="make > out", inputs=[], outputs=[("temp-x", "out")], cores=1)))
    assert [w for w, _ in run_msgs(cmds)] == ["w1"]
    # the blocker takes the second worker when it joins; the consumer then gets w1
    st.handle(TaskSubmitted(now=1.0, spec=TaskSpec(
        task_id=2, command="block", inputs=[], outputs=[], cores=1, priority=10)))
    st.handle(TaskSubmitted(now=1.0, spec=TaskSpec(
        task_id=3, command="use in", inputs=[("temp-x", "in")], outputs=[], cores=1)))
    join(st, "w2")
    cmds = done(st, "w1", 1, [("temp-x", SIZE)])
    placed = {tid: st.tasks[tid].worker for tid in (2, 3)}
    assert placed[2] == "w2"
    assert placed[3] == "w1"  # w1 holds the input: nothing to move
    assert not fetches(cmds)
    assert not any(isinstance(c, Retrieve) for c in cmds)


def _consumer_on_other_worker(peer_transfer: bool, peers_on: bool) -> tuple[ManagerState,
                                                                          list[object]]:
    """Producer on w1 (2 cores), then a 2-core blocker on w1 and the consumer on w2."""
    st = ManagerState(STAGING)
    st.tune.peer_transfers = peers_on
    st.handle(FileDeclared(now=1.0, spec=FileSpec(name="temp-x", kind="temp", cache_level=2,
                                                  peer_transfer=peer_transfer)))
    join(st, "w1", cores=2)
    cmds = st.handle(TaskSubmitted(now=1.0, spec=TaskSpec(
        task_id=1, command="make > out", inputs=[], outputs=[("temp-x", "out")], cores=2)))
    assert [w for w, _ in run_msgs(cmds)] == ["w1"]
    # the consumer waits for temp-x; the blocker (higher priority) will take w1 first
    st.handle(TaskSubmitted(now=1.0, spec=TaskSpec(
        task_id=2, command="use in", inputs=[("temp-x", "in")], outputs=[], cores=2)))
    st.handle(TaskSubmitted(now=1.0, spec=TaskSpec(
        task_id=3, command="block", inputs=[], outputs=[], cores=2, priority=10)))
    join(st, "w2", cores=1)  # too small for the blocker or the consumer
    cmds = done(st, "w1", 1, [("temp-x", SIZE)])
    assert st.tasks[3].worker == "w1" and st.tasks[3].state is TState.RUNNING
    assert st.tasks[2].state is TState.READY  # w1 is busy, w2 is too small
    # a big worker arrives: the consumer must run there
    cmds = join(st, "w3", cores=2)
    assert st.tasks[2].worker == "w3" and st.tasks[2].state is TState.STAGING
    return st, cmds


def test_peer_transfer_when_peers_are_on() -> None:
    st, cmds = _consumer_on_other_worker(peer_transfer=True, peers_on=True)
    (dest, f), = fetches(cmds)
    assert dest == "w3" and f.host == "h-w1" and f.name == "temp-x"
    assert not any(isinstance(c, Retrieve) for c in cmds)


@pytest.mark.parametrize("peer_transfer, peers_on", [(True, False), (False, True)])
def test_temp_comes_back_to_the_manager_then_goes_out(peer_transfer: bool, peers_on: bool
                                                      ) -> None:
    st, cmds = _consumer_on_other_worker(peer_transfer=peer_transfer, peers_on=peers_on)
    assert not fetches(cmds)  # no worker-to-worker transfer
    (r,) = [c for c in cmds if isinstance(c, Retrieve)]
    assert r.worker_id == "w1" and r.name == "temp-x"
    assert r.dest == posixpath.join(STAGING, "temp-x") and r.size == SIZE
    # a second look (e.g. a periodic retry) must not start a second retrieval
    cmds = st.handle(Tick(now=3.0))
    assert not [c for c in cmds if isinstance(c, Retrieve)] and not fetches(cmds)
    # the retrieval ends: the manager now serves the file to w3
    cmds = st.handle(RetrievalDone(now=4.0, retrieval_id=r.retrieval_id, ok=True, size=SIZE,
                                   seconds=0.1))
    assert st.files["temp-x"].at_manager
    assert st.files["temp-x"].manager_path == r.dest
    (dest, f), = fetches(cmds)
    assert dest == "w3" and f.host == "" and f.port == 0  # "" = the manager
    assert st.stats.bytes_received == SIZE
    cmds = st.handle(ReplicaReady(now=5.0, worker_id="w3", name="temp-x", size=SIZE,
                                  seconds=0.1, transfer_id=f.transfer_id, source=MANAGER))
    assert [w for w, m in run_msgs(cmds) if m.task_id == 2] == ["w3"]
    assert st.stats.bytes_sent == SIZE and st.stats.bytes_peer == 0
    cmds = done(st, "w3", 2, [])
    assert [c.task_id for c in cmds if isinstance(c, TaskReturned)] == [2]


def test_failed_retrieval_is_retried() -> None:
    st, cmds = _consumer_on_other_worker(peer_transfer=True, peers_on=False)
    (r,) = [c for c in cmds if isinstance(c, Retrieve)]
    cmds = st.handle(RetrievalDone(now=4.0, retrieval_id=r.retrieval_id, ok=False,
                                   error="connection reset"))
    assert not st.files["temp-x"].at_manager and not fetches(cmds)
    cmds = st.handle(Tick(now=5.0))
    (r2,) = [c for c in cmds if isinstance(c, Retrieve)]
    assert r2.worker_id == "w1" and r2.retrieval_id != r.retrieval_id
    cmds = st.handle(RetrievalDone(now=6.0, retrieval_id=r2.retrieval_id, ok=True, size=SIZE,
                                   seconds=0.1))
    assert [d for d, _ in fetches(cmds)] == ["w3"]


def test_undeclare_removes_the_managers_copy_of_a_temp(tmp_path: object) -> None:
    import os

    import vinework as vine

    with vine.Manager(port=0, run_info_path=str(tmp_path)) as m:
        f = m.declare_temp()
        copy = os.path.join(m.staging_dir, f.cache_name)
        with open(copy, "wb") as out:  # as a retrieval to the manager leaves it
            out.write(b"x" * 10)
        m.undeclare_file(f)
        assert not os.path.exists(copy)
