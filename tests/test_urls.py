"""URL files with real workers: ``m.declare_url`` over file://, http:// and https://.

A local HTTP(S) server runs in a thread of the test on a port the OS picks (never
the internet); it counts the requests of each path, so a test can tell who
fetched what. The workers' URL limits are set through their environment
(``VINEWORK_URL_*``, ``SSL_CERT_FILE``), set before they start. The https tests
make their own CA and server certificate with the ``openssl`` command.
"""

from __future__ import annotations

import collections
import http.server
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import vinework as vine
from tests.conftest import StartWorker, wait_all, wait_workers
from vinework.protocol import TransferFailure
from vinework.worker.urlfetch import UrlError, UrlLimits, fetch_url

DATA = b"vinework url data\n" * 100


class Routes(http.server.BaseHTTPRequestHandler):
    """GET handler of the test server: what each path answers."""

    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass

    def do_GET(self) -> None:  # noqa: N802 (the base's name)
        srv = self.server
        with srv.lock:
            srv.hits[self.path] += 1
            n = srv.hits[self.path]
        if self.path == "/data":
            self._send(200, DATA)
        elif self.path == "/big":
            self._send(200, b"x" * (3 << 20))
        elif self.path in ("/old", "/older"):
            self.send_response(302 if self.path == "/old" else 301)
            self.send_header("Location", "/data" if self.path == "/old" else "/old")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/flaky":  # 503 twice, then the data
            if n <= 2:
                self._send(503, b"busy")
            else:
                self._send(200, DATA)
        elif self.path == "/stall":  # headers only after the test ends
            srv.release.wait(30)
        elif self.path == "/short":  # promises 100 bytes, sends 50
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"y" * 50)
            self.wfile.flush()
            self.close_connection = True
        else:
            self._send(404, b"not here")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Routes)
        self.hits: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if context is not None else "http"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a failed TLS handshake, a body too big) is expected

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}{path}"

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


@pytest.fixture
def http_server() -> Iterator[Server]:
    srv = Server()
    try:
        yield srv
    finally:
        srv.stop()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, made by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test CA")
    d = tmp_path_factory.mktemp("ca")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "2", "-subj", "/CN=vinework test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
             "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                               "basicConstraints=CA:FALSE\n"
                               "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
             cwd=d)
    return d / "ca.pem", d / "server.pem", d / "server.key"


@pytest.fixture
def https_server(test_ca: tuple[Path, Path, Path]) -> Iterator[Server]:
    _, cert, key = test_ca
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    srv = Server(ctx)
    try:
        yield srv
    finally:
        srv.stop()


def consumer(f: vine.File, *features: str) -> vine.Task:
    t = vine.Task("cat in.dat")
    t.add_input(f, "in.dat")
    for feat in features:
        t.add_feature(feat)
    return t


def run_one(m: vine.Manager, t: vine.Task, timeout: float = 30.0) -> vine.Task:
    m.submit(t)
    (back,) = wait_all(m, 1, timeout)
    return back


def timed(fn: Callable[[], vine.Task]) -> tuple[vine.Task, float]:
    start = time.monotonic()
    t = fn()
    return t, time.monotonic() - start


# ---------------------------------------------------------------------- fetched by the worker
def test_file_url(manager: vine.Manager, workers: StartWorker, tmp_path: Path) -> None:
    src = tmp_path / "local.dat"
    src.write_bytes(DATA)
    workers(manager)
    wait_workers(manager, 1)
    f = manager.declare_url(f"file://{src}")
    assert f.type() == vine.VINE_URL == 2 and f.source() == f"file://{src}"
    assert f.cache_name.startswith("url-")
    t = run_one(manager, consumer(f))
    assert t.successful(), (t.result, t.error_message)
    assert t.output.encode() == DATA
    assert manager.stats.bytes_sent == 0


def test_http_url_is_fetched_by_the_worker(manager: vine.Manager, workers: StartWorker,
                                           http_server: Server) -> None:
    workers(manager)
    wait_workers(manager, 1)
    f = manager.declare_url(http_server.url("/data"))
    t = vine.Task("cat in.dat; stat -c %a in.dat")
    t.add_input(f, "in.dat")
    t = run_one(manager, t)
    assert t.successful(), (t.result, t.error_message)
    assert t.output.encode() == DATA + b"644\n"  # a download is not executable
    assert http_server.hits["/data"] == 1
    st = manager.stats
    assert st.bytes_sent == 0 and st.bytes_peer == 0 and st.bytes_received_files == 0


def test_second_worker_gets_it_from_the_first(manager: vine.Manager, workers: StartWorker,
                                              http_server: Server) -> None:
    """cache=True keeps the first worker's copy: the second consumer, on the other worker,
    gets it peer-to-peer; the server is asked once."""
    workers(manager, extra=("--feature", "one"))
    workers(manager, extra=("--feature", "two"))
    wait_workers(manager, 2)
    f = manager.declare_url(http_server.url("/data"), cache=True)
    first = run_one(manager, consumer(f, "one"))
    second = run_one(manager, consumer(f, "two"))
    for t in (first, second):
        assert t.successful(), (t.result, t.error_message)
        assert t.output.encode() == DATA
    assert first.worker != second.worker
    assert http_server.hits["/data"] == 1
    st = manager.stats
    assert st.transfers_peer == 1 and st.bytes_peer == len(DATA) and st.bytes_sent == 0
    assert manager.get_file_replica_count(f) == 2


def test_without_peer_transfer_each_worker_fetches(manager: vine.Manager,
                                                   workers: StartWorker,
                                                   http_server: Server) -> None:
    workers(manager, extra=("--feature", "one"))
    workers(manager, extra=("--feature", "two"))
    wait_workers(manager, 2)
    f = manager.declare_url(http_server.url("/data"), cache=True, peer_transfer=False)
    for feat in ("one", "two"):
        t = run_one(manager, consumer(f, feat))
        assert t.successful(), (t.result, t.error_message)
    assert http_server.hits["/data"] == 2
    assert manager.stats.bytes_peer == 0 and manager.stats.bytes_sent == 0


def test_redirects_are_followed(manager: vine.Manager, workers: StartWorker,
                                http_server: Server) -> None:
    workers(manager)
    wait_workers(manager, 1)
    t = run_one(manager, consumer(manager.declare_url(http_server.url("/older"))))
    assert t.successful(), (t.result, t.error_message)
    assert t.output.encode() == DATA
    assert [http_server.hits[p] for p in ("/older", "/old", "/data")] == [1, 1, 1]


def test_fetch_file_of_a_url(manager: vine.Manager, workers: StartWorker,
                             http_server: Server) -> None:
    workers(manager)
    wait_workers(manager, 1)
    f = manager.declare_url(http_server.url("/data"))
    assert manager.fetch_file(f, timeout=20) == DATA  # a worker fetched it, then the manager
    assert f.contents() == DATA and len(f) == len(DATA)
    assert manager.stats.bytes_sent == 0


# ---------------------------------------------------------------------- failures
def test_404_ends_the_task_forsaken_at_once(manager: vine.Manager, workers: StartWorker,
                                            http_server: Server) -> None:
    workers(manager)
    workers(manager)
    wait_workers(manager, 2)
    url = http_server.url("/missing")
    t, secs = timed(lambda: run_one(manager, consumer(manager.declare_url(url)), 20))
    assert t.result == vine.VINE_RESULT_FORSAKEN, (t.result, t.error_message)
    assert url in t.error_message and "404" in t.error_message
    assert http_server.hits["/missing"] == 1  # permanent: never asked again
    assert secs < 15


def test_a_transient_error_is_retried_by_the_worker(manager: vine.Manager,
                                                    workers: StartWorker, http_server: Server,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VINEWORK_URL_BACKOFF", "0.05")
    workers(manager)
    wait_workers(manager, 1)
    t = run_one(manager, consumer(manager.declare_url(http_server.url("/flaky"))))
    assert t.successful(), (t.result, t.error_message)
    assert http_server.hits["/flaky"] == 3  # 503, 503, 200: one fetch of the worker's


def test_a_stalled_server_times_out(manager: vine.Manager, workers: StartWorker,
                                    http_server: Server,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VINEWORK_URL_TIMEOUT", "0.5")
    monkeypatch.setenv("VINEWORK_URL_ATTEMPTS", "2")
    monkeypatch.setenv("VINEWORK_URL_BACKOFF", "0.1")
    manager.tune("url-fetch-attempts", 2)
    workers(manager)
    wait_workers(manager, 1)
    url = http_server.url("/stall")
    t, secs = timed(lambda: run_one(manager, consumer(manager.declare_url(url)), 30))
    assert t.result == vine.VINE_RESULT_FORSAKEN, (t.result, t.error_message)
    assert url in t.error_message and "timeout" in t.error_message
    assert "failed 2 times" in t.error_message
    assert http_server.hits["/stall"] == 4  # 2 fetches by the worker, each tried twice
    assert secs < 20


def test_a_truncated_body_fails(manager: vine.Manager, workers: StartWorker,
                                http_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VINEWORK_URL_ATTEMPTS", "1")
    manager.tune("url-fetch-attempts", 1)
    workers(manager)
    wait_workers(manager, 1)
    t = run_one(manager, consumer(manager.declare_url(http_server.url("/short"))))
    assert t.result == vine.VINE_RESULT_FORSAKEN
    assert "ended after 50 of 100 bytes" in t.error_message, t.error_message


def test_a_url_bigger_than_the_worker_disk_fails(manager: vine.Manager,
                                                 workers: StartWorker,
                                                 http_server: Server) -> None:
    manager.tune("url-fetch-attempts", 1)
    workers(manager, disk=2)  # MB: the 3 MB body does not fit
    wait_workers(manager, 1)
    t = consumer(manager.declare_url(http_server.url("/big")))
    t.set_disk(1)
    t = run_one(manager, t)
    assert t.result == vine.VINE_RESULT_FORSAKEN
    assert "more than" in t.error_message and str(3 << 20) in t.error_message


# ---------------------------------------------------------------------- https
def test_https_with_the_workers_ca(manager: vine.Manager, workers: StartWorker,
                                   https_server: Server, test_ca: tuple[Path, Path, Path],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca[0]))
    workers(manager)
    wait_workers(manager, 1)
    t = run_one(manager, consumer(manager.declare_url(https_server.url("/data"))))
    assert t.successful(), (t.result, t.error_message)
    assert t.output.encode() == DATA


def test_https_with_an_unknown_ca_fails(manager: vine.Manager, workers: StartWorker,
                                        https_server: Server,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    workers(manager)
    wait_workers(manager, 1)
    url = https_server.url("/data")
    t, secs = timed(lambda: run_one(manager, consumer(manager.declare_url(url)), 30))
    assert t.result == vine.VINE_RESULT_FORSAKEN, (t.result, t.error_message)
    assert url in t.error_message and "certificate" in t.error_message
    assert "failed 3 times" in t.error_message  # the default url-fetch-attempts
    assert https_server.hits["/data"] == 0
    assert secs < 20


def test_declare_url_refuses_what_it_cannot_fetch(manager: vine.Manager) -> None:
    for bad in ("ftp://example.org/x", "relative/path", "http:///nohost", "file://host/x",
                "http://a b/"):
        with pytest.raises(ValueError):
            manager.declare_url(bad)
    a, b = manager.declare_url("http://x.org/a"), manager.declare_url("http://x.org/a")
    assert a.cache_name == b.cache_name != manager.declare_url("http://x.org/b").cache_name


# ---------------------------------------------------------------------- urlfetch, alone
def test_limits_from_the_environment() -> None:
    lim = UrlLimits.from_env({"VINEWORK_URL_TIMEOUT": "2.5", "VINEWORK_URL_ATTEMPTS": "5"})
    assert (lim.timeout, lim.attempts, lim.deadline, lim.backoff) == (2.5, 5, 3600.0, 1.0)
    for var, bad in (("VINEWORK_URL_TIMEOUT", "soon"), ("VINEWORK_URL_ATTEMPTS", "0"),
                     ("VINEWORK_URL_BACKOFF", "-1")):
        with pytest.raises(ValueError, match=var):
            UrlLimits.from_env({var: bad})


def test_fetch_url_alone(http_server: Server, tmp_path: Path) -> None:
    dest = str(tmp_path / "part")
    lim = UrlLimits(timeout=5, attempts=1)
    assert fetch_url(http_server.url("/old"), dest, lim)[0] == len(DATA)
    assert Path(dest).read_bytes() == DATA and os.stat(dest).st_mode & 0o777 == 0o644
    with pytest.raises(UrlError) as e:
        fetch_url(http_server.url("/gone"), dest, lim)
    assert e.value.cause is TransferFailure.SOURCE_MISSING and "HTTP 404" in str(e.value)
    assert not os.path.exists(dest)  # never a partial file
    with pytest.raises(UrlError) as e:
        fetch_url(http_server.url("/data"), dest, UrlLimits(max_bytes=10))
    assert e.value.cause is TransferFailure.DISK_FULL
    with pytest.raises(UrlError) as e:
        fetch_url(f"file://{tmp_path}/none", dest, lim)
    assert e.value.cause is TransferFailure.SOURCE_MISSING and "no such file" in str(e.value)
    closed = Server()
    port = closed.server_address[1]
    closed.stop()
    with pytest.raises(UrlError) as e:
        fetch_url(f"http://127.0.0.1:{port}/x", dest,
                  UrlLimits(timeout=2, attempts=2, backoff=0.01))
    assert e.value.cause is TransferFailure.SOURCE_UNREACHABLE and "tried 2 times" in str(e.value)
