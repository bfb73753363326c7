"""Pure scheduling: how much of a worker a task takes, and which worker runs it.

Resource rule (TaskVine's): a task that declares no resources takes a whole
worker. A task that declares some gets, for each one it left out, the same
fraction of the worker as the largest fraction it asked for (at least one core).
Placement: among workers where the task fits, prefer the one that already
holds the most bytes of the task's inputs, then the least loaded one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(slots=True)
class Resources:
    """cores, memory (MB), disk (MB), gpus."""

    cores: int = 0
    memory: int = 0
    disk: int = 0
    gpus: int = 0

    def fits_in(self, free: Resources) -> bool:
        return (
            self.cores <= free.cores
            and self.memory <= free.memory
            and self.disk <= free.disk
            and self.gpus <= free.gpus
        )

    def add(self, other: Resources) -> None:
        self.cores += other.cores
        self.memory += other.memory
        self.disk += other.disk
        self.gpus += other.gpus

    def sub(self, other: Resources) -> None:
        self.cores -= other.cores
        self.memory -= other.memory
        self.disk -= other.disk
        self.gpus -= other.gpus


def task_allocation(
    total: Resources,
    cores: int | None,
    memory: int | None,
    disk: int | None,
    gpus: int | None,
) -> Resources:
    """What a task with these declarations takes of a worker whose total is ``total``."""
    if memory is None and disk is None and gpus is None and cores is not None:
        # the common case, fast: cores only; the rest in proportion (rounded down)
        frac = min(1.0, cores / total.cores) if total.cores > 0 else 0.0
        return Resources(cores, int(math.floor(frac * total.memory + 1e-9)),
                         int(math.floor(frac * total.disk + 1e-9)), 0)
    asked = {"cores": cores, "memory": memory, "disk": disk, "gpus": gpus}
    if all(v is None for v in asked.values()):
        return Resources(total.cores, total.memory, total.disk, total.gpus)
    fractions = [
        v / getattr(total, k) for k, v in asked.items() if v is not None and getattr(total, k) > 0
    ]
    frac = min(1.0, max(fractions, default=0.0))

    def pick(name: str, value: int | None) -> int:
        if value is not None:
            return value
        if name == "gpus":
            return 0  # never hand out GPUs a task did not ask for
        # round down (as TaskVine does) so that 1/frac such tasks always fit together
        return int(math.floor(frac * getattr(total, name) + 1e-9))

    alloc = Resources(
        pick("cores", cores), pick("memory", memory), pick("disk", disk), pick("gpus", gpus)
    )
    if cores is None and gpus is None and alloc.cores == 0 and total.cores > 0:
        alloc.cores = 1
    return alloc


class Candidate(NamedTuple):
    """A worker as the scheduler sees it (a tuple: one is made per worker per placement)."""

    worker_id: str
    total: Resources
    free: Resources
    running: int


def choose_worker(
    candidates: Iterable[Candidate],
    declared: tuple[int | None, int | None, int | None, int | None],
    input_bytes_at: Mapping[str, int],
) -> tuple[str, Resources] | None:
    """The best worker for a task and what it would take there, or None if none fits.

    Args:
        candidates: connected workers with their free resources.
        declared: the task's (cores, memory, disk, gpus), None where not declared.
        input_bytes_at: bytes of the task's inputs already cached, by worker id.
    """
    best: tuple[tuple[int, int, float], str, Resources] | None = None
    for c in candidates:
        alloc = task_allocation(c.total, *declared)
        if not alloc.fits_in(c.free):
            continue
        load = c.running / max(1, c.total.cores)
        key = (input_bytes_at.get(c.worker_id, 0), c.free.cores, -load)
        if best is None or key > best[0]:
            best = (key, c.worker_id, alloc)
    if best is None:
        return None
    return best[1], best[2]


def could_ever_fit(
    totals: Iterable[Resources],
    declared: tuple[int | None, int | None, int | None, int | None],
) -> bool:
    """True if some connected worker is big enough for the task when idle."""
    return any(task_allocation(t, *declared).fits_in(t) for t in totals)
