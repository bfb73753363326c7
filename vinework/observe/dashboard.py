"""A live web dashboard served from the manager process: ``Manager(dashboard=PORT)``.

``Dashboard(manager, port, host)`` runs an aiohttp server in its own daemon thread with
its own asyncio loop (never on the manager's loop). It serves one static page
(``dashboard_page.PAGE``: inline JS and CSS, nothing fetched from elsewhere) at ``/``
and the manager's state as JSON at ``/api/snapshot``: the status snapshot of
``status.py`` (the same counters as ``m.stats``), the worker-to-worker bytes by pair
(the transfer graph) and a time series of tasks by state and bytes by path.

Cost when nobody is looking: none on the manager's loop. The time series is sampled
by the dashboard's thread once a second only while a page has asked for a snapshot in
the last ``ACTIVE_SECONDS``; otherwise the sampler sleeps on an event that the next
request sets. Each sample (and each request's snapshot) is one ``m._ask`` call: one pass
over the core's tasks and files on the loop thread. Samples are kept in a bounded ring
(``SERIES_LENGTH``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from .dashboard_page import PAGE
from .status import manager_snapshot

if TYPE_CHECKING:
    from ..manager.info import InfoMethods as Manager

log = logging.getLogger("vinework.dashboard")

ACTIVE_SECONDS = 5.0  # a page that polled this recently keeps the sampler running
SAMPLE_PERIOD = 1.0  # seconds between samples while someone is looking
SERIES_LENGTH = 900  # samples kept (15 minutes at one a second)
STALE_SECONDS = 0.5  # a request newer than this reuses the sampler's last snapshot
SERIES_KEYS = ("waiting", "running", "done", "failed",
               "bytes_sent", "bytes_received", "bytes_peer")


def check_port(port: Any) -> int:
    """The dashboard's port as an int (0 = any free port).

    Raises:
        ValueError: not an integer in 0..65535.
    """
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"dashboard: the port is an integer 0..65535 (0 = any free "
                         f"port), got {port!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"dashboard: the port must be in 0..65535, got {port}")
    return port


def dashboard_snapshot(m: Manager) -> dict[str, Any]:
    """The JSON-able state the page draws (loop thread only): ``manager_snapshot(m)``
    plus "peer_pairs", a list of {source, dest, bytes} (worker-to-worker bytes)."""
    snap = manager_snapshot(m)
    pairs = m._state.peer_pairs
    snap["peer_pairs"] = [{"source": s, "dest": d, "bytes": b}
                          for (s, d), b in sorted(pairs.items())]
    return snap


def _sample(snap: dict[str, Any]) -> dict[str, float]:
    st, tasks = snap["stats"], snap["tasks"]
    return {"t": snap["time"], "waiting": tasks["waiting"], "running": tasks["running"],
            "done": tasks["done"], "failed": tasks["failed"],
            "bytes_sent": st["bytes_sent"], "bytes_received": st["bytes_received"],
            "bytes_peer": st["bytes_peer"]}


class Dashboard:
    """The dashboard's web server and sampler, in a daemon thread (see the module
    docstring). ``port`` is the bound port; ``close()`` stops it (idempotent).

    Raises:
        ValueError: a bad port.
        OSError: the address cannot be bound (e.g. the port is taken).
        RuntimeError: aiohttp is not installed (``pip install vinework[dashboard]``).
    """

    def __init__(self, manager: Manager, port: int = 0, host: str = "127.0.0.1") -> None:
        port = check_port(port)
        if not isinstance(host, str) or not host:
            raise ValueError(f"dashboard: the host is an address to listen on, got {host!r}")
        try:
            from aiohttp import web
        except ImportError as e:  # pragma: no cover - aiohttp is in the extras
            raise RuntimeError("Manager(dashboard=...) needs aiohttp: "
                               "pip install 'vinework[dashboard]'") from e
        self._m = manager
        self._web = web
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self.series: collections.deque[dict[str, float]] = collections.deque(
            maxlen=SERIES_LENGTH)
        self.samples_taken = 0  # how many times the sampler asked the manager
        self.active_seconds = ACTIVE_SECONDS  # a poll keeps the sampler going this long
        self._last_poll = -1e9
        self._latest: dict[str, Any] | None = None
        self._latest_at = -1e9
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._runner: Any = None
        self._sampling: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="vinework-dashboard",
                                        daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._start_error is not None:
            self._sock.close()
            raise self._start_error
        log.info("dashboard at http://%s:%d/", host, self.port)

    @property
    def url(self) -> str:
        """The page's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # ------------------------------------------------------------------ the thread
    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as e:  # reported to the constructor
            self._start_error = e
            self._started.set()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _start(self) -> None:
        web = self._web
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/api/snapshot", self._snapshot)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()
        self._wake = asyncio.Event()
        self._sampling = self._loop.create_task(self._sampler())

    async def _page(self, request: Any) -> Any:
        return self._web.Response(text=PAGE, content_type="text/html", charset="utf-8")

    def _looking(self) -> bool:
        return time.monotonic() - self._last_poll < self.active_seconds

    async def _take(self) -> dict[str, Any]:
        """One snapshot from the manager's loop (asked from an executor thread, so this
        loop keeps serving meanwhile); appended to the series."""
        m = self._m
        snap: dict[str, Any] = await self._loop.run_in_executor(
            None, lambda: m._ask(lambda: dashboard_snapshot(m)))
        self.samples_taken += 1
        self._latest, self._latest_at = snap, time.monotonic()
        if not self.series or snap["time"] - self.series[-1]["t"] >= SAMPLE_PERIOD / 2:
            self.series.append(_sample(snap))
        return snap

    async def _sampler(self) -> None:
        assert self._wake is not None
        while not self._closed:
            if not self._looking():
                self._wake.clear()
                await self._wake.wait()  # nobody looking: no work until a request comes
                continue
            try:
                await self._take()
            except Exception as e:  # the manager closed or failed: say so, keep serving
                log.debug("dashboard sample failed: %s", e)
            await asyncio.sleep(SAMPLE_PERIOD)

    async def _snapshot(self, request: Any) -> Any:
        web = self._web
        self._last_poll = time.monotonic()
        if self._wake is not None:
            self._wake.set()
        try:
            if self._latest is not None and time.monotonic() - self._latest_at < STALE_SECONDS:
                snap = self._latest
            else:
                snap = await self._take()
        except Exception as e:
            body = json.dumps({"error": f"the manager cannot answer: {e}"})
            return web.Response(text=body, status=503, content_type="application/json")
        out = dict(snap)
        out["series"] = list(self.series)
        out["dashboard"] = {"samples_taken": self.samples_taken,
                            "sample_period": SAMPLE_PERIOD}
        return web.Response(text=json.dumps(out, separators=(",", ":")),
                            content_type="application/json")

    # ------------------------------------------------------------------ stop
    def close(self) -> None:
        """Stop serving and end the thread (waits up to a few seconds)."""
        if self._closed:
            return
        self._closed = True

        async def stop() -> None:
            if self._sampling is not None:
                self._sampling.cancel()
            if self._runner is not None:
                await self._runner.cleanup()

        if self._thread.is_alive() and not self._loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=5)
            except Exception as e:
                log.debug("dashboard stop: %s", e)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._sock.close()
