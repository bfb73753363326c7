"""The manager's I/O shell: an asyncio loop in its own thread around ``ManagerState``.

Theory of operation: the loop thread is the only owner of the core. It
accepts worker connections, decodes and validates their frames, turns them
into events, feeds the core, and carries out the commands it returns:
batched writes to workers, retrievals of files from workers (in a thread pool,
so bulk bytes never stall the loop), returning finished tasks to the user,
closing the connections the core decided are dead. It makes no decision of
its own: liveness, heartbeats, hoisting and draining are the core's, driven
by a ``Tick`` event twice a second. It also runs the manager's transfer server
(files the manager itself serves) and counts the control bytes in and out.

If the core raises, the shell records the event, its stimulus id and the
traceback as a ``ManagerError``, stops feeding the core, and tells the API,
which raises that error at the user's next call.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..checksums import fetch_checked
from ..core import (
    Command,
    DropWorker,
    Event,
    FetchDone,
    Log,
    ManagerState,
    Notice,
    ReplicaFailed,
    ReplicaReady,
    RetrievalDone,
    Retrieve,
    Send,
    TaskReported,
    TaskReturned,
    Tick,
    WorkerHeard,
    WorkerJoined,
    WorkerLeaving,
    WorkerLeft,
)
from ..core.events import LibraryLog, LibraryReported
from ..netio import tune_stream
from ..protocol import (
    PROTOCOL_VERSION,
    CacheInvalid,
    CacheUpdate,
    Heartbeat,
    Leaving,
    Message,
    ProtocolError,
    RemoteProtocolError,
    Shutdown,
    TaskDone,
    TransferFailure,
    Welcome,
    encode,
)
from ..protocol.auth import check_token, make_token, valid_cache_name
from ..protocol.messages import Fetch, LibraryEnded, LibraryReady, OutputChunk
from ..protocol.transfer import TransferError, TransferServer, listen_socket
from ..tlsconf import peer_client_context, peer_server_context
from ..trees import remove_path
from ..txnlog import TxnLog
from .errors import ManagerError
from .flood import FLOOD_RATE, WORKER_FRAME_LIMITS, within_budget
from .handshake import HANDSHAKE_TIMEOUT, MAX_STRANGERS, Refused, StatusAnswered, handshake
from .watch import write_chunk

log = logging.getLogger("vinework.manager")


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return fn  # type: ignore[no-any-return]


_malloc_trim = _load_malloc_trim()
TICK_SECONDS = 0.5
# the manager's transfer server serves up to 4 x transfer-source-max fetches at once (see
# replicas.pick_source): room for that at the largest setting, and retrievals besides
MANAGER_TRANSFER_CONNECTIONS = 1024


@dataclass
class Connection:
    worker_id: str
    writer: asyncio.StreamWriter
    host: str
    outq: list[Message] = field(default_factory=list)
    flush_scheduled: bool = False
    closed: bool = False
    budget: float = 0.0  # messages it may still send now (flood.py)
    refilled: float = 0.0  # when the budget was last refilled (0: not yet)


class ManagerServer:
    """Owns the loop thread, the connections and the pure state."""

    def __init__(
        self,
        state: ManagerState,
        port: int | tuple[int, int],
        txn: TxnLog,
        files_at_manager: Callable[[str], str | tuple[str, int] | None],
        on_task_returned: Callable[[TaskReturned], None],
        on_fetch_done: Callable[[FetchDone], None],
        on_error: Callable[[ManagerError], None],
        on_notice: Callable[[str], None],
        name: str = "",
        tls: tuple[ssl.SSLContext, str, str] | None = None,
    ) -> None:
        self.state = state
        self.txn = txn
        txn.attach(state)  # TaskVine's task and worker fields; the performance log
        self.name = name
        # TLS (tlsconf.py): the control connection's context, and the peer pair (PEM)
        self.tls = tls
        self.peer_client: ssl.SSLContext | None = \
            peer_client_context(tls[2]) if tls is not None else None
        self.on_task_returned = on_task_returned
        self.on_fetch_done = on_fetch_done
        self.on_error = on_error
        self.on_notice = on_notice
        self.error: ManagerError | None = None
        self.on_library_log: Callable[[LibraryLog], None] | None = None
        self.bytes_in = 0  # control frames from workers
        self.bytes_out = 0  # control frames to workers
        self.conns: dict[str, Connection] = {}
        self.queries = 0  # questions answered on the loop (call())
        self._trim_peak = 0
        self._trim_activity = -1
        self._inbox: collections.deque[Event] = collections.deque()
        self._inbox_scheduled = False
        self._unflushed: list[Connection] = []  # connections with messages to write
        self._next_worker = 1
        self.password: bytes | None = None  # set_password: workers must prove they know it
        self.status_source: Callable[[str], str] | None = None  # status queries (handshake.py)
        self.status_answered = 0  # status queries answered
        self.transfer_key = os.urandom(32)  # this session's transfer tokens (auth.py)
        self._strangers = 0  # connections in their handshake
        self.rejected = 0  # connections that did not become workers
        self._last_reject_log = -1.0
        self._warned_open = False
        self.listen = self._bind(port)
        self.port: int = self.listen.getsockname()[1]
        self.transfer = TransferServer(
            files_at_manager, authorize=lambda n, t: check_token(self.transfer_key, n, t),
            max_connections=MANAGER_TRANSFER_CONNECTIONS,
            ssl_context=None if tls is None else peer_server_context(
                tls[1], tls[2], os.path.dirname(os.path.abspath(txn.path))))
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=8,
                                                          thread_name_prefix="vine-retrieve")
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stopping = False
        self.thread = threading.Thread(target=self._thread_main, name="vine-manager", daemon=True)
        self.thread.start()
        self._started.wait()

    @staticmethod
    def _bind(port: int | tuple[int, int]) -> socket.socket:
        if isinstance(port, tuple):
            lo, hi = port
            last: OSError | None = None
            for p in range(lo, hi + 1):
                try:
                    return listen_socket(p)
                except OSError as e:
                    last = e
            raise OSError(f"no free port in {lo}-{hi}: {last}")
        return listen_socket(port)

    # ------------------------------------------------------------------ thread & loop
    def _thread_main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._started.set()
        self.loop.run_forever()
        self.loop.close()

    async def _start(self) -> None:
        self.server = await asyncio.start_server(
            self._on_connect, sock=self.listen, limit=1 << 20,
            ssl=self.tls[0] if self.tls is not None else None,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self.tls is not None else None)
        self._ticker = asyncio.ensure_future(self._keepalive())

    def post(self, event: Event) -> None:
        """Hand an event to the loop thread (safe from any thread). Events posted in a
        burst share one wake-up of the loop; they are applied in the order posted."""
        self._inbox.append(event)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            self.loop.call_soon_threadsafe(self._drain_inbox)

    def post_quiet(self, event: Event) -> None:
        """Hand the loop thread an event that can wait: it is applied, in order, with the
        next event posted, the next query (``call``), or the next Tick (at most
        ``TICK_SECONDS`` later), without a wake-up of its own. (A wake-up makes the loop
        thread take the GIL from the user's thread while it works, which costs that
        thread a switch interval or more; a task handed back by ``wait()`` is one such
        event.) A status request applies them first too; until then, the transaction
        log's DONE line waits with them. The core applies them at its own later time
        (its clock never goes back)."""
        self._inbox.append(event)

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False  # (first: an event posted from now on wakes us again)
        inbox = self._inbox
        while inbox:
            self.apply(inbox.popleft())
        self._flush_now()

    def call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the loop thread and return its result (from another thread),
        after every event posted before it."""
        fut: concurrent.futures.Future[object] = concurrent.futures.Future()

        def run() -> None:
            try:
                self._drain_inbox()
                self.queries += 1
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout=30)

    def apply(self, event: Event) -> None:
        """Feed the core one event and carry out its commands (loop thread only)."""
        if self.error is not None:
            return  # the core is not trusted after an error; the API raises it
        try:
            cmds = self.state.handle(event)
        except Exception:
            err = ManagerError(self.state.stimulus, type(event).__name__, traceback.format_exc())
            self.error = err
            log.error("%s", err)
            self.txn.write("MANAGER", ("ERROR", err.stimulus_id, err.event))
            self.on_error(err)
            return
        self.execute(cmds)

    def execute(self, cmds: list[Command]) -> None:
        txn = self.txn
        when = int(time.time() * 1e6)  # one timestamp for the records of one event
        for c in cmds:
            if type(c) is Send:
                self._send(c.worker_id, c.message)
            elif type(c) is Log:
                txn.write(c.kind, c.fields, when)
            elif type(c) is TaskReturned:
                txn.returned(c)  # TaskVine's RETRIEVED line: what the run measured
                self.on_task_returned(c)
            elif type(c) is Retrieve:
                self._retrieve(c)
            elif type(c) is FetchDone:
                self.on_fetch_done(c)
            elif type(c) is DropWorker:
                conn = self.conns.get(c.worker_id)
                if conn is not None:
                    self._drop(conn, c.reason)
            elif type(c) is Notice:
                self.on_notice(c.text)
            elif type(c) is LibraryLog:
                if self.on_library_log is not None:
                    self.on_library_log(c)

    def now(self) -> float:
        return time.monotonic()

    # ------------------------------------------------------------------ connections
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:  # close() ends every connection's task
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: the handshake, then the worker's messages until it goes."""
        peer = writer.get_extra_info("peername") or ("?", 0)
        host = peer[0]
        if host.startswith("::ffff:"):
            host = host[7:]
        tune_stream(writer)
        if self._strangers >= MAX_STRANGERS:
            self._reject(host, f"more than {MAX_STRANGERS} connections in their handshake")
            writer.close()
            return
        self._strangers += 1
        password = self.password
        try:
            hello, cached, dec = await asyncio.wait_for(
                handshake(reader, writer, password,
                          self._status if self.status_source is not None else None),
                HANDSHAKE_TIMEOUT)
        except StatusAnswered:
            self.status_answered += 1
            writer.close()
            return
        except (Refused, TimeoutError, ProtocolError, ConnectionError, OSError) as e:
            why = str(e) or type(e).__name__
            self._reject(host, why if isinstance(e, Refused) else f"bad handshake: {why}")
            writer.close()
            return
        finally:
            self._strangers -= 1
        if password is None and not self._warned_open:
            self._warned_open = True
            addr = self.listen.getsockname()[0]
            log.warning("no password is set: any process that can reach port %d on %s%s can "
                        "connect as a worker and run code as this user "
                        "(m.set_password or m.set_password_file)", self.port, addr,
                        " (every interface)" if addr in ("0.0.0.0", "::") else "")
        wid = f"w{self._next_worker}"
        self._next_worker += 1
        conn = Connection(wid, writer, host)
        self.conns[wid] = conn
        tune = self.state.tune
        self._send(wid, Welcome(version=PROTOCOL_VERSION, worker_id=wid,
                                keepalive_interval=tune.keepalive_interval,
                                transfer_port=self.transfer.port, manager_name=self.name,
                                keepalive_timeout=tune.keepalive_timeout,
                                transfer_key=self.transfer_key.hex(),
                                tls_peer_key=self.tls[1] if self.tls else "",
                                tls_peer_cert=self.tls[2] if self.tls else ""))
        self.apply(WorkerJoined(now=self.now(), worker_id=wid, host=host,
                                transfer_port=hello.transfer_port, cores=hello.cores,
                                memory=hello.memory, disk=hello.disk, gpus=hello.gpus,
                                hostname=hello.hostname,
                                cached=cached,
                                features=tuple(hello.features)))
        reason = "connection closed"
        dec.limits = WORKER_FRAME_LIMITS
        try:
            while not conn.closed:
                data = await reader.read(1 << 20)
                if not data:
                    break
                self.bytes_in += len(data)
                dec.receive_data(data)
                n = 0
                while (msg := dec.next_message()) is not None:
                    self._on_message(conn, msg)
                    n += 1
                self._flush_now()  # what the messages made the core say, without a loop turn
                if not within_budget(conn, n):
                    raise _remote(f"more than {FLOOD_RATE} messages a second (a flood)")
        except ProtocolError as e:
            reason = f"protocol error: {e}"
            log.warning("dropping worker %s (%s): %s", wid, host, e)
        except (ConnectionError, OSError) as e:
            reason = f"connection error: {e}"
        finally:
            self._drop(conn, reason)

    def _status(self, what: str) -> str:
        """A status query's answer, after the events posted quietly (loop thread)."""
        assert self.status_source is not None
        self._drain_inbox()
        return self.status_source(what)

    def _reject(self, host: str, why: str) -> None:
        """A connection that does not become a worker: logged (rate-limited), recorded."""
        self.txn.write("WORKER", ("-", "REJECTED", host, why))
        self.rejected += 1
        now = time.monotonic()
        if now - self._last_reject_log >= 1.0:
            self._last_reject_log = now
            log.warning("rejected connection from %s: %s", host, why)

    def _on_message(self, conn: Connection, msg: Message) -> None:
        now = self.now()
        t = type(msg)
        if t is TaskDone:
            self.apply(TaskReported(now=now, worker_id=conn.worker_id, done=msg))  # type: ignore[arg-type]
        elif t is CacheUpdate:
            m: CacheUpdate = msg  # type: ignore[assignment]
            if not valid_cache_name(m.name):
                raise _remote(f"CacheUpdate of an invalid name {m.name[:80]!r}")
            self.apply(ReplicaReady(now=now, worker_id=conn.worker_id, name=m.name, size=m.size,
                                    seconds=m.seconds, transfer_id=m.transfer_id, source=m.source))
        elif t is CacheInvalid:
            ci: CacheInvalid = msg  # type: ignore[assignment]
            if not valid_cache_name(ci.name):
                raise _remote(f"CacheInvalid of an invalid name {ci.name[:80]!r}")
            cause = TransferFailure(ci.cause) if ci.cause in TransferFailure._value2member_map_ \
                else TransferFailure.UNKNOWN
            self.apply(ReplicaFailed(now=now, worker_id=conn.worker_id, name=ci.name,
                                     transfer_id=ci.transfer_id, reason=ci.reason,
                                     cause=cause))
        elif t is Heartbeat:
            hb: Heartbeat = msg  # type: ignore[assignment]
            self.apply(WorkerHeard(now=now, worker_id=conn.worker_id, disk_used=hb.disk_used,
                                   running=tuple(hb.running)))
        elif t is Leaving:
            lv: Leaving = msg  # type: ignore[assignment]
            self.apply(WorkerLeaving(now=now, worker_id=conn.worker_id, reason=lv.reason))
        elif t is OutputChunk:
            write_chunk(self.state, conn.worker_id, msg)  # type: ignore[arg-type]
        elif t is LibraryReady or t is LibraryEnded:
            self.apply(LibraryReported(now=now, worker_id=conn.worker_id, message=msg))
        else:
            raise _remote(f"unexpected {t.__name__} from a worker")

    def _drop(self, conn: Connection, reason: str) -> None:
        if conn.closed:
            return
        self._flush(conn)  # what the core said last (a Shutdown) goes before the close
        conn.closed = True
        self.conns.pop(conn.worker_id, None)
        with contextlib.suppress(Exception):
            conn.writer.close()
        if not self._stopping:
            self.apply(WorkerLeft(now=self.now(), worker_id=conn.worker_id, reason=reason))

    def _send(self, worker_id: str, msg: Message) -> None:
        conn = self.conns.get(worker_id)
        if conn is None or conn.closed:
            return
        if type(msg) is Fetch and not msg.url:  # from a transfer server: show it a token
            msg = replace(msg, token=make_token(self.transfer_key, msg.name))
        conn.outq.append(msg)
        if not conn.flush_scheduled:  # flushed at the end of this burst, or on the next turn
            conn.flush_scheduled = True
            self._unflushed.append(conn)
            if len(self._unflushed) == 1:
                self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        """Write every connection's queued messages (one write per connection)."""
        pending, self._unflushed = self._unflushed, []
        for conn in pending:
            self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        conn.flush_scheduled = False
        if conn.closed or not conn.outq:
            return
        try:
            data = b"".join(encode(m) for m in conn.outq)
            self.bytes_out += len(data)
            conn.writer.write(data)
        except Exception as e:
            log.warning("write to %s failed: %s", conn.worker_id, e)
        conn.outq.clear()

    async def _keepalive(self) -> None:
        """Time for the core: a Tick twice a second (keepalives, hints, retries)."""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self._drain_inbox()  # (events posted quietly)
            self.apply(Tick(now=self.now()))
            self.txn.maybe_flush()
            self._maybe_trim()

    def _maybe_trim(self) -> None:
        """Give freed memory back to the system once the work has shrunk.

        After a burst of tasks the allocator keeps the freed heap (measured: 296 MB
        resident after a 20,000-task graph, 118 MB after ``malloc_trim``), as Dask's
        workers find too. So when something happened since the last trim and the core
        holds at most half the tasks it held at its peak since then, trim (glibc only).
        """
        if _malloc_trim is None:
            return
        n = len(self.state.tasks)
        self._trim_peak = max(self._trim_peak, n)
        activity = self.state.events_handled + self.queries
        if activity == self._trim_activity or n > self._trim_peak // 2:
            return
        self._trim_activity, self._trim_peak = activity, n
        _malloc_trim(0)

    # ------------------------------------------------------------------ retrievals
    def _retrieve(self, c: Retrieve) -> None:
        dest = c.dest or ""
        tmp = f"{dest}.part-{c.retrieval_id}"

        def work() -> tuple[int, float]:
            os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
            size, secs = fetch_checked(c.checksum, c.host, c.port, c.name, tmp, c.size,
                                       timeout=60, token=make_token(self.transfer_key, c.name),
                                       ssl_context=self.peer_client)
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                _put_tree(tmp, dest, f"{dest}.old-{c.retrieval_id}")
            else:
                if os.path.isdir(dest) and not os.path.islink(dest):
                    remove_path(dest)
                os.replace(tmp, dest)
            return size, secs

        fut = self.pool.submit(work)

        def done(f: concurrent.futures.Future[tuple[int, float]]) -> None:
            try:
                size, secs = f.result()
                ev = RetrievalDone(now=self.now(), retrieval_id=c.retrieval_id, ok=True,
                                   size=size, seconds=secs)
            except (TransferError, OSError) as e:
                with contextlib.suppress(OSError):
                    remove_path(tmp)
                cause = e.cause if isinstance(e, TransferError) else TransferFailure.LOCAL_IO
                ev = RetrievalDone(now=self.now(), retrieval_id=c.retrieval_id, ok=False,
                                   error=str(e), cause=cause)
            self.post(ev)

        fut.add_done_callback(done)

    # ------------------------------------------------------------------ shutdown
    def close(self, shutdown: bool = True) -> None:
        """Stop: with ``shutdown``, tell every worker to exit; without, just hang up (the
        workers wait for the next manager on the same address, keeping what they cache
        at the "worker" and "forever" levels)."""
        if self._stopping:
            return
        self._stopping = True

        async def stop() -> None:
            self._drain_inbox()  # (events posted quietly)
            conns = list(self.conns.values())
            for conn in conns:
                if shutdown:
                    self._send(conn.worker_id, Shutdown(reason="manager closing"))
                self._flush(conn)
            # what was written goes out to every worker at once, 2 s for all of them
            drains = [asyncio.ensure_future(conn.writer.drain()) for conn in conns]
            if drains:
                await asyncio.wait(drains, timeout=2)
            for d in drains:
                if d.done() and not d.cancelled():
                    d.exception()  # (a worker that hung up: nothing left to tell it)
            for conn in conns:
                conn.closed = True
                conn.writer.close()
            self._ticker.cancel()
            self.server.close()
            # connections still in their handshake (or reading): ended here, not left
            # pending when the loop stops ("Task was destroyed but it is pending")
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            if others:
                await asyncio.wait(others, timeout=1)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.transfer.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            self.listen.close()


def _put_tree(tree: str, dest: str, aside: str) -> None:
    """Put a retrieved tree at ``dest``: what is there is renamed aside first, so
    ``dest`` is the old content or the new, never a mix, and then deleted."""
    if os.path.lexists(dest):
        os.replace(dest, aside)
        try:
            os.replace(tree, dest)
        except OSError:
            os.replace(aside, dest)  # put the old one back
            raise
        remove_path(aside)
    else:
        os.replace(tree, dest)


def _remote(msg: str) -> ProtocolError:
    return RemoteProtocolError(msg)
