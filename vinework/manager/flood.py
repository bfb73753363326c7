"""What a worker's connection may send once it is a worker: frame sizes and rates.

``WORKER_FRAME_LIMITS``: the largest frame accepted per message type from a
worker (checked by the decoder as soon as a frame's tag has arrived, before
the frame is buffered): small control messages stay small, and only what
carries results or file lists may be large. Messages of types a worker never
sends are refused by the server whatever their size.

``within_budget``: a token bucket per connection, refilled at ``FLOOD_RATE``
messages a second up to ``FLOOD_BURST``; a connection that sends more for
long is dropped as a flood. Honest workers stay far below it (the fastest
path, library calls, sends about one message per call, at most a few
thousand a second per worker).
"""

from __future__ import annotations

import time
from typing import Protocol

from ..protocol import MAX_FRAME, CacheInvalid, CacheUpdate, Heartbeat, Leaving, TaskDone
from ..protocol.messages import (
    CacheReport,
    LibraryEnded,
    LibraryReady,
    OutputChunk,
)

FLOOD_RATE = 100_000  # messages a second, sustained
FLOOD_BURST = 500_000  # messages at once

WORKER_FRAME_LIMITS: dict[int, int] = {
    CacheUpdate.TAG: 4096,
    CacheInvalid.TAG: 16384,
    Heartbeat.TAG: 4 << 20,  # (lists the tasks it runs)
    Leaving.TAG: 4096,
    LibraryReady.TAG: 1024,
    LibraryEnded.TAG: 1 << 20,
    OutputChunk.TAG: 2 << 20,
    CacheReport.TAG: MAX_FRAME,
    TaskDone.TAG: MAX_FRAME,
}


class Budgeted(Protocol):
    budget: float
    refilled: float


def within_budget(conn: Budgeted, n: int, now: float | None = None) -> bool:
    """Charge ``n`` messages to ``conn``'s bucket; False once it is overdrawn."""
    t = time.monotonic() if now is None else now
    if conn.refilled == 0.0:  # its first messages: a full bucket
        conn.budget, conn.refilled = float(FLOOD_BURST), t
    conn.budget = min(float(FLOOD_BURST), conn.budget + (t - conn.refilled) * FLOOD_RATE) - n
    conn.refilled = t
    return conn.budget >= 0
