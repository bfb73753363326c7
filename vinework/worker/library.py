"""The worker's shell for serverless libraries: their processes and the calls sent to them.

``LibraryRunner`` carries out the core's library instructions
(``StartLibraryProcess``, ``StopLibraryProcess``) and the task instructions of
FunctionCalls (``StartTask`` with ``RunTask.library_instance``, ``KillTask``,
``CollectOutputs``, ``CleanupTask``), and reports what happened as events
(``LibraryProcessReady``, ``LibraryProcessEnded``, ``TaskExited``). It decides
nothing.

An instance is one process (``libprocess.py``) started in its own sandbox
under ``<workdir>/libraries/`` (its input files linked there), with stdout and
stderr in ``library.log`` there; the end of that log travels in
``LibraryEnded``. Calls go to it over a socketpair as msgpack frames, batched:
every call started in one turn of the event loop is written in one ``send``.
A call with no files needs no sandbox: only ``(args, kwargs)`` travel, and the
result comes back inline (a result larger than the inline limit is written to
a part file in the cache). A call with input files, outputs or a temp result
gets a sandbox from the worker's Python sandbox pool, and ``TaskRunner``
collects its outputs as it does a PythonTask's.

When the process ends (it crashed, a call exited it, it was stopped), every
call it had is reported first as ``TaskExited(library_exit=...)``, then the
instance as ``LibraryProcessEnded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ..netio import READ_SIZE
from ..protocol import RunTask
from ..protocol.messages import StartLibrary
from . import events as ev
from . import sandbox as sb
from .cache import Cache, CacheError
from .forkserver import Framer, pack
from .taskenv import THREAD_VARIABLES, TMP_DIR_NAME, base_environment, environment_changes

log = logging.getLogger("vinework.worker")
LOG_NAME = "library.log"
LOG_TAIL = 256 << 10  # bytes of the library log sent with LibraryEnded (the manager takes
# a LibraryEnded frame of up to 1 MiB: manager/flood.py)


class _Instance:
    """One library process and the calls sent to it."""

    def __init__(self, msg: StartLibrary, sandbox: str) -> None:
        self.msg = msg
        self.instance_id = msg.instance_id
        self.sandbox = sandbox
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.framer = Framer()
        self.outbuf = bytearray()
        self.flush_scheduled = False
        self.writing = False
        self.calls: dict[int, RunTask] = {}  # run id -> the call's task
        self.ready = False
        self.failed_setup = ""
        self.ended = False
        self.stop_reason = ""


class LibraryRunner:
    """The library processes of one worker (see the module docstring)."""

    def __init__(self, cache: Cache, root: str, py_boxes: sb.SandboxPool,
                 post: Callable[[ev.Event], None]) -> None:
        self.cache = cache
        self.root = root
        self.py_boxes = py_boxes
        self.post = post
        self.instances: dict[int, _Instance] = {}
        self.where: dict[int, _Instance] = {}  # run id -> the instance running that call
        self.boxes: dict[int, str] = {}  # run id -> sandbox (calls with files only)
        self.shared: dict[int, list[sb.SharedInput]] = {}  # run id -> inputs to check
        self.copy_max = sb.copy_max_of(os.environ)
        self.parts: dict[int, str] = {}  # run id -> result part path
        self.killed_for: dict[int, str] = {}  # run id -> the time limit that killed it
        self.timers: dict[int, list[asyncio.TimerHandle]] = {}
        self.clean: set[int] = set()  # run ids whose part file was surely never written

    def owns(self, run_id: int) -> bool:
        """Is ``run_id`` a FunctionCall this runner started (and not yet cleaned up)?"""
        return run_id in self.where or run_id in self.parts

    # ------------------------------------------------------------------ instances
    def start(self, ins: ev.StartLibraryProcess) -> None:
        msg: StartLibrary = ins.library  # type: ignore[assignment]
        box = os.path.join(self.root, f"lib-{msg.instance_id}-{os.getpid()}")
        inst = _Instance(msg, box)
        self.instances[msg.instance_id] = inst
        try:
            shutil.rmtree(box, ignore_errors=True)
            os.makedirs(os.path.join(box, TMP_DIR_NAME), exist_ok=True)
            sb.prepare(box, list(msg.inputs), {n: self.cache.path(n) for n, _ in msg.inputs})
            self._spawn(inst, ins.gpu_ids)
        except (OSError, sb.SandboxError, CacheError) as e:
            inst.failed_setup = f"cannot start the library process: {e}"
            self._ended(inst, inst.failed_setup)

    def _spawn(self, inst: _Instance, gpu_ids: tuple[int, ...]) -> None:
        msg = inst.msg
        env = dict(base_environment())
        threads = str(max(1, msg.cores))
        env.update({"CORES": str(msg.cores), "MEMORY": str(msg.memory), "DISK": str(msg.disk),
                    "GPUS": str(msg.gpus), "VINE_SANDBOX": inst.sandbox,
                    "VINE_LIBRARY": msg.name})
        env.update({name: threads for name in THREAD_VARIABLES})
        tmp = os.path.join(inst.sandbox, TMP_DIR_NAME)
        env.update({"TMPDIR": tmp, "TMP": tmp, "TEMP": tmp})
        if msg.gpus > 0 and gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        env.update(dict(msg.env))
        for name in msg.env_unset:
            env.pop(name, None)
        # the library imports vinework as the worker does, wherever its sandbox is
        paths = [p for p in sys.path if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
            [*filter(None, env.get("PYTHONPATH", "").split(os.pathsep)), *paths]))
        parent, child = socket.socketpair()
        argv = [sys.executable, "-m", "vinework.worker.libprocess", str(child.fileno())]
        if msg.init_command:
            argv = ["/bin/sh", "-c", f"{msg.init_command} && exec "
                    + " ".join(shlex.quote(a) for a in argv)]
        out = open(os.path.join(inst.sandbox, LOG_NAME), "ab")  # noqa: SIM115
        try:
            inst.proc = subprocess.Popen(argv, cwd=inst.sandbox, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         pass_fds=(child.fileno(),))
        finally:
            out.close()
            child.close()
        parent.setblocking(False)
        inst.sock = parent
        inst.outbuf += pack(["setup", msg.payload, msg.exec_mode])
        self._schedule_flush(inst)
        asyncio.get_running_loop().add_reader(parent.fileno(), self._readable, inst)

    def stop(self, instance_id: int) -> None:
        inst = self.instances.get(instance_id)
        if inst is not None and not inst.ended:
            inst.stop_reason = "stopped by the manager"
            self._kill_process(inst)

    def pid_of(self, instance_id: int) -> int:
        inst = self.instances.get(instance_id)
        return inst.proc.pid if inst is not None and inst.proc is not None else 0

    def _kill_process(self, inst: _Instance) -> None:
        if inst.proc is not None and inst.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(inst.proc.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                inst.proc.kill()

    def _readable(self, inst: _Instance) -> None:
        assert inst.sock is not None
        try:
            data = inst.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._ended(inst, "")
            return
        for frame in inst.framer.feed(data):
            kind = frame[0]
            if kind == "done":
                self._call_done(inst, frame)
            elif kind == "ready":
                inst.ready = True
                self.post(ev.LibraryProcessReady(instance_id=inst.instance_id,
                                                 pid=int(frame[1])))
            elif kind == "failed":
                inst.failed_setup = str(frame[1])

    def _ended(self, inst: _Instance, why: str) -> None:
        if inst.ended:
            return
        inst.ended = True
        loop = asyncio.get_running_loop()
        if inst.sock is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(inst.sock.fileno())
            with contextlib.suppress(Exception):
                loop.remove_writer(inst.sock.fileno())
            with contextlib.suppress(OSError):
                inst.sock.close()
        status = None
        pid = 0
        if inst.proc is not None:
            pid = inst.proc.pid
            try:  # it closed its socket: it is exiting (give it a moment to say how)
                status = inst.proc.wait(timeout=0 if inst.stop_reason else 1.0)
            except subprocess.TimeoutExpired:
                self._kill_process(inst)  # (closed its socket but lives on)
                with contextlib.suppress(Exception):
                    status = inst.proc.wait(timeout=5)
        reason = why or inst.stop_reason or _describe(status, inst.ready)
        if inst.failed_setup:
            reason = f"set-up failed: {inst.failed_setup.strip().splitlines()[-1]}" \
                if inst.failed_setup.strip() else "set-up failed"
        what = f"library {inst.msg.name} (instance {inst.instance_id}) ended during the " \
               f"call: {reason}"
        for run_id in list(inst.calls):
            # stopped on purpose (by the manager, or to kill another call): not the call's
            # doing, so not charged to it (FORSAKEN: run again elsewhere)
            done = ev.TaskExited(run_id=run_id, wall=time.time(), worker_error=what) \
                if inst.stop_reason else \
                ev.TaskExited(run_id=run_id, wall=time.time(), library_exit=what)
            self._finish(run_id, done)
        inst.calls.clear()
        output = _tail(os.path.join(inst.sandbox, LOG_NAME))
        if inst.failed_setup and inst.failed_setup not in output:
            output += inst.failed_setup
        data = output.encode()
        if len(data) > LOG_TAIL:  # (the end is what tells why it ended)
            output = "[...]\n" + data[-LOG_TAIL:].decode(errors="ignore")
        reason = reason[:4096]
        self.instances.pop(inst.instance_id, None)
        shutil.rmtree(inst.sandbox, ignore_errors=True)
        self.post(ev.LibraryProcessEnded(instance_id=inst.instance_id, reason=reason,
                                         setup_failed=not inst.ready, output=output, pid=pid))

    # ------------------------------------------------------------------ writing
    def _schedule_flush(self, inst: _Instance) -> None:
        if not inst.flush_scheduled and not inst.writing:
            inst.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, inst)

    def _flush(self, inst: _Instance) -> None:
        inst.flush_scheduled = False
        if inst.ended or inst.sock is None or not inst.outbuf:
            return
        try:
            n = inst.sock.send(inst.outbuf)
        except BlockingIOError:
            n = 0
        except OSError:
            return  # the reader sees the end
        del inst.outbuf[:n]
        if inst.outbuf and not inst.writing:  # the library is slow to read: wait for room
            inst.writing = True
            asyncio.get_running_loop().add_writer(inst.sock.fileno(), self._writable, inst)

    def _writable(self, inst: _Instance) -> None:
        if inst.ended or inst.sock is None:
            return
        try:
            n = inst.sock.send(inst.outbuf)
        except BlockingIOError:
            return
        except OSError:
            n = len(inst.outbuf)
        del inst.outbuf[:n]
        if not inst.outbuf:
            inst.writing = False
            asyncio.get_running_loop().remove_writer(inst.sock.fileno())

    # ------------------------------------------------------------------ calls
    def start_call(self, ins: ev.StartTask) -> None:
        task = ins.task
        run_id = ins.run_id
        inst = self.instances.get(task.library_instance)
        self.parts[run_id] = ""
        if inst is None or inst.ended:
            self.post(ev.TaskExited(run_id=run_id, wall=time.time(),  # (forsaken: uncharged)
                                    worker_error=f"library instance {task.library_instance} "
                                                 "is not running"))
            return
        box = ""
        sets: list[list[str]] = []
        unset: list[str] = []
        files = bool(task.inputs or task.outputs or task.python_keep)
        if files:
            box = self.py_boxes.acquire()
            self.boxes[run_id] = box
            try:
                self.shared[run_id] = sb.set_up(box, task, self.cache.path, self.copy_max)
            except (sb.SandboxError, CacheError) as e:
                self.post(ev.TaskExited(run_id=run_id, wall=time.time(), setup_error=str(e)))
                return
            except OSError as e:
                self.post(ev.TaskExited(run_id=run_id, wall=time.time(),
                                        worker_error=f"cannot set up the sandbox: {e}"))
                return
            pairs, unset = environment_changes(task, box, ins.gpu_ids)
            sets = [list(p) for p in pairs]
        elif task.env or task.env_unset:
            sets = [list(p) for p in task.env]
            unset = list(task.env_unset)
        # (named by the run id, unique in this worker process: no uuid per call)
        part = os.path.join(self.cache.dir, f".part-call-{run_id}")
        self.parts[run_id] = part
        inst.calls[run_id] = task
        self.where[run_id] = inst
        inst.outbuf += pack(["call", run_id, task.function, task.python_payload or b"",
                             box, part, ins.inline_max, sets, unset, task.python_mode])
        self._schedule_flush(inst)
        if task.time_max > 0 or task.time_end > 0:
            loop = asyncio.get_running_loop()
            timers = []
            if task.time_max > 0:
                timers.append(loop.call_later(task.time_max, self._time_kill, run_id,
                                              "time_max"))
            if task.time_end > 0:
                timers.append(loop.call_later(max(0.0, task.time_end - time.time()),
                                              self._time_kill, run_id, "time_end"))
            self.timers[run_id] = timers

    def _time_kill(self, run_id: int, why: str) -> None:
        inst = self.where.get(run_id)
        if inst is None:
            return
        self.killed_for[run_id] = why
        self._kill_call(inst, run_id)

    def _kill_call(self, inst: _Instance, run_id: int) -> None:
        if inst.msg.exec_mode == "fork":
            inst.outbuf += pack(["kill", run_id])
            self._schedule_flush(inst)
            task = inst.calls.pop(run_id, None)
            if task is not None:  # answered now; the child's late reply is dropped
                why = self.killed_for.pop(run_id, "")
                self._finish(run_id, ev.TaskExited(
                    run_id=run_id, wall=time.time(), status=signal.SIGKILL,
                    timed_out=why == "time_max", end_time_passed=why == "time_end",
                    python_kind="crash"))
        else:  # a direct call runs in the library process itself: only the process can go
            inst.stop_reason = f"killed to stop call run {run_id}"
            task = inst.calls.pop(run_id, None)
            why = self.killed_for.pop(run_id, "")
            if task is not None:
                self._finish(run_id, ev.TaskExited(
                    run_id=run_id, wall=time.time(), status=signal.SIGKILL,
                    timed_out=why == "time_max", end_time_passed=why == "time_end",
                    python_kind="crash"))
            self._kill_process(inst)

    def kill(self, run_id: int) -> None:
        """``KillTask`` of a call (cancelled, or given up)."""
        inst = self.where.get(run_id)
        if inst is not None and run_id in inst.calls:
            self._kill_call(inst, run_id)

    def _call_done(self, inst: _Instance, frame: list[Any]) -> None:
        run_id = frame[1]
        if inst.calls.pop(run_id, None) is None:
            return  # killed already
        kind, data, tb = frame[2], frame[3], frame[4]
        if kind == "inline" or kind == "error":
            self.clean.add(run_id)
        measured = frame[5] if len(frame) > 5 else []
        if not (isinstance(measured, list) and len(measured) == 3):
            measured = []
        self._finish(run_id, ev.TaskExited(
            run_id=run_id, wall=time.time(), status=0, measured=[float(x) for x in measured],
            python_kind=str(kind), python_data=data if isinstance(data, bytes) else None,
            python_traceback=str(tb or "")))

    def _finish(self, run_id: int, done: ev.TaskExited) -> None:
        self.where.pop(run_id, None)
        for t in self.timers.pop(run_id, ()):
            t.cancel()
        self.post(done)

    def collect(self, ins: ev.CollectOutputs) -> None:
        """Keep a call's outputs and its result file in the cache (as ``TaskRunner`` does a
        PythonTask's); post ``OutputsCollected``."""
        box = self.boxes.get(ins.run_id, "")
        stored: list[tuple[str, int]] = []
        missing: list[str] = []
        result_error = disk_full = ""
        if ins.python_result:
            try:
                stored.append((ins.python_result,
                               self.cache.commit(ins.python_result, self.parts[ins.run_id])))
            except (OSError, CacheError, KeyError) as e:
                result_error = str(e)
        for name, remote in ins.outputs:
            if result_error or not box:
                break
            src = sb.safe_join(box, remote)
            if not os.path.lexists(src):
                missing.append(remote)
                continue
            try:
                stored.append((name, self.cache.store_from(name, src, root=box)))
            except OSError as e:
                import errno
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    disk_full = remote
                    break
                missing.append(f"{remote} ({e})")
            except CacheError as e:
                missing.append(f"{remote} ({e})")
        self.post(ev.OutputsCollected(run_id=ins.run_id, wall=time.time(), stored=stored,
                                      missing=missing, disk_full=disk_full,
                                      result_error=result_error))

    def cleanup(self, run_id: int) -> None:
        self.where.pop(run_id, None)
        part = self.parts.pop(run_id, "")
        if run_id in self.clean:
            self.clean.discard(run_id)
        elif part:
            with contextlib.suppress(OSError):
                os.unlink(part)
        for name, why in sb.changed_inputs(self.shared.pop(run_id, [])):
            log.warning("input %s of call %d changed in the cache: %s", name, run_id, why)
            self.post(ev.FileLost(name=name, reason=f"{name}: {why}"))
        box = self.boxes.pop(run_id, "")
        if box:
            self.py_boxes.release(box)

    def close(self) -> None:
        for inst in list(self.instances.values()):
            self._kill_process(inst)
            if inst.sock is not None:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(inst.sock.fileno())
                with contextlib.suppress(OSError):
                    inst.sock.close()
            if inst.proc is not None:
                with contextlib.suppress(Exception):
                    inst.proc.wait(timeout=2)
            shutil.rmtree(inst.sandbox, ignore_errors=True)
        self.instances.clear()


def _describe(status: int | None, ready: bool) -> str:
    if status is None:
        return "its process did not exit"
    if status < 0:
        return f"its process was killed by signal {-status}"
    what = "its process exited" if ready else "its process exited during set-up"
    return f"{what} with status {status}"


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
