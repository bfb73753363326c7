"""Peer transfers: a small file server on every worker (and the manager), and its client.

One connection moves one file. The client sends a ``GetFile`` frame; the
server answers with a ``FileHeader`` frame (size and permission bits, or an
error) and then the raw bytes, sent with ``socket.sendfile`` (zero copy). The
copy gets the source's permission bits (at least owner read and write), so an
executable stays executable on every worker it reaches; a server's lookup may
name other bits (``File.set_mode``). The client streams the
bytes straight to a temporary file in the destination directory, checks the
size, and only then hands it over. Blocking sockets in threads keep bulk
bytes off the asyncio loop, so control messages and heartbeats never wait
behind a large file.

A directory travels the same way as a tar stream of its tree (``trees.py``):
the server packs it into an anonymous temporary file (so its size is known up
front) and sends it with ``kind="dir"``; the client receives the tar into a part
file beside the destination and unpacks it into ``dest_path`` as a new directory,
refusing members that would escape it. The size returned is then the tree's
(the bytes of its files), not the tar's; ``expected_size`` is not checked.
"""

from __future__ import annotations

import logging
import os
import socket
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
HEADER_MAX = 64 * 1024


class TransferError(Exception):
    """A transfer failed; ``cause`` (a ``TransferFailure``) says who is to blame."""

    def __init__(self, message: str, cause: TransferFailure = TransferFailure.UNKNOWN) -> None:
        super().__init__(message)
        self.cause = cause

    @property
    def at_source(self) -> bool:
        return self.cause.at_source

    @property
    def disk_full(self) -> bool:
        return self.cause is TransferFailure.DISK_FULL


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


def _recv_frame(sock: socket.socket, dec: FrameDecoder) -> object:
    while True:
        msg = dec.next_message()
        if msg is not None:
            return msg
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before a complete frame")
        dec.receive_data(data)


class TransferServer:
    """Serves files by cache name; ``lookup(name)`` gives a path, or (path, permission
    bits) to send other bits than the file's, or None."""

    def __init__(
        self,
        lookup: Callable[[str], str | tuple[str, int] | None],
        port: int = 0,
        on_sent: Callable[[str, int], None] | None = None,
    ) -> None:
        self.lookup = lookup
        self.on_sent = on_sent
        self.sock = listen_socket(port)
        self.port: int = self.sock.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="vine-transfer",
                                        daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(60)
            dec = FrameDecoder(max_frame=HEADER_MAX)
            req = _recv_frame(conn, dec)
            if not isinstance(req, GetFile):
                raise RemoteProtocolError(f"expected GetFile, got {type(req).__name__}")
            found = self.lookup(req.name)
            mode = -1
            path: str | None
            if isinstance(found, tuple):
                path, mode = found
            else:
                path = found
            if path is None:
                conn.sendall(encode(FileHeader(name=req.name, size=-1, error="no such file")))
                return
            kind = "file"
            try:
                if os.path.isdir(path):
                    kind, f = "dir", _packed(path)
                else:
                    f = open(path, "rb")
            except (OSError, TreeError) as e:
                conn.sendall(encode(FileHeader(name=req.name, size=-1, error=str(e))))
                return
            with f:
                st = os.fstat(f.fileno())
                size = st.st_size
                bits = (mode if mode >= 0 else st.st_mode) & 0o777
                conn.sendall(encode(FileHeader(name=req.name, size=size, mode=bits, kind=kind)))
                conn.settimeout(None)
                if size:
                    conn.sendfile(f)
            if self.on_sent is not None:
                self.on_sent(req.name, size)
        except (OSError, ConnectionError, RemoteProtocolError) as e:
            log.info("transfer connection dropped: %s", e)
        finally:
            conn.close()

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def fetch_file(
    host: str, port: int, name: str, dest_path: str, expected_size: int = -1,
    timeout: float = 30.0,
) -> tuple[int, float]:
    """Copy ``name`` from the transfer server at host:port into ``dest_path``.

    Returns (bytes, seconds). Raises TransferError; never leaves a partial file.
    """
    start = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise TransferError(f"{host}:{port} unreachable: {e}",
                            TransferFailure.SOURCE_UNREACHABLE) from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(encode(GetFile(name=name)))
        dec = FrameDecoder(max_frame=HEADER_MAX)
        try:
            hdr = _recv_frame(sock, dec)
        except (OSError, ConnectionError, RemoteProtocolError) as e:
            raise TransferError(f"{host}:{port} failed: {e}",
                                TransferFailure.SOURCE_BROKEN) from None
        if not isinstance(hdr, FileHeader) or hdr.name != name:
            raise TransferError(f"{host}:{port} sent a bad header",
                                TransferFailure.SOURCE_BROKEN)
        if hdr.size < 0:
            raise TransferError(f"{host}:{port} has no {name}: {hdr.error}",
                                TransferFailure.SOURCE_MISSING)
        is_dir = hdr.kind == "dir"
        if hdr.kind not in ("file", "dir"):
            raise TransferError(f"{host}:{port} sent {name} as an unknown kind {hdr.kind!r}",
                                TransferFailure.SOURCE_BROKEN)
        if is_dir:  # the tar goes to a part file beside dest_path, unpacked below
            tree_path, dest_path = dest_path, dest_path + ".tar"
        if expected_size >= 0 and hdr.size != expected_size and not is_dir:
            raise TransferError(
                f"{host}:{port} offers {hdr.size} bytes of {name}, expected {expected_size}",
                TransferFailure.SOURCE_BROKEN,
            )
        got = 0
        try:
            fd = os.open(dest_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise TransferError(f"cannot create {dest_path}: {e}",
                                TransferFailure.LOCAL_IO) from None
        try:
            leftover = dec.take_raw(hdr.size)
            if leftover:
                _write_all(fd, leftover)
                got += len(leftover)
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while got < hdr.size:
                n = sock.recv_into(view, min(CHUNK, hdr.size - got))
                if n == 0:
                    raise TransferError(
                        f"{host}:{port} closed after {got} of {hdr.size} bytes of {name}",
                        TransferFailure.SOURCE_BROKEN,
                    )
                _write_all(fd, view[:n])
                got += n
        except OSError as e:
            os.close(fd)
            _unlink(dest_path)
            import errno

            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            where = "disk full" if full else "I/O error"
            raise TransferError(f"{where} receiving {name}: {e}",
                                TransferFailure.DISK_FULL if full else TransferFailure.LOCAL_IO
                                ) from None
        except BaseException:
            os.close(fd)
            _unlink(dest_path)
            raise
        try:
            os.fchmod(fd, (hdr.mode & 0o777) | 0o600)
        finally:
            os.close(fd)
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
        sock.close()


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


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
