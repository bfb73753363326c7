"""Socket settings shared by the manager's server, the worker and the warm interpreters.

``READ_SIZE`` is how much one read asks for. CPython allocates the whole request as a
bytes object before the read and shrinks it after, and glibc serves an allocation of
128 KiB or more with its own ``mmap`` (and ``mremap``/``munmap`` after): a read of
1 MiB or of asyncio's default 256 KiB costs 18-21 us on this kind of machine for a
6 KB message, one of 64 KiB 4 us. Control messages are a few KB; big ones simply
take several reads.

``tune_stream`` applies that to an asyncio connection (its transport's read size; a
transport without one, such as TLS's, which reads into a buffer of its own, is left
as it is) and turns Nagle's algorithm off.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

__all__ = ["READ_SIZE", "tune_stream"]

READ_SIZE = 64 * 1024


def tune_stream(writer: asyncio.StreamWriter) -> None:
    """No Nagle delay, and reads of at most :data:`READ_SIZE`, on ``writer``'s
    connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = writer.transport
    if isinstance(getattr(transport, "max_size", None), int):
        with contextlib.suppress(AttributeError):
            transport.max_size = READ_SIZE  # type: ignore[attr-defined]
