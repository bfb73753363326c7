"""The worker process: connects to a manager, runs tasks, keeps and serves cached files.

Wiring only: one asyncio loop owns the manager connection (framed messages,
batched writes, heartbeats both ways); a thread-based transfer server serves
cached files to peers and the manager; fetches run in a thread pool so bulk
bytes never block control messages; command tasks are reaped via pidfds and
PythonTasks run in forked children of a warm fork server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import signal
import socket
import time
import uuid
from dataclasses import dataclass

from ..constants import TaskResult
from ..protocol import (
    PROTOCOL_VERSION,
    CacheInvalid,
    CacheUpdate,
    Fetch,
    FrameDecoder,
    Heartbeat,
    Hello,
    Hoist,
    Kill,
    Message,
    ProtocolError,
    RunTask,
    Shutdown,
    TaskDone,
    TransferFailure,
    Unlink,
    Welcome,
    encode,
)
from . import sandbox as sb
from .cache import Cache, CacheError, check_cache_name
from .pypool import PythonRunner
from ..protocol.transfer import TransferError, TransferServer, fetch_file

log = logging.getLogger("vinework.worker")
INLINE_RESULT_MAX = 4 * 1024 * 1024


@dataclass
class WorkerOptions:
    """Command-line options of ``vinework worker``."""

    host: str
    port: int
    cores: int | None = None
    memory: int | None = None  # MB
    disk: int | None = None  # MB
    gpus: int = 0
    workdir: str | None = None
    timeout: float = 900.0  # give up reconnecting after this long
    single_shot: bool = False
    hoist: tuple[str, ...] = ()


def detect_resources(opts: WorkerOptions, workdir: str) -> tuple[int, int, int, int]:
    cores = opts.cores if opts.cores is not None else (os.cpu_count() or 1)
    if opts.memory is not None:
        memory = opts.memory
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    free = shutil.disk_usage(workdir).free // (1 << 20)
    disk = min(opts.disk, free) if opts.disk is not None else free
    return cores, memory, disk, opts.gpus


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
        self.running: dict[int, asyncio.Task[None]] = {}
        self.procs: dict[int, sb.CommandProcess] = {}
        self.writer: asyncio.StreamWriter | None = None
        self._outq: list[Message] = []
        self._flush_scheduled = False
        self.manager_transfer_port = 0
        self.keepalive = 5.0
        self.last_recv = time.monotonic()
        self.tasks_run = 0
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
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _resolve, stop)
        deadline = time.monotonic() + self.opts.timeout
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.opts.host, self.opts.port)
            except OSError as e:
                if time.monotonic() > deadline:
                    log.error("cannot reach manager %s:%d: %s", self.opts.host, self.opts.port, e)
                    return 1
                await asyncio.sleep(1.0)
                continue
            served = await self._session(reader, writer, stop)
            if stop.done() or (self.opts.single_shot and served):
                return 0
            if served == "shutdown":
                return 0
            deadline = time.monotonic() + self.opts.timeout
            await asyncio.sleep(0.5)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       stop: asyncio.Future[None]) -> str:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.writer = writer
        cores, memory, disk, gpus = self.resources
        self.send(Hello(version=PROTOCOL_VERSION, hostname=socket.gethostname(), cores=cores,
                        memory=memory, disk=disk, gpus=gpus, transfer_port=self.server.port,
                        cached=self.cache.items()))
        dec = FrameDecoder()
        self.last_recv = time.monotonic()
        hb = asyncio.ensure_future(self._heartbeats())
        result = "lost"
        try:
            while not stop.done():
                read: asyncio.Future[bytes] = asyncio.ensure_future(reader.read(1 << 20))
                done, _ = await asyncio.wait({read, stop},  # type: ignore[type-var]
                                             return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    read.cancel()
                    result = "stopped"
                    break
                data = read.result()
                if not data:
                    break
                self.last_recv = time.monotonic()
                dec.receive_data(data)
                while (msg := dec.next_message()) is not None:
                    if isinstance(msg, Shutdown):
                        return "shutdown"
                    self._dispatch(msg)
        except ProtocolError as e:
            log.error("manager sent an invalid message: %s", e)
        except (ConnectionError, OSError) as e:
            log.info("manager connection lost: %s", e)
        finally:
            hb.cancel()
            self._abandon_tasks()
            self.writer = None
            writer.close()
        return result

    def _abandon_tasks(self) -> None:
        for p in self.procs.values():
            p.kill()
        for t in self.running.values():
            t.cancel()
        if self.python is not None:
            for tid in list(self.python.waiters):
                self.python.kill(tid)
        self.running.clear()

    async def _heartbeats(self) -> None:
        seq = 0
        last = time.monotonic()
        while True:
            # short naps: the interval from Welcome (often shorter than the default) must
            # apply at once, or an idle new worker looks silent to the manager
            await asyncio.sleep(min(self.keepalive, 0.5))
            if time.monotonic() - last < self.keepalive:
                continue
            last = time.monotonic()
            seq += 1
            self.send(Heartbeat(seq=seq, disk_used=self.cache.used()))
            if time.monotonic() - self.last_recv > max(30.0, 6 * self.keepalive):
                log.error("manager silent for too long; dropping the connection")
                if self.writer is not None:
                    self.writer.close()
                return

    # ------------------------------------------------------------------ sending
    def send(self, msg: Message) -> None:
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

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, msg: Message) -> None:
        if isinstance(msg, RunTask):
            self.running[msg.task_id] = asyncio.ensure_future(self._run_task(msg))
        elif isinstance(msg, Fetch):
            asyncio.ensure_future(self._fetch(msg))
        elif isinstance(msg, Unlink):
            with contextlib.suppress(CacheError):
                check_cache_name(msg.name)
                self.cache.remove(msg.name)
        elif isinstance(msg, Kill):
            p = self.procs.get(msg.task_id)
            if p is not None:
                p.kill()
            if self.python is not None:
                self.python.kill(msg.task_id)
            t = self.running.pop(msg.task_id, None)
            if t is not None:
                t.cancel()
        elif isinstance(msg, Welcome):
            self.keepalive = msg.keepalive_interval
            self.manager_transfer_port = msg.transfer_port
        elif isinstance(msg, Hoist):
            if self.python is not None:
                self.python.hoist(list(msg.modules))
            else:
                self.hoisted.extend(m for m in msg.modules if m not in self.hoisted)
        elif isinstance(msg, Heartbeat):
            pass
        else:
            log.error("unexpected message %s from manager", type(msg).__name__)

    # ------------------------------------------------------------------ transfers
    async def _fetch(self, msg: Fetch) -> None:
        host = msg.host or self.opts.host
        port = msg.port or self.manager_transfer_port
        source = f"{host}:{port}"
        try:
            check_cache_name(msg.name)
        except CacheError as e:
            self.send(CacheInvalid(name=msg.name, transfer_id=msg.transfer_id, reason=str(e),
                                   cause=TransferFailure.BAD_NAME))
            return
        if self.cache.has(msg.name):
            self.send(CacheUpdate(name=msg.name, size=self.cache.sizes[msg.name], seconds=0.0,
                                  transfer_id=msg.transfer_id, source=source))
            return
        tmp = self.cache.part_path()
        loop = asyncio.get_running_loop()
        try:
            size, secs = await loop.run_in_executor(
                self.pool, fetch_file, host, port, msg.name, tmp, msg.size)
            self.cache.commit(msg.name, tmp)
        except TransferError as e:
            self.send(CacheInvalid(name=msg.name, transfer_id=msg.transfer_id, reason=str(e),
                                   source=source, cause=e.cause))
            return
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.send(CacheInvalid(name=msg.name, transfer_id=msg.transfer_id,
                                   reason=f"cannot store {msg.name}: {e}", source=source,
                                   cause=TransferFailure.LOCAL_IO))
            return
        self.send(CacheUpdate(name=msg.name, size=size, seconds=secs,
                              transfer_id=msg.transfer_id, source=source))

    # ------------------------------------------------------------------ tasks
    async def _run_task(self, msg: RunTask) -> None:
        pool = self.box_pool if msg.python_payload is None else self.py_box_pool
        box = pool.acquire()
        start = time.time()
        try:
            lookup = {}
            for name, _ in msg.inputs:
                p = self.cache.lookup(name)
                if p is not None:
                    lookup[name] = p
            try:
                sb.prepare(box, [(n, r) for n, r in msg.inputs], lookup)
                for _, remote in msg.outputs:
                    sb.safe_join(box, remote)
            except (sb.SandboxError, OSError) as e:
                self._done(msg, TaskResult.INPUT_MISSING, -1, "", start, message=str(e))
                return
            if msg.python_payload is not None:
                await self._run_python(msg, box, start)
            else:
                await self._run_command(msg, box, start)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a worker-side bug must not kill the worker
            log.exception("task %d failed inside the worker", msg.task_id)
            self._done(msg, TaskResult.FORSAKEN, -1, "", start, message=f"worker error: {e}")
        finally:
            self.running.pop(msg.task_id, None)
            pool.release(box)

    def _env(self, msg: RunTask) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"CORES": str(msg.cores), "MEMORY": str(msg.memory), "DISK": str(msg.disk),
                    "GPUS": str(msg.gpus), "OMP_NUM_THREADS": str(max(1, msg.cores))})
        env.update(dict(msg.env))
        return env

    async def _run_command(self, msg: RunTask, box: str, start: float) -> None:
        proc = sb.CommandProcess(msg.command, box, self._env(msg))
        self.procs[msg.task_id] = proc
        timer = None
        if msg.time_max > 0:
            def on_time() -> None:
                proc.killed_for_time = True
                proc.kill()
            timer = asyncio.get_running_loop().call_later(msg.time_max, on_time)
        try:
            status = await proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            self.procs.pop(msg.task_id, None)
        output = sb.read_output(box)
        if proc.killed_for_time:
            self._done(msg, TaskResult.MAX_WALL_TIME, -1, output, start,
                       message=f"killed after {msg.time_max} s")
            return
        if os.WIFSIGNALED(status):
            self._done(msg, TaskResult.SIGNAL, -os.WTERMSIG(status), output, start,
                       message=f"killed by signal {os.WTERMSIG(status)}")
            return
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and self._disk_exhausted(box, msg.disk):
            self._done(msg, TaskResult.DISK_EXHAUSTION, code, output, start,
                       message=f"the task filled the disk of worker {socket.gethostname()}")
            return
        self._finish_outputs(msg, box, code, output, start)

    def _disk_exhausted(self, box: str, disk_mb: int) -> bool:
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

    def _finish_outputs(self, msg: RunTask, box: str, code: int, output: str, start: float,
                        python_result: bytes | None = None,
                        extra: list[tuple[str, int]] | None = None) -> None:
        produced: list[tuple[str, int]] = list(extra or [])
        missing = []
        if code == 0:
            for name, remote in msg.outputs:
                src = sb.safe_join(box, remote)
                if not os.path.exists(src):
                    missing.append(remote)
                    continue
                try:
                    produced.append((name, self.cache.store_from(name, src)))
                except (OSError, CacheError) as e:
                    import errno

                    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                        self._done(msg, TaskResult.DISK_EXHAUSTION, code, output, start,
                                   message=f"disk full storing {remote}")
                        return
                    missing.append(f"{remote} ({e})")
        if missing:
            for name, _ in produced:
                self.cache.remove(name)
            self._done(msg, TaskResult.OUTPUT_MISSING, code, output, start,
                       message="output missing: " + ", ".join(missing))
            return
        self._done(msg, TaskResult.SUCCESS, code, output, start, outputs=produced,
                   python_result=python_result)

    async def _run_python(self, msg: RunTask, box: str, start: float) -> None:
        if self.python is None:
            self.python = PythonRunner(self.resources[0], self.hoisted)
        runner = self.python
        out_path = self.cache.part_path()
        keep = msg.python_keep
        env = [[k, v] for k, v in msg.env] + [["CORES", str(msg.cores)]]
        request = ["run", msg.task_id, box, msg.python_payload, out_path,
                   -1 if keep else INLINE_RESULT_MAX, env]
        timer = None
        timed_out = False
        if msg.time_max > 0:
            def on_time() -> None:
                nonlocal timed_out
                timed_out = True
                runner.kill(msg.task_id)
            timer = asyncio.get_running_loop().call_later(msg.time_max, on_time)
        try:
            _, _, status, kind, data, tb = await runner.run(
                msg.task_id, msg.python_mode or "direct", request)
        except asyncio.CancelledError:
            runner.kill(msg.task_id)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        output = sb.read_output(box)
        if timed_out:
            self._done(msg, TaskResult.MAX_WALL_TIME, -1, output, start,
                       message=f"killed after {msg.time_max} s")
            return
        assert isinstance(status, int)
        if kind == "error":
            self._done(msg, TaskResult.SUCCESS, 1, output, start,
                       python_result=data or None, python_error=str(tb),  # type: ignore[arg-type]
                       message="the function raised an exception")
            return
        if kind == "crash" or not os.WIFEXITED(status):
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
            self._done(msg, TaskResult.SIGNAL if sig else TaskResult.UNKNOWN, -sig or 1, output,
                       start, message=f"the Python process died (status {status})")
            return
        extra: list[tuple[str, int]] = []
        result: bytes | None = None
        if kind == "file":
            try:
                extra.append((msg.python_output, self.cache.commit(msg.python_output, out_path)))
            except (OSError, CacheError) as e:
                self._done(msg, TaskResult.OUTPUT_MISSING, 1, output, start,
                           message=f"result could not be stored: {e}")
                return
        else:
            result = data  # type: ignore[assignment]
        self._finish_outputs(msg, box, 0, output, start, python_result=result, extra=extra)

    def _done(self, msg: RunTask, result: TaskResult, code: int, output: str, start: float,
              outputs: list[tuple[str, int]] | None = None, python_result: bytes | None = None,
              python_error: str = "", message: str = "") -> None:
        self.tasks_run += 1
        self.send(TaskDone(task_id=msg.task_id, attempt=msg.attempt, result=int(result),
                           exit_code=code, output=output, start=start, end=time.time(),
                           outputs=outputs or [], python_result=python_result,
                           python_error=python_error, message=message))


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


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def run_worker(opts: WorkerOptions) -> int:
    """Run a worker until the manager says stop (or cannot be reached)."""
    logging.basicConfig(level=logging.WARNING, format="vinework worker: %(message)s")
    return Worker(opts).run()
