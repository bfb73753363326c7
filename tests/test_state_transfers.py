"""The manager's pure core on transfers: where consumers run, peer fetches, source limits
and avoidance, what a failing source costs. Events in, exact commands out."""

from __future__ import annotations

import pytest

from tests.state_helpers import (
    buffer,
    done,
    fetch,
    fresh,
    host,
    join,
    produce_temp_on,
    ready,
    returned,
    run,
    sends,
    spec,
    step,
    submit,
    temp,
)
from vinework.constants import CacheLevel
from vinework.core import TaskState as TState
from vinework.core.events import (
    FileDeclared,
    FileSpec,
    Log,
    ReplicaFailed,
    Tick,
)
from vinework.core.replicas import MANAGER
from vinework.protocol import Fetch, TransferFailure

STAGING = "/staging"

# ------------------------------------------------------------------ locality and transfers


def test_consumer_runs_where_its_temp_is() -> None:
    s = fresh()
    step(s, join("w1"))
    step(s, temp("t1"), submit(spec(1, outputs=["t1"])))
    step(s, join("w2"))
    assert s.tasks[1].worker == "w1"
    assert step(s, submit(spec(2, inputs=["t1"]))) == []  # waits for its producer
    assert s.tasks[2].state is TState.WAITING
    cmds = step(s, done("w1", 1, outputs=[("t1", 100)]))
    assert cmds == [returned(1, "w1"), run(s, "w1", 2)]  # no Fetch: the temp is right there
    assert step(s, done("w1", 2)) == [returned(2, "w1")]
    assert s.stats.bytes_peer == 0 and s.stats.bytes_sent == 0


def test_consumer_on_another_worker_fetches_from_the_peer() -> None:
    s = fresh()
    step(s, join("w1", cores=1))
    produce_temp_on(s, "w1", 1, "t1", 100)
    assert step(s, submit(spec(2))) == [run(s, "w1", 2)]  # w1 is now full
    step(s, join("w2", cores=1))
    cmds = step(s, submit(spec(3, inputs=["t1"])))
    assert cmds == [fetch("w2", 1, "t1", "w1", 100)]
    assert s.tasks[3].state is TState.STAGING
    assert step(s, Tick(now=1.0)) == []  # nothing runs before the replica is ready
    assert step(s, ready("w2", "t1", 100, 1)) == [run(s, "w2", 3)]
    assert s.stats.bytes_peer == 100 and s.stats.transfers_peer == 1
    assert s.stats.bytes_sent == 0
    assert sorted(s.replicas.ready_workers("t1")) == ["w1", "w2"]
    assert step(s, done("w2", 3)) == [returned(3, "w2")]


@pytest.mark.parametrize("how", ["peers", "tune", "file"])
def test_peer_transfers_can_be_disabled(how: str) -> None:
    s = fresh()
    if how == "tune":
        s.tune.peer_transfers = False
    step(s, buffer("buf", 10, peer_transfer=(how != "file")), join("w1", cores=1))
    # the first copy can only come from the manager
    assert step(s, submit(spec(1, inputs=["buf"]))) == [fetch("w1", 1, "buf", MANAGER, 10)]
    assert step(s, ready("w1", "buf", 10, 1)) == [run(s, "w1", 1)]
    assert s.stats.bytes_sent == 10 and s.stats.transfers_sent == 1
    step(s, join("w2", cores=1))
    cmds = step(s, submit(spec(2, inputs=["buf"])))  # w1 is busy: w2, while w1 holds a copy
    source = "w1" if how == "peers" else MANAGER
    assert cmds == [fetch("w2", 2, "buf", source, 10)]
    assert step(s, ready("w2", "buf", 10, 2)) == [run(s, "w2", 2)]
    if how == "peers":
        assert (s.stats.bytes_sent, s.stats.bytes_peer) == (10, 10)
    else:
        assert (s.stats.bytes_sent, s.stats.bytes_peer) == (20, 0)


def test_transfer_source_limit_queues_extra_fetches() -> None:
    s = fresh()
    s.tune.transfer_source_max = 1
    step(s, join("w1", cores=1))
    produce_temp_on(s, "w1", 1, "t1", 100)
    step(s, submit(spec(2)))  # keeps w1 busy
    step(s, join("w2", cores=1), join("w3", cores=1))
    assert step(s, submit(spec(3, inputs=["t1"]))) == [fetch("w2", 1, "t1", "w1", 100)]
    assert step(s, submit(spec(4, inputs=["t1"]))) == []  # w1 already serves one transfer
    assert s.tasks[4].state is TState.STAGING and s.tasks[4].worker == "w3"
    assert step(s, Tick(now=1.0)) == []  # still busy
    cmds = step(s, ready("w2", "t1", 100, 1))
    assert cmds == [run(s, "w2", 3), fetch("w3", 2, "t1", "w1", 100)]
    assert step(s, ready("w3", "t1", 100, 2)) == [run(s, "w3", 4)]
    assert s.stats.transfers_peer == 2 and s.stats.bytes_peer == 200


def test_transfer_source_limit_spreads_over_holders() -> None:
    s = fresh()
    s.tune.transfer_source_max = 1
    step(s, temp("t1"))
    step(s, join("w1", cores=0, cached=[("t1", 50)]), join("w2", cores=0, cached=[("t1", 50)]))
    step(s, join("w3", cores=1), join("w4", cores=1), join("w5", cores=1))
    assert step(s, submit(spec(1, inputs=["t1"]))) == [fetch("w3", 1, "t1", "w1", 50)]
    assert step(s, submit(spec(2, inputs=["t1"]))) == [fetch("w4", 2, "t1", "w2", 50)]
    assert step(s, submit(spec(3, inputs=["t1"]))) == []  # both sources are busy
    cmds = step(s, ready("w4", "t1", 50, 2))
    assert cmds == [run(s, "w4", 2), fetch("w5", 3, "t1", "w2", 50)]


def test_a_queued_transfer_is_logged_once_not_at_every_retry() -> None:
    """Consumers wait for the one busy source of ``t1``; each retry that finds it still
    busy leaves the queue as it is (a 15k-task graph logged a million QUEUED lines)."""
    s = fresh()
    s.tune.transfer_source_max = 1
    step(s, temp("t1"), temp("t2"))
    step(s, join("w1", cores=0, cached=[("t1", 50), ("t2", 50)]))
    for w in ("w2", "w3", "w4"):
        step(s, join(w, cores=1))
    every: list = []
    for ev in [submit(spec(1, inputs=["t1"])), submit(spec(2, inputs=["t1"])),
               submit(spec(3, inputs=["t1"]))]:
        every += s.handle(ev)
    for i in range(5):  # events that retry the queue: the source is still busy
        every += s.handle(Tick(now=1.0 + i))
    queued = [c for c in every if isinstance(c, Log) and "QUEUED" in c.fields]
    assert len(queued) == 2  # tasks 2 and 3, once each
    every = s.handle(ready("w2", "t1", 50, 1, now=9.0))  # w1 frees, w2 is a source now:
    assert sorted((m.worker_id, m.message.host) for m in sends(every, Fetch)) == [
        ("w3", host("w1")), ("w4", host("w2"))]  # both queued ones go
    assert not [c for c in every if isinstance(c, Log) and "QUEUED" in c.fields]


def test_failed_peer_fetch_retries_from_another_holder() -> None:
    s = fresh()
    step(s, temp("t1"))
    step(s, join("w1", cores=1, cached=[("t1", 100)]), submit(spec(1)))  # w1 busy
    step(s, join("w2", cores=1, cached=[("t1", 100)]), submit(spec(2)))  # w2 busy
    assert s.tasks[1].worker == "w1" and s.tasks[2].worker == "w2"
    step(s, join("w3", cores=1))
    assert step(s, submit(spec(3, inputs=["t1"]))) == [fetch("w3", 1, "t1", "w1", 100)]
    cmds = step(s, ReplicaFailed(now=1.0, worker_id="w3", name="t1", transfer_id=1,
                                 reason="no such file",
                                 cause=TransferFailure.SOURCE_MISSING))
    assert cmds == [fetch("w3", 2, "t1", "w2", 100)]
    assert s.replicas.state("t1", "w1") is None  # the source said it has no copy
    assert step(s, ready("w3", "t1", 100, 2, now=1.5)) == [run(s, "w3", 3)]
    assert s.stats.files_lost == 0


def test_failing_source_is_avoided_for_a_while() -> None:
    s = fresh()
    s.tune.transfer_avoid_seconds = 10.0
    step(s, temp("t1"))
    step(s, join("w1", cores=0, cached=[("t1", 100)]), join("w2", cores=0, cached=[("t1", 100)]))
    step(s, join("w3", cores=1), join("w4", cores=1), join("w5", cores=1))
    assert step(s, submit(spec(1, inputs=["t1"]))) == [fetch("w3", 1, "t1", "w1", 100)]
    cmds = step(s, ReplicaFailed(now=1.0, worker_id="w3", name="t1", transfer_id=1,
                                 reason="timeout"))
    assert cmds == [fetch("w3", 2, "t1", "w2", 100)]
    assert s.replicas.state("t1", "w1") is not None  # not the source's fault: w1 keeps it
    # w1 is avoided for 10 s: another consumer goes to w2 even though w1 is idle
    assert step(s, submit(spec(2, inputs=["t1"]), now=2.0)) == [fetch("w4", 3, "t1", "w2", 100)]
    # after the avoid period w1 is a source again
    assert step(s, submit(spec(3, inputs=["t1"]), now=20.0)) == [fetch("w5", 4, "t1", "w1", 100)]


def test_an_unreachable_source_keeps_its_copy_and_is_avoided() -> None:
    s = fresh()
    step(s, temp("t1"))
    step(s, join("w1", cores=0, cached=[("t1", 100)]), join("w2", cores=0, cached=[("t1", 100)]))
    step(s, join("w3", cores=1))
    assert step(s, submit(spec(1, inputs=["t1"]))) == [fetch("w3", 1, "t1", "w1", 100)]
    cmds = step(s, ReplicaFailed(now=1.0, worker_id="w3", name="t1", transfer_id=1,
                                 reason="connection refused",
                                 cause=TransferFailure.SOURCE_UNREACHABLE))
    assert cmds == [fetch("w3", 2, "t1", "w2", 100)]
    # unreachable is not "has no copy": w1 keeps its replica, avoided for a while
    assert s.replicas.state("t1", "w1") is not None
    assert s.stats.files_lost == 0


def test_a_source_that_says_it_has_no_copy_is_not_avoided_for_its_other_files() -> None:
    s = fresh()
    s.tune.transfer_avoid_seconds = 10.0
    step(s, temp("t1"), temp("t2"))
    step(s, join("w1", cores=0, cached=[("t1", 100), ("t2", 100)]),
         join("w2", cores=0, cached=[("t1", 100)]))
    step(s, join("w3", cores=1), join("w4", cores=1))
    assert step(s, submit(spec(1, inputs=["t1"]))) == [fetch("w3", 1, "t1", "w1", 100)]
    cmds = step(s, ReplicaFailed(now=1.0, worker_id="w3", name="t1", transfer_id=1,
                                 reason="no such file", cause=TransferFailure.SOURCE_MISSING))
    assert cmds == [fetch("w3", 2, "t1", "w2", 100)]
    # w1 answered (it only lacks t1): its t2 is served at once, not after 10 s
    assert step(s, submit(spec(2, inputs=["t2"]), now=1.5)) == [fetch("w4", 3, "t2", "w1", 100)]


def test_a_cache_false_file_the_manager_has_is_not_fetched_from_a_peer() -> None:
    """A worker deletes a cache=False input when its task ends, before the manager hears
    of it (a peer fetch then failed SOURCE_MISSING): the manager serves it instead."""
    s = fresh()
    step(s, FileDeclared(spec=FileSpec(name="b", kind="buffer", path=f"{STAGING}/b", size=10,
                                       cache_level=int(CacheLevel.TASK))))
    step(s, join("w1", cores=1), join("w2", cores=1))
    def fetches(cmds: list) -> list[tuple[str, str, str]]:
        return [(c.worker_id, c.message.name, c.message.host) for c in sends(cmds, Fetch)]
    assert fetches(step(s, submit(spec(1, inputs=["b"])))) == [("w1", "b", "")]
    assert step(s, ready("w1", "b", 10, 1)) == [run(s, "w1", 1)]
    cmds = step(s, submit(spec(2, inputs=["b"])))  # to w2 (w1 is busy), while w1 holds b
    assert fetches(cmds) == [("w2", "b", "")]  # from the manager, not from w1


def test_failed_fetch_from_the_only_holder_recovers_the_temp() -> None:
    s = fresh()
    step(s, join("w1", cores=1))
    produce_temp_on(s, "w1", 1, "t1", 100)
    step(s, submit(spec(2)))  # w1 busy
    step(s, join("w2", cores=1))
    assert step(s, submit(spec(3, inputs=["t1"]))) == [fetch("w2", 1, "t1", "w1", 100)]
    cmds = step(s, ReplicaFailed(worker_id="w2", name="t1", transfer_id=1,
                                 reason="no such file",
                                 cause=TransferFailure.SOURCE_MISSING))
    # no copy is left anywhere: the producer runs again (on w2, the only room) to remake it
    assert cmds == [run(s, "w2", 1, attempt=1)]
    assert s.stats.tasks_recovery == 1 and s.stats.files_lost == 1
    assert s.tasks[3].state is TState.WAITING
    cmds = step(s, done("w2", 1, attempt=1, outputs=[("t1", 100)]))
    # the consumer (its first run, staging from w1, ended with its source); the producer is
    # not returned again
    assert cmds == [run(s, "w2", 3, attempt=1)]
    assert step(s, done("w2", 3, attempt=1)) == [returned(3, "w2", attempts=2)]
