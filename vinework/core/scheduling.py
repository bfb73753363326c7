"""Pure scheduling: how much of a worker a task takes, and which worker runs it.

Resource rule (TaskVine's): a task that declares no resources takes a whole
worker. A task that declares some gets, for each one it left out, the same
fraction of the worker as the largest fraction it asked for (at least one core).
Placement (TaskVine's scheduler modes): "files", the default, prefers among
workers where the task fits the one that already holds the most bytes of the
task's inputs, then the least loaded one; "fcfs" takes the first that fits (in
the order workers joined); "worst" the one with the most free resources;
"disk" the one with the most free disk; "time" the one whose tasks ran fastest
so far; "rand" a random one (drawn from the core's own seeded generator, so the
core stays deterministic).
"""

from __future__ import annotations

import math
import random
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
    avg_seconds: float = 0.0  # mean run time of the tasks it finished ("time" mode)


SCHEDULER_MODES = ("files", "fcfs", "worst", "disk", "time", "rand")


def choose_worker(
    candidates: Iterable[Candidate],
    declared: tuple[int | None, int | None, int | None, int | None],
    input_bytes_at: Mapping[str, int],
    mode: str = "files",
    rng: random.Random | None = None,
) -> tuple[str, Resources] | None:
    """The best worker for a task and what it would take there, or None if none fits.

    Args:
        candidates: connected workers with their free resources (in the order they joined).
        declared: the task's (cores, memory, disk, gpus), None where not declared.
        input_bytes_at: bytes of the task's inputs already cached, by worker id.
        mode: one of ``SCHEDULER_MODES`` (see the module docstring).
        rng: the generator "rand" draws from.
    """
    if mode != "files" and mode in SCHEDULER_MODES:
        return _choose_by_mode(candidates, declared, mode, rng)
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


def _choose_by_mode(
    candidates: Iterable[Candidate],
    declared: tuple[int | None, int | None, int | None, int | None],
    mode: str,
    rng: random.Random | None,
) -> tuple[str, Resources] | None:
    fits: list[tuple[Candidate, Resources]] = []
    for c in candidates:
        alloc = task_allocation(c.total, *declared)
        if alloc.fits_in(c.free):
            if mode == "fcfs":
                return c.worker_id, alloc
            fits.append((c, alloc))
    if not fits:
        return None
    if mode == "rand":
        c, alloc = fits[(rng or random.Random(0)).randrange(len(fits))]
    elif mode == "worst":
        c, alloc = max(fits, key=lambda p: (p[0].free.cores, p[0].free.memory,
                                            p[0].free.disk, p[0].free.gpus))
    elif mode == "disk":
        c, alloc = max(fits, key=lambda p: p[0].free.disk)
    else:  # "time"
        c, alloc = min(fits, key=lambda p: p[0].avg_seconds)
    return c.worker_id, alloc


def could_ever_fit(
    totals: Iterable[Resources],
    declared: tuple[int | None, int | None, int | None, int | None],
) -> bool:
    """True if some connected worker is big enough for the task when idle."""
    return any(task_allocation(t, *declared).fits_in(t) for t in totals)
