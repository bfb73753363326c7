"""Tests for vinework.manager.scheduling: resource packing and worker choice (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vinework.core.scheduling import (
    Candidate,
    Resources,
    choose_worker,
    could_ever_fit,
    task_allocation,
)

BIG = Resources(cores=4, memory=8000, disk=16000, gpus=2)
NONE: tuple[None, None, None, None] = (None, None, None, None)


def cand(wid: str, total: Resources, free: Resources | None = None, running: int = 0) -> Candidate:
    f = free if free is not None else Resources(total.cores, total.memory, total.disk, total.gpus)
    return Candidate(wid, Resources(total.cores, total.memory, total.disk, total.gpus), f, running)


# ------------------------------------------------------------------ task_allocation


def test_no_declarations_take_the_whole_worker() -> None:
    assert task_allocation(BIG, *NONE) == Resources(4, 8000, 16000, 2)


def test_cores_only_gives_proportional_memory_and_disk_and_no_gpus() -> None:
    assert task_allocation(BIG, 1, None, None, None) == Resources(1, 2000, 4000, 0)
    assert task_allocation(BIG, 2, None, None, None) == Resources(2, 4000, 8000, 0)
    assert task_allocation(BIG, 4, None, None, None) == Resources(4, 8000, 16000, 0)


def test_memory_only_gives_proportional_cores_at_least_one() -> None:
    assert task_allocation(BIG, None, 4000, None, None) == Resources(2, 4000, 8000, 0)
    tiny = task_allocation(BIG, None, 10, None, None)
    assert tiny.cores == 1 and tiny.memory == 10 and tiny.gpus == 0
    assert tiny.disk <= 16000 * 10 // 8000 + 1


def test_largest_fraction_wins() -> None:
    # cores 1/4, disk 3/4: the left-out memory gets 3/4 of the worker
    assert task_allocation(BIG, 1, None, 12000, None) == Resources(1, 6000, 12000, 0)


def test_declared_values_are_kept_exactly() -> None:
    assert task_allocation(BIG, 3, 100, 200, 1) == Resources(3, 100, 200, 1)


def test_gpus_are_never_given_unasked() -> None:
    for decl in [(1, None, None, None), (None, 1000, None, None), (None, None, 100, None),
                 (4, 8000, 16000, None), (8, None, None, None)]:
        assert task_allocation(BIG, *decl).gpus == 0, decl


def test_gpus_when_asked() -> None:
    a = task_allocation(BIG, None, None, None, 1)
    assert a.gpus == 1
    assert a.fits_in(BIG)


def test_worker_without_gpus_does_not_divide_by_zero() -> None:
    cpu = Resources(2, 1000, 1000, 0)
    a = task_allocation(cpu, None, None, None, 1)
    assert a.gpus == 1
    assert not a.fits_in(cpu)


def test_more_than_the_worker_does_not_fit() -> None:
    a = task_allocation(BIG, 8, None, None, None)
    assert a.cores == 8
    assert not a.fits_in(BIG)
    assert a.memory <= BIG.memory and a.disk <= BIG.disk


def test_one_core_tasks_fill_every_core_whatever_the_memory() -> None:
    """N one-core tasks run at once on an N-core worker, even when memory is not divisible."""
    for cores in range(1, 17):
        for memory, disk in [(1000, 1000), (7777, 12345), (1024, 3), (0, 0)]:
            total = Resources(cores, memory, disk, 0)
            free = Resources(cores, memory, disk, 0)
            placed = 0
            while True:
                a = task_allocation(total, 1, None, None, None)
                if not a.fits_in(free):
                    break
                free.sub(a)
                placed += 1
            assert placed == cores, (cores, memory, disk)


# ------------------------------------------------------------------ choose_worker


def test_choose_returns_none_when_nothing_fits() -> None:
    busy = cand("w1", BIG, free=Resources(0, 0, 0, 0), running=4)
    small = cand("w2", Resources(1, 100, 100, 0))
    assert choose_worker([], (1, None, None, None), {}) is None
    assert choose_worker([busy], (1, None, None, None), {}) is None
    assert choose_worker([busy, small], (2, None, None, None), {}) is None
    assert choose_worker([small], (None, None, None, 1), {}) is None  # no gpu anywhere


def test_choose_a_fitting_worker() -> None:
    busy = cand("w1", BIG, free=Resources(0, 0, 0, 2), running=4)
    idle = cand("w2", Resources(2, 1000, 1000, 0))
    assert choose_worker([busy, idle], (1, None, None, None), {}) == (
        "w2", Resources(1, 500, 500, 0))


def test_whole_worker_task_needs_an_idle_worker() -> None:
    partly = cand("w1", BIG, free=Resources(3, 6000, 12000, 2), running=1)
    idle = cand("w2", Resources(2, 1000, 1000, 0))
    assert choose_worker([partly, idle], NONE, {}) == ("w2", Resources(2, 1000, 1000, 0))
    assert choose_worker([partly], NONE, {}) is None


def test_prefers_the_worker_with_most_input_bytes() -> None:
    ws = [cand("w1", BIG), cand("w2", BIG), cand("w3", BIG)]
    got = choose_worker(ws, (1, None, None, None), {"w2": 10, "w3": 5000})
    assert got is not None and got[0] == "w3"
    got = choose_worker(ws, (1, None, None, None), {"w1": 3, "w2": 2})
    assert got is not None and got[0] == "w1"


def test_input_bytes_beat_free_cores_but_not_fit() -> None:
    holder = cand("w1", BIG, free=Resources(1, 2000, 4000, 2), running=3)
    empty = cand("w2", BIG)
    got = choose_worker([empty, holder], (1, None, None, None), {"w1": 100})
    assert got is not None and got[0] == "w1"
    # the holder cannot fit a 2-core task: go elsewhere
    got = choose_worker([empty, holder], (2, None, None, None), {"w1": 100})
    assert got is not None and got[0] == "w2"


def test_without_locality_prefers_the_least_loaded() -> None:
    loaded = cand("w1", BIG, free=Resources(1, 2000, 4000, 2), running=3)
    light = cand("w2", BIG, free=Resources(3, 6000, 12000, 2), running=1)
    got = choose_worker([loaded, light], (1, None, None, None), {})
    assert got is not None and got[0] == "w2"


def test_allocation_is_relative_to_the_chosen_worker() -> None:
    ws = [cand("small", Resources(2, 1000, 1000, 0)), cand("big", BIG)]
    got = choose_worker(ws, (1, None, None, None), {"small": 1})
    assert got == ("small", Resources(1, 500, 500, 0))
    got = choose_worker(ws, (1, None, None, None), {"big": 1})
    assert got == ("big", Resources(1, 2000, 4000, 0))


def test_could_ever_fit() -> None:
    assert could_ever_fit([BIG], (4, None, None, None))
    assert not could_ever_fit([BIG], (5, None, None, None))
    assert not could_ever_fit([], (1, None, None, None))
    assert could_ever_fit([Resources(1, 10, 10, 0), BIG], (None, None, None, 2))


# ------------------------------------------------------------------ never over-commit

_res = st.builds(Resources, st.integers(0, 16), st.integers(0, 64000), st.integers(0, 64000),
                 st.integers(0, 4))
_opt = st.none() | st.integers(0, 20)
_decl = st.tuples(st.none() | st.integers(0, 8), st.none() | st.integers(0, 70000),
                  st.none() | st.integers(0, 70000), st.none() | st.integers(0, 4))


@settings(max_examples=40, deadline=None, database=None)
@given(totals=st.lists(_res, min_size=1, max_size=4), tasks=st.lists(_decl, max_size=30),
       data=st.data())
def test_packing_never_overcommits(
    totals: list[Resources], tasks: list[tuple[int | None, ...]], data: st.DataObject
) -> None:
    ws = [cand(f"w{i}", t) for i, t in enumerate(totals)]
    placed: list[tuple[Candidate, Resources]] = []
    local = {w.worker_id: data.draw(st.integers(0, 100)) for w in ws}
    for decl in tasks:
        got = choose_worker(ws, decl, local)  # type: ignore[arg-type]
        if got is None:
            # nothing fits: really, no worker had room
            for w in ws:
                assert not task_allocation(w.total, *decl).fits_in(w.free)  # type: ignore[arg-type]
            continue
        wid, alloc = got
        i, w = next((i, c) for i, c in enumerate(ws) if c.worker_id == wid)
        assert alloc == task_allocation(w.total, *decl)  # type: ignore[arg-type]
        assert alloc.fits_in(w.free)
        w.free.sub(alloc)
        ws[i] = w = w._replace(running=w.running + 1)
        placed.append((w, alloc))
        for c in ws:
            for r in ("cores", "memory", "disk", "gpus"):
                assert 0 <= getattr(c.free, r) <= getattr(c.total, r)
    # releasing everything gives back exactly the totals
    for w, alloc in placed:
        w.free.add(alloc)
    for c in ws:
        assert c.free == c.total
