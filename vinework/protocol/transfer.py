"""Peer transfers: a small file server on every worker (and the manager), and its client.

One connection moves one file. The client sends a ``GetFile`` frame (the file's
cache name and, when the serving side checks them, a transfer token); the
server answers with a ``FileHeader`` frame (size and permission bits, or an
error) and then the raw bytes, sent with ``os.sendfile`` (zero copy; plain
reads and writes over TLS). The copy gets the source's permission bits (at
least owner read and write), so an executable stays executable on every worker
it reaches; a server's lookup may name other bits (``File.set_mode``). The
client streams the bytes straight to a temporary file in the destination
directory, checks the size, and only then hands it over. Blocking sockets in
threads keep bulk bytes off the asyncio loop, so control messages and
heartbeats never wait behind a large file.

A directory travels the same way as a tar stream of its tree (``trees.py``):
the server packs it into an anonymous temporary file (so its size is known up
front) and sends it with ``kind="dir"``; the client receives the tar into a part
file beside the destination and unpacks it into ``dest_path`` as a new directory,
refusing members that would escape it. The size returned is then the tree's
(the bytes of its files), not the tar's; ``expected_size`` is not checked.

Limits (nothing a peer does can hold a thread or a descriptor for long):

- The server's accept loop survives every ``accept()`` error: resource errors
  (EMFILE, ENFILE, ENOBUFS, ENOMEM) back off (10 ms doubling to 1 s) and go on,
  connection errors (ECONNABORTED, EPROTO, ...) go on at once; each kind is
  logged once (``accept_errors`` counts them).
- At most ``max_connections`` connections are served at a time (default
  ``DEFAULT_MAX_CONNECTIONS``); one more is closed at once (``refused``).
- A connection must deliver its whole request (and its TLS handshake) within
  ``idle_timeout`` seconds (default ``DEFAULT_IDLE_TIMEOUT``) and then keep
  reading at the pace rules below, or it is closed.
- Pace, on both sides: no wait for the peer longer than the stall timeout
  (the client's ``timeout``, the server's ``idle_timeout``); at least
  ``min_rate`` bytes per second over every ``rate_window`` seconds (defaults
  ``DEFAULT_MIN_RATE``, 64 KiB/s, and ``DEFAULT_RATE_WINDOW``, 30 s: an
  honest transfer on a loaded machine moves thousands of times more, while a
  source trickling 1 byte/s fails within a window and a stall); and a whole
  transfer deadline (``fetch_file``'s ``max_time``; by default
  ``timeout + rate_window + size / min_rate``, about 4.6 hours for 1 GiB, a
  bound that only a lying-slow source reaches).

Optional hooks, off by default: ``authorize(name, token)`` on the server
refuses a request for which it returns False (the client gets a
``TransferError`` whose ``refused`` is True, message "not authorized ...");
``ssl_context`` on the server wraps every accepted socket (server side) and on
``fetch_file`` wraps the client's (verifying the server as the context says,
against ``server_hostname`` or the host).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from ..trees import TreeError, pack, unpack
from .codec import FrameDecoder, RemoteProtocolError, encode
from .messages import FileHeader, GetFile, TransferFailure

log = logging.getLogger("vinework.transfer")

CHUNK = 1 << 20
SEND_CHUNK = 8 << 20
HEADER_MAX = 64 * 1024

DEFAULT_TIMEOUT = 30.0  # client: connect, the header, and the longest wait for any byte
DEFAULT_IDLE_TIMEOUT = 30.0  # server: the whole request, and the longest wait to send
DEFAULT_MIN_RATE = 64 * 1024  # bytes/s over each rate window, both sides (0: no minimum)
DEFAULT_RATE_WINDOW = 30.0  # seconds
DEFAULT_MAX_CONNECTIONS = 64  # connections a server serves at a time
NOT_AUTHORIZED = "not authorized"  # the start of a FileHeader error for a refused token

# accept() errors that say the machine is short of something: wait before the next try
_SCARCE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BACKOFF_MIN, _BACKOFF_MAX = 0.01, 1.0


class TransferError(Exception):
    """A transfer failed; ``cause`` (a ``TransferFailure``) says who is to blame;
    ``refused``: the server refused the request's token (``authorize``)."""

    def __init__(self, message: str, cause: TransferFailure = TransferFailure.UNKNOWN,
                 refused: bool = False) -> None:
        super().__init__(message)
        self.cause = cause
        self.refused = refused

    @property
    def at_source(self) -> bool:
        return self.cause.at_source

    @property
    def disk_full(self) -> bool:
        return self.cause is TransferFailure.DISK_FULL


class _TooSlow(Exception):
    """The peer broke a pace rule (stall, minimum rate, deadline)."""


class _Pace:
    """The pace rules of one transfer, on a monotonic clock (see module docstring)."""

    __slots__ = ("stall", "min_rate", "window", "deadline", "_start", "_bytes")

    def __init__(self, stall: float, min_rate: float, window: float, deadline: float,
                 now: float) -> None:
        self.stall = stall
        self.min_rate = min_rate
        self.window = window
        self.deadline = deadline
        self._start = now
        self._bytes = 0

    def timeout(self, now: float) -> float:
        """How long the next wait for the peer may last; raises _TooSlow when none."""
        left = self.deadline - now
        if left <= 0:
            raise _TooSlow("its deadline passed")
        self._check(now)
        return min(self.stall, left)

    def moved(self, n: int, now: float) -> None:
        self._bytes += n
        self._check(now)

    def _check(self, now: float) -> None:
        span = now - self._start
        if span < self.window:
            return
        if self.min_rate > 0 and self._bytes < self.min_rate * span:
            raise _TooSlow(f"{self._bytes} bytes in {span:.1f} s, below the minimum rate "
                           f"of {self.min_rate:g} bytes/s")
        self._start, self._bytes = now, 0


def listen_socket(port: int = 0, host: str | None = None) -> socket.socket:
    """A listening TCP socket on every local address (IPv6 dual-stack when possible)."""
    if host is None and socket.has_ipv6:
        try:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", port))
            s.listen(512)
            return s
        except OSError:
            s.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host or "0.0.0.0", port))
    s.listen(512)
    return s


def _recv_frame(sock: socket.socket, dec: FrameDecoder, deadline: float) -> object:
    """One frame, all of it before ``deadline`` (monotonic); TimeoutError after it."""
    while True:
        msg = dec.next_message()
        if msg is not None:
            return msg
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete frame in time")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before a complete frame")
        dec.receive_data(data)


def _handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """A TLS handshake that ends by ``deadline`` (monotonic) whatever the peer does."""
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            left = deadline - time.monotonic()
            p = select.poll()
            p.register(sock.fileno(), events)
            if left <= 0 or not p.poll(left * 1000):
                raise TimeoutError("no TLS handshake in time")
    finally:
        sock.setblocking(True)


def _kind(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, "") or type(e).__name__


class TransferServer:
    """Serves files by cache name; ``lookup(name)`` gives a path, or (path, permission
    bits) to send other bits than the file's, or None.

    Args:
        lookup: where a cache name's file is (None: "no such file").
        port: the port to listen on (0: any free port); ignored with ``listen``.
        on_sent: called with (name, bytes) after each file sent.
        authorize: called with (name, token of the request); False refuses the
            request with a FileHeader error starting "not authorized". None: no check.
        ssl_context: a server-side TLS context; every accepted connection is wrapped.
        max_connections: connections served at a time; more are closed at once.
        idle_timeout: seconds for a whole request (TLS handshake included), and the
            longest wait while sending.
        min_rate, rate_window: the slowest a client may read (bytes/s over each
            window of seconds; 0: no minimum).
        listen: a listening socket to serve on instead of a new one.
    """

    def __init__(
        self,
        lookup: Callable[[str], str | tuple[str, int] | None],
        port: int = 0,
        on_sent: Callable[[str, int], None] | None = None,
        authorize: Callable[[str, str], bool] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        min_rate: float = DEFAULT_MIN_RATE,
        rate_window: float = DEFAULT_RATE_WINDOW,
        listen: socket.socket | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if not idle_timeout > 0 or not rate_window > 0 or min_rate < 0:
            raise ValueError("idle_timeout and rate_window must be > 0, min_rate >= 0")
        self.lookup = lookup
        self.on_sent = on_sent
        self.authorize = authorize
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.min_rate = min_rate
        self.rate_window = rate_window
        self.sock = listen if listen is not None else listen_socket(port)
        self.port: int = self.sock.getsockname()[1]
        self.accept_errors: dict[str, int] = {}  # errno name -> accept() failures
        self.refused = 0  # connections closed at once: max_connections were being served
        self._active = 0
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="vine-transfer",
                                        daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        """Connections being served now."""
        return self._active

    def _accept_loop(self) -> None:
        backoff = 0.0
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError as e:
                if self._closed:
                    return
                kind = _kind(e)
                n = self.accept_errors[kind] = self.accept_errors.get(kind, 0) + 1
                if n == 1:
                    log.warning("transfer server on port %d: accept() failed (%s); going on",
                                self.port, e)
                if e.errno in _SCARCE or e.errno is None or e.errno in (errno.EBADF,
                                                                        errno.EINVAL):
                    backoff = min(max(backoff * 2, _BACKOFF_MIN), _BACKOFF_MAX)
                    self._stop.wait(backoff)
                continue  # a connection error (ECONNABORTED, EPROTO, ...): the next one
            backoff = 0.0
            with self._lock:
                full = self._active >= self.max_connections
                if not full:
                    self._active += 1
            if full:
                self.refused += 1
                if self.refused == 1:
                    log.warning("transfer server on port %d: %d connections at once; closing "
                                "the ones beyond", self.port, self.max_connections)
                _close(conn)
                continue
            try:
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
            except RuntimeError as e:  # no thread to be had: as if the server were full
                self._release()
                _close(conn)
                kind = "thread"
                n = self.accept_errors[kind] = self.accept_errors.get(kind, 0) + 1
                if n == 1:
                    log.warning("transfer server on port %d: %s", self.port, e)
                self._stop.wait(_BACKOFF_MIN)

    def _release(self) -> None:
        with self._lock:
            self._active -= 1

    def _serve(self, conn: socket.socket) -> None:
        try:
            deadline = time.monotonic() + self.idle_timeout
            if self.ssl_context is not None:
                conn = self.ssl_context.wrap_socket(conn, server_side=True,
                                                    do_handshake_on_connect=False)
                _handshake(conn, deadline)  # type: ignore[arg-type]
            dec = FrameDecoder(max_frame=HEADER_MAX)
            req = _recv_frame(conn, dec, deadline)
            if not isinstance(req, GetFile):
                raise RemoteProtocolError(f"expected GetFile, got {type(req).__name__}")
            conn.settimeout(self.idle_timeout)
            if not self._authorized(req):
                conn.sendall(encode(FileHeader(
                    name=req.name, size=-1,
                    error=f"{NOT_AUTHORIZED}: the transfer token was refused")))
                return
            self._send_file(conn, req.name)
        except (OSError, ConnectionError, RemoteProtocolError, _TooSlow) as e:
            log.info("transfer connection dropped: %s", e)
        except Exception:  # a bug must not end silently either
            log.exception("transfer connection failed")
        finally:
            _close(conn)
            self._release()

    def _authorized(self, req: GetFile) -> bool:
        if self.authorize is None:
            return True
        try:
            return bool(self.authorize(req.name, req.token))
        except Exception:
            log.exception("transfer server: authorize(%r) failed; refusing", req.name)
            return False

    def _send_file(self, conn: socket.socket, name: str) -> None:
        found = self.lookup(name)
        mode = -1
        path: str | None
        if isinstance(found, tuple):
            path, mode = found
        else:
            path = found
        if path is None:
            conn.sendall(encode(FileHeader(name=name, size=-1, error="no such file")))
            return
        kind = "file"
        try:
            if os.path.isdir(path):
                kind, f = "dir", _packed(path)
            else:
                f = open(path, "rb")
        except OSError as e:
            if e.errno in _SCARCE:  # short of descriptors here: not the file's fault
                raise
            conn.sendall(encode(FileHeader(name=name, size=-1, error=str(e))))
            return
        except TreeError as e:
            conn.sendall(encode(FileHeader(name=name, size=-1, error=str(e))))
            return
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            bits = (mode if mode >= 0 else st.st_mode) & 0o777
            conn.sendall(encode(FileHeader(name=name, size=size, mode=bits, kind=kind)))
            now = time.monotonic()
            pace = _Pace(self.idle_timeout, self.min_rate, self.rate_window, math.inf, now)
            if isinstance(conn, ssl.SSLSocket):
                _send_copied(conn, f, size, pace)
            elif size:
                _send_zero_copy(conn, f, size, pace)
        if self.on_sent is not None:
            self.on_sent(name, size)

    def close(self) -> None:
        self._closed = True
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _send_zero_copy(conn: socket.socket, f: BinaryIO, size: int, pace: _Pace) -> None:
    """``size`` bytes of ``f`` with os.sendfile at ``pace`` (the socket has a timeout, so
    it is non-blocking underneath)."""
    out, src = conn.fileno(), f.fileno()
    poller = select.poll()
    poller.register(out, select.POLLOUT)
    offset = 0
    conn.settimeout(pace.stall)
    while offset < size:
        wait = pace.timeout(time.monotonic())
        try:
            n = os.sendfile(out, src, offset, min(SEND_CHUNK, size - offset))
        except BlockingIOError:
            if not poller.poll(wait * 1000):
                raise _TooSlow(f"the client read nothing for {wait:.0f} s") from None
            continue
        if n == 0:
            raise OSError(errno.EIO, f"the file shrank to {offset} of {size} bytes")
        offset += n
        pace.moved(n, time.monotonic())


def _send_copied(conn: socket.socket, f: BinaryIO, size: int, pace: _Pace) -> None:
    """``size`` bytes of ``f`` through ``conn`` (TLS: no zero copy) at ``pace``."""
    sent = 0
    while sent < size:
        data = f.read(min(CHUNK, size - sent))
        if not data:
            raise OSError(errno.EIO, f"the file shrank to {sent} of {size} bytes")
        conn.settimeout(pace.timeout(time.monotonic()))
        conn.sendall(data)
        sent += len(data)
        pace.moved(len(data), time.monotonic())


def fetch_file(
    host: str, port: int, name: str, dest_path: str, expected_size: int = -1,
    timeout: float = DEFAULT_TIMEOUT, *, token: str = "",
    ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
    min_rate: float = DEFAULT_MIN_RATE, rate_window: float = DEFAULT_RATE_WINDOW,
    max_time: float | None = None, on_file_bytes: Callable[[memoryview], object] | None = None,
) -> tuple[int, float]:
    """Copy ``name`` from the transfer server at host:port into ``dest_path``.

    Args:
        timeout: seconds for the connection, for the header, and the longest
            wait for any byte (default 30).
        token: sent in the request, for servers that ``authorize``.
        ssl_context: wrap the connection in TLS (client side), checking the
            server against ``server_hostname`` (default: ``host``) as the
            context says.
        min_rate: the slowest the source may send, in bytes/s over each
            ``rate_window`` seconds (defaults 64 KiB/s over 30 s; 0: no minimum).
        on_file_bytes: called with every piece of a plain file's body as it arrives
            (in order; not for a directory's tar), e.g. a checksum's ``update``.
        max_time: seconds for the whole transfer; None: ``timeout +
            rate_window + size / min_rate`` (no limit when ``min_rate`` is 0).

    Returns (bytes, seconds). Raises TransferError (a slow, stalled or silent
    source: SOURCE_BROKEN once the header came, SOURCE_UNREACHABLE before);
    never leaves a partial file.
    """
    start = time.monotonic()
    whole = start + max_time if max_time is not None else math.inf
    try:
        sock = socket.create_connection((host, port), timeout=min(timeout, whole - start))
    except OSError as e:
        raise TransferError(f"{host}:{port} unreachable: {e}",
                            TransferFailure.SOURCE_UNREACHABLE) from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        header_by = min(start + timeout, whole)
        try:
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host,
                                               do_handshake_on_connect=False)
                _handshake(sock, header_by)  # type: ignore[arg-type]
            sock.settimeout(max(0.001, header_by - time.monotonic()))
            sock.sendall(encode(GetFile(name=name, token=token)))
            dec = FrameDecoder(max_frame=HEADER_MAX)
            hdr = _recv_frame(sock, dec, header_by)
        except ssl.SSLError as e:
            raise TransferError(f"{host}:{port}: TLS failed: {e}",
                                TransferFailure.SOURCE_BROKEN) from None
        except TimeoutError:
            raise TransferError(f"{host}:{port} did not answer for {name} within "
                                f"{header_by - start:.3g} s",
                                TransferFailure.SOURCE_UNREACHABLE) from None
        except (OSError, ConnectionError, RemoteProtocolError) as e:
            raise TransferError(f"{host}:{port} failed: {e}",
                                TransferFailure.SOURCE_BROKEN) from None
        if not isinstance(hdr, FileHeader) or hdr.name != name:
            raise TransferError(f"{host}:{port} sent a bad header",
                                TransferFailure.SOURCE_BROKEN)
        if hdr.size < 0:
            refused = hdr.error.startswith(NOT_AUTHORIZED)
            raise TransferError(f"{host}:{port} " + (f"refused {name}: " if refused else
                                                     f"has no {name}: ") + hdr.error,
                                TransferFailure.SOURCE_MISSING, refused=refused)
        is_dir = hdr.kind == "dir"
        if hdr.kind not in ("file", "dir"):
            raise TransferError(f"{host}:{port} sent {name} as an unknown kind {hdr.kind!r}",
                                TransferFailure.SOURCE_BROKEN)
        if is_dir:  # the tar goes to a part file beside dest_path, unpacked below
            tree_path, dest_path = dest_path, dest_path + ".tar"
        if expected_size >= 0 and hdr.size != expected_size and not is_dir:
            raise TransferError(  # (its copy is not the file: wrong bytes, as checksums.py)
                f"{host}:{port} offers {hdr.size} bytes of {name}, expected {expected_size}",
                TransferFailure.BAD_DATA,
            )
        if max_time is None and min_rate > 0:
            whole = start + timeout + rate_window + hdr.size / min_rate
        now = time.monotonic()
        pace = _Pace(timeout, min_rate, rate_window, whole, now)
        got = _receive_body(sock, dec, hdr.size, dest_path, pace, host, port, name,
                            None if is_dir else on_file_bytes)
        try:
            os.chmod(dest_path, (hdr.mode & 0o777) | 0o600)
        except OSError as e:
            _unlink(dest_path)
            raise TransferError(f"cannot set the mode of {dest_path}: {e}",
                                TransferFailure.LOCAL_IO) from None
        if is_dir:
            try:
                got = unpack(dest_path, tree_path)
            except TreeError as e:
                raise TransferError(f"{host}:{port} sent a refused tree for {name}: {e}",
                                    TransferFailure.SOURCE_BROKEN) from None
            except OSError as e:
                raise TransferError(f"cannot unpack {name} into {tree_path}: {e}",
                                    TransferFailure.LOCAL_IO) from None
            finally:
                _unlink(dest_path)
        return got, time.monotonic() - start
    finally:
        _close(sock)


def _receive_body(sock: socket.socket, dec: FrameDecoder, size: int, dest_path: str,
                  pace: _Pace, host: str, port: int, name: str,
                  on_bytes: Callable[[memoryview], object] | None = None) -> int:
    """Stream ``size`` raw bytes into a new ``dest_path`` at ``pace`` (each piece also
    given to ``on_bytes``); return them. On any failure the file is removed."""
    try:
        fd = os.open(dest_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise TransferError(f"cannot create {dest_path}: {e}",
                            TransferFailure.LOCAL_IO) from None
    got = 0
    try:
        leftover = dec.take_raw(size)
        if leftover:
            _write_all(fd, leftover)
            if on_bytes is not None:
                on_bytes(memoryview(leftover))
            got += len(leftover)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while got < size:
            sock.settimeout(pace.timeout(time.monotonic()))
            n = sock.recv_into(view, min(CHUNK, size - got))
            if n == 0:
                raise TransferError(f"{host}:{port} closed after {got} of {size} bytes of "
                                    f"{name}", TransferFailure.SOURCE_BROKEN)
            _write_all(fd, view[:n])
            if on_bytes is not None:
                on_bytes(view[:n])
            got += n
            pace.moved(n, time.monotonic())
    except _TooSlow as e:
        os.close(fd)
        _unlink(dest_path)
        raise TransferError(f"{host}:{port} too slow sending {name} ({got} of {size} "
                            f"bytes): {e}", TransferFailure.SOURCE_BROKEN) from None
    except (TimeoutError, ssl.SSLError, ConnectionError) as e:
        os.close(fd)
        _unlink(dest_path)
        if not isinstance(e, TimeoutError):
            what = f"broke the connection ({e})"
        elif time.monotonic() >= pace.deadline:
            what = "did not finish by the transfer's deadline"
        else:
            what = f"sent nothing for {pace.stall:g} s"
        raise TransferError(f"{host}:{port} {what} after {got} of {size} bytes of {name}",
                            TransferFailure.SOURCE_BROKEN) from None
    except OSError as e:
        os.close(fd)
        _unlink(dest_path)
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        where = "disk full" if full else "I/O error"
        raise TransferError(f"{where} receiving {name}: {e}",
                            TransferFailure.DISK_FULL if full else TransferFailure.LOCAL_IO
                            ) from None
    except BaseException:
        os.close(fd)
        _unlink(dest_path)
        raise
    os.close(fd)
    return got


def _packed(path: str) -> BinaryIO:
    """The tree at ``path`` as a tar in an anonymous temporary file, rewound."""
    f = tempfile.TemporaryFile()
    try:
        pack(path, f)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return f


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
