"""No source is starved: a rarely-wanted file is served soon after it is asked for,
even when many consumers of one popular file queue at the same source.

Pure core (``core_helpers.Driver``): worker ``src`` makes two temps, a popular one that
``N_POPULAR`` consumers (each on its own worker) read and a rare one that one consumer,
submitted after them, reads. The per-source limit lets ``src`` serve only a few
transfers at once. The test plays the clock: every transfer takes ``T`` seconds and
completes in start order. The rare file must reach its consumer within ``2 * T`` of
the moment its consumer's staging asked for it (its own transfer plus at most one
transfer's wait for a slot at the source).
"""

from __future__ import annotations

import heapq

import pytest
from core_helpers import Driver

from vinework.core import ReplicaReady
from vinework.core.records import TaskState

pytestmark = pytest.mark.timeout(60)

T = 1.0
N_POPULAR = 12
SIZE = 1000


def test_rare_file_is_not_starved_behind_a_popular_one() -> None:
    d = Driver()
    d.s.tune.transfer_source_max = 2
    d.join("src", cores=2)
    d.temp("pop")
    d.temp("rare")
    d.submit(1, outputs=["pop"])
    d.submit(2, outputs=["rare"])
    assert d.s.tasks[1].worker == d.s.tasks[2].worker == "src"
    d.report(1, size=SIZE)
    d.report(2, size=SIZE)
    for i in range(N_POPULAR + 1):
        d.join(f"c{i}")
    # popular consumers first, then the rare one (src has cores free too: whichever
    # consumer lands there needs no transfer)
    for i in range(N_POPULAR):
        d.submit(10 + i, inputs=["pop"], cores=1)
    d.submit(99, inputs=["rare"], cores=1)
    rare_asked = d.now
    rare_dest = d.s.tasks[99].worker
    assert rare_dest is not None
    if rare_dest == "src":
        pytest.fail("the rare file's consumer was placed at its source: nothing to fetch")
    # play the clock: every transfer takes T and completes in start order
    done: dict[int, None] = {}
    queue: list[tuple[float, int]] = []
    served_at = -1.0
    for _ in range(10 * N_POPULAR):
        for tid in d.fetches:
            if tid not in done and all(t != tid for _, t in queue):
                heapq.heappush(queue, (d.now + T, tid))
        if not queue:
            break
        when, tid = heapq.heappop(queue)
        done[tid] = None
        d.now = when
        dest, f = d.fetches[tid]
        d.ev(ReplicaReady, worker_id=dest, name=f.name, size=SIZE, seconds=T, transfer_id=tid)
        if f.name == "rare" and dest == rare_dest:
            served_at = d.now
    assert all(d.s.tasks[10 + i].state is TaskState.RUNNING for i in range(N_POPULAR))
    assert d.s.tasks[99].state is TaskState.RUNNING
    assert 0 <= served_at - rare_asked <= 2 * T, (served_at, rare_asked)
