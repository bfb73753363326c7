"""The worker's side of its warm Python interpreters (see ``forkserver.py``).

``PythonRunner.start(call_id, mode, request)`` sends one call (``call_id`` is the
worker's own run id, never a manager task id, which a new manager may reuse) to a warm
interpreter and returns a future of its reply frame ``["done", call_id, status, kind,
data, traceback, measured]`` (``measured`` is empty in the crash frame). Mode "direct" uses a pool of executor processes (one call
at a time each, started lazily up to the pool size); mode "fork" uses one fork
server that forks a child per call. ``kill(call_id)`` stops a call: the fork
server kills its child; a direct executor is killed and replaced. All of it
runs on the worker's event loop: readers on socketpairs, no threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from typing import Any

from ..netio import READ_SIZE
from .forkserver import Framer, pack

CRASH = ["done", 0, 9, "crash", b"", "the Python interpreter running the task died", []]


class _Interpreter:
    """One warm process and the socket to it."""

    def __init__(self, mode: str, hoisted: list[str], on_frame: Any, on_eof: Any) -> None:
        parent, child = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vinework.worker.forkserver", str(child.fileno()), mode,
             *hoisted],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
        )
        child.close()
        parent.setblocking(False)
        self.sock = parent
        self.framer = Framer()
        self.busy_with: int | None = None
        self.alive = True
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = parent.recv(READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                on_eof(self)
                return
            for frame in self.framer.feed(data):
                on_frame(self, frame)

        loop.add_reader(parent.fileno(), readable)

    def send(self, req: list[Any]) -> None:
        if not self.alive:
            return
        self.sock.setblocking(True)
        try:
            self.sock.sendall(pack(req))
        except OSError:
            pass
        finally:
            self.sock.setblocking(False)

    def close(self) -> None:
        if not self.alive:
            return
        self.alive = False
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        with contextlib.suppress(OSError):
            self.sock.close()
        self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)


class PythonRunner:
    """Warm interpreters of both modes for one worker."""

    def __init__(self, pool_size: int, hoisted: list[str]) -> None:
        self.pool_size = max(1, pool_size)
        self.hoisted = hoisted
        self.idle: list[_Interpreter] = []
        self.direct: list[_Interpreter] = []
        self.forkserver: _Interpreter | None = None
        self.waiters: dict[int, asyncio.Future[list[Any]]] = {}
        self.where: dict[int, _Interpreter] = {}
        self._free = asyncio.Condition()
        self._queued = 0  # calls waiting for a free executor (they go first)

    # -------------------------------------------------------------- replies
    def _on_frame(self, interp: _Interpreter, frame: list[Any]) -> None:
        fut = self.waiters.get(frame[1])
        if fut is not None and not fut.done():
            fut.set_result(frame)

    def _on_eof(self, interp: _Interpreter) -> None:
        if interp is self.forkserver:
            self.forkserver = None
            victims = [t for t, i in self.where.items() if i is interp]
        else:
            if interp in self.direct:
                self.direct.remove(interp)
            if interp in self.idle:
                self.idle.remove(interp)
            victims = [interp.busy_with] if interp.busy_with is not None else []
        for tid in victims:
            fut = self.waiters.get(tid)
            if fut is not None and not fut.done():
                fut.set_result(list(CRASH))
        if self._queued:  # a call waiting for an executor may start a new one now
            asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._free:
            self._free.notify_all()

    # -------------------------------------------------------------- running
    async def _acquire_direct(self) -> _Interpreter:
        self._queued += 1
        try:
            async with self._free:
                while True:
                    if self.idle:
                        return self.idle.pop()
                    if len(self.direct) < self.pool_size:
                        interp = _Interpreter("direct", self.hoisted, self._on_frame,
                                              self._on_eof)
                        self.direct.append(interp)
                        return interp
                    await self._free.wait()
        finally:
            self._queued -= 1

    def start(self, call_id: int, mode: str, request: list[Any]) -> asyncio.Future[list[Any]]:
        """Start one call; the future of its reply frame (a crash frame if the interpreter
        died). With a warm executor idle and no call queued before this one, the request
        is sent now, without waiting for a turn of the loop."""
        if mode == "fork" or not self.idle or self._queued:
            return asyncio.ensure_future(self.run(call_id, mode, request))
        interp = self.idle.pop()
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiters[call_id] = fut
        self.where[call_id] = interp
        interp.busy_with = call_id

        try:
            interp.send(request)
        except BaseException:  # (a request that cannot be packed): the executor stays idle
            self._release(call_id, interp)
            raise
        fut.add_done_callback(lambda _: self._release(call_id, interp))
        return fut

    def _release(self, call_id: int, interp: _Interpreter | None) -> None:
        """The call is over: forget it; a direct executor still alive is idle again."""
        self.waiters.pop(call_id, None)
        self.where.pop(call_id, None)
        if interp is not None and interp is not self.forkserver:
            interp.busy_with = None
            if interp.alive:
                self.idle.append(interp)
                if self._queued:  # a call waiting for an executor takes it
                    asyncio.ensure_future(self._notify())

    async def run(self, call_id: int, mode: str, request: list[Any]) -> list[Any]:
        """Run one call; returns the reply frame (a crash frame if the interpreter died)."""
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiters[call_id] = fut
        interp: _Interpreter | None = None
        try:
            if mode == "fork":
                if self.forkserver is None or not self.forkserver.alive:
                    self.forkserver = _Interpreter("fork", self.hoisted, self._on_frame,
                                                   self._on_eof)
                interp = self.forkserver
            else:
                interp = await self._acquire_direct()
                interp.busy_with = call_id
            self.where[call_id] = interp
            interp.send(request)
            return await fut
        finally:
            self._release(call_id, interp)

    def kill(self, call_id: int) -> None:
        """Stop a running call (time limit, cancel)."""
        interp = self.where.get(call_id)
        if interp is None:
            return
        if interp is self.forkserver:
            interp.send(["kill", call_id])
        else:
            interp.close()
            self._on_eof(interp)

    def hoist(self, modules: list[str]) -> None:
        new = [m for m in modules if m not in self.hoisted]
        self.hoisted.extend(new)
        if new:
            for interp in [*self.direct, *([self.forkserver] if self.forkserver else [])]:
                interp.send(["hoist", new])

    def close(self) -> None:
        for interp in [*self.direct, *([self.forkserver] if self.forkserver else [])]:
            interp.close()
        self.direct.clear()
        self.idle.clear()
        self.forkserver = None
