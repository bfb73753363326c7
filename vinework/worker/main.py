"""The worker process: the asyncio shell around the pure core in ``state.py``.

Wiring only. One asyncio loop turns everything that happens into events for
``WorkerState.handle`` (manager messages, connection ups and downs, signals,
process exits, fetch ends, a tick every ``TICK`` seconds, the death of the
parent process) and carries out the instructions it returns, in order. No
decision is taken here: when to connect, retry, give up, drop a silent
manager, drain, what a task's outcome is, which files to keep, all come from
the core.

Bulk bytes stay off the loop: a thread-based transfer server serves cached
files to peers and the manager, and fetches run in a thread pool. Command
tasks are reaped through pidfds; PythonTasks run in warm interpreters
(``pypool.py``). Events are queued and handled one at a time, so an
instruction that produces an event (``CollectOutputs``) never re-enters the core.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import itertools
import logging
import os
import shutil
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..protocol import Fetch as FetchMsg
from ..protocol import (
    FrameDecoder,
    Heartbeat,
    Hoist,
    Kill,
    Message,
    ProtocolError,
    RunTask,
    Shutdown,
    Unlink,
    Welcome,
    encode,
)
from ..protocol.transfer import TransferError, TransferServer, fetch_file
from . import events as ev
from . import sandbox as sb
from .cache import Cache, CacheError
from .outcome import Resources
from .pypool import PythonRunner
from .records import WorkerConfig
from .state import WorkerState

log = logging.getLogger("vinework.worker")
TICK = 0.1  # seconds between two Tick events


@dataclass
class WorkerOptions:
    """Command-line options of ``vinework worker`` (0 or None resources: detect)."""

    host: str
    port: int
    cores: int | None = None
    memory: int | None = None  # MB
    disk: int | None = None  # MB
    gpus: int | None = None
    workdir: str | None = None
    timeout: float = 900.0  # give up after this long without a manager
    connect_timeout: float = 30.0  # one connection attempt, handshake included
    drain_timeout: float = 20.0
    single_shot: bool = False
    hoist: tuple[str, ...] = ()
    parent_pid: int = 0  # exit when this process exits (0: no parent to watch)
    debug: bool = False


def detect_resources(opts: WorkerOptions, workdir: str) -> Resources:
    """What the worker offers: the options, or what the machine has where they are 0/unset."""
    cores = opts.cores or os.cpu_count() or 1
    memory = opts.memory or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    free = shutil.disk_usage(workdir).free // (1 << 20)
    disk = min(opts.disk, free) if opts.disk else free
    return Resources(cores, memory, disk, opts.gpus or 0)


class Worker:
    """One worker process (see module docstring)."""

    def __init__(self, opts: WorkerOptions) -> None:
        self.opts = opts
        self.owns_workdir = opts.workdir is None
        self.workdir = opts.workdir or os.path.join(
            os.environ.get("TMPDIR", "/tmp"), f"vinework-worker-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        os.makedirs(self.workdir, exist_ok=True)
        self.cache = Cache(os.path.join(self.workdir, "cache"))
        self.sandboxes = os.path.join(self.workdir, "sandbox")
        os.makedirs(self.sandboxes, exist_ok=True)
        # PythonTask sandboxes hold little (inputs are links, the result goes straight to the
        # cache): on tmpfs their creation and removal cost a fifth of what ext4 charges.
        self.py_sandboxes = self.sandboxes
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            _remove_stale_shm()
            shm = f"/dev/shm/vinework-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            with contextlib.suppress(OSError):
                os.makedirs(shm)
                self.py_sandboxes = shm
        self.resources = detect_resources(opts, self.workdir)
        self.box_pool = sb.SandboxPool(self.sandboxes)
        self.py_box_pool = sb.SandboxPool(self.py_sandboxes)
        self.server = TransferServer(self.cache.lookup)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=16,
                                                          thread_name_prefix="vine-fetch")
        self.state = WorkerState(
            WorkerConfig(manager_host=opts.host, manager_port=opts.port,
                         hostname=socket.gethostname(), transfer_port=self.server.port,
                         resources=self.resources, timeout=opts.timeout,
                         connect_timeout=opts.connect_timeout,
                         drain_timeout=opts.drain_timeout, single_shot=opts.single_shot),
            cached=self.cache.scan())
        self._queue: collections.deque[ev.Event] = collections.deque()
        self._handling = False
        self._ids = itertools.count(1)
        self._exit: asyncio.Future[int] | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.session: asyncio.Task[None] | None = None
        self._drop_reason = ""
        self._outq: list[Message] = []
        self._flush_scheduled = False
        self.parts: dict[int, str] = {}  # fetch id -> part file
        self.procs: dict[int, sb.CommandProcess] = {}  # run id -> command process
        self.py_calls: dict[int, asyncio.Task[list[Any]]] = {}  # run id -> runner call
        self.boxes: dict[int, tuple[sb.SandboxPool, str]] = {}  # run id -> sandbox
        self.py_out: dict[int, str] = {}  # run id -> result part file
        self.hoisted: list[str] = list(opts.hoist)
        self.python: PythonRunner | None = None  # warm interpreters, made on first use

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        try:
            return asyncio.run(self._main())
        finally:
            self.close()

    def close(self) -> None:
        self.server.close()
        for p in self.procs.values():
            p.kill()
        if self.python is not None:
            self.python.close()
            self.python = None
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.py_sandboxes != self.sandboxes:
            shutil.rmtree(self.py_sandboxes, ignore_errors=True)
        shutil.rmtree(self.sandboxes, ignore_errors=True)
        for part in self.parts.values():
            with contextlib.suppress(OSError):
                os.unlink(part)
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._exit = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, self._signal, "SIGTERM", True)
        loop.add_signal_handler(signal.SIGINT, self._signal, "SIGINT", False)
        self._watch_parent(loop)
        self.post(ev.Started(now=time.monotonic()))
        ticker = asyncio.ensure_future(self._tick())
        try:
            return await self._exit
        finally:
            ticker.cancel()
            if self.session is not None:
                self.session.cancel()
            if self.writer is not None:
                self.writer.close()

    def _signal(self, name: str, drain: bool) -> None:
        self.post(ev.StopRequested(now=time.monotonic(), signal_name=name, drain=drain))

    def _watch_parent(self, loop: asyncio.AbstractEventLoop) -> None:
        pid = self.opts.parent_pid
        if not pid:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.post(ev.ParentGone(now=time.monotonic(), pid=pid))
            return
        except OSError:
            return  # no pidfd: the tick polls getppid() instead

        def gone() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self.post(ev.ParentGone(now=time.monotonic(), pid=pid))

        loop.add_reader(fd, gone)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            if self.opts.parent_pid and os.getppid() != self.opts.parent_pid:
                self.post(ev.ParentGone(now=time.monotonic(), pid=self.opts.parent_pid))
            self.post(ev.Tick(now=time.monotonic()))

    # ------------------------------------------------------------------ the core
    def post(self, event: ev.Event) -> None:
        """Queue an event for the core; handle the queue unless already handling it."""
        if not event.stimulus_id:
            object.__setattr__(event, "stimulus_id",
                               f"{type(event).__name__}-{next(self._ids)}")
        self._queue.append(event)
        if self._handling:
            return
        self._handling = True
        try:
            while self._queue:
                e = self._queue.popleft()
                try:
                    instructions = self.state.handle(e)
                except Exception:
                    log.exception("internal error handling %s; stopping", type(e).__name__)
                    self._finish(70)
                    return
                for ins in instructions:
                    self._carry_out(ins)
        finally:
            self._handling = False

    def _finish(self, code: int) -> None:
        self._queue.clear()
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(code)

    def _carry_out(self, ins: ev.Instruction) -> None:
        t = type(ins)
        if t is ev.Send:
            self._send(ins.message)  # type: ignore[attr-defined]
        elif t is ev.Log:
            log.log(ins.level, "%s", ins.text)  # type: ignore[attr-defined]
        elif t is ev.StartTask:
            self._start_task(ins)  # type: ignore[arg-type]
        elif t is ev.CollectOutputs:
            self._collect(ins)  # type: ignore[arg-type]
        elif t is ev.CleanupTask:
            self._cleanup(ins.run_id)  # type: ignore[attr-defined]
        elif t is ev.KillTask:
            self._kill(ins.run_id)  # type: ignore[attr-defined]
        elif t is ev.StartFetch:
            self._start_fetch(ins)  # type: ignore[arg-type]
        elif t is ev.CommitFetch:
            self._commit_fetch(ins)  # type: ignore[arg-type]
        elif t is ev.DiscardFetch:
            part = self.parts.pop(ins.fetch_id, "")  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):
                os.unlink(part)
        elif t is ev.RemoveFile:
            self.cache.remove(ins.name)  # type: ignore[attr-defined]
        elif t is ev.Connect:
            self.session = asyncio.ensure_future(self._session(ins.timeout))  # type: ignore[attr-defined]
        elif t is ev.DropConnection:
            self._drop_reason = ins.reason  # type: ignore[attr-defined]
            if self.session is not None:
                self.session.cancel()
        elif t is ev.Exit:
            code, reason = ins.code, ins.reason  # type: ignore[attr-defined]
            log.log(logging.INFO if code == 0 else logging.ERROR, "%s", reason)
            if self.writer is not None:
                self._flush()
            self._finish(code)
        else:
            raise AssertionError(f"unknown instruction {t.__name__}")

    # ------------------------------------------------------------------ the connection
    async def _session(self, timeout: float) -> None:
        """One connection: connect, then read until it ends; every outcome becomes an event."""
        now = time.monotonic
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.opts.host, self.opts.port), timeout)
        except (OSError, TimeoutError) as e:
            why = str(e) or f"no answer within {timeout:g} s"
            self.post(ev.ConnectFailed(now=now(), reason=why))
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.writer = writer
        self._drop_reason = ""
        self.post(ev.ConnectionOpened(now=now()))
        dec = FrameDecoder()
        reason = "the manager closed the connection"
        try:
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    break
                dec.receive_data(data)
                while (msg := dec.next_message()) is not None:
                    self.post(self._event_of(msg))
        except ProtocolError as e:
            reason = f"protocol error: {e}"
            self.post(ev.ProtocolViolation(now=now(), error=str(e)))
        except (ConnectionError, OSError) as e:
            reason = f"connection error: {e}"
        except asyncio.CancelledError:
            reason = self._drop_reason or "stopping"
        finally:
            self.writer = None
            self._outq.clear()
            writer.close()
        self.post(ev.ConnectionLost(now=now(), reason=reason))

    def _event_of(self, msg: Message) -> ev.Event:
        now = time.monotonic()
        t = type(msg)
        if t is RunTask:
            return ev.RunRequested(now=now, task=msg, wall=time.time())  # type: ignore[arg-type]
        if t is FetchMsg:
            f: FetchMsg = msg  # type: ignore[assignment]
            return ev.FetchRequested(now=now, transfer_id=f.transfer_id, name=f.name,
                                     host=f.host, port=f.port, size=f.size)
        if t is Unlink:
            return ev.UnlinkRequested(now=now, name=msg.name)  # type: ignore[attr-defined]
        if t is Kill:
            return ev.KillRequested(now=now, task_id=msg.task_id)  # type: ignore[attr-defined]
        if t is Heartbeat:
            return ev.HeartbeatReceived(now=now)
        if t is Welcome:
            w: Welcome = msg  # type: ignore[assignment]
            return ev.WelcomeReceived(now=now, version=w.version, worker_id=w.worker_id,
                                      keepalive_interval=w.keepalive_interval,
                                      keepalive_timeout=w.keepalive_timeout,
                                      transfer_port=w.transfer_port,
                                      manager_name=w.manager_name)
        if t is Shutdown:
            return ev.ShutdownReceived(now=now, reason=msg.reason)  # type: ignore[attr-defined]
        if t is Hoist:
            mods = [m for m in msg.modules if m not in self.hoisted]  # type: ignore[attr-defined]
            self.hoisted.extend(mods)
            if self.python is not None:
                self.python.hoist(mods)
            return ev.HeartbeatReceived(now=now)  # no state to change: it proves liveness
        return ev.ProtocolViolation(now=now, error=f"unexpected {t.__name__} from the manager")

    def _send(self, msg: Message) -> None:
        self._outq.append(msg)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.writer is None or self.writer.is_closing():
            self._outq.clear()
            return
        self.writer.write(b"".join(encode(m) for m in self._outq))
        self._outq.clear()

    # ------------------------------------------------------------------ fetches
    def _start_fetch(self, ins: ev.StartFetch) -> None:
        part = self.parts[ins.fetch_id] = self.cache.part_path()
        fut = asyncio.get_running_loop().run_in_executor(
            self.pool, fetch_file, ins.host, ins.port, ins.name, part, ins.size)

        def done(f: asyncio.Future[tuple[int, float]]) -> None:
            if f.cancelled():
                return
            e = f.exception()
            if e is None:
                size, secs = f.result()
                self.post(ev.FetchFinished(fetch_id=ins.fetch_id, ok=True, size=size,
                                           seconds=secs))
            elif isinstance(e, TransferError):
                self.post(ev.FetchFinished(fetch_id=ins.fetch_id, ok=False, cause=e.cause,
                                           reason=str(e)))
            else:
                self.post(ev.FetchFinished(fetch_id=ins.fetch_id, ok=False, cause=6,
                                           reason=f"cannot store {ins.name}: {e}"))

        fut.add_done_callback(done)

    def _commit_fetch(self, ins: ev.CommitFetch) -> None:
        part = self.parts.pop(ins.fetch_id)
        try:
            self.cache.commit(ins.name, part)
        except (OSError, CacheError) as e:
            with contextlib.suppress(OSError):
                os.unlink(part)
            self.post(ev.FileLost(name=ins.name, reason=f"cannot store {ins.name}: {e}"))

    # ------------------------------------------------------------------ tasks
    def _start_task(self, ins: ev.StartTask) -> None:
        asyncio.ensure_future(self._run_task(ins.run_id, ins.task, ins.inline_max))

    async def _run_task(self, run_id: int, task: RunTask, inline_max: int) -> None:
        pool = self.box_pool if task.python_payload is None else self.py_box_pool
        box = pool.acquire()
        self.boxes[run_id] = (pool, box)
        try:
            sb.prepare(box, list(task.inputs), {n: self.cache.path(n) for n, _ in task.inputs})
            for _, remote in task.outputs:
                sb.safe_join(box, remote)
        except (sb.SandboxError, CacheError, OSError) as e:
            self.post(ev.TaskExited(run_id=run_id, wall=time.time(), setup_error=str(e)))
            return
        try:
            if task.python_payload is not None:
                done = await self._run_python(run_id, task, box, inline_max)
            else:
                done = await self._run_command(run_id, task, box)
        except Exception as e:  # a worker-side bug must not kill the worker
            log.exception("task %d failed inside the worker", task.task_id)
            done = ev.TaskExited(run_id=run_id, wall=time.time(), worker_error=str(e),
                                 output=sb.read_output(box))
        self.post(done)

    def _env(self, task: RunTask) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"CORES": str(task.cores), "MEMORY": str(task.memory),
                    "DISK": str(task.disk), "GPUS": str(task.gpus),
                    "OMP_NUM_THREADS": str(max(1, task.cores))})
        env.update(dict(task.env))
        return env

    async def _run_command(self, run_id: int, task: RunTask, box: str) -> ev.TaskExited:
        try:
            proc = sb.CommandProcess(task.command, box, self._env(task))
        except OSError as e:
            return ev.TaskExited(run_id=run_id, wall=time.time(), status=127 << 8,
                                 output=f"vinework: cannot start the command: {e}\n")
        self.procs[run_id] = proc
        timer = None
        if task.time_max > 0:
            def on_time() -> None:
                proc.killed_for_time = True
                proc.kill()
            timer = asyncio.get_running_loop().call_later(task.time_max, on_time)
        try:
            status = await proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            self.procs.pop(run_id, None)
        full = False
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
            full = _disk_exhausted(box, task.disk)
        return ev.TaskExited(run_id=run_id, wall=time.time(), status=status,
                             timed_out=proc.killed_for_time, disk_exhausted=full,
                             output=sb.read_output(box))

    async def _run_python(self, run_id: int, task: RunTask, box: str,
                          inline_max: int) -> ev.TaskExited:
        if self.python is None:
            self.python = PythonRunner(self.resources.cores, self.hoisted)
        runner = self.python
        out_path = self.py_out[run_id] = self.cache.part_path()
        env = [[k, v] for k, v in task.env] + [["CORES", str(task.cores)]]
        # the runner knows calls by our run id: a task id may come again from a new manager
        request = ["run", run_id, box, task.python_payload, out_path, inline_max, env]
        timed_out = False
        timer = None
        if task.time_max > 0:
            def on_time() -> None:
                nonlocal timed_out
                timed_out = True
                self._kill(run_id)
            timer = asyncio.get_running_loop().call_later(task.time_max, on_time)
        call = self.py_calls[run_id] = asyncio.ensure_future(
            runner.run(run_id, task.python_mode or "direct", request))
        try:
            _, _, status, kind, data, tb = await call
        except asyncio.CancelledError:  # killed before an interpreter took it
            if not call.cancelled():
                raise
            status, kind, data, tb = signal.SIGKILL, "crash", b"", ""
        finally:
            if timer is not None:
                timer.cancel()
            self.py_calls.pop(run_id, None)
        return ev.TaskExited(run_id=run_id, wall=time.time(), status=int(status),
                             timed_out=timed_out, output=sb.read_output(box),
                             python_kind=str(kind),
                             python_data=data if isinstance(data, bytes) else None,
                             python_traceback=str(tb or ""))

    def _kill(self, run_id: int) -> None:
        proc = self.procs.get(run_id)
        if proc is not None:
            proc.kill()
            return
        call = self.py_calls.get(run_id)
        if call is None or self.python is None:
            return
        if run_id in self.python.where:
            self.python.kill(run_id)
        else:
            call.cancel()

    def _collect(self, ins: ev.CollectOutputs) -> None:
        _, box = self.boxes[ins.run_id]
        stored: list[tuple[str, int]] = []
        missing: list[str] = []
        disk_full = result_error = ""
        if ins.python_result:
            try:
                stored.append((ins.python_result,
                               self.cache.commit(ins.python_result, self.py_out[ins.run_id])))
            except (OSError, CacheError) as e:
                result_error = str(e)
        for name, remote in ins.outputs:
            if result_error:
                break
            src = sb.safe_join(box, remote)
            if not os.path.lexists(src):
                missing.append(remote)
                continue
            try:
                stored.append((name, self.cache.store_from(name, src)))
            except (OSError, CacheError) as e:
                if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                    disk_full = remote
                    break
                missing.append(f"{remote} ({e})")
        self.post(ev.OutputsCollected(run_id=ins.run_id, wall=time.time(), stored=stored,
                                      missing=missing, disk_full=disk_full,
                                      result_error=result_error))

    def _cleanup(self, run_id: int) -> None:
        pool, box = self.boxes.pop(run_id, (None, ""))
        if pool is not None:
            pool.release(box)
        part = self.py_out.pop(run_id, "")
        if part:
            with contextlib.suppress(OSError):
                os.unlink(part)


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


def _remove_stale_shm() -> None:
    """Delete /dev/shm sandboxes left by workers that were killed (their pid is gone)."""
    try:
        entries = os.listdir("/dev/shm")
    except OSError:
        return
    for name in entries:
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "vinework" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join("/dev/shm", name), ignore_errors=True)
        except OSError:
            pass


def run_worker(opts: WorkerOptions) -> int:
    """Run a worker until the manager says stop, a signal, or no manager for ``timeout``."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("vinework worker: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if opts.debug else logging.INFO)
    log.propagate = False
    return Worker(opts).run()
