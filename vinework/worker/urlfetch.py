"""Fetching a URL into the worker's cache: ``file://``, ``http://`` and ``https://``.

The worker fetches a URL file itself (``Fetch.url``): no byte goes through the
manager. ``fetch_url`` streams the body to the fetch's part file (mode 0644:
a downloaded file is not executable), in a thread of the worker's transfer
pool, within limits:

- size: at most ``max_bytes`` (the worker's free disk and cache budget): a
  ``Content-Length`` above it fails before any byte is read, a body that grows
  past it fails as soon as it does (``DISK_FULL``);
- time: every connect and read waits at most ``timeout`` seconds; the whole
  fetch, retries included, ends by ``deadline`` seconds;
- redirects (301, 302, 303, 307, 308) are followed, at most ``redirects`` of
  them, to http or https only;
- https is verified against the system's CAs, or the bundle named by the
  standard ``SSL_CERT_FILE`` (and ``SSL_CERT_DIR``) environment variable of
  the worker process, or ``ca_file``; verification is never turned off.

Failures are typed (``TransferFailure``) so that the manager knows what to do:
``SOURCE_MISSING`` for HTTP 404/410 (and other 4xx but 408/425/429) or a missing
local file: permanent, never retried; ``SOURCE_UNREACHABLE`` for connection
errors, timeouts, 5xx, a certificate that does not verify; ``SOURCE_BROKEN``
for a truncated body; ``DISK_FULL`` and ``LOCAL_IO`` at the destination.
Transient failures (unreachable but for a certificate, 5xx, broken) are
retried here, ``attempts`` times in all, ``backoff`` seconds apart, doubling.
The reason always names the URL and the HTTP status or the error.

The limits come from the worker's environment (``UrlLimits.from_env``):
``VINEWORK_URL_TIMEOUT`` (30 s), ``VINEWORK_URL_DEADLINE`` (3600 s),
``VINEWORK_URL_ATTEMPTS`` (3), ``VINEWORK_URL_BACKOFF`` (1 s),
``VINEWORK_URL_REDIRECTS`` (10).
"""

from __future__ import annotations

import dataclasses
import errno
import http.client
import os
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from ..protocol import TransferFailure
from ..protocol.transfer import TransferError

CHUNK = 1 << 20
SCHEMES = ("file", "http", "https")
REDIRECTS = (301, 302, 303, 307, 308)
TRANSIENT_4XX = (408, 425, 429)  # request timeout, too early, too many requests


class UrlError(TransferError):
    """A URL fetch failed; ``transient`` says whether trying again may help."""

    def __init__(self, message: str, cause: TransferFailure, transient: bool) -> None:
        super().__init__(message, cause)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class UrlLimits:
    """How long and how big a URL fetch may be, and how often it is tried."""

    timeout: float = 30.0  # seconds for a connection, and for each read
    deadline: float = 3600.0  # seconds for the whole fetch, retries included
    attempts: int = 3  # tries in all for a transient failure
    backoff: float = 1.0  # seconds before the first retry (doubled for each next one)
    redirects: int = 10
    max_bytes: int = -1  # the largest body accepted (-1: no limit)
    ca_file: str = ""  # a CA bundle for https ("": SSL_CERT_FILE or the system's)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UrlLimits:
        """The limits named by ``VINEWORK_URL_*`` variables (see the module docstring);
        a malformed value raises ValueError naming the variable."""
        env = os.environ if environ is None else environ
        base = cls()
        values: dict[str, float | int] = {}
        for field, conv in (("timeout", float), ("deadline", float), ("attempts", int),
                            ("backoff", float), ("redirects", int)):
            var = f"VINEWORK_URL_{field.upper()}"
            raw = env.get(var, "").strip()
            if not raw:
                continue
            try:
                v = conv(raw)
            except ValueError:
                raise ValueError(f"{var}={raw!r} is not a number") from None
            if v < 0 or (field in ("timeout", "deadline", "attempts") and v == 0):
                raise ValueError(f"{var}={raw!r} must be positive")
            values[field] = v
        return dataclasses.replace(base, **values)  # type: ignore[arg-type]


def check_url(url: str) -> str:
    """Refuse a URL vinework cannot fetch (pure): not file/http/https, or no host."""
    if not isinstance(url, str) or not url or any(c in url for c in "\x00\r\n "):
        raise ValueError(f"invalid URL {url!r}")
    u = urllib.parse.urlsplit(url)
    if u.scheme not in SCHEMES:
        raise ValueError(f"URL {url!r}: scheme {u.scheme!r} is not one of "
                         f"{', '.join(SCHEMES)}")
    if u.scheme == "file":
        if u.netloc not in ("", "localhost") or not u.path.startswith("/"):
            raise ValueError(f"URL {url!r}: a file URL is file:///absolute/path")
    elif not u.hostname:
        raise ValueError(f"URL {url!r} has no host")
    return url


def fetch_url(url: str, dest_path: str, limits: UrlLimits | None = None,
              cancelled: threading.Event | None = None) -> tuple[int, float]:
    """Copy what ``url`` names into ``dest_path`` (created 0644), retrying a transient
    failure. Returns (bytes, seconds); raises ``UrlError`` and never leaves a partial
    file. ``cancelled`` (set when the worker stops) ends the fetch early."""
    lim = limits or UrlLimits()
    start = time.monotonic()
    end = start + lim.deadline
    stop = cancelled or threading.Event()
    attempt = 1
    while True:
        try:
            size = _fetch_once(url, dest_path, lim, end, stop)
            return size, time.monotonic() - start
        except UrlError as e:
            _unlink(dest_path)
            pause = lim.backoff * 2 ** (attempt - 1)
            if not e.transient or attempt >= lim.attempts or stop.is_set() \
                    or time.monotonic() + pause >= end:
                if attempt > 1:
                    raise UrlError(f"{e} (tried {attempt} times)", e.cause,
                                   e.transient) from None
                raise
            attempt += 1
            if stop.wait(pause):
                raise UrlError(f"{url}: the worker is stopping", e.cause, False) from None
        except BaseException:
            _unlink(dest_path)
            raise


def _fetch_once(url: str, dest: str, lim: UrlLimits, end: float,
                stop: threading.Event) -> int:
    u = urllib.parse.urlsplit(url)
    if u.scheme == "file":
        return _fetch_file(url, u, dest, lim)
    if u.scheme not in ("http", "https"):
        raise UrlError(f"{url}: unsupported scheme {u.scheme!r}",
                       TransferFailure.SOURCE_MISSING, False)
    where = url
    for _hop in range(lim.redirects + 1):
        conn, resp = _request(where, lim, end)
        try:
            status = resp.status
            if status in REDIRECTS:
                loc = resp.getheader("Location")
                if not loc:
                    raise UrlError(f"{_name(url, where)}: HTTP {status} without a Location",
                                   TransferFailure.SOURCE_BROKEN, True)
                nxt = urllib.parse.urljoin(where, loc.strip())
                if urllib.parse.urlsplit(nxt).scheme not in ("http", "https"):
                    raise UrlError(f"{_name(url, where)}: redirected to {nxt!r}, not http(s)",
                                   TransferFailure.SOURCE_MISSING, False)
                where = nxt
                continue
            if status != 200:
                raise _status_error(_name(url, where), status, resp.reason)
            return _receive(_name(url, where), resp, dest, lim, end, stop)
        finally:
            resp.close()
            conn.close()
    raise UrlError(f"{url}: more than {lim.redirects} redirects",
                   TransferFailure.SOURCE_MISSING, False)


def _name(url: str, where: str) -> str:
    return url if where == url else f"{url} (redirected to {where})"


def _status_error(name: str, status: int, reason: str) -> UrlError:
    text = f"{name}: HTTP {status} {reason}".rstrip()
    if 400 <= status < 500 and status not in TRANSIENT_4XX:
        return UrlError(text, TransferFailure.SOURCE_MISSING, False)  # 404, 410, 403, ...
    return UrlError(text, TransferFailure.SOURCE_UNREACHABLE, True)  # 5xx, 429, ...


def _context(lim: UrlLimits) -> ssl.SSLContext:
    """Verification on, against ``ca_file`` or the default paths (SSL_CERT_FILE)."""
    ctx = ssl.create_default_context(cafile=lim.ca_file or None)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _request(url: str, lim: UrlLimits, end: float
             ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    timeout = _left(url, lim, end)
    conn: http.client.HTTPConnection
    try:
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(host, u.port, timeout=timeout,
                                               context=_context(lim))
        else:
            conn = http.client.HTTPConnection(host, u.port, timeout=timeout)
    except ValueError as e:  # a bad port
        raise UrlError(f"{url}: {e}", TransferFailure.SOURCE_MISSING, False) from None
    except (OSError, ssl.SSLError) as e:  # a CA bundle that cannot be read
        raise UrlError(f"{url}: cannot set up TLS: {e}", TransferFailure.LOCAL_IO,
                       False) from None
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    try:
        conn.request("GET", target, headers={
            "User-Agent": "vinework-worker", "Accept-Encoding": "identity"})
        return conn, conn.getresponse()
    except BaseException as e:
        conn.close()
        raise _net_error(url, e, lim.timeout) from None


def _net_error(url: str, e: BaseException, timeout: float) -> BaseException:
    """The UrlError for what went wrong talking to the server."""
    if isinstance(e, ssl.SSLCertVerificationError):
        # the same on every try from this worker (another worker may trust it)
        return UrlError(f"{url}: TLS certificate not verified: {e.verify_message or e}",
                        TransferFailure.SOURCE_UNREACHABLE, False)
    if isinstance(e, TimeoutError):
        return UrlError(f"{url}: no answer within {timeout:g} s (timeout)",
                        TransferFailure.SOURCE_UNREACHABLE, True)
    if isinstance(e, socket.gaierror):
        return UrlError(f"{url}: unknown host: {e.strerror or e}",
                        TransferFailure.SOURCE_UNREACHABLE, True)
    if isinstance(e, http.client.HTTPException | ssl.SSLError | OSError):
        why = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
        return UrlError(f"{url}: {why}", TransferFailure.SOURCE_UNREACHABLE, True)
    return e


def _left(url: str, lim: UrlLimits, end: float) -> float:
    left = end - time.monotonic()
    if left <= 0:
        raise UrlError(f"{url}: not done within the {lim.deadline:g} s deadline",
                       TransferFailure.SOURCE_UNREACHABLE, False)
    return min(lim.timeout, left)


def _too_big(name: str, size: int, lim: UrlLimits) -> UrlError:
    return UrlError(f"{name}: {size} bytes, more than the {lim.max_bytes} this worker can hold",
                    TransferFailure.DISK_FULL, False)


def _receive(name: str, resp: http.client.HTTPResponse, dest: str, lim: UrlLimits,
             end: float, stop: threading.Event) -> int:
    length = resp.getheader("Content-Length")
    expect = -1
    if length is not None and resp.getheader("Transfer-Encoding") is None:
        try:
            expect = int(length)
        except ValueError:
            raise UrlError(f"{name}: bad Content-Length {length!r}",
                           TransferFailure.SOURCE_BROKEN, True) from None
        if 0 <= lim.max_bytes < expect:
            raise _too_big(name, expect, lim)
    fd = _create(dest)
    got = 0
    try:
        while True:
            if stop.is_set():
                raise UrlError(f"{name}: the worker is stopping",
                               TransferFailure.SOURCE_UNREACHABLE, False)
            timeout = _left(name, lim, end)
            if resp.fp is not None:
                _set_timeout(resp, timeout)
            try:
                data = resp.read1(CHUNK) if expect < 0 else resp.read(min(CHUNK, expect - got))
            except http.client.IncompleteRead as e:
                raise UrlError(f"{name}: the body ended after {got + len(e.partial)} of "
                               f"{expect} bytes", TransferFailure.SOURCE_BROKEN, True) from None
            except BaseException as e:
                raise _net_error(name, e, lim.timeout) from None
            if not data:
                break
            got += len(data)
            if 0 <= lim.max_bytes < got:
                raise _too_big(name, got, lim)
            _write(fd, data, name)
            if 0 <= expect <= got:
                break
        if 0 <= expect != got:
            raise UrlError(f"{name}: the body ended after {got} of {expect} bytes",
                           TransferFailure.SOURCE_BROKEN, True)
    finally:
        os.close(fd)
    return got


def _set_timeout(resp: http.client.HTTPResponse, timeout: float) -> None:
    """Bound the next read by what is left of the deadline (the socket under ``resp``)."""
    raw = getattr(resp.fp, "raw", None)
    sock = getattr(raw, "_sock", None)
    if isinstance(sock, socket.socket):
        sock.settimeout(timeout)


def _fetch_file(url: str, u: urllib.parse.SplitResult, dest: str, lim: UrlLimits) -> int:
    path = urllib.request.url2pathname(u.path)
    try:
        src = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise UrlError(f"{url}: no such file", TransferFailure.SOURCE_MISSING, False) from None
    except IsADirectoryError:
        raise UrlError(f"{url}: is a directory", TransferFailure.SOURCE_MISSING,
                       False) from None
    except OSError as e:
        permanent = e.errno in (errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ELOOP)
        raise UrlError(f"{url}: {e.strerror or e}",
                       TransferFailure.SOURCE_MISSING if permanent
                       else TransferFailure.SOURCE_UNREACHABLE, not permanent) from None
    with src:
        size = os.fstat(src.fileno()).st_size
        if 0 <= lim.max_bytes < size:
            raise _too_big(url, size, lim)
        fd = _create(dest)
        got = 0
        try:
            while True:
                try:
                    data = src.read(CHUNK)
                except OSError as e:
                    raise UrlError(f"{url}: read error: {e.strerror or e}",
                                   TransferFailure.SOURCE_BROKEN, True) from None
                if not data:
                    break
                got += len(data)
                if 0 <= lim.max_bytes < got:
                    raise _too_big(url, got, lim)
                _write(fd, data, url)
        finally:
            os.close(fd)
    return got


def _create(dest: str) -> int:
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.fchmod(fd, 0o644)  # whatever the umask: readable, not executable
        return fd
    except OSError as e:
        raise UrlError(f"cannot create {dest}: {e.strerror or e}", TransferFailure.LOCAL_IO,
                       False) from None


def _write(fd: int, data: bytes, name: str) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as e:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise UrlError(f"{'disk full' if full else 'I/O error'} receiving {name}: "
                       f"{e.strerror or e}",
                       TransferFailure.DISK_FULL if full else TransferFailure.LOCAL_IO,
                       False) from None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
