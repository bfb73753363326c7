"""The transaction log: one line per event of a run, for people, plots and status tools.

Format (one record per line, fields separated by single spaces; the last field
of TASK and FILE records may contain spaces):

    TIME KIND FIELD...

TIME is microseconds since the Unix epoch. KIND and its fields:

    MANAGER  START|END  name
    WORKER   worker_id CONNECTION host cores memory_mb disk_mb
    WORKER   worker_id DISCONNECTION reason
    WORKER   worker_id DRAINING reason | DRAINED -
    MANAGER  TUNE name value | HINT text | ERROR stimulus_id event
    TASK     task_id STATE worker attempt [detail]
             STATE is a state the task entered (INITIAL, WAITING, READY, STAGING,
             RUNNING, WAITING_RETRIEVAL, RETRIEVED, DONE; detail says why, e.g. the
             result name "success" on RETRIEVED), or a marker: SUBMITTED, RETRY (a run
             failed and another starts), FORSAKEN (its worker was lost or drained),
             RECOVERY (a finished task runs again to remake a lost temp), UNPLACEABLE
             (no connected worker could ever run it)
    TRANSFER file START source dest transfer_id
    TRANSFER file DONE source dest bytes seconds
    TRANSFER file FAILED source dest reason
    TRANSFER file QUEUED - dest reason
    FILE     file LOST|UNAVAILABLE|UNDECLARED|PRUNED|REPLICATE|CHECKPOINT detail
    DURABILITY file decision numbers

``source`` and ``dest`` are worker ids or the word ``manager``. Writes are
buffered and flushed at least once a second and at close.
"""

from __future__ import annotations

import io
import os
import time


class TxnLog:
    """An append-only, buffered transaction log file."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self._f: io.TextIOWrapper | None = open(path, "a", buffering=1 << 16)  # noqa: SIM115
        self._last_flush = time.monotonic()

    def write(self, kind: str, fields: tuple[object, ...], when_us: int = 0) -> None:
        """Append one record (``when_us``: its time, microseconds since the epoch; now if 0)."""
        f = self._f
        if f is None:
            return
        line = " ".join(map(str, fields))
        if "\n" in line:
            line = line.replace("\n", " ")
        f.write(f"{when_us or int(time.time() * 1e6)} {kind} {line}\n")

    def maybe_flush(self) -> None:
        now = time.monotonic()
        if self._f is not None and now - self._last_flush > 1.0:
            self._f.flush()
            self._last_flush = now

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_log(path: str) -> list[tuple[int, str, list[str]]]:
    """Parse a transaction log into (time_us, kind, fields)."""
    out = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split(" ")
            if len(parts) >= 2 and parts[0].isdigit():
                out.append((int(parts[0]), parts[1], parts[2:]))
    return out
