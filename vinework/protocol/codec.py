"""The framing codec: length-prefixed msgpack frames, sans I/O.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack,
which must decode to ``[TAG, field...]`` of a registered message. The codec
never touches a socket: feed it bytes with ``receive_data`` and pull messages
out with ``next_message`` (``None`` means "need more data"); ``encode`` turns a
message into bytes to write. Any malformed input raises ``RemoteProtocolError``
and leaves the decoder in an error state: the caller drops the connection.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgpack

from .messages import REGISTRY, Message, compile_decoder

MAX_FRAME = 64 * 1024 * 1024  # a frame larger than this is refused
_LEN = struct.Struct(">I")


class ProtocolError(Exception):
    """A protocol rule was broken."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid; drop its connection."""


class LocalProtocolError(ProtocolError):
    """We tried to send something invalid (a bug on this side)."""


def encode(msg: Message) -> bytes:
    """Frame one message."""
    body = msgpack.packb(msg.to_wire(), use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise LocalProtocolError(f"{type(msg).__name__} frame of {len(body)} bytes is too large")
    return _LEN.pack(len(body)) + body


def encode_many(msgs: list[Message]) -> bytes:
    """Frame several messages into one buffer (one write for a batch)."""
    return b"".join(encode(m) for m in msgs)


def decode_body(body: bytes) -> Message:
    """Decode and validate one frame body into a message."""
    try:
        obj: Any = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise RemoteProtocolError(f"undecodable frame: {e}") from None
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise RemoteProtocolError("frame is not a [tag, fields...] array")
    decode = _DECODERS.get(obj[0])
    if decode is None:
        cls = REGISTRY.get(obj[0])
        if cls is None:
            raise RemoteProtocolError(f"unknown message tag {obj[0]}")
        decode = _DECODERS[obj[0]] = compile_decoder(cls, RemoteProtocolError)
    return decode(obj[1:])


# per tag, the generated decoder of its message class (``messages.compile_decoder``)
_DECODERS: dict[int, Callable[[list[Any]], Message]] = {}


class FrameDecoder:
    """Incremental decoder: bytes in, validated messages out."""

    __slots__ = ("_buf", "_pos", "max_frame", "error", "limits")

    def __init__(self, max_frame: int = MAX_FRAME, limits: dict[int, int] | None = None
                 ) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_frame = max_frame
        self.error: ProtocolError | None = None
        # per message tag, the largest frame accepted (checked as soon as the tag has
        # arrived, before the rest of the frame is buffered); other tags: max_frame
        self.limits = limits

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the peer."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_message(self) -> Message | None:
        """The next complete message, or None if more data is needed."""
        if self.error is not None:
            raise self.error
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        (n,) = _LEN.unpack_from(buf, pos)
        if n > self.max_frame:
            self.error = RemoteProtocolError(f"frame of {n} bytes exceeds limit {self.max_frame}")
            raise self.error
        if self.limits is not None and n > 2 and len(buf) - pos >= 6:
            # [TAG, ...]: a fixarray or array16/32 header, then the tag as a positive fixint
            head = buf[pos + 4]
            at = pos + 5 if 0x90 <= head <= 0x9F else pos + 7 if head == 0xDC else pos + 9
            if len(buf) > at:
                limit = self.limits.get(buf[at], self.max_frame)
                if n > limit:
                    kind = REGISTRY.get(buf[at])
                    self.error = RemoteProtocolError(
                        f"frame of {n} bytes exceeds the limit of {limit} for "
                        f"{kind.__name__ if kind else f'tag {buf[at]}'}")
                    raise self.error
        if len(buf) - pos - 4 < n:
            return None
        body = bytes(buf[pos + 4 : pos + 4 + n])
        self._pos = pos + 4 + n
        try:
            return decode_body(body)
        except RemoteProtocolError as e:
            self.error = e
            raise

    def pending(self) -> int:
        """Bytes buffered but not yet consumed (a trailing partial frame)."""
        return len(self._buf) - self._pos

    def take_raw(self, limit: int) -> bytes:
        """Remove up to ``limit`` buffered bytes that follow the last message (raw file data)."""
        end = min(len(self._buf), self._pos + limit)
        out = bytes(self._buf[self._pos : end])
        self._pos = end
        return out
