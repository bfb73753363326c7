"""Helpers for the pure ManagerState tests: build a state, feed events, check invariants."""

from __future__ import annotations

from collections.abc import Iterable

from vinework.core.events import (
    Command,
    Event,
    FileDeclared,
    FileSpec,
    Log,
    ReplicaReady,
    Send,
    TaskReported,
    TaskReturned,
    TaskSpec,
    TaskSubmitted,
    WorkerJoined,
)
from vinework.core.replicas import MANAGER
from vinework.core.state import ManagerState
from vinework.protocol import Fetch, RunTask, TaskDone

STAGING = "/staging"


# ------------------------------------------------------------------ helpers


def validate(s: ManagerState) -> None:
    """The invariants that must hold between any two events (the core's own check)."""
    s.validate_state()


def step(s: ManagerState, *events: Event) -> list[Command]:
    """Feed events, validate after each, return the non-Log commands."""
    out: list[Command] = []
    for ev in events:
        out.extend(c for c in s.handle(ev) if not isinstance(c, Log))
        validate(s)
    return out


def fresh() -> ManagerState:
    s = ManagerState(STAGING)
    validate(s)
    return s


def host(wid: str) -> str:
    return f"10.0.0.{wid[1:]}"


def port(wid: str) -> int:
    return 9000 + int(wid[1:])


def join(wid: str, cores: int = 2, memory: int = 2000, disk: int = 4000, gpus: int = 0,
         cached: Iterable[tuple[str, int]] = (), now: float = 0.0) -> WorkerJoined:
    return WorkerJoined(now=now, worker_id=wid, host=host(wid), transfer_port=port(wid),
                        cores=cores, memory=memory, disk=disk, gpus=gpus,
                        hostname=f"host-{wid}", cached=list(cached))


def spec(tid: int, inputs: Iterable[str] = (), outputs: Iterable[str] = (),
         **kw: object) -> TaskSpec:
    kw.setdefault("cores", 1)
    return TaskSpec(task_id=tid, command=f"cmd{tid}",
                    inputs=[(n, f"in-{n}") for n in inputs],
                    outputs=[(n, f"out-{n}") for n in outputs], **kw)  # type: ignore[arg-type]


def submit(ts: TaskSpec, now: float = 0.0) -> TaskSubmitted:
    return TaskSubmitted(now=now, spec=ts)


def temp(name: str) -> FileDeclared:
    return FileDeclared(spec=FileSpec(name=name, kind="temp"))


def buffer(name: str, size: int, peer_transfer: bool = True) -> FileDeclared:
    return FileDeclared(spec=FileSpec(name=name, kind="buffer", path=f"{STAGING}/{name}",
                                      size=size, peer_transfer=peer_transfer))


def done(wid: str, tid: int, attempt: int = 0, result: int = 0, exit_code: int = 0,
         outputs: Iterable[tuple[str, int]] = (), output: str = "", now: float = 0.0,
         **kw: object) -> TaskReported:
    d = TaskDone(task_id=tid, attempt=attempt, result=result, exit_code=exit_code,
                 output=output, start=1.0, end=2.0, outputs=list(outputs), **kw)  # type: ignore[arg-type]
    return TaskReported(now=now, worker_id=wid, done=d)


def ready(wid: str, name: str, size: int, transfer_id: int, now: float = 0.0) -> ReplicaReady:
    return ReplicaReady(now=now, worker_id=wid, name=name, size=size, seconds=0.5,
                        transfer_id=transfer_id)


def run(s: ManagerState, wid: str, tid: int, attempt: int = 0, **kw: object) -> Send:
    """The RunTask the state should send for task ``tid`` (resources from its allocation)."""
    t = s.tasks[tid]
    assert t.run.alloc is not None, f"task {tid} has no allocation"
    a = t.run.alloc
    ts = t.spec
    fields: dict[str, object] = dict(
        task_id=tid, attempt=attempt, command=ts.command, inputs=list(ts.inputs),
        outputs=list(ts.outputs), env=list(ts.env), cores=a.cores, memory=a.memory,
        disk=a.disk, gpus=a.gpus, time_max=ts.time_max, python_payload=ts.python_payload,
        python_output=ts.python_output,
        python_mode=(ts.python_mode or "direct") if ts.python_payload is not None else "",
        python_keep=ts.temp_output)
    fields.update(kw)
    return Send(wid, RunTask(**fields))  # type: ignore[arg-type]


def fetch(dest: str, tid: int, name: str, source: str, size: int) -> Send:
    h, p = ("", 0) if source == MANAGER else (host(source), port(source))
    return Send(dest, Fetch(transfer_id=tid, name=name, host=h, port=p, size=size))


def returned(tid: int, wid: str = "", result: int = 0, exit_code: int = 0, output: str = "",
             attempts: int = 1, start: float = 1.0, end: float = 2.0,
             **kw: object) -> TaskReturned:
    return TaskReturned(task_id=tid, result=result, exit_code=exit_code, output=output,
                        worker_id=wid, hostname=f"host-{wid}" if wid else "", start=start,
                        end=end, attempts=attempts, **kw)  # type: ignore[arg-type]


def sends(cmds: list[Command], kind: type) -> list[Send]:
    return [c for c in cmds if isinstance(c, Send) and isinstance(c.message, kind)]


def produce_temp_on(s: ManagerState, wid: str, producer: int, name: str, size: int) -> None:
    """Run ``producer`` on ``wid`` (the only worker with room) to make temp ``name``."""
    assert step(s, temp(name), submit(spec(producer, outputs=[name]))) == [run(s, wid, producer)]
    assert step(s, done(wid, producer, outputs=[(name, size)])) == [returned(producer, wid)]
    assert s.replicas.ready_workers(name) == [wid]
