"""The manager's side of watched outputs: writing streamed bytes into the user's file.

A worker streams what a running task appends to an output declared with
``add_output(f, name, watch=True)`` as ``OutputChunk`` messages (see
``worker/watch.py``); ``write_chunk`` puts each at its offset in the local file
``f`` names, so the user can follow it while the task runs. The normal
retrieval at the end of the task then replaces the file with the whole
output. A chunk is written only if it belongs to a watched local-file output
of a task running on the worker that sent it, in its current attempt: a stale
chunk (from an attempt that was killed or moved) is ignored, so a worker can
never write into a file that is not the output of its own running task.
Called on the manager's event loop, where the core's state may be read.
"""

from __future__ import annotations

import logging
import os

from ..constants import VINE_WATCH
from ..core import ManagerState, TaskState
from ..protocol.messages import OutputChunk

log = logging.getLogger("vinework.manager")


def chunk_target(state: ManagerState, worker_id: str, chunk: OutputChunk) -> str | None:
    """The local path ``chunk`` may be written to, or None if it must be ignored."""
    t = state.tasks.get(chunk.task_id)
    if t is None or t.worker != worker_id or t.attempt != chunk.attempt \
            or t.state is not TaskState.RUNNING or chunk.offset < 0:
        return None
    flags = dict(t.spec.mount_flags)
    if not any(n == chunk.name and flags.get(remote, 0) & VINE_WATCH
               for n, remote in t.spec.outputs):
        return None
    f = state.files.get(chunk.name)
    if f is None or f.spec.kind != "file" or not f.spec.path:
        return None
    return f.spec.path


def write_chunk(state: ManagerState, worker_id: str, chunk: OutputChunk) -> None:
    """Write ``chunk`` into the watched output it belongs to (see the module docstring)."""
    path = chunk_target(state, worker_id, chunk)
    if path is None:
        log.debug("ignoring a stale output chunk of task %d from %s", chunk.task_id, worker_id)
        return
    try:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if chunk.offset == 0 else 0)
        fd = os.open(path, flags, 0o644)
        try:
            os.pwrite(fd, chunk.data, chunk.offset)
        finally:
            os.close(fd)
    except OSError as e:
        log.warning("cannot write the watched output of task %d to %s: %s",
                    chunk.task_id, path, e)
