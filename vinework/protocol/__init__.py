"""Wire protocol of vinework: typed messages and a sans-IO framing codec.

This package does no I/O. ``messages`` defines one slotted dataclass per message
type; ``codec`` frames them as length-prefixed msgpack and validates what it
decodes. The manager's server, the worker and the transfer servers use it;
``transfer`` (the one module here that does I/O) is the peer-transfer server and
client that both the manager and the workers use.
"""

from .codec import (
    MAX_FRAME,
    FrameDecoder,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    decode_body,
    encode,
    encode_many,
)
from .messages import (
    PROTOCOL_VERSION,
    REGISTRY,
    CacheInvalid,
    CacheUpdate,
    Fetch,
    FileHeader,
    GetFile,
    Heartbeat,
    Hello,
    Hoist,
    Kill,
    Leaving,
    Message,
    RunTask,
    Shutdown,
    TaskDone,
    TransferFailure,
    Unlink,
    Welcome,
)

__all__ = [
    "MAX_FRAME", "FrameDecoder", "LocalProtocolError", "ProtocolError", "RemoteProtocolError",
    "decode_body", "encode", "encode_many", "PROTOCOL_VERSION", "REGISTRY", "CacheInvalid",
    "CacheUpdate", "Fetch", "FileHeader", "GetFile", "Heartbeat", "Hello", "Hoist", "Kill",
    "Leaving", "Message", "RunTask", "Shutdown", "TaskDone", "TransferFailure", "Unlink",
    "Welcome",
]
