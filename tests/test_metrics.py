"""Prometheus metrics: ``Manager(prometheus_port=0)`` with real workers, scraped over HTTP
and parsed with the Prometheus client library's own parser; values match ``m.stats``."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import vinework as vine

try:
    from conftest import wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import wait_all, wait_workers

pytestmark = pytest.mark.timeout(90)


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {labels: value}, and the families' types under "#type"."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    types: dict[tuple[tuple[str, str], ...], float] = {}
    for fam in text_string_to_metric_families(text):
        types[(("name", fam.name), ("type", fam.type))] = 1
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    out["#type"] = types
    return out


def test_metrics_match_the_managers_stats(tmp_path: Any, workers: Any) -> None:
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "ri"), shutdown=True,
                     prometheus_port=0)
    try:
        assert isinstance(m.prometheus_port, int) and m.prometheus_port > 0
        workers(m)
        workers(m)
        wait_workers(m, 2)
        tmp = m.declare_temp()
        make = vine.Task("head -c 7000 /dev/zero > out")
        make.add_output(tmp, "out")
        make.set_cores(2)
        use = vine.Task("wc -c < in")
        use.add_input(tmp, "in")
        use.set_cores(2)
        m.submit(make)
        m.submit(use)
        for i in range(3):
            m.submit(vine.Task(f"echo {i}"))
        wait_all(m, 5)
        got = scrape(m.prometheus_port)
        st = m.stats
        assert got["vine_manager_up"][()] == 1
        # gauges for "now", counters (exposed with _total) for cumulative fields
        for name in ("tasks_waiting", "tasks_running", "workers_connected", "total_cores",
                     "inuse_cache"):
            assert got[f"vine_{name}"][()] == getattr(st, name), name
            assert got["#type"][(("name", f"vine_{name}"), ("type", "gauge"))] == 1
        for name in ("tasks_submitted", "tasks_done", "tasks_failed", "bytes_sent",
                     "bytes_received", "bytes_peer", "tasks_recovery", "files_lost",
                     "transfers_peer"):
            assert got[f"vine_{name}_total"][()] == getattr(st, name), name
            assert got["#type"][(("name", f"vine_{name}"), ("type", "counter"))] == 1
        assert st.workers_connected == 2 and st.tasks_done == 5
        per_worker = got["vine_worker_cores_total"]
        assert sorted(dict(k)["worker"] for k in per_worker) == ["w1", "w2"]
        assert sum(got["vine_worker_tasks_done_total"].values()) == 5
        assert got["vine_files"][(("where", "workers_only"),)] >= 1
        assert got["vine_transfers_in_flight"][(("source", "peer"),)] == 0
        del tmp
    finally:
        port = m.prometheus_port
        m.close()
    with socket.socket() as s:  # closed with the manager
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_metrics_listen_on_loopback_and_bad_ports_are_refused(tmp_path: Any) -> None:
    with vine.Manager(port=0, run_info_path=str(tmp_path / "ri"), prometheus_port=0) as m:
        assert m._metrics is not None and m._metrics.host == "127.0.0.1"
        assert m._metrics._httpd.server_address[0] == "127.0.0.1"
        with pytest.raises(OSError):  # the port is taken
            vine.Manager(port=0, run_info_path=str(tmp_path / "ri2"),
                         prometheus_port=m.prometheus_port)
    with pytest.raises(ValueError, match="prometheus_port must be a port number"):
        vine.Manager(port=0, run_info_path=str(tmp_path / "ri3"), prometheus_port=70000)
    m2 = vine.Manager(port=0, run_info_path=str(tmp_path / "ri4"))
    try:
        assert m2.prometheus_port is None
    finally:
        m2.close()
