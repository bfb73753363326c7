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

    tasks_submitted: int = 0
    tasks_done: int = 0
    tasks_failed: int = 0
    tasks_recovery: int = 0
    workers_connected: int = 0
    workers_joined: int = 0
    workers_lost: int = 0
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
    replicas_made: int = 0
    bytes_checkpointed: int = 0
    recovery_seconds: float = 0.0

    def copy(self) -> ManagerStats:
        return dataclasses.replace(self)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# name -> (attribute, converter); TaskVine's names are accepted as aliases
_KNOBS: dict[str, tuple[str, Any]] = {
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
    "python-exec": ("python_exec", str),
    "peer-transfers": ("peer_transfers", bool),
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
    peer_transfers: bool = True
    python_exec: str = "direct"  # "direct": warm executors; "fork": a forked child per call

    @staticmethod
    def names() -> list[str]:
        return sorted(_KNOBS)

    def set(self, name: str, value: object) -> None:
        """Set a knob by its name; an unknown name or a bad value raises ValueError."""
        if name not in _KNOBS:
            raise ValueError(f"unknown tunable {name!r}; known: {', '.join(self.names())}")
        attr, conv = _KNOBS[name]
        try:
            v = conv(value)
        except (TypeError, ValueError):
            raise ValueError(f"bad value {value!r} for tunable {name!r}") from None
        if attr == "python_exec" and v not in ("direct", "fork"):
            raise ValueError("python-exec must be 'direct' or 'fork'")
        if attr == "durability" and v not in ("manual", "auto"):
            raise ValueError("durability must be 'manual' or 'auto'")
        if isinstance(v, int | float) and not isinstance(v, bool) and v < 0:
            raise ValueError(f"tunable {name!r} must be >= 0")
        if attr == "temp_replica_count" and v < 1:
            raise ValueError("temp-replica-count must be >= 1")
        setattr(self, attr, v)
