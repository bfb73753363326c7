"""Random event sequences fed to the worker's core, with ``validate_state()`` after every step.

The machine plays the shell: it remembers the fetches, processes and output
collections the core started and ends them in random order and ways, and
plays a manager that fetches, unlinks, runs, kills, disconnects and signals at
random (fetches of every cache level, tasks with end times, big stdouts,
idle and wall-time limits). On top of the core's own invariants it checks
four properties from the outside: a fetch answer is never given twice for one
``transfer_id`` (race a), no file is committed after an Unlink that no Fetch
followed (race b), no file is removed while a task that uses it is still
running (race c), and once a manager's connection is lost none of its TASK or
WORKFLOW files is left for the next one.
"""

from __future__ import annotations

import signal

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.test_worker_helpers import challenge, config, run_task, welcome
from vinework.protocol import CacheInvalid, CacheUpdate, RunTask, TransferFailure
from vinework.worker import events as ev
from vinework.worker.outcome import Resources
from vinework.worker.state import Link, WorkerState

NAMES = ["temp-a", "temp-b", "temp-c"]
SOURCES = [("peer1", 1), ("peer2", 2)]
FAILURES = [int(c) for c in TransferFailure if c is not TransferFailure.NONE]
STATUSES = [0, 1 << 8, 3 << 8, signal.SIGKILL, signal.SIGTERM]


class WorkerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ws = WorkerState(config(resources=Resources(3, 1000, 1000, 2), timeout=50.0,
                                     attempt_timeout=3.0, drain_timeout=5.0,
                                     idle_timeout=40.0, wall_time=400.0),
                              cached=[("temp-c", 4)])
        self.now = 0.0
        self.next_transfer = 0
        self.next_task = 0
        self.connect_pending = False
        self.fetches: dict[int, str] = {}  # fetch id -> name, started and not ended
        self.procs: dict[int, RunTask] = {}  # run id -> task, process not exited
        self.collecting: dict[int, RunTask] = {}
        self.answered: set[int] = set()
        self.unlinked: set[str] = set()  # unlinked, not fetched since
        self.asked: dict[int, ev.CollectOutputs] = {}  # run id -> what to collect
        # start connected (the link rules disconnect, reconnect and stop it at random)
        self.feed(ev.Started(now=0.0))
        self.feed(ev.ConnectionOpened(now=0.0))
        self.connect_pending = False
        self.feed(challenge(0.0))
        self.feed(welcome(0.0, interval=1.0, timeout=6.0))

    # ---------------------------------------------------------------- the shell
    def feed(self, event: ev.Event) -> list[ev.Instruction]:
        out = self.ws.handle(event)
        for ins in out:
            if isinstance(ins, ev.Connect):
                self.connect_pending = True
            elif isinstance(ins, ev.StartFetch):
                self.fetches[ins.fetch_id] = ins.name
            elif isinstance(ins, ev.StartTask):
                self.procs[ins.run_id] = ins.task
            elif isinstance(ins, ev.CollectOutputs):
                self.collecting[ins.run_id] = self.procs.pop(ins.run_id)
                self.asked[ins.run_id] = ins
            elif isinstance(ins, ev.CommitFetch):
                assert ins.name not in self.unlinked, f"{ins.name} committed after its Unlink"
            elif isinstance(ins, ev.RemoveFile):
                for task in [*self.procs.values(), *self.collecting.values()]:
                    live = self.ws.live.get(task.task_id)
                    if live is not None and self.ws.runs[live].task is task:
                        assert ins.name not in [n for n, _ in task.inputs], \
                            f"{ins.name} removed under running task {task.task_id}"
            elif isinstance(ins, ev.Send) and isinstance(ins.message,
                                                         CacheUpdate | CacheInvalid):
                tid = ins.message.transfer_id
                if tid:
                    assert tid not in self.answered, f"transfer {tid} answered twice"
                    self.answered.add(tid)
        self.ws.validate_state()
        return out

    @property
    def connected(self) -> bool:
        return self.ws.link is Link.CONNECTED

    # ---------------------------------------------------------------- time and link
    @rule(dt=st.sampled_from([0.05, 0.5, 2.0, 7.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.feed(ev.Tick(now=self.now))

    @precondition(lambda self: self.connect_pending and self.ws.link is Link.CONNECTING)
    @rule(ok=st.booleans())
    def connect_result(self, ok: bool) -> None:
        self.connect_pending = False
        if ok:
            self.feed(ev.ConnectionOpened(now=self.now))
        else:
            self.feed(ev.ConnectFailed(now=self.now, reason="refused"))

    @precondition(lambda self: self.ws.link is Link.HANDSHAKE)
    @rule()
    def welcome(self) -> None:
        self.feed(challenge(self.now))
        self.feed(welcome(self.now, interval=1.0, timeout=6.0))

    @precondition(lambda self: self.ws.link in (Link.HANDSHAKE, Link.CONNECTED))
    @rule()
    def lose_connection(self) -> None:
        self.feed(ev.ConnectionLost(now=self.now, reason="reset"))
        if self.ws.link is not Link.DONE:
            left = [e.name for e in self.ws.entries.values() if e.level <= 1 and not e.doomed]
            assert not left, f"files of the lost manager kept: {left}"

    @precondition(lambda self: self.ws.link in (Link.HANDSHAKE, Link.CONNECTED))
    @rule()
    def garbage(self) -> None:
        self.feed(ev.ProtocolViolation(now=self.now, error="garbage"))

    @rule(drain=st.booleans())
    def signal(self, drain: bool) -> None:
        self.feed(ev.StopRequested(now=self.now, signal_name="SIG", drain=drain))

    # ---------------------------------------------------------------- the manager
    @precondition(lambda self: self.connected)
    @rule(name=st.sampled_from(NAMES), src=st.sampled_from(SOURCES), level=st.integers(0, 3))
    def manager_fetch(self, name: str, src: tuple[str, int], level: int) -> None:
        self.next_transfer += 1
        self.unlinked.discard(name)
        self.feed(ev.FetchRequested(now=self.now, transfer_id=self.next_transfer, name=name,
                                    host=src[0], port=src[1], size=-1, cache_level=level))

    @precondition(lambda self: self.connected)
    @rule(name=st.sampled_from(NAMES))
    def manager_unlink(self, name: str) -> None:
        self.unlinked.add(name)
        self.feed(ev.UnlinkRequested(now=self.now, name=name))

    @precondition(lambda self: self.connected)
    @rule(inputs=st.lists(st.sampled_from(NAMES), max_size=2),
          outputs=st.lists(st.sampled_from(NAMES), max_size=2, unique=True),
          cores=st.integers(0, 3), gpus=st.integers(0, 2), python=st.booleans(),
          reuse=st.booleans(), end=st.sampled_from([0.0, -1.0, 5.0]))
    def manager_run(self, inputs: list[str], outputs: list[str], cores: int, gpus: int,
                    python: bool, reuse: bool, end: float) -> None:
        if not (reuse and self.next_task):
            self.next_task += 1
        task = run_task(self.next_task, inputs=[(n, f"in{i}") for i, n in enumerate(inputs)],
                        outputs=[(n, f"out{i}") for i, n in enumerate(outputs)], cores=cores,
                        memory=100, disk=10, gpus=gpus, python=python,
                        time_end=self.now + end if end else 0.0)
        self.feed(ev.RunRequested(now=self.now, task=task, wall=self.now))

    @precondition(lambda self: self.connected and self.next_task > 0)
    @rule(data=st.data())
    def manager_kill(self, data: st.DataObject) -> None:
        tid = data.draw(st.integers(1, self.next_task))
        self.feed(ev.KillRequested(now=self.now, task_id=tid))

    @precondition(lambda self: self.connected)
    @rule()
    def manager_heartbeat(self) -> None:
        self.feed(ev.HeartbeatReceived(now=self.now))

    @precondition(lambda self: self.connected)
    @rule()
    def manager_shutdown(self) -> None:
        self.feed(ev.ShutdownReceived(now=self.now, reason="done"))

    # ---------------------------------------------------------------- the shell's I/O ending
    @precondition(lambda self: bool(self.fetches))
    @rule(data=st.data(), ok=st.booleans(), cause=st.sampled_from(FAILURES))
    def fetch_ends(self, data: st.DataObject, ok: bool, cause: int) -> None:
        fid = data.draw(st.sampled_from(sorted(self.fetches)))
        del self.fetches[fid]
        self.feed(ev.FetchFinished(fetch_id=fid, ok=ok, size=8, seconds=0.1,
                                   cause=0 if ok else cause, reason="" if ok else "failed"))

    @precondition(lambda self: bool(self.procs))
    @rule(data=st.data(), status=st.sampled_from(STATUSES), kind=st.sampled_from(
        ["inline", "file", "error", "crash"]), big=st.booleans(),
        limit=st.sampled_from(["", "", "time_max", "time_end"]))
    def process_exits(self, data: st.DataObject, status: int, kind: str, big: bool,
                      limit: str) -> None:
        rid = data.draw(st.sampled_from(sorted(self.procs)))
        task = self.procs[rid]
        python = task.python_payload is not None
        self.feed(ev.TaskExited(run_id=rid, wall=self.now, status=status,
                                timed_out=limit == "time_max",
                                end_time_passed=limit == "time_end",
                                stdout_size=10**6 if big else 10, stdout_big=big,
                                python_kind=kind if python else "",
                                python_data=b"r" if python and kind == "inline" else None))
        self.procs.pop(rid, None)  # still there unless it went on to CollectOutputs

    @precondition(lambda self: bool(self.collecting))
    @rule(data=st.data(), lose=st.booleans(), stdout_ok=st.booleans())
    def outputs_collected(self, data: st.DataObject, lose: bool, stdout_ok: bool) -> None:
        rid = data.draw(st.sampled_from(sorted(self.collecting)))
        self.collecting.pop(rid)
        ask = self.asked.pop(rid)
        wanted = bool(ask.stdout)
        names = [n for n, _ in ask.outputs]
        stored = [(n, 3) for n in names[: len(names) - 1 if lose else None]]
        missing = [r for _, r in ask.outputs[len(stored):]]
        if ask.python_result and not lose:
            stored.append((ask.python_result, 5))
        self.feed(ev.OutputsCollected(run_id=rid, wall=self.now, stored=stored,
                                      missing=missing,
                                      stdout_stored=10**6 if wanted and stdout_ok else -1,
                                      stdout_error="" if stdout_ok or not wanted else "EIO"))

    @rule(name=st.sampled_from(NAMES))
    def file_lost(self, name: str) -> None:
        self.feed(ev.FileLost(name=name, reason="EIO"))

    @invariant()
    def resources_never_over_committed(self) -> None:
        assert self.ws.ledger.committed.fits_in(self.ws.ledger.total)


WorkerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestWorkerStateMachine = WorkerMachine.TestCase
