"""Every message that crosses a vinework connection, as a slotted dataclass.

Theory of operation: a message is a slotted, keyword-only dataclass
with a unique small integer ``TAG``. On the wire it is the msgpack array
``[TAG, field1, field2, ...]`` in field order (see ``codec.py``). Decoding
checks the tag, the number of fields and the type of every field against the
annotations, so a peer can never hand the core a value of the wrong shape.

Messages are treated as immutable once made (the codec and the cores never
change one), but are not ``frozen``: a frozen dataclass costs three to four
times as much to construct (a RunTask: 10 us against 2.6 us on this kind of
machine, measured), and one is made or decoded for every task on both sides.
A message has no attribute other than its fields (``__slots__``).

Nested values are plain msgpack types only (ints, floats, str, bytes, bools,
lists of those), never dicts of arbitrary shape: pairs are lists of two items
and are typed as ``list[tuple[str, str]]`` and the like.

Control connection (one per worker):
    worker -> manager: Hello, Proof, CacheReport, TaskDone, CacheUpdate, CacheInvalid,
                       Heartbeat, Leaving, LibraryReady, LibraryEnded, OutputChunk
    manager -> worker: Challenge, Welcome, RunTask, Fetch, Unlink, Kill, Heartbeat, Hoist,
                       Shutdown, StartLibrary, StopLibrary
    handshake: Hello -> Challenge -> Proof, CacheReport -> Welcome (``auth.py``)
    status client: StatusQuery [-> Challenge -> Proof, with a password] -> StatusReply

Failure causes travel as typed values (``TransferFailure`` numbers), never as
prefixes of a human-readable reason string.
Transfer connection (one per file movement, to a transfer server):
    client -> server: GetFile;  server -> client: FileHeader, then raw bytes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

PROTOCOL_VERSION = 5


class TransferFailure(IntEnum):
    """Why a file did not arrive (in ``CacheInvalid.cause`` and manager retrievals)."""

    NONE = 0
    UNKNOWN = 1
    SOURCE_MISSING = 2  # the source answered that it does not have the file
    SOURCE_UNREACHABLE = 3  # no connection to the source
    SOURCE_BROKEN = 4  # the source broke the transfer (bad header, wrong size, closed early)
    DISK_FULL = 5  # the destination ran out of space
    LOCAL_IO = 6  # the destination could not write the file
    BAD_NAME = 7  # the name is not a valid cache name
    BAD_DATA = 8  # what arrived does not match the file's checksum (checksums.py)

    @property
    def at_source(self) -> bool:
        """True when the source, not the destination, is to blame."""
        return self in (TransferFailure.SOURCE_MISSING, TransferFailure.SOURCE_UNREACHABLE,
                        TransferFailure.SOURCE_BROKEN, TransferFailure.BAD_DATA)

Checker = Callable[[Any], bool]


def _checker_for(tp: Any) -> Checker:
    """Build a fast predicate that accepts exactly the values of type ``tp``."""
    if tp is Any:
        return lambda v: True
    if tp is int:
        return lambda v: type(v) is int
    if tp is float:
        return lambda v: type(v) is float or type(v) is int
    if tp is str:
        return lambda v: type(v) is str
    if tp is bytes:
        return lambda v: type(v) is bytes
    if tp is bool:
        return lambda v: type(v) is bool
    if tp is type(None):
        return lambda v: v is None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        subs = [_checker_for(a) for a in args]
        return lambda v: any(s(v) for s in subs)
    if origin is list:
        (item,) = args
        sub = _checker_for(item)
        return lambda v: type(v) is list and all(sub(x) for x in v)
    if origin is tuple:
        subs = [_checker_for(a) for a in args]
        n = len(subs)
        return lambda v: (
            type(v) in (list, tuple) and len(v) == n and all(s(x) for s, x in zip(subs, v))
        )
    raise TypeError(f"no wire checker for type {tp!r}")


class Message:
    """Base class of every wire message; subclasses are slotted dataclasses."""

    TAG: ClassVar[int]
    _fields: ClassVar[tuple[str, ...]]
    _checks: ClassVar[tuple[Checker, ...]]
    __slots__ = ()

    def to_wire(self) -> list[Any]:
        """The message as the msgpack array ``[TAG, fields...]``."""
        return [self.TAG, *(getattr(self, f) for f in self._fields)]


REGISTRY: dict[int, type[Message]] = {}

# type test written inline by the generated decoders (``compile_decoder``): the same
# acceptance as ``_checker_for``, without a call per field
_INLINE: dict[Any, str] = {
    int: "type({v}) is int",
    str: "type({v}) is str",
    bytes: "type({v}) is bytes",
    bool: "type({v}) is bool",
    float: "(type({v}) is float or type({v}) is int)",
    type(None): "{v} is None",
    bytes | None: "({v} is None or type({v}) is bytes)",
    str | None: "({v} is None or type({v}) is str)",
}


def _compile_to_wire(tag: int, fields: tuple[str, ...]) -> Callable[[Any], list[Any]]:
    """``to_wire`` for one message class: one list display, no per-field lookups."""
    body = ", ".join(f"self.{f}" for f in fields)
    src = f"def to_wire(self):\n    return [{tag}{', ' if fields else ''}{body}]\n"
    ns: dict[str, Any] = {}
    exec(src, ns)  # (generated from the dataclass's own field names)
    fn: Callable[[Any], list[Any]] = ns["to_wire"]
    fn.__doc__ = "The message as the msgpack array ``[TAG, fields...]``."
    return fn


def compile_decoder(cls: type[Message], error: type[Exception]
                    ) -> Callable[[list[Any]], Message]:
    """A function from a frame's field values (``[tag, *values]`` minus the tag) to the
    message, raising ``error`` with the same words as a field-by-field check would: the
    field count, then each field's type, then the constructor."""
    hints = typing.get_type_hints(cls)
    names = cls._fields
    n = len(names)
    env: dict[str, Any] = {"cls": cls, "error": error}
    lines = ["def decode(values):",
             f"    if len(values) != {n}:",
             f"        raise error(f'{cls.__name__} has {{len(values)}} fields, expected {n}')"]
    if n:
        lines.append(f"    {', '.join(f'v{i}' for i in range(n))}, = values")
    for i, (name, check) in enumerate(zip(names, cls._checks)):
        tp = hints[name]
        test = _INLINE.get(tp)
        if test is not None:
            test = test.format(v=f"v{i}")
        else:
            env[f"c{i}"] = check
            test = f"c{i}(v{i})"
            if typing.get_origin(tp) is list:  # (most lists on the wire are empty)
                test = f"(type(v{i}) is list and (not v{i} or {test}))"
        lines += [f"    if not {test}:",
                  f"        raise error('{cls.__name__}.{name} has wrong type ' "
                  f"+ type(v{i}).__name__)"]
    lines.append(f"    return cls({', '.join(f'{f}=v{i}' for i, f in enumerate(names))})")
    exec("\n".join(lines) + "\n", env)  # (generated from the dataclass's own fields)
    decode: Callable[[list[Any]], Message] = env["decode"]
    return decode


M = typing.TypeVar("M", bound=type)


def register(tag: int) -> Callable[[M], M]:
    """Class decorator (above ``@dataclass``): give a message its tag and field checkers."""

    def wrap(dc: M) -> M:
        cls: Any = dc
        hints = typing.get_type_hints(dc)
        fields = tuple(f.name for f in dataclasses.fields(dc))
        cls.TAG = tag
        cls._fields = fields
        cls._checks = tuple(_checker_for(hints[f]) for f in fields)
        cls.to_wire = _compile_to_wire(tag, fields)
        if tag in REGISTRY:
            raise ValueError(f"duplicate message tag {tag}")
        REGISTRY[tag] = cls
        return dc

    return wrap


# ---------------------------------------------------------------- control: worker -> manager


@register(1)
@dataclass(slots=True, kw_only=True)
class Hello(Message):
    """First message of a worker: who it is and what it has."""

    version: int
    hostname: str
    cores: int
    memory: int  # MB
    disk: int  # MB
    gpus: int
    transfer_port: int
    cached: list[tuple[str, int]]  # files already in the cache: (name, size)
    password_proof: str = ""  # (unused: the proof travels in ``Proof``, see auth.py)
    features: list[str] = field(default_factory=list)  # --feature names (Task.add_feature)
    nonce: str = ""  # the worker's handshake nonce (``auth.py``)


@register(2)
@dataclass(slots=True, kw_only=True)
class TaskDone(Message):
    """A task attempt finished on the worker (successfully or not)."""

    task_id: int
    attempt: int
    result: int  # a TaskResult value
    exit_code: int
    output: str  # stdout+stderr, capped
    start: float
    end: float
    outputs: list[tuple[str, int]]  # cache files the task produced: (name, size)
    python_result: bytes | None = None  # cloudpickle of the return value, when inline
    python_error: str = ""  # remote traceback text when a PythonTask raised
    message: str = ""  # worker-side explanation of a failure
    # what the process used: [wall_time s, cpu_time s, max_rss MB]; empty if not measured
    measured: list[float] = field(default_factory=list)
    # stdout beyond what travels inline: a cache file the manager retrieves ("" = none)
    stdout_file: str = ""
    stdout_size: int = 0  # bytes of the whole stdout (inline part included)
    checksums: list[str] = field(default_factory=list)  # of ``outputs``, in order (shell)


@register(3)
@dataclass(slots=True, kw_only=True)
class CacheUpdate(Message):
    """A file is now ready in the worker's cache."""

    name: str
    size: int
    seconds: float  # time spent transferring it, 0 if produced locally
    transfer_id: int  # the Fetch that brought it, 0 if produced by a task
    source: str = ""


@register(4)
@dataclass(slots=True, kw_only=True)
class CacheInvalid(Message):
    """A file the manager expected is not (or no longer) in the worker's cache."""

    name: str
    transfer_id: int
    reason: str
    source: str = ""
    cause: int = TransferFailure.UNKNOWN  # a TransferFailure value


@register(5)
@dataclass(slots=True, kw_only=True)
class Heartbeat(Message):
    """Liveness in either direction; ``disk_used`` is the cache size in bytes."""

    seq: int
    disk_used: int = 0
    running: list[int] = field(default_factory=list)  # worker -> manager: its task ids


@register(6)
@dataclass(slots=True, kw_only=True)
class Leaving(Message):
    """The worker was told to stop (SIGTERM): it takes no new task and will exit once the
    manager answers ``Shutdown`` (its only copies of temps moved off) or its drain timeout
    passes. Its running tasks are killed and placed elsewhere by the manager."""

    reason: str


@register(7)
@dataclass(slots=True, kw_only=True)
class LibraryReady(Message):
    """A library instance finished its set-up (functions loaded, context made) and takes
    calls; ``pid`` is its process."""

    instance_id: int
    pid: int


@register(8)
@dataclass(slots=True, kw_only=True)
class LibraryEnded(Message):
    """A library instance is gone: it crashed, exited, failed its set-up, or was stopped.
    Calls it was running were reported (``TaskDone`` "library exit") before this."""

    instance_id: int
    reason: str
    setup_failed: bool = False  # it never became ready (its set-up raised, or died)
    output: str = ""  # the end of its stdout+stderr (the library log)
    pid: int = 0


# ---------------------------------------------------------------- control: manager -> worker


@register(10)
@dataclass(slots=True, kw_only=True)
class OutputChunk(Message):
    """Bytes a running task appended to a watched output (``add_output(..., watch=True)``):
    ``data`` belongs at ``offset`` of output ``name`` (its cache name) of that attempt."""

    task_id: int
    attempt: int
    name: str
    offset: int
    data: bytes


@register(11)
@dataclass(slots=True, kw_only=True)
class Proof(Message):
    """The worker's answer to ``Challenge``: its proof that it knows the password ("" when
    it has none). Nothing else is accepted from it before this checks out."""

    proof: str


@register(12)
@dataclass(slots=True, kw_only=True)
class CacheReport(Message):
    """Right after ``Proof``: the files the worker kept from an earlier manager."""

    cached: list[tuple[str, int]]  # (name, size)


@register(13)
@dataclass(slots=True, kw_only=True)
class StatusQuery(Message):
    """Sent instead of ``Hello`` by a status client (``vinework status``): what it asks
    ("all": ``observe/status.py``'s snapshot) and its handshake nonce. With a password
    set, the manager answers ``Challenge`` and the client must answer ``Proof`` as a
    worker does (``auth.py``); then (or at once, without a password) ``StatusReply``."""

    version: int
    what: str
    nonce: str


@register(20)
@dataclass(slots=True, kw_only=True)
class Welcome(Message):
    """The manager accepted the worker."""

    version: int
    worker_id: str
    keepalive_interval: float
    transfer_port: int  # the manager's own transfer server (files it serves)
    manager_name: str = ""
    keepalive_timeout: float = 30.0  # both sides drop a peer silent for this long
    transfer_key: str = ""  # hex key of the session's transfer tokens (auth.py)
    tls_peer_key: str = ""  # with TLS: the peer transfers' key and certificate (PEM)
    tls_peer_cert: str = ""


@register(30)
@dataclass(slots=True, kw_only=True)
class Challenge(Message):
    """The manager's answer to ``Hello``: its nonce and its proof that it knows the
    password ("" when it has none); see ``auth.py``."""

    nonce: str
    proof: str


@register(31)
@dataclass(slots=True, kw_only=True)
class StatusReply(Message):
    """The answer to ``StatusQuery``: the status as JSON, or ``error`` saying why not
    (then ``json`` is empty). The manager closes the connection after it."""

    json: str
    error: str = ""


@register(21)
@dataclass(slots=True, kw_only=True)
class RunTask(Message):
    """Run one task attempt; every input is already in the worker's cache."""

    task_id: int
    attempt: int
    command: str
    inputs: list[tuple[str, str]]  # (cache name, remote name in the sandbox)
    outputs: list[tuple[str, str]]  # (cache name to publish as, remote name)
    env: list[tuple[str, str]]
    cores: int
    memory: int
    disk: int
    gpus: int
    time_max: float  # seconds, 0 = no limit
    python_payload: bytes | None = None  # cloudpickle of (fn, args, kwargs)
    python_output: str = ""  # cache name for the result when kept on the worker
    python_mode: str = ""  # "direct" (warm executor, default) or "fork" (a child per call)
    python_keep: bool = False  # keep the result in the cache (temp output), never inline
    time_end: float = 0.0  # wall clock (epoch seconds) after which it is killed; 0 = none
    env_unset: list[str] = field(default_factory=list)  # variables removed from its env
    stdout_max: int = 1 << 30  # bytes of stdout kept (TaskVine's max-task-stdout-storage)
    symlink_inputs: list[str] = field(default_factory=list)  # remote names mounted as links
    optional_outputs: list[str] = field(default_factory=list)  # never "missing" (cache names)
    failure_outputs: list[str] = field(default_factory=list)  # failure_only: kept on failure
    watch_outputs: list[str] = field(default_factory=list)  # streamed while it runs (names)
    # a FunctionCall: the library instance that runs it (0: not a call) and the function's
    # name; ``python_payload`` then holds only the cloudpickled (args, kwargs)
    library_instance: int = 0
    function: str = ""


@register(22)
@dataclass(slots=True, kw_only=True)
class Fetch(Message):
    """Bring ``name`` into the cache from the transfer server at host:port."""

    transfer_id: int
    name: str
    host: str
    port: int
    size: int  # expected size, -1 if unknown
    cache_level: int = 1  # a CacheLevel: WORKER/FOREVER entries outlive this manager
    url: str = ""  # fetch from this URL (file://, http://, https://) instead of host:port
    token: str = ""  # the transfer token to show the source (filled in by the manager)
    checksum: str = ""  # what the bytes must hash to ("": not known; checksums.py)
    # a mini-task file (url "mini://NAME"): made here by running a small task whose
    # inputs are in the cache already; kind "command" runs mini_command in a scratch
    # sandbox and takes mini_source from it, "untar" and "poncho" unpack their input
    mini_kind: str = ""
    mini_command: str = ""
    mini_inputs: list[tuple[str, str]] = field(default_factory=list)  # (cache name, remote)
    mini_env: list[tuple[str, str]] = field(default_factory=list)
    mini_source: str = ""


@register(23)
@dataclass(slots=True, kw_only=True)
class Unlink(Message):
    """Delete a file from the worker's cache."""

    name: str


@register(24)
@dataclass(slots=True, kw_only=True)
class Kill(Message):
    """Kill a running task attempt (cancelled, or its worker is being drained)."""

    task_id: int


@register(25)
@dataclass(slots=True, kw_only=True)
class Shutdown(Message):
    """The manager is closing: finish nothing, exit cleanly."""

    reason: str


@register(26)
@dataclass(slots=True, kw_only=True)
class Hoist(Message):
    """Modules the worker's warm interpreters should import before forking."""

    modules: list[str]


@register(27)
@dataclass(slots=True, kw_only=True)
class StartLibrary(Message):
    """Start an instance of a library: a process holding the functions of ``payload``
    (cloudpickled by the manager) that runs FunctionCalls naming ``instance_id``."""

    instance_id: int
    name: str
    payload: bytes  # cloudpickle of the library's functions, context and hoisted modules
    exec_mode: str  # "fork" (a child per call) or "direct" (calls run in the process)
    slots: int  # calls it runs at once
    cores: int
    memory: int
    disk: int
    gpus: int
    inputs: list[tuple[str, str]]  # (cache name, remote name) in the library's sandbox
    env: list[tuple[str, str]]
    env_unset: list[str] = field(default_factory=list)
    init_command: str = ""  # a shell command run before the library starts


@register(28)
@dataclass(slots=True, kw_only=True)
class StopLibrary(Message):
    """Stop a library instance (evicted, or the library was removed)."""

    instance_id: int
    reason: str = ""


# ---------------------------------------------------------------- transfer connections


@register(40)
@dataclass(slots=True, kw_only=True)
class GetFile(Message):
    """Ask a transfer server for the bytes of a cached file."""

    name: str
    token: str = ""


@register(41)
@dataclass(slots=True, kw_only=True)
class FileHeader(Message):
    """Answer to GetFile: ``size`` raw bytes follow, or ``error`` says why not."""

    name: str
    size: int
    error: str = ""
    mode: int = 0o644  # permission bits the copy gets (the source's, or File.set_mode's)
    kind: str = "file"  # "dir": the bytes that follow are a tar stream of a tree (trees.py)
