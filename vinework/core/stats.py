"""Counters the manager keeps (``m.stats``) and the knobs ``m.tune`` sets.

Pure data: the core updates the counters; ``Manager.stats`` hands the user a
copy (made on the manager's loop thread). Names follow TaskVine's where
TaskVine has one. Every byte that crosses the manager's link is counted by
path: files sent to workers (``bytes_sent``), files brought back
(``bytes_received_files``), results carried inside completion messages
(``bytes_received_inline``), and control messages both ways
(``bytes_control_in``/``bytes_control_out``, counted by the shell);
``bytes_received`` is files plus inline results.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class ManagerStats:
    """A snapshot of what the manager has done (all counters since start)."""

    # TaskVine's names and meanings (vine_stats)
    tasks_submitted: int = 0
    tasks_done: int = 0  # finished and handed back, failures included
    tasks_failed: int = 0  # finished with a result other than "success"
    tasks_cancelled: int = 0
    tasks_dispatched: int = 0  # runs sent to workers
    tasks_exhausted_attempts: int = 0  # runs that exhausted their resources
    tasks_waiting: int = 0  # (now) not yet on a worker
    tasks_on_workers: int = 0  # (now) staging or running on a worker
    tasks_running: int = 0  # (now) running on a worker
    tasks_with_results: int = 0  # (now) finished, not yet returned by wait()
    workers_connected: int = 0
    workers_init: int = 0
    workers_idle: int = 0  # (now) connected and running nothing
    workers_busy: int = 0  # (now) running at least one task
    workers_able: int = 0  # (now) able to run the largest waiting task
    workers_joined: int = 0
    workers_removed: int = 0
    workers_released: int = 0  # asked to leave (workers_shutdown, drains)
    workers_idled_out: int = 0
    workers_slow: int = 0
    workers_blocked: int = 0
    workers_lost: int = 0
    time_when_started: int = 0  # microseconds since the epoch
    time_workers_execute: int = 0  # microseconds of task runs, all outcomes
    time_workers_execute_good: int = 0  # microseconds of runs that succeeded
    bandwidth: float = 0.0  # MB/s of the manager's own transfers
    total_cores: int = 0
    total_memory: int = 0
    total_disk: int = 0
    total_gpus: int = 0
    committed_cores: int = 0
    committed_memory: int = 0
    committed_disk: int = 0
    committed_gpus: int = 0
    max_cores: int = 0
    max_memory: int = 0
    max_disk: int = 0
    max_gpus: int = 0
    min_cores: int = 0
    min_memory: int = 0
    min_disk: int = 0
    min_gpus: int = 0
    inuse_cache: int = 0  # bytes in the workers' caches
    # vinework's own
    tasks_recovery: int = 0
    bytes_sent: int = 0  # files, manager -> workers
    bytes_received: int = 0  # files and inline results, workers -> manager
    bytes_received_files: int = 0  # retrievals: outputs, fetch_file, checkpoints
    bytes_received_inline: int = 0  # results and output text inside TaskDone messages
    bytes_control_in: int = 0  # every frame from workers (inline results included)
    bytes_control_out: int = 0  # every frame to workers
    bytes_peer: int = 0  # worker -> worker
    transfers_sent: int = 0
    transfers_received: int = 0
    transfers_peer: int = 0
    files_lost: int = 0
    files_pruned: int = 0
    files_evicted: int = 0  # cached copies deleted to keep a worker within its disk
    replicas_made: int = 0
    bytes_checkpointed: int = 0
    recovery_seconds: float = 0.0

    def copy(self) -> ManagerStats:
        return dataclasses.replace(self)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
