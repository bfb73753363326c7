"""The live dashboard (``Manager(dashboard=PORT)``): its JSON endpoint over plain HTTP, its
page in a real headless chromium (selenium) against a real run with real workers, and
its bad inputs. The browser test skips, saying why, only when chromium is absent
(``scripts/setup/chromium.sh`` installs it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import poll_until, wait_all, wait_workers

import vinework as vine

CHROMEDRIVER = "/usr/bin/chromedriver"
SIZE = 20_000  # bytes of the temp passed worker to worker

# (page id, m.stats attribute)
NUMBERS = [("tasks-done", "tasks_done"), ("tasks-failed", "tasks_failed"),
           ("tasks-submitted", "tasks_submitted"), ("workers-connected", "workers_connected"),
           ("tasks-recovery", "tasks_recovery"), ("files-lost", "files_lost"),
           ("bytes-sent", "bytes_sent"), ("bytes-received", "bytes_received"),
           ("bytes-peer", "bytes_peer")]


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/json")
        return json.loads(r.read())  # type: ignore[no-any-return]


def run_workflow(m: vine.Manager) -> vine.File:
    """A temp made on one worker and replicated to the other (so bytes go worker to
    worker), a consumer of it, a task that fails, a few plain ones; returns when the run
    is quiet (every task back, no transfer in flight, the replica made)."""
    m.tune("temp-replica-count", 2)
    tmp = m.declare_temp()
    make = vine.Task(f"head -c {SIZE} /dev/zero > out")
    make.add_output(tmp, "out")
    use = vine.Task("wc -c < in")
    use.add_input(tmp, "in")
    m.submit(make)
    m.submit(use)
    bad = vine.Task("exit 3")
    m.submit(bad)
    for i in range(3):
        m.submit(vine.Task(f"echo {i}"))
    done = wait_all(m, 6)
    assert sum(1 for t in done if t.successful()) == 5
    poll_until(lambda: m.stats.bytes_peer >= SIZE, 20, "the temp's replica on the other worker")
    poll_until(lambda: m._ask(lambda: not m._state.replicas.transfers), 20,
               "no transfer in flight")
    return tmp  # (kept: a temp nobody holds is pruned)


def two_workers(m: vine.Manager, workers: Any) -> None:
    workers(m)
    workers(m)
    wait_workers(m, 2)


@pytest.fixture
def dash_manager(tmp_path: Path) -> Any:
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run-info"), shutdown=True,
                     dashboard=0)
    try:
        yield m
    finally:
        m.close()


# ---------------------------------------------------------------------- plain HTTP
def test_snapshot_endpoint_matches_stats(dash_manager: vine.Manager, workers: Any) -> None:
    m = dash_manager
    assert m.dashboard_port and m.dashboard_url == f"http://127.0.0.1:{m.dashboard_port}/"
    two_workers(m, workers)
    tmp = run_workflow(m)
    st = m.stats
    snap = get_json(m.dashboard_url + "api/snapshot")
    for _, key in NUMBERS:
        assert snap["stats"][key] == getattr(st, key), key
    assert snap["tasks"]["done"] == st.tasks_done == 6 and snap["tasks"]["failed"] == 0
    assert {w["worker_id"] for w in snap["workers"]} == {w["worker_id"] for w in
                                                         m.worker_stats()}
    # the transfer graph's edges add up to the worker-to-worker bytes
    assert snap["peer_pairs"], snap["peer_pairs"]
    assert sum(p["bytes"] for p in snap["peer_pairs"]) == st.bytes_peer
    assert all(p["source"] != p["dest"] for p in snap["peer_pairs"])
    assert snap["series"] and snap["series"][-1]["bytes_peer"] <= st.bytes_peer
    # the page itself: one self-contained HTML document, nothing fetched elsewhere
    with urllib.request.urlopen(m.dashboard_url, timeout=10) as r:
        page = r.read().decode()
    assert 'id="tasks-done"' in page and "api/snapshot" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(m.dashboard_url + "nothing-here", timeout=10)
    assert e.value.code == 404
    assert tmp is not None


def test_no_sampling_when_nobody_looks(tmp_path: Path) -> None:
    with vine.Manager(port=0, run_info_path=str(tmp_path), dashboard=0) as m:
        dash = m._dashboard
        assert dash is not None and dash.samples_taken == 0 and m.dashboard_url
        dash.active_seconds = 1.5  # (5 s by default)
        get_json(m.dashboard_url + "api/snapshot")  # someone looks: sampling starts
        poll_until(lambda: dash.samples_taken >= 2, 10, "a second sample while looked at")
        # nobody looks any more: the sampler stops within active_seconds + a period
        poll_until(lambda: not dash._looking(), 10, "the page to go idle")
        poll_until(lambda: dash._wake is not None and not dash._wake.is_set(), 5,
                   "the sampler to sleep")
        taken = dash.samples_taken
        assert dash._sampling is not None and not dash._sampling.done()
        # the sampler is parked on its event; a request wakes it again
        get_json(m.dashboard_url + "api/snapshot")
        poll_until(lambda: dash.samples_taken >= taken + 2, 10, "sampling again")
        url = str(m.dashboard_url)
    with pytest.raises(urllib.error.URLError):  # closed with the manager
        urllib.request.urlopen(url, timeout=5)


def test_bad_dashboard_arguments(tmp_path: Path) -> None:
    for bad in (-1, 65536, "8080", 1.5, True):
        with pytest.raises(ValueError, match="dashboard"):
            vine.Manager(port=0, run_info_path=str(tmp_path), dashboard=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="host"):
        vine.Manager(port=0, run_info_path=str(tmp_path), dashboard=0, dashboard_host="")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(OSError):
            vine.Manager(port=0, run_info_path=str(tmp_path), dashboard=taken.getsockname()[1])
    finally:
        taken.close()
    # an IPv6 address to listen on (where this machine has IPv6 loopback)
    if socket.has_ipv6 and os.path.exists("/proc/net/if_inet6"):
        with vine.Manager(port=0, run_info_path=str(tmp_path), dashboard=0,
                          dashboard_host="::1") as m:
            assert m.dashboard_url == f"http://[::1]:{m.dashboard_port}/"
            assert "stats" in get_json(m.dashboard_url + "api/snapshot")
    # without dashboard= there is none
    with vine.Manager(port=0, run_info_path=str(tmp_path)) as m:
        assert m.dashboard_port is None and m.dashboard_url is None


# ---------------------------------------------------------------------- the browser
def png_colours(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct colours among the first rows) of an RGB(A) PNG, decoded
    here (no imaging library needed)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    h = depth = ctype = 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert depth == 8 and ctype in (2, 6), (depth, ctype)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for row in range(min(h, 400)):
        f = raw[row * (stride + 1)]
        line = bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        for i in range(0, stride, bpp * 7):
            colours.add(bytes(line[i:i + 3]))
        prev = line
    return w, h, len(colours)


def chromium() -> Any:
    if not (shutil.which("chromium") and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed "
                    "(scripts/setup/chromium.sh installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,1000"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium") or "chromium"
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(20)
    return driver


@pytest.mark.timeout(120)
def test_page_in_headless_chromium(dash_manager: vine.Manager, workers: Any,
                                   tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    m = dash_manager
    driver = chromium()
    try:
        assert m.dashboard_url is not None
        driver.get(m.dashboard_url)  # opened before the run: it follows it live
        wait = WebDriverWait(driver, 30, poll_frequency=0.1)
        wait.until(lambda d: d.find_element(By.ID, "workers-connected").text == "0")
        two_workers(m, workers)
        wait.until(lambda d: d.find_element(By.ID, "workers-connected").text == "2")
        tmp = run_workflow(m)
        st = m.stats  # the run is quiet: these no longer change

        def shown(d: Any) -> dict[str, str]:
            return {pid: d.find_element(By.ID, pid).text for pid, _ in NUMBERS}

        expected = {pid: str(getattr(st, key)) for pid, key in NUMBERS}
        try:
            wait.until(lambda d: shown(d) == expected)
        except Exception:
            pytest.fail(f"the page shows {shown(driver)}, m.stats says {expected}")
        assert expected["bytes-peer"] != "0" and expected["tasks-done"] == "6"
        # the page redraws every second: read what it draws in one script (no stale nodes)
        drawn = driver.execute_script("""
            const q = s => [...document.querySelectorAll(s)];
            return {
              rows: q('#workers tbody tr').map(r => [r.id, ...q('#' + r.id + ' td')
                                                     .map(c => c.textContent)]),
              edges: q('#graph line.edge').map(e => +e.getAttribute('data-bytes')),
              nodes: q('#graph circle.node').length,
              task_lines: q('#chart-tasks polyline').length,
              peer_points: q('#chart-bytes polyline.series-bytes_peer')
                           .map(p => p.getAttribute('points').split(' ').length)};""")
        # one table row per worker, with its cores and bytes
        rows = {r[0]: r[1:] for r in drawn["rows"]}
        ws = {w["worker_id"]: w for w in m.worker_stats()}
        assert set(rows) == {f"worker-{w}" for w in ws}
        for wid, w in ws.items():
            cells = rows[f"worker-{wid}"]
            assert cells[3] == "2"  # cores
            assert int(cells[6]) == w["bytes_in"] and int(cells[7]) == w["bytes_out"], cells
        # the transfer graph: its edges carry the worker-to-worker bytes
        assert drawn["edges"] and sum(drawn["edges"]) == st.bytes_peer
        assert drawn["nodes"] == 2
        # the time series: the sampler ran while the page looked, and the lines are drawn
        assert drawn["task_lines"] == 4 and drawn["peer_points"][0] >= 2, drawn
        dash = m._dashboard
        assert dash is not None and dash.samples_taken >= 2 and len(dash.series) >= 2
        assert driver.find_element(By.ID, "error").text == ""
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        data = shot.read_bytes()
        assert len(data) > 10_000, len(data)
        width, height, colours = png_colours(data)
        assert width >= 800 and height >= 600 and colours > 5, (width, height, colours)
        assert tmp is not None
    finally:
        driver.quit()
