"""The worker process: the asyncio shell around the pure core in ``state.py``.

Wiring only. One asyncio loop turns everything that happens into events for
``WorkerState.handle`` (manager messages, connection ups and downs, signals,
process exits, fetch ends, a tick every ``TICK`` seconds, the death of the
parent process) and carries out the instructions it returns, in order. No
decision is taken here: when to connect, retry, give up, drop a silent
manager, drain, what a task's outcome is, which files to keep, all come from
the core.

Bulk bytes stay off the loop: a thread-based transfer server (on
``--transfer-port``) serves cached files to peers and the manager, and fetches
run in a thread pool (``--max-transfer-procs`` threads). Tasks are run by
``runner.py``: command tasks are reaped through pidfds, PythonTasks run in
warm interpreters (``pypool.py``). Events are queued and handled one at a
time, so an instruction that produces an event (``CollectOutputs``) never
re-enters the core.

The workspace: ``--workdir`` (kept at exit, with its FOREVER files and their
index; every other cached file is deleted at exit and at the next start), or
a fresh directory under ``$TMPDIR`` that lives as long as the process, across
managers, and is removed at exit (unless ``--keep-workspace``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import logging
import logging.handlers
import os
import shutil
import signal
import socket
import ssl
import sys
import threading
import time
import uuid

from ..checksums import checksum, fetch_checked
from ..netio import tune_stream
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
    TaskDone,
    TransferFailure,
    Unlink,
    Welcome,
    encode,
)
from ..protocol.auth import check_token, new_nonce
from ..protocol.messages import Challenge, StartLibrary, StopLibrary
from ..protocol.transfer import TransferError, TransferServer
from ..tlsconf import manager_client_context, peer_client_context, peer_server_context
from ..trees import TreeError, remove_path
from . import events as ev
from .cache import Cache, CacheError
from .fetches import URL_PORT, url_of
from .library import LibraryRunner
from .minitask import MiniSpec, make_mini, mini_timeout
from .options import WorkerOptions, detect_resources
from .records import WorkerConfig
from .runner import TaskRunner
from .state import WorkerState
from .taskenv import base_environment
from .urlfetch import UrlLimits, fetch_url
from .workspace import make_workdir

EXIT_HASH_WAIT = 5.0  # seconds an exit waits for results still being hashed
HASH_INLINE_MAX = 4 << 20  # outputs up to this many bytes in all are hashed on the loop
log = logging.getLogger("vinework.worker")
TICK = 0.1  # seconds between two Tick events


class WorkerStartError(Exception):
    """The worker cannot start (its transfer port is taken, its workdir unusable)."""


def _transfer_server(cache: Cache, ports: tuple[int, int]) -> TransferServer:
    """The transfer server on the first free port of ``ports`` ((0, 0): any port)."""
    lo, hi = ports
    last: OSError | None = None
    for port in range(lo, hi + 1):
        try:
            return TransferServer(cache.lookup, port=port)
        except OSError as e:
            last = e
    where = f"port {lo}" if lo == hi else f"any port of {lo}-{hi}"
    raise WorkerStartError(f"--transfer-port: cannot listen on {where}: "
                           f"{last.strerror if last else 'no port'}")


class Worker:
    """One worker process (see module docstring)."""

    def __init__(self, opts: WorkerOptions) -> None:
        self.opts = opts
        try:  # how long and how often URL files are fetched (VINEWORK_URL_* variables)
            self.url_limits = UrlLimits.from_env()
        except ValueError as e:
            raise WorkerStartError(str(e)) from None
        self._url_stop = threading.Event()  # ends URL fetches (their retries) at exit
        self.minis: dict[str, MiniSpec | str] = {}  # mini-task files asked for (or why not)
        self.transfer_key = b""  # the manager's session key for transfer tokens (Welcome)
        self.peer_tls: ssl.SSLContext | None = None  # peer transfers over TLS (Welcome)
        self.mini_timeout = mini_timeout(os.environ)
        self.owns_workdir = opts.workdir is None
        if opts.workdir:
            self.workdir = opts.workdir
            os.makedirs(self.workdir, exist_ok=True)
        else:  # private, locked, removed at every exit seen, stale ones removed (workspace.py)
            parent = os.environ.get("TMPDIR", "/tmp")
            try:
                self.workdir, self._workdir_lock = make_workdir(parent, opts.keep_workspace)
            except OSError as e:
                raise WorkerStartError(f"cannot make a workdir in {parent}: {e}") from None
        self.cache = Cache(os.path.join(self.workdir, "cache"))
        kept = self.cache.load()  # the FOREVER files of an earlier worker on this workdir
        self.forever = {n for n, _ in kept}
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
        self.resources = detect_resources(opts, self.workdir,
                                          sum(size for _, size in kept) // (1 << 20))
        self.server = _transfer_server(self.cache, opts.transfer_ports)
        # only requests with a token of this worker's manager are served (auth.py)
        self.server.authorize = lambda n, t: check_token(self.transfer_key, n, t)
        self.tokens: dict[str, str] = {}  # name -> the token to show its source
        self.expected: dict[str, str] = {}  # name -> the checksum it must have
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, opts.max_transfer_procs), thread_name_prefix="vine-fetch")
        self.hash_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="vine-hash")  # the outputs' checksums
        self.state = WorkerState(
            WorkerConfig(manager_host=opts.host, manager_port=opts.port,
                         hostname=socket.gethostname(),
                         transfer_port=opts.contact_port or self.server.port,
                         resources=self.resources, timeout=opts.connect_timeout,
                         attempt_timeout=opts.attempt_timeout,
                         drain_timeout=opts.drain_timeout, single_shot=opts.single_shot,
                         idle_timeout=opts.idle_timeout, wall_time=opts.wall_time,
                         min_backoff=opts.min_backoff, max_backoff=opts.max_backoff,
                         features=opts.features, password=opts.password),
            cached=kept)
        self._queue: collections.deque[ev.Event] = collections.deque()
        self._handling = False
        self._ids = itertools.count(1)
        self._exit: asyncio.Future[int] | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.session: asyncio.Task[None] | None = None
        self._drop_reason = ""
        # messages to send, in order; a TaskDone whose outputs are being hashed (in a
        # thread: a big output must not stop the loop) holds back what follows it
        self._outq: list[Message | _Hashing] = []
        self._flush_scheduled = False
        self._result_queued = False  # a TaskDone is in _outq: flush when the events are handled
        self.parts: dict[int, str] = {}  # fetch id -> part file
        self.tasks = TaskRunner(self.cache, self.sandboxes, self.py_sandboxes,
                                self.resources.cores, list(opts.hoist), self.post,
                                task_wrapper=opts.task_wrapper)
        self.libraries = LibraryRunner(self.cache, os.path.join(self.workdir, "libraries"),
                                       self.tasks.py_box_pool, self.post)

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        try:
            return asyncio.run(self._main())
        finally:
            self.close()

    def close(self) -> None:
        self._url_stop.set()
        self.server.close()
        self.libraries.close()
        self.tasks.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.hash_pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):  # remove_path: also what a task made read-only
            if self.py_sandboxes != self.sandboxes:
                remove_path(self.py_sandboxes)
            remove_path(self.sandboxes)
        for part in self.parts.values():
            with contextlib.suppress(OSError):
                os.unlink(part)
        if self.owns_workdir and not self.opts.keep_workspace:
            with contextlib.suppress(OSError):
                remove_path(self.workdir)
        else:  # what outlives the worker: its FOREVER files
            with contextlib.suppress(OSError):
                self.cache.prune(self.forever)
                self.cache.write_forever(sorted(self.forever))

    async def _main(self) -> int:
        if self.opts.ignored_managers:
            log.warning("connecting to %s:%d only; vinework serves one manager (ignoring %s)",
                        self.opts.host, self.opts.port, ", ".join(self.opts.ignored_managers))
        loop = asyncio.get_running_loop()
        self._exit = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, self._signal, "SIGTERM", True)
        loop.add_signal_handler(signal.SIGINT, self._signal, "SIGINT", False)
        loop.add_signal_handler(signal.SIGHUP, self._signal, "SIGHUP", False)
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
        if self._result_queued:  # (what the events said goes in order, in one write)
            self._result_queued = False
            self._flush()

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
            if ins.task.library_instance:  # type: ignore[attr-defined]
                self.libraries.start_call(ins)  # type: ignore[arg-type]
            else:
                self.tasks.start(ins)  # type: ignore[arg-type]
        elif t is ev.CollectOutputs:
            if self.libraries.owns(ins.run_id):  # type: ignore[attr-defined]
                self.libraries.collect(ins)  # type: ignore[arg-type]
            else:
                self.tasks.collect(ins)  # type: ignore[arg-type]
        elif t is ev.CleanupTask:
            if self.libraries.owns(ins.run_id):  # type: ignore[attr-defined]
                self.libraries.cleanup(ins.run_id)  # type: ignore[attr-defined]
            else:
                self.tasks.cleanup(ins.run_id)  # type: ignore[attr-defined]
        elif t is ev.KillTask:
            if self.libraries.owns(ins.run_id):  # type: ignore[attr-defined]
                self.libraries.kill(ins.run_id)  # type: ignore[attr-defined]
            else:
                self.tasks.kill(ins.run_id)  # type: ignore[attr-defined]
        elif t is ev.StartLibraryProcess:
            self.libraries.start(ins)  # type: ignore[arg-type]
        elif t is ev.StopLibraryProcess:
            self.libraries.stop(ins.instance_id)  # type: ignore[attr-defined]
        elif t is ev.StartFetch:
            self._start_fetch(ins)  # type: ignore[arg-type]
        elif t is ev.CommitFetch:
            self._commit_fetch(ins)  # type: ignore[arg-type]
        elif t is ev.DiscardFetch:
            part = self.parts.pop(ins.fetch_id, "")  # type: ignore[attr-defined]
            if part:
                with contextlib.suppress(OSError):
                    remove_path(part)
        elif t is ev.RemoveFile:
            self.cache.remove(ins.name)  # type: ignore[attr-defined]
        elif t is ev.PersistForever:
            self.forever = set(ins.names)  # type: ignore[attr-defined]
            try:
                self.cache.write_forever(ins.names)  # type: ignore[attr-defined]
            except OSError as e:
                log.warning("cannot record the FOREVER files: %s", e)
        elif t is ev.Connect:
            self.session = asyncio.ensure_future(self._session(ins.timeout))  # type: ignore[attr-defined]
        elif t is ev.DropConnection:
            self._drop_reason = ins.reason  # type: ignore[attr-defined]
            if self.session is not None:
                self.session.cancel()
        elif t is ev.Exit:
            code, reason = ins.code, ins.reason  # type: ignore[attr-defined]
            log.log(logging.INFO if code == 0 else logging.ERROR, "%s", reason)
            hashing = [i.fut for i in self._outq if type(i) is _Hashing]
            if hashing and self.writer is not None:  # results being hashed go out first
                asyncio.ensure_future(self._exit_when_hashed(hashing, code))
                return
            if self.writer is not None:
                self._flush()
            self._finish(code)
        else:
            raise AssertionError(f"unknown instruction {t.__name__}")

    async def _exit_when_hashed(self, hashing: list[asyncio.Future[TaskDone]],
                                code: int) -> None:
        await asyncio.wait(hashing, timeout=EXIT_HASH_WAIT)
        if self.writer is not None:
            self._flush()
        self._finish(code)

    # ------------------------------------------------------------------ the connection
    async def _session(self, timeout: float) -> None:
        """One connection: connect, then read until it ends; every outcome becomes an event."""
        now = time.monotonic
        try:
            tls = manager_client_context(self.opts.ssl_ca) if self.opts.ssl else None
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                self.opts.host, self.opts.port, ssl=tls,
                server_hostname=(self.opts.tls_sni or self.opts.host) if tls else None),
                timeout)
        except (OSError, TimeoutError) as e:
            why = str(e) or f"no answer within {timeout:g} s"
            self.post(ev.ConnectFailed(now=now(), reason=why))
            return
        tune_stream(writer)
        self.writer = writer
        self._drop_reason = ""
        self.post(ev.ConnectionOpened(now=now(), nonce=new_nonce()))
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
            if f.url:  # a URL file: the URL is the source (see fetches.py)
                if f.mini_kind:  # a mini-task file: made here (see minitask.py)
                    try:
                        self.minis[f.name] = MiniSpec.of(f)
                    except ValueError as e:
                        self.minis[f.name] = str(e)
                return ev.FetchRequested(now=now, transfer_id=f.transfer_id, name=f.name,
                                         host=f.url, port=URL_PORT, size=-1,
                                         cache_level=f.cache_level)
            if f.token:
                self.tokens[f.name] = f.token
            if f.checksum:
                self.expected[f.name] = f.checksum
            return ev.FetchRequested(now=now, transfer_id=f.transfer_id, name=f.name,
                                     host=f.host, port=f.port, size=f.size,
                                     cache_level=f.cache_level)
        if t is Unlink:
            return ev.UnlinkRequested(now=now, name=msg.name)  # type: ignore[attr-defined]
        if t is Kill:
            return ev.KillRequested(now=now, task_id=msg.task_id)  # type: ignore[attr-defined]
        if t is Heartbeat:
            return ev.HeartbeatReceived(now=now)
        if t is Challenge:
            c: Challenge = msg  # type: ignore[assignment]
            return ev.ChallengeReceived(now=now, nonce=c.nonce, proof=c.proof)
        if t is Welcome:
            w: Welcome = msg  # type: ignore[assignment]
            try:  # this session's transfer tokens (checked by our transfer server)
                self.transfer_key = bytes.fromhex(w.transfer_key)
                if w.tls_peer_cert:  # peer transfers over TLS (tlsconf.py)
                    self.server.ssl_context = peer_server_context(
                        w.tls_peer_key, w.tls_peer_cert, self.workdir)
                    self.peer_tls = peer_client_context(w.tls_peer_cert)
            except (ValueError, ssl.SSLError, OSError) as e:
                return ev.ProtocolViolation(now=now, error=f"a Welcome that cannot be used: {e}")
            return ev.WelcomeReceived(now=now, version=w.version, worker_id=w.worker_id,
                                      keepalive_interval=w.keepalive_interval,
                                      keepalive_timeout=w.keepalive_timeout,
                                      transfer_port=w.transfer_port,
                                      manager_name=w.manager_name)
        if t is Shutdown:
            return ev.ShutdownReceived(now=now, reason=msg.reason)  # type: ignore[attr-defined]
        if t is StartLibrary:
            return ev.LibraryStartRequested(now=now, library=msg)
        if t is StopLibrary:
            return ev.LibraryStopRequested(now=now, instance_id=msg.instance_id,  # type: ignore[attr-defined]
                                           reason=msg.reason)  # type: ignore[attr-defined]
        if t is Hoist:
            self.tasks.hoist(list(msg.modules))  # type: ignore[attr-defined]
            return ev.HeartbeatReceived(now=now)  # no state to change: it proves liveness
        return ev.ProtocolViolation(now=now, error=f"unexpected {t.__name__} from the manager")

    def _send(self, msg: Message) -> None:
        if type(msg) is TaskDone and msg.outputs:  # the manager records what it made
            done: TaskDone = msg  # type: ignore[assignment]
            if sum(max(0, size) for _, size in done.outputs) <= HASH_INLINE_MAX:
                msg = self._with_checksums(done)  # (small: ~1 ms, no thread hop)
                self._queue_message(msg)
                return
            fut = asyncio.get_running_loop().run_in_executor(
                self.hash_pool, self._with_checksums, done)
            fut.add_done_callback(lambda _: self._flush())
            self._outq.append(_Hashing(done.task_id, fut))
            return
        self._queue_message(msg)

    def _queue_message(self, msg: Message) -> None:
        self._outq.append(msg)
        if type(msg) is TaskDone:  # a result: out as soon as this event is handled (post)
            self._result_queued = True
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _with_checksums(self, msg: TaskDone) -> TaskDone:
        """``msg`` with its outputs' checksums (in a thread of ``hash_pool``)."""
        try:
            sums = self._checksums(msg.outputs)
        except Exception as e:  # a bug here must not lose the result: sent unchecked
            log.warning("cannot hash the outputs of task %d: %s", msg.task_id, e)
            sums = [""] * len(msg.outputs)
        return dataclasses.replace(msg, checksums=sums)

    def _checksums(self, outputs: list[tuple[str, int]]) -> list[str]:
        """The checksums of a task's outputs, in the cache now ("" if unreadable)."""
        out = []
        for name, _ in outputs:
            path = self.cache.lookup(name)
            try:
                out.append(checksum(path) if path else "")
            except (OSError, TreeError):
                out.append("")
        return out

    def _flush(self) -> None:
        """Write the queued messages up to the first TaskDone still being hashed;
        heartbeats behind it go now, listing its task as running (it is, to the
        manager, until its result arrives)."""
        self._flush_scheduled = False
        q = self._outq
        if not q:
            return
        if self.writer is None or self.writer.is_closing():
            q.clear()
            return
        out: list[Message] = []
        i = 0
        while i < len(q):
            item = q[i]
            if type(item) is _Hashing:
                if not item.fut.done():
                    break
                if not item.fut.cancelled() and item.fut.exception() is None:
                    out.append(item.fut.result())
            else:
                out.append(item)  # type: ignore[arg-type]
            i += 1
        held = q[i:]
        if held:  # every result held back is still running, as far as the manager knows
            held_ids = {h.task_id for h in held if type(h) in (_Hashing, TaskDone)}  # type: ignore[union-attr]
            self._outq = []
            for item in held:
                if type(item) is Heartbeat:
                    hb: Heartbeat = item  # type: ignore[assignment]
                    out.append(dataclasses.replace(
                        hb, running=sorted({*hb.running, *held_ids})))
                else:
                    self._outq.append(item)
        else:
            q.clear()
        if out:
            self.writer.write(b"".join(encode(m) for m in out))

    # ------------------------------------------------------------------ fetches
    def _start_fetch(self, ins: ev.StartFetch) -> None:
        part = self.parts[ins.fetch_id] = self.cache.part_path()
        url = url_of(ins.host, ins.port)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, float]]
        if url.startswith("mini://"):
            fut = asyncio.ensure_future(self._make_mini(ins.name, part))
        elif url:
            limits = dataclasses.replace(self.url_limits, max_bytes=self._url_room())
            fut = loop.run_in_executor(self.pool, fetch_url, url, part, limits, self._url_stop)
        else:
            fut = loop.run_in_executor(
                self.pool, functools.partial(
                    fetch_checked, self.expected.pop(ins.name, ""), ins.host, ins.port,
                    ins.name, part, ins.size, token=self.tokens.pop(ins.name, ""),
                    ssl_context=self.peer_tls))

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

    async def _make_mini(self, name: str, part: str) -> tuple[int, float]:
        """Make mini-task file ``name`` at ``part`` (see ``minitask.py``)."""
        spec = self.minis.get(name)
        if not isinstance(spec, MiniSpec):
            raise TransferError(f"mini://{name}: {spec or 'no mini task was sent for it'}",
                                TransferFailure.SOURCE_BROKEN)
        loop = asyncio.get_running_loop()
        return await make_mini(
            spec, part, self.cache.lookup, self.sandboxes, base_environment(),
            self.mini_timeout, lambda fn, *a: loop.run_in_executor(self.pool, fn, *a))

    def _url_room(self) -> int:
        """The most bytes a URL file may have here: the free space of the cache's disk,
        and what the disk this worker offers leaves beside the files it holds."""
        try:
            free = shutil.disk_usage(self.cache.dir).free
        except OSError:
            free = 0
        held = sum(max(0, e.size) for e in self.state.entries.values())
        budget = (self.resources.disk << 20) - held if self.resources.disk > 0 else free
        return max(0, min(free, budget))

    def _commit_fetch(self, ins: ev.CommitFetch) -> None:
        part = self.parts.pop(ins.fetch_id)
        try:
            self.cache.commit(ins.name, part)
        except (OSError, CacheError) as e:
            with contextlib.suppress(OSError):
                remove_path(part)
            self.post(ev.FileLost(name=ins.name, reason=f"cannot store {ins.name}: {e}"))


@dataclasses.dataclass(slots=True)
class _Hashing:
    """A TaskDone in the send queue whose outputs' checksums a thread is computing."""

    task_id: int
    fut: asyncio.Future[TaskDone]


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


def _log_handlers(opts: WorkerOptions) -> list[logging.Handler]:
    """stderr gets the worker's INFO lines (and the debug ones without -o); -o FILE gets all."""
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(logging.Formatter("vinework worker: %(message)s"))
    target = opts.debug_file
    if target in ("", ":stderr"):
        return [err]
    err.setLevel(logging.INFO)
    if target == ":stdout":
        out: logging.Handler = logging.StreamHandler(sys.stdout)
    elif opts.debug_rotate_max > 0:
        out = logging.handlers.RotatingFileHandler(target, maxBytes=opts.debug_rotate_max,
                                                   backupCount=1)
    else:
        out = logging.FileHandler(target)
    out.setFormatter(logging.Formatter("%(asctime)s vinework worker[%(process)d]: "
                                       "%(message)s"))
    return [err, out]


def run_worker(opts: WorkerOptions) -> int:
    """Run a worker until the manager says stop, a signal, or no manager for ``timeout``.

    Returns the exit code: 0 (stopped), 1 (no manager), 2 (it cannot start, or
    the peer is not a vinework manager).
    """
    try:
        handlers = _log_handlers(opts)
    except OSError as e:
        print(f"vinework worker: error: --debug-file {opts.debug_file}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    for h in list(log.handlers):
        log.removeHandler(h)
    for h in handlers:
        log.addHandler(h)
    log.setLevel(logging.DEBUG if opts.debug else logging.INFO)
    log.propagate = False
    try:
        worker = Worker(opts)
    except WorkerStartError as e:
        print(f"vinework worker: error: {e}", file=sys.stderr)
        return 2
    return worker.run()
