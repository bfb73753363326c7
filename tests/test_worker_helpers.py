"""Helpers (no tests) for the pure worker-core tests: a config, a connected state, pickers."""

from __future__ import annotations

from typing import Any

from vinework.protocol import PROTOCOL_VERSION, Message, RunTask
from vinework.worker import events as ev
from vinework.worker.outcome import Resources
from vinework.worker.state import WorkerConfig, WorkerState

MANAGER = ("mgr.example", 9123)


def config(**kw: Any) -> WorkerConfig:
    base: dict[str, Any] = dict(manager_host=MANAGER[0], manager_port=MANAGER[1],
                                hostname="node1", transfer_port=7000,
                                resources=Resources(4, 4000, 10000, 1), timeout=60.0,
                                attempt_timeout=5.0, drain_timeout=20.0)
    base.update(kw)
    return WorkerConfig(**base)


def connected(cached: list[tuple[str, int]] | None = None, now: float = 0.0,
              interval: float = 1.0, keepalive_timeout: float = 10.0, **kw: Any
              ) -> WorkerState:
    """A state that went through Started, ConnectionOpened, Challenge and Welcome."""
    ws = WorkerState(config(**kw), cached=cached)
    ws.handle(ev.Started(now=now))
    ws.handle(ev.ConnectionOpened(now=now, nonce=NONCE))
    ws.handle(challenge(now))
    ws.handle(welcome(now, interval, keepalive_timeout))
    ws.validate_state()
    return ws


NONCE = "ab" * 16  # the worker's handshake nonce in these tests


def challenge(now: float = 0.0, proof: str = "") -> ev.ChallengeReceived:
    return ev.ChallengeReceived(now=now, nonce="cd" * 16, proof=proof)


def welcome(now: float = 0.0, interval: float = 1.0, timeout: float = 10.0,
            version: int = PROTOCOL_VERSION) -> ev.WelcomeReceived:
    return ev.WelcomeReceived(now=now, version=version, worker_id="w7",
                              keepalive_interval=interval, keepalive_timeout=timeout,
                              transfer_port=9124)


def run_task(task_id: int = 1, inputs: list[tuple[str, str]] | None = None,
             outputs: list[tuple[str, str]] | None = None, cores: int = 1, memory: int = 100,
             disk: int = 100, gpus: int = 0, python: bool = False, keep: bool = False,
             command: str = "true", time_max: float = 0.0, time_end: float = 0.0,
             attempt: int = 1) -> RunTask:
    return RunTask(task_id=task_id, attempt=attempt, command=command, inputs=inputs or [],
                   outputs=outputs or [], env=[], cores=cores, memory=memory, disk=disk,
                   gpus=gpus, time_max=time_max, time_end=time_end,
                   python_payload=b"payload" if python else None,
                   python_output=f"pyout-{task_id}-{attempt}" if python else "",
                   python_keep=keep)


def sent(out: list[ev.Instruction], kind: type[Message] | None = None) -> list[Any]:
    """The messages of the Send instructions in ``out`` (of type ``kind``)."""
    return [i.message for i in out if isinstance(i, ev.Send)
            and (kind is None or isinstance(i.message, kind))]


def of(out: list[ev.Instruction], kind: type[ev.Instruction]) -> list[Any]:
    return [i for i in out if isinstance(i, kind)]


def one(out: list[ev.Instruction], kind: type[ev.Instruction]) -> Any:
    found = of(out, kind)
    assert len(found) == 1, f"expected one {kind.__name__} in {out}"
    return found[0]


def fetch(transfer_id: int, name: str = "temp-a", host: str = "peer1", port: int = 8000,
          size: int = 10, now: float = 0.0, level: int = 1) -> ev.FetchRequested:
    return ev.FetchRequested(now=now, transfer_id=transfer_id, name=name, host=host,
                             port=port, size=size, cache_level=level)


def start_run(ws: WorkerState, task: RunTask, now: float = 0.0) -> int:
    """Feed a RunTask that must start; return its run id."""
    out = ws.handle(ev.RunRequested(now=now, task=task, wall=100.0))
    ws.validate_state()
    return int(one(out, ev.StartTask).run_id)


def finish_ok(ws: WorkerState, run_id: int, stored: list[tuple[str, int]] | None = None
              ) -> list[ev.Instruction]:
    """The process of ``run_id`` exits 0 and its outputs are stored."""
    out = ws.handle(ev.TaskExited(run_id=run_id, wall=101.0, status=0))
    ws.validate_state()
    if not of(out, ev.CollectOutputs):
        return out
    out = ws.handle(ev.OutputsCollected(run_id=run_id, wall=101.5, stored=stored or []))
    ws.validate_state()
    return out
