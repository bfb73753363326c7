"""The manager's message handling fuzzed through a real socket: a fake worker passes the
handshake and sends random sequences of well-formed messages (task reports for tasks it
was or was not given, cache claims with random names, sizes and transfer ids, failures,
heartbeats, departures, library and output messages). Whatever it sends, the manager
never breaks (no ManagerError), keeps its invariants (VINEWORK_VALIDATE is on in the
tests), and still runs a real worker's tasks afterwards."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vinework as vine
from vinework.protocol import (
    PROTOCOL_VERSION,
    CacheInvalid,
    CacheUpdate,
    Heartbeat,
    Hello,
    Leaving,
    Message,
    TaskDone,
    encode,
)
from vinework.protocol.messages import (
    CacheReport,
    LibraryEnded,
    LibraryReady,
    OutputChunk,
    Proof,
)

try:
    from conftest import poll_until, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, wait_workers

pytestmark = pytest.mark.timeout(240)

_names = st.sampled_from(["temp-a-1", "file-x", "url-y", "mini-z", "pyout-1-0", "stdout-1",
                          "buffer-q", "x" * 200])
_ids = st.integers(min_value=-2, max_value=12)
_sizes = st.integers(min_value=-1, max_value=1 << 40)
_text = st.text(max_size=40)


def _done(draw: Any) -> TaskDone:
    return TaskDone(task_id=draw(_ids), attempt=draw(st.integers(0, 3)),
                    result=draw(st.sampled_from([0, 1, 2, 4, 8, 16, 40, 56, 999])),
                    exit_code=draw(st.integers(-9, 255)), output=draw(_text),
                    start=draw(st.floats(0, 2e9)), end=draw(st.floats(0, 2e9)),
                    outputs=draw(st.lists(st.tuples(_names, _sizes), max_size=3)),
                    python_result=draw(st.one_of(st.none(), st.binary(max_size=16))),
                    python_error=draw(_text), message=draw(_text),
                    measured=draw(st.lists(st.floats(0, 1e6), max_size=3)),
                    stdout_file=draw(st.sampled_from(["", "stdout-1-0"])),
                    stdout_size=draw(st.integers(0, 1 << 20)))


@st.composite
def _message(draw: Any) -> Message:
    kind = draw(st.integers(0, 8))
    if kind == 0:
        return _done(draw)
    if kind == 1:
        return CacheUpdate(name=draw(_names), size=draw(_sizes), seconds=draw(st.floats(0, 1e3)),
                           transfer_id=draw(_ids), source=draw(st.sampled_from(["", "w1", "x"])))
    if kind == 2:
        return CacheInvalid(name=draw(_names), transfer_id=draw(_ids), reason=draw(_text),
                            cause=draw(st.integers(0, 9)))
    if kind == 3:
        return Heartbeat(seq=draw(st.integers(0, 5)), disk_used=draw(_sizes),
                         running=draw(st.lists(_ids, max_size=4)))
    if kind == 4:
        return LibraryReady(instance_id=draw(_ids), pid=draw(st.integers(0, 1 << 20)))
    if kind == 5:
        return LibraryEnded(instance_id=draw(_ids), reason=draw(_text),
                            setup_failed=draw(st.booleans()), output=draw(_text), pid=0)
    if kind == 6:
        return OutputChunk(task_id=draw(_ids), attempt=draw(st.integers(0, 2)),
                           name=draw(_names), offset=draw(st.integers(-1, 1 << 20)),
                           data=draw(st.binary(max_size=32)))
    if kind == 7:
        return Leaving(reason=draw(_text))
    return TaskDone(task_id=1, attempt=0, result=0, exit_code=0, output="", start=1.0,
                    end=2.0, outputs=[])


def _hello(cores: int) -> bytes:
    return (encode(Hello(version=PROTOCOL_VERSION, hostname="fuzz", cores=cores, memory=1000,
                         disk=1000, gpus=0, transfer_port=1, cached=[], nonce="ab" * 16))
            + encode(Proof(proof=""))
            + encode(CacheReport(cached=[("file-x", 3), ("temp-a-1", 5)])))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    m = vine.Manager(port=0, run_info_path=str(tmp_path_factory.mktemp("fuzz") / "run"),
                     shutdown=True)
    try:
        yield m
    finally:
        m.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(msgs=st.lists(_message(), min_size=1, max_size=12), cores=st.integers(0, 8))
def test_random_worker_messages_never_break_the_manager(fuzzed: vine.Manager,
                                                        msgs: list[Message],
                                                        cores: int) -> None:
    m = fuzzed
    for i in range(3):  # give the fake worker something it may lie about
        t = vine.Task(f"echo {i}")
        t.set_time_max(1000)
        m.submit(t)
    joined = m.stats.workers_joined
    with socket.create_connection(("127.0.0.1", m.port), timeout=10) as s:
        s.sendall(_hello(cores))
        poll_until(lambda: m.stats.workers_joined == joined + 1, 10, "the fake worker")
        try:
            s.sendall(b"".join(encode(x) for x in msgs))
        except OSError:
            pass  # dropped already: that is an answer too
    poll_until(lambda: m.stats.workers_connected == 0, 10, "the fake worker to be gone")
    assert m._error is None, m._error  # the manager is not broken


def test_a_real_worker_is_served_after_the_fuzzing(fuzzed: vine.Manager, workers: Any) -> None:
    m = fuzzed
    assert m._error is None
    workers(m)
    wait_workers(m, 1)
    t = vine.Task("echo still serving")
    m.submit(t)
    poll_until(lambda: m.wait(0.5) is t or t.completed(), 120, "the real worker's task")
    assert t.successful() and t.output == "still serving\n"
    assert m._error is None
