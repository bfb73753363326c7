"""Placement of consumers next to their inputs (pure core, ``core_helpers.Driver``).

The ring DAG of ``bench/bench_netns.py`` on four 1-core workers: producer i makes
temp i, consumer i reads temps i and (i+1) mod 4. Whatever order the producers end
in, every consumer must run on a worker holding one of its inputs, so exactly one
temp moves per consumer (4 transfers, never a consumer away from both inputs).
"""

from __future__ import annotations

import itertools

import pytest
from core_helpers import Driver

from vinework.core import ReplicaReady
from vinework.core.records import TaskState

pytestmark = pytest.mark.timeout(60)

N = 4
SIZE = 200_000_000


def _ring(order: tuple[int, ...]) -> Driver:
    d = Driver()
    for w in range(N):
        d.join(f"w{w}")
    for i in range(N):
        d.temp(f"t{i}")
    for i in range(N):
        d.submit(i, outputs=[f"t{i}"])
    for i in range(N):
        d.submit(100 + i, inputs=[f"t{i}", f"t{(i + 1) % N}"])
    for i in order:
        d.now += 0.1
        d.report(i, size=SIZE)
    for tid, (dest, f) in list(d.fetches.items()):
        d.ev(ReplicaReady, worker_id=dest, name=f.name, size=SIZE, seconds=1.6,
             transfer_id=tid)
    return d


@pytest.mark.parametrize("order", list(itertools.permutations(range(N))))
def test_ring_consumers_run_by_an_input(order: tuple[int, ...]) -> None:
    d = _ring(order)
    made = {tid: w for (tid, _), w in d.runs.items() if tid < N}
    assert len(set(made.values())) == N, made  # one producer per 1-core worker
    for i in range(N):
        c = d.s.tasks[100 + i]
        assert c.state is TaskState.RUNNING, (i, c.state)
        assert c.worker in (made[i], made[(i + 1) % N]), (i, c.worker, made)
    assert len(d.fetches) == N, [(dest, f.name) for dest, f in d.fetches.values()]


def test_larger_input_decides_over_declaration_order() -> None:
    d = Driver()
    d.join("a")
    d.join("b")
    d.temp("small")
    d.temp("big")
    d.submit(1, outputs=["small"])
    d.submit(2, outputs=["big"])
    d.report(1, size=10)
    d.report(2, size=SIZE)
    d.submit(3, inputs=["small", "big"])
    made = {tid: w for (tid, _), w in d.runs.items()}
    assert d.s.tasks[3].worker == made[2]  # where the 200 MB already are
    assert [f.name for _, f in d.fetches.values()] == ["small"]
