"""Prometheus metrics of a running manager: ``Manager(prometheus_port=PORT)``.

A custom collector in its own ``CollectorRegistry`` (never the library's global
one, so two managers in one process do not collide) takes one status snapshot
(``observe/status.py``) on the manager's loop thread at each scrape, with a
short timeout, and turns it into metric families. The HTTP endpoint is the
Prometheus client library's own server (``start_http_server``) in a daemon
thread, on loopback unless told otherwise; ``m.close()`` shuts it down.

Names (docs/observe.md has the table): every numeric field of TaskVine's
``vine_stats`` and of vinework's counters, prefixed ``vine_``. Fields that
say what is true *now* (tasks waiting, workers connected, cores in total, cache
in use, ...) are gauges; fields that only grow (tasks done, bytes sent, peer
bytes, recoveries, ...) are counters, which the exposition format names with
``_total`` (``vine_tasks_done_total``). Units are TaskVine's: bytes, MB for
memory and disk, microseconds for ``time_*``, seconds for
``recovery_seconds``. Beside them: per-worker gauges labelled ``worker``
(``vine_worker_tasks_running``, ``vine_worker_cores_inuse``,
``vine_worker_cache_bytes``, ...), files by where they live
(``vine_files{where=...}``, ``vine_file_bytes{where=...}``), transfers in
flight by source kind (``vine_transfers_in_flight{source=...}``), and
``vine_manager_up`` (0 when a scrape could not get a snapshot).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .status import manager_snapshot

if TYPE_CHECKING:
    from ..manager.info import InfoMethods as Manager

log = logging.getLogger("vinework.metrics")

SCRAPE_TIMEOUT = 5.0  # seconds a scrape waits for the loop thread's snapshot

# vine_stats fields that say what is true now (gauges); every other number only grows
GAUGE_FIELDS = frozenset({
    "tasks_waiting", "tasks_on_workers", "tasks_running", "tasks_with_results",
    "workers_connected", "workers_init", "workers_idle", "workers_busy", "workers_able",
    "time_when_started", "bandwidth", "inuse_cache",
    *(f"{k}_{r}" for k in ("total", "committed", "max", "min")
      for r in ("cores", "memory", "disk", "gpus")),
})

WORKER_GAUGES = ("cores_total", "cores_inuse", "memory_total", "memory_inuse",
                 "disk_total", "disk_inuse", "gpus_total", "gpus_inuse", "cache_bytes",
                 "files", "tasks_running")
WORKER_COUNTERS = ("tasks_done", "bytes_in", "bytes_out")


def _snapshot(m: Manager, timeout: float) -> dict[str, Any] | None:
    """The manager's snapshot, made on its loop thread; None if it cannot be had."""
    server = m._server
    if getattr(m, "_closed", True) or server.loop.is_closed():
        return None
    fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

    def run() -> None:
        try:
            fut.set_result(manager_snapshot(m))
        except BaseException as e:  # (reported to the scraping thread)
            fut.set_exception(e)
    try:
        server.loop.call_soon_threadsafe(run)
        return fut.result(timeout=timeout)
    except Exception as e:
        log.warning("metrics: no snapshot from the manager: %s", e or type(e).__name__)
        return None


class ManagerCollector:
    """A Prometheus collector of one manager's metrics (see the module docstring)."""

    def __init__(self, manager: Manager, timeout: float = SCRAPE_TIMEOUT) -> None:
        self.manager = manager
        self.timeout = timeout

    def describe(self) -> list[Any]:
        return []  # (nothing is checked at registration: the names come at scrape time)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = _snapshot(self.manager, self.timeout)
        yield GaugeMetricFamily("vine_manager_up", "1 if the manager gave a snapshot",
                                value=0 if snap is None else 1)
        if snap is None:
            return
        for name, v in snap["stats"].items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            doc = f"TaskVine's vine_stats {name}" if name in GAUGE_FIELDS else \
                f"{name} since the manager started"
            if name in GAUGE_FIELDS:
                yield GaugeMetricFamily(f"vine_{name}", doc, value=v)
            else:
                yield CounterMetricFamily(f"vine_{name}", doc, value=v)
        rows = snap["workers"]
        for key in WORKER_GAUGES:
            g = GaugeMetricFamily(f"vine_worker_{key}", f"a worker's {key}",
                                  labels=["worker", "hostname"])
            for w in rows:
                g.add_metric([w["worker_id"], w["hostname"]], w[key])
            yield g
        for key in WORKER_COUNTERS:
            c = CounterMetricFamily(f"vine_worker_{key}", f"a worker's {key}",
                                    labels=["worker", "hostname"])
            for w in rows:
                c.add_metric([w["worker_id"], w["hostname"]], w[key])
            yield c
        files = GaugeMetricFamily("vine_files", "files the manager knows, by where they live",
                                  labels=["where"])
        sizes = GaugeMetricFamily("vine_file_bytes", "bytes of those files, by where they "
                                  "live", labels=["where"])
        for where, row in snap["files"].items():
            files.add_metric([where], row["files"])
            sizes.add_metric([where], row["bytes"])
        yield files
        yield sizes
        tr = snap["transfers"]
        flying = GaugeMetricFamily("vine_transfers_in_flight", "transfers in flight, by "
                                   "source", labels=["source"])
        for kind in ("peer", "from_manager", "from_url", "to_manager"):
            flying.add_metric([kind], tr[kind])
        yield flying
        yield GaugeMetricFamily("vine_tasks_recovering", "recovery runs under way",
                                value=snap["recoveries"]["recovering_now"])


class MetricsServer:
    """The metrics endpoint of one manager: its registry and HTTP server thread."""

    def __init__(self, manager: Manager, port: int, host: str = "127.0.0.1") -> None:
        """Start serving ``http://host:port/metrics`` (port 0: any free port).

        Raises:
            RuntimeError: prometheus-client is not installed.
            ValueError: the port is not 0..65535.
            OSError: the port cannot be bound.
        """
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise RuntimeError("Manager(prometheus_port=...) needs prometheus-client "
                               "(pip install 'vinework[dashboard]')") from None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"prometheus_port must be a port number 0..65535, got {port!r}")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ManagerCollector(manager))  # type: ignore[arg-type]
        self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port: int = int(self._httpd.server_port)
        self.host = host
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Stop the HTTP server (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
