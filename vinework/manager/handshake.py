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
"""

from __future__ import annotations

import asyncio

from ..protocol import MAX_FRAME, PROTOCOL_VERSION, FrameDecoder, Hello, Message, encode
from ..protocol.auth import manager_proof, new_nonce, same, valid_cache_name, worker_proof
from ..protocol.messages import CacheReport, Challenge, Proof

MAX_STRANGERS = 64
STRANGER_FRAME = 4096
HANDSHAKE_TIMEOUT = 5.0
NONCE_HEX = 32


class Refused(Exception):
    """A connection that may not become a worker, and why."""


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
                    password: bytes | None) -> tuple[Hello, list[tuple[str, int]], FrameDecoder]:
    """Run the manager's side of the handshake (see the module docstring).

    Returns:
        the worker's ``Hello``, the files it kept from an earlier manager, and the
        decoder of its connection (which may hold the start of its next frames).

    Raises:
        Refused: the peer is not a vinework worker of this protocol version, or failed
            the password check.
        ProtocolError, ConnectionError, OSError: as the connection goes.
    """
    dec = FrameDecoder(max_frame=STRANGER_FRAME)
    hello = await _read_one(reader, dec)
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
