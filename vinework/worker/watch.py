"""Watched outputs: streaming what a running task appends to an output file.

``add_output(f, name, watch=True)`` asks for the output to reach the manager
while the task runs, as TaskVine's ``VINE_WATCH`` does (a log the user can
follow). ``OutputWatcher`` polls the outputs named in ``RunTask.watch_outputs``
in the task's sandbox every ``interval`` seconds (``VINEWORK_WATCH_INTERVAL``,
0.5 s by default) and posts what was appended since the last look as
``OutputGrew`` events, at most ``CHUNK`` bytes each and ``PER_POLL`` bytes per
poll per file (so a task writing faster than that is streamed at that pace
and the rest comes with its normal output retrieval). A watched output is read
only as a regular file reached through real directories of the sandbox (a
symlink, a file under a symlinked directory, a fifo are not read). ``finish`` makes a last
pass after the process ended, so every byte written before the exit has been
posted before the task's end is reported. A file that shrinks (rewritten from
the start) is streamed again from offset 0. The core turns the events into
``OutputChunk`` messages; the manager writes them into the user's file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable, Mapping

from ..protocol import RunTask
from ..trees import TreeError, open_under
from . import events as ev
from .sandbox import SandboxError, safe_join
from .taskenv import env_seconds

CHUNK = 1 << 20
PER_POLL = 4 << 20


def watch_interval(environ: Mapping[str, str]) -> float:
    """Seconds between two looks at a watched output (``VINEWORK_WATCH_INTERVAL``).

    Raises:
        ValueError: the variable is not a positive number.
    """
    return env_seconds(environ, "VINEWORK_WATCH_INTERVAL", 0.5)


class OutputWatcher:
    """Streams the watched outputs of one running task attempt."""

    def __init__(self, task: RunTask, sandbox: str, post: Callable[[ev.Event], None],
                 interval: float) -> None:
        self.task = task
        self.post = post
        self.interval = interval
        remotes = dict(task.outputs)
        self.paths: dict[str, str] = {}
        for name in task.watch_outputs:
            remote = remotes.get(name)
            if remote is None:
                continue
            with contextlib.suppress(SandboxError):
                safe_join(sandbox, remote)
                self.paths[name] = remote
        self.sandbox = sandbox
        self.offsets = dict.fromkeys(self.paths, 0)
        self._job: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.paths:
            self._job = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._poll(PER_POLL)

    def finish(self) -> None:
        """Stop polling and post everything written so far."""
        if self._job is not None:
            self._job.cancel()
            self._job = None
        if self.paths:
            self._poll(1 << 62)

    def _poll(self, budget: int) -> None:
        for name, remote in self.paths.items():
            try:  # never through a link, never a fifo (it would block the loop)
                dfd, base = open_under(self.sandbox, remote)
                try:
                    fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                                 | os.O_CLOEXEC, dir_fd=dfd)
                finally:
                    os.close(dfd)
            except (OSError, TreeError):
                continue  # not made yet (or not a plain file)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    continue
                size = st.st_size
                off = self.offsets[name]
                if size < off:
                    off = 0  # rewritten: start again
                left = min(budget, size - off)
                while left > 0:
                    data = os.pread(fd, min(CHUNK, left), off)
                    if not data:
                        break
                    self.post(ev.OutputGrew(task_id=self.task.task_id,
                                            attempt=self.task.attempt, name=name, offset=off,
                                            data=data))
                    off += len(data)
                    left -= len(data)
                self.offsets[name] = off
            except OSError:
                pass
            finally:
                os.close(fd)
