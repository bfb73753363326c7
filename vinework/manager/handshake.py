"""The manager's side of a worker's handshake: who may become a worker.

Before a connection is a worker it is a stranger, and a stranger gets little
(see ``protocol/auth.py`` for the exchange itself):

- at most ``MAX_STRANGERS`` connections may be in their handshake at once
  (more are closed at once: ``ManagerServer`` counts them);
- each may send only small frames (``STRANGER_FRAME`` bytes: ``Hello`` and
  ``Proof``) and must finish within ``HANDSHAKE_TIMEOUT`` seconds;
- nothing it says is acted on before its proof checks out (with a password);
  only then is its ``CacheReport`` (which may be large) read, and only then
  does it become a worker that counts anywhere.

``handshake`` returns what the server needs to admit the worker, or raises
``Refused`` saying why (the server logs it and closes the connection).

A status client opens with ``StatusQuery`` instead of ``Hello``. Without a
password it gets its ``StatusReply`` at once; with one it must first pass the
same challenge-response as a worker, and one that fails gets a refusal and no
data. Either way ``handshake`` raises ``StatusAnswered`` (the server closes the
connection; the client never counts as a worker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..protocol import MAX_FRAME, PROTOCOL_VERSION, FrameDecoder, Hello, Message, encode
from ..protocol.auth import manager_proof, new_nonce, same, valid_cache_name, worker_proof
from ..protocol.messages import CacheReport, Challenge, Proof, StatusQuery, StatusReply

MAX_STRANGERS = 64
STRANGER_FRAME = 4096
HANDSHAKE_TIMEOUT = 5.0
NONCE_HEX = 32


class Refused(Exception):
    """A connection that may not become a worker, and why."""


class StatusAnswered(Exception):
    """A status client got its answer; the connection is to be closed."""


StatusSource = Callable[[str], str]  # what -> the status as JSON (loop thread; ValueError)


async def _answer_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         dec: FrameDecoder, query: StatusQuery, password: bytes | None,
                         status: StatusSource | None) -> None:
    if query.version != PROTOCOL_VERSION:
        raise Refused(f"StatusQuery of protocol version {query.version}, not "
                      f"{PROTOCOL_VERSION}")
    if len(query.nonce) != NONCE_HEX or any(c not in "0123456789abcdef" for c in query.nonce):
        raise Refused("StatusQuery without a valid nonce")
    if password:
        nonce = new_nonce()
        writer.write(encode(Challenge(nonce=nonce,
                                      proof=manager_proof(password, query.nonce, nonce))))
        await writer.drain()
        answer = await _read_one(reader, dec)
        if not isinstance(answer, Proof) or not same(
                answer.proof, worker_proof(password, nonce, query.nonce)):
            why = "wrong password" if isinstance(answer, Proof) and answer.proof else \
                "no password given"
            writer.write(encode(StatusReply(json="", error=f"failed authentication: {why}")))
            await writer.drain()
            raise Refused(f"status query failed authentication: {why}")
    if status is None:
        reply = StatusReply(json="", error="this manager does not answer status queries")
    else:
        try:
            reply = StatusReply(json=status(query.what))
        except ValueError as e:
            reply = StatusReply(json="", error=str(e))
    writer.write(encode(reply))
    await writer.drain()
    raise StatusAnswered()


async def _read_one(reader: asyncio.StreamReader, dec: FrameDecoder) -> Message:
    while True:
        msg = dec.next_message()
        if msg is not None:
            return msg
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed during the handshake")
        dec.receive_data(data)


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    password: bytes | None, status: StatusSource | None = None,
                    ) -> tuple[Hello, list[tuple[str, int]], FrameDecoder]:
    """Run the manager's side of the handshake (see the module docstring).

    Returns:
        the worker's ``Hello``, the files it kept from an earlier manager, and the
        decoder of its connection (which may hold the start of its next frames).

    Raises:
        Refused: the peer is not a vinework worker of this protocol version, or failed
            the password check.
        StatusAnswered: the peer was a status client, and got its answer (``status``:
            the snapshot's source, called on the loop thread).
        ProtocolError, ConnectionError, OSError: as the connection goes.
    """
    dec = FrameDecoder(max_frame=STRANGER_FRAME)
    hello = await _read_one(reader, dec)
    if isinstance(hello, StatusQuery):
        await _answer_status(reader, writer, dec, hello, password, status)
    if not isinstance(hello, Hello) or hello.version != PROTOCOL_VERSION:
        raise Refused(f"expected Hello version {PROTOCOL_VERSION}, got "
                      f"{type(hello).__name__} {getattr(hello, 'version', '')}")
    if len(hello.nonce) != NONCE_HEX or any(c not in "0123456789abcdef" for c in hello.nonce):
        raise Refused("Hello without a valid nonce")
    nonce = new_nonce()
    proof = manager_proof(password, hello.nonce, nonce) if password else ""
    writer.write(encode(Challenge(nonce=nonce, proof=proof)))
    await writer.drain()
    answer = await _read_one(reader, dec)
    if not isinstance(answer, Proof):
        raise Refused(f"expected Proof, got {type(answer).__name__}")
    if password and not same(answer.proof, worker_proof(password, nonce, hello.nonce)):
        raise Refused("failed authentication: wrong or no password"
                      if answer.proof else "failed authentication: no password given")
    dec.max_frame = MAX_FRAME
    report = await _read_one(reader, dec)
    if not isinstance(report, CacheReport):
        raise Refused(f"expected CacheReport, got {type(report).__name__}")
    bad = next((n for n, _ in report.cached if not valid_cache_name(n)), None)
    if bad is not None:
        raise Refused(f"CacheReport with an invalid name {str(bad)[:80]!r}")
    return hello, [(str(n), int(z)) for n, z in report.cached], dec
