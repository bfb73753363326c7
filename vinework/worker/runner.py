"""Running task attempts for the worker's shell: sandboxes, processes, time limits, outputs.

``TaskRunner`` carries out the task instructions of the core (``StartTask``,
``KillTask``, ``CollectOutputs``, ``CleanupTask``) and reports what happened
as events through the ``post`` callback it is given (``TaskExited``,
``OutputsCollected``). It decides nothing: outcomes are classified by the core.

A command task runs in its sandbox under ``/bin/sh`` (``sandbox.CommandProcess``)
with the environment of ``taskenv.py`` and the worker's ``--task-wrapper``; it
is reaped with ``os.wait4``, so its wall time, cpu time and peak memory are
measured (``TaskExited.measured``). A PythonTask runs in a warm interpreter
(``pypool.py``). For both, ``time_max`` (seconds from the start) and
``time_end`` (wall clock) arm timers that kill the attempt and say why; the
task's stdout+stderr file is read and capped by ``sandbox.take_output``, and a
stdout too large to travel inline is moved into the cache by ``collect``.

A sandbox the worker cannot prepare for its own reasons (an I/O error, no
space, a sandbox left by an earlier worker on the same workdir that cannot be
replaced) is reported as a worker error (FORSAKEN: not the task's fault); an
input that is not there, or a remote name that escapes the sandbox, as a
setup error (INPUT_MISSING). Every failure while setting a task up ends in a
``TaskExited``: a task is never left without a result.

Outputs are taken through ``Cache.store_from`` with the sandbox as root: an
output that is a symbolic link, lies under one, or is a special file is
reported missing with the reason. Inputs shared with the cache
(``sandbox.SharedInput``: large files on filesystems without reflinks) are
checked when the attempt is cleaned up; one a task changed is reported lost
(``FileLost``), so the cache never serves the changed bytes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ..protocol import RunTask
from . import events as ev
from . import sandbox as sb
from .cache import Cache, CacheError
from .pypool import PythonRunner
from .taskenv import (
    base_environment,
    environment_changes,
    task_environment,
    wrap_command,
)
from .watch import OutputWatcher, watch_interval

log = logging.getLogger("vinework.worker")


class TaskRunner:
    """The processes, sandboxes and result files of the task attempts in progress."""

    def __init__(self, cache: Cache, sandboxes: str, py_sandboxes: str, cores: int,
                 hoisted: list[str], post: Callable[[ev.Event], None],
                 task_wrapper: str = "") -> None:
        self.cache = cache
        self.box_pool = sb.SandboxPool(sandboxes)
        self.py_box_pool = sb.SandboxPool(py_sandboxes)
        self.cores = cores
        self.hoisted = hoisted
        self.post = post
        self.task_wrapper = task_wrapper
        self.watch_interval = watch_interval(os.environ)
        self.copy_max = sb.copy_max_of(os.environ)
        self.procs: dict[int, sb.CommandProcess] = {}  # run id -> command process
        self.py_calls: dict[int, asyncio.Future[list[Any]]] = {}  # run id -> runner call
        self.py_killed_for: dict[int, str] = {}  # run id -> time limit that killed it
        self.boxes: dict[int, tuple[sb.SandboxPool, str]] = {}  # run id -> sandbox
        self.py_out: dict[int, str] = {}  # run id -> result part file
        self.optional: dict[int, frozenset[str]] = {}  # run id -> outputs never missing
        self.shared: dict[int, list[sb.SharedInput]] = {}  # run id -> inputs to check
        self.python: PythonRunner | None = None  # warm interpreters, made on first use

    # ------------------------------------------------------------------ instructions
    def start(self, ins: ev.StartTask) -> None:
        """Set the attempt up and start it now (a PythonTask's request goes to an idle warm
        interpreter at once); what it ends with is posted as ``TaskExited``."""
        box = self._set_up(ins.run_id, ins.task)
        if box is None:
            return
        try:
            if ins.task.python_payload is not None:
                call = self._start_python(ins.run_id, ins.task, box, ins.inline_max,
                                          ins.gpu_ids)
                self._when_python_ends(ins.run_id, ins.task, box, call)
            else:
                asyncio.ensure_future(self._run(ins.run_id, ins.task, box,
                                                self._run_command(ins.run_id, ins.task, box,
                                                                  ins.gpu_ids)))
        except Exception as e:  # a worker-side bug must not kill the worker
            log.exception("task %d failed inside the worker", ins.task.task_id)
            self.post(ev.TaskExited(run_id=ins.run_id, wall=time.time(), worker_error=str(e)))

    def kill(self, run_id: int, reason: str = "") -> None:
        """Kill an attempt (``reason``: the time limit that did it, "" for a Kill)."""
        proc = self.procs.get(run_id)
        if proc is not None:
            proc.kill(reason)
            return
        call = self.py_calls.get(run_id)
        if call is None or self.python is None:
            return
        if reason:
            self.py_killed_for.setdefault(run_id, reason)
        if run_id in self.python.where:
            self.python.kill(run_id)
        else:
            call.cancel()

    def hoist(self, modules: list[str]) -> None:
        mods = [m for m in modules if m not in self.hoisted]
        self.hoisted.extend(mods)
        if self.python is not None:
            self.python.hoist(mods)

    def collect(self, ins: ev.CollectOutputs) -> None:
        """Move the outputs (result file, big stdout) into the cache; post what happened."""
        got = self.boxes.get(ins.run_id)
        if got is None:  # its sandbox could not even be made
            self.post(ev.OutputsCollected(
                run_id=ins.run_id, wall=time.time(), stored=[],
                missing=[r for n, r in ins.outputs if n not in self.optional.get(ins.run_id, ())],
                result_error="no sandbox" if ins.python_result else "",
                stdout_error="no sandbox" if ins.stdout else ""))
            return
        _, box = got
        stored: list[tuple[str, int]] = []
        missing: list[str] = []
        disk_full = result_error = ""
        if ins.python_result:
            try:
                stored.append((ins.python_result,
                               self.cache.commit(ins.python_result, self.py_out[ins.run_id])))
            except (OSError, CacheError) as e:
                result_error = str(e)
        optional = self.optional.get(ins.run_id, frozenset())
        for name, remote in ins.outputs:
            if result_error:
                break
            src = sb.safe_join(box, remote)
            if not os.path.lexists(src):
                if name not in optional:  # failure_only/success_only: never missing
                    missing.append(remote)
                continue
            try:
                stored.append((name, self.cache.store_from(name, src, root=box)))
            except (OSError, CacheError) as e:
                if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                    disk_full = remote
                    break
                missing.append(f"{remote} ({e})")
        stdout_stored, stdout_error = -1, ""
        if ins.stdout:
            try:
                stdout_stored = self.cache.store_from(
                    ins.stdout, os.path.join(box, sb.OUTPUT_NAME), root=box)
            except (OSError, CacheError) as e:
                stdout_error = str(e)
        self.post(ev.OutputsCollected(run_id=ins.run_id, wall=time.time(), stored=stored,
                                      missing=missing, disk_full=disk_full,
                                      result_error=result_error, stdout_stored=stdout_stored,
                                      stdout_error=stdout_error))

    def cleanup(self, run_id: int) -> None:
        self.optional.pop(run_id, None)
        for name, why in sb.changed_inputs(self.shared.pop(run_id, [])):
            log.warning("input %s of run %d changed in the cache: %s", name, run_id, why)
            self.post(ev.FileLost(name=name, reason=f"{name}: {why}"))
        pool, box = self.boxes.pop(run_id, (None, ""))
        if pool is not None:  # emptied after this turn: the result is sent first
            asyncio.get_running_loop().call_soon(pool.release, box)
        part = self.py_out.pop(run_id, "")
        if part:
            with contextlib.suppress(OSError):
                os.unlink(part)

    def close(self) -> None:
        for p in self.procs.values():
            p.kill()
        if self.python is not None:
            self.python.close()
            self.python = None

    # ------------------------------------------------------------------ running
    def _set_up(self, run_id: int, task: RunTask) -> str | None:
        """The attempt's sandbox, made ready; None (its ``TaskExited`` posted) if it
        cannot be."""
        pool = self.box_pool if task.python_payload is None else self.py_box_pool
        try:
            box = pool.acquire()
        except OSError as e:
            self.post(ev.TaskExited(run_id=run_id, wall=time.time(),
                                    worker_error=f"cannot make a sandbox: {e}"))
            return None
        self.boxes[run_id] = (pool, box)
        try:
            self.shared[run_id] = sb.set_up(box, task, self.cache.path, self.copy_max)
            if task.optional_outputs:
                self.optional[run_id] = frozenset(task.optional_outputs)
        except (sb.SandboxError, CacheError) as e:
            self.post(ev.TaskExited(run_id=run_id, wall=time.time(), setup_error=str(e)))
            return None
        except OSError as e:
            self.post(ev.TaskExited(run_id=run_id, wall=time.time(),
                                    worker_error=f"cannot set up the sandbox: {e}"))
            return None
        except Exception as e:  # a worker-side bug: still a result, never a silent task
            log.exception("setting up task %d failed inside the worker", task.task_id)
            self.post(ev.TaskExited(run_id=run_id, wall=time.time(),
                                    worker_error=f"cannot set up the sandbox: {e}"))
            return None
        return box

    async def _run(self, run_id: int, task: RunTask, box: str,
                   running: Coroutine[Any, Any, ev.TaskExited]) -> None:
        """Await the attempt and post how it ended."""
        try:
            done = await running
        except Exception as e:  # a worker-side bug must not kill the worker
            done = self._worker_error(run_id, task, box, e)
        self.post(done)

    def _worker_error(self, run_id: int, task: RunTask, box: str,
                      e: Exception) -> ev.TaskExited:
        """How an attempt ended when the worker itself failed running it (logged): a
        worker error, with whatever output the task left."""
        log.exception("task %d failed inside the worker", task.task_id)
        try:
            out = sb.take_output(box, task.stdout_max)
        except Exception:
            out = sb.Output("", 0, False)
        return ev.TaskExited(run_id=run_id, wall=time.time(), worker_error=str(e),
                             output=out.text, stdout_size=out.size, stdout_big=out.big)

    def _arm_limits(self, run_id: int, task: RunTask) -> list[asyncio.TimerHandle]:
        """Timers that kill the attempt at its time_max and at its time_end."""
        loop = asyncio.get_running_loop()
        timers = []
        if task.time_max > 0:
            timers.append(loop.call_later(task.time_max, self.kill, run_id, "time_max"))
        if task.time_end > 0:
            timers.append(loop.call_later(max(0.0, task.time_end - time.time()),
                                          self.kill, run_id, "time_end"))
        return timers

    async def _run_command(self, run_id: int, task: RunTask, box: str,
                           gpu_ids: tuple[int, ...]) -> ev.TaskExited:
        env = task_environment(base_environment(), task, box, gpu_ids)
        start = time.monotonic()
        try:
            proc = sb.CommandProcess(wrap_command(task.command, self.task_wrapper), box, env)
        except OSError as e:
            return ev.TaskExited(run_id=run_id, wall=time.time(), status=127 << 8,
                                 output=f"vinework: cannot start the command: {e}\n")
        self.procs[run_id] = proc
        timers = self._arm_limits(run_id, task)
        watcher = None
        if task.watch_outputs:
            watcher = OutputWatcher(task, box, self.post, self.watch_interval)
            watcher.start()
        try:
            status, usage = await proc.wait()
        finally:
            for t in timers:
                t.cancel()
            self.procs.pop(run_id, None)
            if watcher is not None:
                watcher.finish()
        wall = time.monotonic() - start
        full = False
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
            full = _disk_exhausted(box, task.disk)
        out = sb.take_output(box, task.stdout_max)
        return ev.TaskExited(run_id=run_id, wall=time.time(), status=status,
                             timed_out=proc.killed_for == "time_max",
                             end_time_passed=proc.killed_for == "time_end",
                             disk_exhausted=full, output=out.text, stdout_size=out.size,
                             stdout_big=out.big, measured=sb.measured_of(wall, usage))

    def _start_python(self, run_id: int, task: RunTask, box: str, inline_max: int,
                      gpu_ids: tuple[int, ...]) -> asyncio.Future[list[Any]]:
        if self.python is None:
            self.python = PythonRunner(self.cores, self.hoisted)
        out_path = self.py_out[run_id] = self.cache.part_path()
        sets, unset = environment_changes(task, box, gpu_ids)
        # the runner knows calls by our run id: a task id may come again from a new manager
        request = ["run", run_id, box, task.python_payload, out_path, inline_max,
                   [list(p) for p in sets], unset]
        call = self.py_calls[run_id] = self.python.start(
            run_id, task.python_mode or "direct", request)
        return call

    def _when_python_ends(self, run_id: int, task: RunTask, box: str,
                          call: asyncio.Future[list[Any]]) -> None:
        """Arm the attempt's time limits and post its ``TaskExited`` when its call ends
        (a callback on the call's future: no task of its own, no extra turn of the loop)."""
        timers = self._arm_limits(run_id, task)

        def ended(fut: asyncio.Future[list[Any]]) -> None:
            for t in timers:
                t.cancel()
            self.py_calls.pop(run_id, None)
            try:
                if fut.cancelled():  # killed before an interpreter took it
                    frame = ["done", run_id, signal.SIGKILL, "crash", b"", "", []]
                else:
                    frame = fut.result()
                done = self._python_exited(run_id, task, box, frame)
            except Exception as e:  # a worker-side bug must not kill the worker
                done = self._worker_error(run_id, task, box, e)
            self.post(done)

        call.add_done_callback(ended)

    def _python_exited(self, run_id: int, task: RunTask, box: str,
                       frame: list[Any]) -> ev.TaskExited:
        """The ``TaskExited`` of a call's reply frame."""
        why = self.py_killed_for.pop(run_id, "")
        status, kind, data, tb = frame[2:6]
        measured = frame[6] if len(frame) > 6 else []
        if not (isinstance(measured, list) and len(measured) == 3
                and all(isinstance(x, int | float) for x in measured)):
            measured = []
        out = sb.take_output(box, task.stdout_max)
        return ev.TaskExited(run_id=run_id, wall=time.time(), status=int(status),
                             timed_out=why == "time_max", end_time_passed=why == "time_end",
                             output=out.text, stdout_size=out.size, stdout_big=out.big,
                             measured=[float(x) for x in measured],
                             python_kind=str(kind),
                             python_data=data if isinstance(data, bytes) else None,
                             python_traceback=str(tb or ""))


def _disk_exhausted(box: str, disk_mb: int) -> bool:
    """Did a failed task run out of disk (the filesystem, or its own allocation)?"""
    try:
        if shutil.disk_usage(box).free < 4 * (1 << 20):
            return True
        if disk_mb > 0:
            used = sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(box)
                       if e.is_file(follow_symlinks=False) and e.stat().st_nlink == 1)
            return used > disk_mb * (1 << 20)
    except OSError:
        return False
    return False
