"""Transfer servers and ``fetch_file`` under hostile or broken peers (real sockets).

Slow, silent and stalling sources are separate processes (``_SOURCE`` below) that
speak just enough of the protocol; every fetch must fail with a ``TransferError``
that blames the source, within a bounded time. The server side: idle and
non-reading clients are dropped, connections beyond the cap are closed at once,
``accept()`` errors (a real EMFILE in a child process, ECONNABORTED and ENFILE
from a wrapped socket) never end the accept loop, the ``authorize`` hook refuses
bad tokens, and TLS (a throwaway certificate) carries files and trees.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vinework.protocol import TransferFailure
from vinework.protocol.transfer import (
    TransferError,
    TransferServer,
    fetch_file,
    listen_socket,
)

pytestmark = pytest.mark.timeout(60)

# a fake source: answers one GetFile with a header of SIZE bytes, then MODE decides
_SOURCE = textwrap.dedent("""
    import socket, sys, time
    from vinework.protocol.codec import FrameDecoder, encode
    from vinework.protocol.messages import FileHeader
    mode, size = sys.argv[1], int(sys.argv[2])
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
    print(s.getsockname()[1], flush=True)
    while True:
        c, _ = s.accept()
        if mode == "silent":
            time.sleep(3600)
        dec = FrameDecoder()
        while dec.next_message() is None:
            dec.receive_data(c.recv(65536))
        c.sendall(encode(FileHeader(name="f", size=size)))
        try:
            if mode == "trickle":  # one byte a second
                for _ in range(size):
                    c.sendall(b"x"); time.sleep(1)
            elif mode == "stall":  # half of it, then nothing
                c.sendall(b"x" * (size // 2)); time.sleep(3600)
            elif mode == "steady":  # 20 KB/s: above a 1 KB/s minimum, forever
                for _ in range(size // 2000):
                    c.sendall(b"x" * 2000); time.sleep(0.1)
        except OSError:
            pass
        c.close()
""")


@contextlib.contextmanager
def fake_source(mode: str, size: int) -> Iterator[int]:
    p = subprocess.Popen([sys.executable, "-c", _SOURCE, mode, str(size)],
                         stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert p.stdout is not None
        yield int(p.stdout.readline())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=5)


def _fetch_fails(port: int, dest: Path, **kw: Any) -> tuple[TransferError, float]:
    t0 = time.monotonic()
    with pytest.raises(TransferError) as ei:
        fetch_file("127.0.0.1", port, "f", str(dest), **kw)
    assert not dest.exists(), "a failed fetch left a partial file"
    return ei.value, time.monotonic() - t0


# ---------------------------------------------------------------------- slow sources
def test_trickling_source_fails_on_the_minimum_rate(tmp_path: Path) -> None:
    with fake_source("trickle", 1000) as port:
        e, secs = _fetch_fails(port, tmp_path / "d", timeout=5, min_rate=100,
                               rate_window=2.0)
    assert e.cause is TransferFailure.SOURCE_BROKEN and "minimum rate" in str(e), e
    assert secs < 6, secs


def test_silent_source_is_unreachable_within_the_timeout(tmp_path: Path) -> None:
    with fake_source("silent", 10) as port:
        e, secs = _fetch_fails(port, tmp_path / "d", timeout=1.0)
    assert e.cause is TransferFailure.SOURCE_UNREACHABLE, e
    assert secs < 4, secs


def test_stalled_source_is_broken_within_the_timeout(tmp_path: Path) -> None:
    with fake_source("stall", 100_000) as port:
        e, secs = _fetch_fails(port, tmp_path / "d", timeout=1.0)
    assert e.cause is TransferFailure.SOURCE_BROKEN and "sent nothing" in str(e), e
    assert secs < 4, secs


def test_whole_transfer_deadline(tmp_path: Path) -> None:
    with fake_source("steady", 10_000_000) as port:  # would take ~8 minutes
        e, secs = _fetch_fails(port, tmp_path / "d", timeout=5, min_rate=1000,
                               rate_window=1.0, max_time=1.5)
    assert e.cause is TransferFailure.SOURCE_BROKEN and "deadline" in str(e), e
    assert secs < 4, secs


def test_default_deadline_follows_the_size(tmp_path: Path) -> None:
    # 10 MB at 20 KB/s is above a 1 KB/s minimum; the default deadline (timeout +
    # window + size / min_rate) is far away: the fetch is still going after 2.5 s
    with fake_source("steady", 10_000_000) as port:
        box: list[BaseException] = []

        def run() -> None:
            try:
                fetch_file("127.0.0.1", port, "f", str(tmp_path / "d"), timeout=5,
                           min_rate=1000, rate_window=1.0)
            except BaseException as e:
                box.append(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(2.5)
        assert t.is_alive() and not box, box


# ---------------------------------------------------------------------- the server
def _server_file(tmp_path: Path, size: int = 1000) -> tuple[Path, Any]:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    return src, (lambda name: str(src) if name == "f" else None)


def test_idle_connection_is_closed(tmp_path: Path) -> None:
    _, lookup = _server_file(tmp_path)
    srv = TransferServer(lookup, idle_timeout=0.5)
    try:
        c = socket.create_connection(("127.0.0.1", srv.port))
        c.settimeout(5)
        t0 = time.monotonic()
        assert c.recv(10) == b""
        assert time.monotonic() - t0 < 3
        c.close()
        # a client that asks for a large file and reads nothing is dropped too
        big, _ = _server_file(tmp_path, 64 << 20)
        srv.lookup = lambda name: str(big)
        from vinework.protocol.codec import encode
        from vinework.protocol.messages import GetFile
        c = socket.create_connection(("127.0.0.1", srv.port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.sendall(encode(GetFile(name="f")))
        time.sleep(0.2)
        deadline = time.monotonic() + 5
        while srv.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.active == 0, "a client that never reads still holds the server"
        c.close()
    finally:
        srv.close()


def test_connections_beyond_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    src, lookup = _server_file(tmp_path)
    srv = TransferServer(lookup, max_connections=2, idle_timeout=20)
    held = []
    try:
        for _ in range(2):
            held.append(socket.create_connection(("127.0.0.1", srv.port)))
        deadline = time.monotonic() + 5
        while srv.active < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        extra = socket.create_connection(("127.0.0.1", srv.port))
        extra.settimeout(2)
        t0 = time.monotonic()
        assert extra.recv(10) == b""
        assert time.monotonic() - t0 < 1
        assert srv.refused == 1
        e, _ = _fetch_fails(srv.port, tmp_path / "d", timeout=2)
        assert e.at_source
        for c in held:
            c.close()
        deadline = time.monotonic() + 5
        while srv.active and time.monotonic() < deadline:
            time.sleep(0.01)
        size, _ = fetch_file("127.0.0.1", srv.port, "f", str(tmp_path / "d"), timeout=5)
        assert (tmp_path / "d").read_bytes() == src.read_bytes()
    finally:
        for c in held:
            c.close()
        srv.close()


class _FlakyListener:
    """A listening socket whose accept() fails with the given errnos first."""

    def __init__(self, errnos: list[int]) -> None:
        self.real = listen_socket(0, "127.0.0.1")
        self.errnos = list(errnos)

    def accept(self) -> tuple[socket.socket, Any]:
        if self.errnos:
            n = self.errnos.pop(0)
            raise OSError(n, os.strerror(n))
        return self.real.accept()

    def getsockname(self) -> Any:
        return self.real.getsockname()

    def shutdown(self, how: int) -> None:
        self.real.shutdown(how)

    def close(self) -> None:
        self.real.close()


def test_accept_errors_never_end_the_server(tmp_path: Path) -> None:
    src, lookup = _server_file(tmp_path)
    flaky = _FlakyListener([errno.ECONNABORTED, errno.ENFILE, errno.ENFILE, errno.EPROTO])
    srv = TransferServer(lookup, listen=flaky)  # type: ignore[arg-type]
    try:
        fetch_file("127.0.0.1", srv.port, "f", str(tmp_path / "d"), timeout=5)
        assert (tmp_path / "d").read_bytes() == src.read_bytes()
        assert srv.accept_errors == {"ECONNABORTED": 1, "ENFILE": 2, "EPROTO": 1}
    finally:
        srv.close()


_EMFILE_SERVER = textwrap.dedent("""
    import os, sys, time, logging
    logging.basicConfig(level=logging.WARNING)
    from vinework.protocol.transfer import TransferServer, listen_socket
    path = sys.argv[1]
    sock = listen_socket(0, "127.0.0.1")
    print(sock.getsockname()[1], flush=True)
    hoard = []
    try:  # every descriptor taken before the server starts: its accept() has none
        while True:
            hoard.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    srv = TransferServer(lambda name: path, listen=sock)
    deadline = time.monotonic() + 10
    while srv.accept_errors.get("EMFILE", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    print("full", flush=True)
    sys.stdin.readline()  # the test is connecting
    time.sleep(0.3)
    for fd in hoard:
        os.close(fd)
    print("freed", flush=True)
    sys.stdin.readline()
    print(srv.accept_errors, flush=True)
""")



def test_server_survives_emfile(tmp_path: Path) -> None:
    src, _ = _server_file(tmp_path, 100_000)
    p = subprocess.Popen([sys.executable, "-c", _EMFILE_SERVER, str(src)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        port = int(p.stdout.readline())
        assert p.stdout.readline().strip() == "full"
        result: list[Any] = []

        def fetch() -> None:
            try:
                result.append(fetch_file("127.0.0.1", port, "f", str(tmp_path / "d"),
                                         timeout=10))
            except TransferError as e:
                result.append(e)

        t = threading.Thread(target=fetch)
        t.start()
        time.sleep(0.3)
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "freed"
        t.join(15)
        assert result, "the fetch did not end"
        if isinstance(result[0], TransferError):  # accepted while still short of fds
            assert result[0].cause is TransferFailure.SOURCE_BROKEN, result
            fetch()
        assert not isinstance(result[-1], TransferError), result
        assert (tmp_path / "d").read_bytes() == src.read_bytes()
        p.stdin.write("report\n")
        p.stdin.flush()
        errors = p.stdout.readline()
        assert "EMFILE" in errors, errors
        p.stdin.close()
        p.wait(timeout=10)
        assert p.stderr is not None
        log = p.stderr.read()
        assert log.count("accept() failed") == 1, log  # logged once per kind
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=5)


# ---------------------------------------------------------------------- authorize
def test_authorize_hook(tmp_path: Path) -> None:
    src, lookup = _server_file(tmp_path)
    seen: list[tuple[str, str]] = []

    def authorize(name: str, token: str) -> bool:
        seen.append((name, token))
        if token == "boom":
            raise RuntimeError("broken check")
        return token == "good"

    srv = TransferServer(lookup, authorize=authorize)
    try:
        for token in ("", "bad", "boom"):
            e, _ = _fetch_fails(srv.port, tmp_path / "d", timeout=5, token=token)
            assert e.refused and "not authorized" in str(e), e
            assert e.cause is TransferFailure.SOURCE_MISSING
        fetch_file("127.0.0.1", srv.port, "f", str(tmp_path / "d"), timeout=5, token="good")
        assert (tmp_path / "d").read_bytes() == src.read_bytes()
        assert seen == [("f", ""), ("f", "bad"), ("f", "boom"), ("f", "good")]
    finally:
        srv.close()
    # without the hook a token is ignored
    srv = TransferServer(lookup)
    try:
        fetch_file("127.0.0.1", srv.port, "f", str(tmp_path / "e"), timeout=5, token="x")
        assert (tmp_path / "e").read_bytes() == src.read_bytes()
    finally:
        srv.close()


# ---------------------------------------------------------------------- TLS
def _self_signed(tmp_path: Path, cn: str = "localhost") -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(cn), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    kp, cp = tmp_path / f"{cn}.key", tmp_path / f"{cn}.pem"
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(kp), str(cp)


def test_tls_transfers(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    key, cert = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    src, _ = _server_file(tmp_path, 3 << 20)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a").write_bytes(b"hello")
    srv = TransferServer(lambda n: str(src) if n == "f" else str(tree), ssl_context=server_ctx,
                         idle_timeout=2)
    try:
        size, _ = fetch_file("127.0.0.1", srv.port, "f", str(tmp_path / "d"), timeout=5,
                             ssl_context=client_ctx, server_hostname="localhost")
        assert size == 3 << 20 and (tmp_path / "d").read_bytes() == src.read_bytes()
        fetch_file("127.0.0.1", srv.port, "t", str(tmp_path / "t"), timeout=5,
                   ssl_context=client_ctx)  # checked against the IP address in the cert
        assert (tmp_path / "t" / "sub" / "a").read_bytes() == b"hello"
        # a client without TLS gets nothing; one that trusts another CA refuses the server
        e, secs = _fetch_fails(srv.port, tmp_path / "x", timeout=1)
        assert e.at_source and secs < 4, e
        _, other = _self_signed(tmp_path, "other")
        e, _ = _fetch_fails(srv.port, tmp_path / "x", timeout=5,
                            ssl_context=ssl.create_default_context(cafile=other))
        assert e.cause is TransferFailure.SOURCE_BROKEN and "TLS" in str(e), e
        # a TLS client that never finishes its handshake is dropped after idle_timeout
        c = socket.create_connection(("127.0.0.1", srv.port))
        c.settimeout(6)
        t0 = time.monotonic()
        assert c.recv(10) == b""
        assert time.monotonic() - t0 < 5
        c.close()
    finally:
        srv.close()
    # a TLS client against a plain server fails as the source's fault, quickly
    plain = TransferServer(lambda n: str(src))
    try:
        e, secs = _fetch_fails(plain.port, tmp_path / "x", timeout=2,
                               ssl_context=client_ctx, server_hostname="localhost")
        assert e.at_source and secs < 5, e
    finally:
        plain.close()
