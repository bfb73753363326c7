"""A driver for the pure manager core: events with stimulus ids in, every command kept.

``Driver`` wraps a ``ManagerState``: each event it feeds gets the driver's clock and a
fresh stimulus id, and every command the core answers with is checked to carry that
id and filed by kind (tasks to run, fetches, retrievals, tasks returned), so a test
can answer exactly what the core asked for. The chain builders feed events straight
into ``handle`` (no per-event checks) for the large tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vinework.constants import TaskResult
from vinework.core.events import (
    Command,
    DropWorker,
    Event,
    FetchDone,
    FileDeclared,
    FileSpec,
    Log,
    Notice,
    Retrieve,
    Send,
    TaskReported,
    TaskReturned,
    TaskSpec,
    TaskSubmitted,
    WorkerJoined,
)
from vinework.core.records import TaskState
from vinework.core.state import ManagerState
from vinework.protocol import Fetch, RunTask, TaskDone

STAGING = "/staging"
STIMULATED = (Send, Retrieve, TaskReturned, FetchDone, DropWorker, Log, Notice)


def joined(wid: str, cores: int = 2, memory: int = 2000, disk: int = 4000, gpus: int = 0,
           cached: Iterable[tuple[str, int]] = (), now: float = 0.0,
           stimulus_id: str = "") -> WorkerJoined:
    return WorkerJoined(now=now, stimulus_id=stimulus_id, worker_id=wid, host=f"h-{wid}",
                        transfer_port=9000, cores=cores, memory=memory, disk=disk, gpus=gpus,
                        hostname=f"host-{wid}", cached=list(cached))


def task_spec(tid: int, inputs: Iterable[str] = (), outputs: Iterable[str] = (),
              **kw: Any) -> TaskSpec:
    kw.setdefault("cores", 1)
    return TaskSpec(task_id=tid, command=f"cmd{tid}",
                    inputs=[(n, f"in-{n}") for n in inputs],
                    outputs=[(n, f"out-{n}") for n in outputs], **kw)


def task_done(tid: int, attempt: int, ok: bool = True, outputs: Iterable[tuple[str, int]] = (),
              result: int = int(TaskResult.SUCCESS), exit_code: int | None = None) -> TaskDone:
    return TaskDone(task_id=tid, attempt=attempt, result=result,
                    exit_code=(0 if ok else 1) if exit_code is None else exit_code,
                    output="", start=0.0, end=1.0, outputs=list(outputs))


def stimulus_of(c: Command) -> str:
    return c.stimulus_id  # type: ignore[attr-defined,no-any-return]


def command_key(c: Command) -> str:
    """A repr of a command that includes its stimulus id (dataclass equality leaves it out)."""
    return f"{c!r}@{stimulus_of(c)}"


class Driver:
    """A ManagerState fed events with stimulus ids; every command kept and filed."""

    def __init__(self, validate: bool = True, durability: str = "auto") -> None:
        self.s = ManagerState(STAGING, validate=validate)
        self.s.tune.durability = durability
        self.now = 0.0
        self.n = 0
        self.cmds: list[Command] = []
        self.returned: list[int] = []
        self.returns: dict[int, TaskReturned] = {}
        self.fetches: dict[int, tuple[str, Fetch]] = {}  # transfer id -> (dest, Fetch)
        self.retrievals: dict[int, Retrieve] = {}
        self.runs: dict[tuple[int, int], str] = {}  # (task id, attempt) -> worker
        self.kinds: set[str] = set()
        self.stimuli: list[str] = []  # the stimulus id of every event fed

    # ---------------------------------------------------------- feeding
    def ev(self, event_type: type[Event], **kw: Any) -> list[Command]:
        """Feed one event (at the driver's clock, with a fresh stimulus id)."""
        self.n += 1
        kw.setdefault("now", self.now)
        kw.setdefault("stimulus_id", f"{event_type.__name__}#{self.n}")
        return self.feed(event_type(**kw))

    def feed(self, event: Event) -> list[Command]:
        out = self.s.handle(event)
        want = event.stimulus_id or self.s.stimulus
        self.stimuli.append(want)
        for c in out:
            assert isinstance(c, STIMULATED), c
            assert stimulus_of(c) == want, (want, c)
            self._file(c)
        self.cmds.extend(out)
        return out

    def _file(self, c: Command) -> None:
        if isinstance(c, Send):
            self.kinds.add(type(c.message).__name__)
            if isinstance(c.message, RunTask):
                self.runs[(c.message.task_id, c.message.attempt)] = c.worker_id
            elif isinstance(c.message, Fetch):
                self.fetches[c.message.transfer_id] = (c.worker_id, c.message)
        else:
            self.kinds.add(type(c).__name__)
        if isinstance(c, Retrieve):
            self.retrievals[c.retrieval_id] = c
        elif isinstance(c, TaskReturned):
            assert c.task_id not in self.returns, f"task {c.task_id} returned twice"
            self.returned.append(c.task_id)
            self.returns[c.task_id] = c

    # ---------------------------------------------------------- shorthands
    def join(self, wid: str, cores: int = 1, disk: int = 4000, **kw: Any) -> list[Command]:
        self.n += 1
        return self.feed(joined(wid, cores=cores, disk=disk, now=self.now,
                                stimulus_id=f"WorkerJoined#{self.n}", **kw))

    def temp(self, name: str, **kw: Any) -> list[Command]:
        return self.ev(FileDeclared, spec=FileSpec(name=name, kind="temp", **kw))

    def submit(self, tid: int, inputs: Iterable[str] = (), outputs: Iterable[str] = (),
               **kw: Any) -> list[Command]:
        return self.ev(TaskSubmitted, spec=task_spec(tid, inputs, outputs, **kw))

    def report(self, tid: int, ok: bool = True, size: int = 100, missing: bool = False,
               **kw: Any) -> list[Command]:
        """The worker running ``tid`` says it ended (made every output unless ``missing``)."""
        t = self.s.tasks[tid]
        assert t.state is TaskState.RUNNING, (tid, t.state)
        outs = [] if (missing or not ok) else [(n, size) for n, _ in t.spec.outputs]
        done = task_done(tid, t.attempt, ok, outs, **kw)
        return self.ev(TaskReported, worker_id=t.worker, done=done)

    def running(self) -> list[int]:
        return [tid for tid, t in self.s.tasks.items() if t.state is TaskState.RUNNING]


def logs(cmds: Iterable[Command], kind: str) -> list[tuple[object, ...]]:
    return [c.fields for c in cmds if isinstance(c, Log) and c.kind == kind]


def messages(cmds: Iterable[Command], kind: type) -> list[tuple[str, Any]]:
    return [(c.worker_id, c.message) for c in cmds
            if isinstance(c, Send) and isinstance(c.message, kind)]
