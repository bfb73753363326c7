"""The knobs ``Manager.tune`` sets: vinework's own and every TaskVine tunable name.

``TUNABLES`` maps a name to the ``Tunables`` attribute it sets and how its
value converts. TaskVine's names that change something here map to the same
attribute as vinework's (``worker-source-max-transfers`` and
``file-source-max-transfers`` share one knob). TaskVine's names that have no
meaning in vinework are in ``NO_EFFECT`` with the reason; ``tune`` accepts them
and logs once that they do nothing. Any other name is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# name -> (attribute, converter)
TUNABLES: dict[str, tuple[str, Any]] = {
    "keepalive-interval": ("keepalive_interval", float),
    "keepalive-timeout": ("keepalive_timeout", float),
    "worker-source-max-transfers": ("transfer_source_max", int),
    "transfer-source-max": ("transfer_source_max", int),
    "file-source-max-transfers": ("transfer_source_max", int),
    "transfer-avoid-seconds": ("transfer_avoid_seconds", float),
    "temp-replica-count": ("temp_replica_count", int),
    "durability": ("durability", str),
    "checkpoint-dir": ("checkpoint_dir", str),
    "validate": ("validate", bool),
    "unplaceable-hint-delay": ("unplaceable_hint_delay", float),
    "no-worker-hint-delay": ("no_worker_hint_delay", float),
    "hungry-minimum": ("hungry_minimum", int),
    "hungry-minimum-factor": ("hungry_minimum_factor", float),
    "attempt-schedule-depth": ("attempt_schedule_depth", int),
    "max-task-stdout-storage": ("stdout_max", int),
    "wait-for-workers": ("wait_for_workers", int),
    "max-workers": ("max_workers", int),
    "python-exec": ("python_exec", str),
    "peer-transfers": ("peer_transfers", bool),
    "scheduler": ("scheduler", str),
    "url-fetch-attempts": ("url_fetch_attempts", int),
    "perf-log-interval": ("perf_log_interval", float),
}

# TaskVine tunables accepted with no effect here, and why (shown in the docs and the log)
NO_EFFECT: dict[str, str] = {
    "category-steady-n-tasks": "no automatic resource labelling (category modes are fixed)",
    "clean-redundant-replicas": "durability decides the replicas of each temp",
    "default-transfer-rate": "transfers are not timed out by an assumed rate",
    "disconnect-slow-worker-factor": "slow workers are not disconnected",
    "disconnect-slow-workers-factor": "slow workers are not disconnected",
    "disk-proportion-available-to-task": "a task's disk is what it asks for or its share",
    "enforce-worker-eviction-interval": "workers are not evicted periodically",
    "force-proportional-resources": "resources are always given proportionally",
    "proportional-resources": "resources are always given proportionally",
    "force-proportional-resources-whole-tasks": "proportions are not rounded to whole tasks",
    "proportional-whole-tasks": "proportions are not rounded to whole tasks",
    "immediate-recovery": "lost temps are remade when needed or by the durability policy",
    "large-task-check-interval": "a task no worker fits is explained after "
                                 "unplaceable-hint-delay instead",
    "load-from-shared-filesystem": "inputs always move through the caches",
    "long-timeout": "message timeouts are the keepalive's",
    "short-timeout": "message timeouts are the keepalive's",
    "max-library-retries": "a library whose set-up fails 3 times in a row is broken, and a "
                           "call its library ended under is re-run within its retries",
    "watch-library-logfiles": "library logs come back as the workers report them "
                              "(library-logs/)",
    "max-new-workers": "every worker that connects is accepted at once",
    "max-retrievals": "results are retrieved as they come",
    "worker-retrievals": "results are retrieved as they come",
    "wait-retrieve-many": "results are retrieved as they come",
    "min-transfer-timeout": "transfers are not timed out by size",
    "monitor-interval": "resources are measured once, when the task ends",
    "resource-management-interval": "no periodic resource re-measurement",
    "option-blocklist-slow-workers-timeout": "slow workers are not blocked",
    "prefer-dispatch": "dispatch and retrieval are not traded against each other",
    "ramp-down-heuristic": "tasks get what they ask for",
    "resource-submit-multiplier": "workers are not over-committed",
    "asynchrony-multiplier": "workers are not over-committed",
    "sandbox-grow-factor": "sandboxes are not grown after exhaustion",
    "shift-disk-load": "temps are placed by the durability policy",
    "task-groups": "no task groups",
    "transfer-outlier-factor": "slow transfers are not killed",
    "transfer-replica-per-cycle": "replicas are scheduled as soon as possible",
    "transfer-temps-recovery": "the durability policy re-replicates temps",
    "transient-error-interval": "no back-off after transient errors",
    "update-interval": "no catalog server is contacted",
}


@dataclass(slots=True)
class Tunables:
    """Everything ``Manager.tune`` can change."""

    keepalive_interval: float = 5.0
    keepalive_timeout: float = 30.0
    transfer_source_max: int = 3
    transfer_avoid_seconds: float = 10.0
    temp_replica_count: int = 1
    durability: str = "auto"  # "auto" (default) | "manual"
    checkpoint_dir: str = ""
    validate: bool = False  # check every invariant after every event (slow; for debugging)
    unplaceable_hint_delay: float = 5.0  # say why a task no worker can run waits, after this
    no_worker_hint_delay: float = 10.0  # hint that no worker is connected, after this
    hungry_minimum: int = 10
    hungry_minimum_factor: float = 2.0
    attempt_schedule_depth: int = 100
    stdout_max: int = 1 << 30  # bytes of a task's stdout kept (max-task-stdout-storage)
    wait_for_workers: int = 0  # dispatch nothing until this many workers are connected
    max_workers: int = -1  # refuse workers beyond this many (-1: no limit)
    peer_transfers: bool = True
    python_exec: str = "direct"  # "direct": warm executors; "fork": a forked child per call
    scheduler: str = "files"  # worker selection (Manager.set_scheduler)
    url_fetch_attempts: int = 3  # failed fetches of one URL file before its tasks end
    perf_log_interval: float = 0.5  # seconds at least between performance-log rows

    @staticmethod
    def names() -> list[str]:
        return sorted(TUNABLES)

    def set(self, name: str, value: object) -> None:
        """Set a knob by its name; an unknown name or a bad value raises ValueError
        (``Manager.tune`` turns that into TaskVine's -1 and a logged warning)."""
        if name in NO_EFFECT:
            return
        if name not in TUNABLES:
            raise ValueError(f"unknown tunable {name!r}; known: {', '.join(self.names())}")
        attr, conv = TUNABLES[name]
        try:
            v = conv(value)
        except (TypeError, ValueError):
            raise ValueError(f"bad value {value!r} for tunable {name!r}") from None
        if attr == "python_exec" and v not in ("direct", "fork"):
            raise ValueError("python-exec must be 'direct' or 'fork'")
        if attr == "scheduler" and v not in ("files", "fcfs", "worst", "disk", "time", "rand"):
            raise ValueError("scheduler must be one of files, fcfs, worst, disk, time, rand")
        if attr == "durability" and v not in ("manual", "auto"):
            raise ValueError("durability must be 'manual' or 'auto'")
        if attr == "max_workers" and v < 0:
            v = -1
        elif isinstance(v, int | float) and not isinstance(v, bool) and v < 0:
            raise ValueError(f"tunable {name!r} must be >= 0")
        if attr == "temp_replica_count" and v < 1:
            raise ValueError("temp-replica-count must be >= 1")
        setattr(self, attr, v)
