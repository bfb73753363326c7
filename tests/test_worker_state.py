"""Pure tests of the worker's core (``vinework.worker.state``): no socket, no process, no clock.

Each test builds a ``WorkerState``, feeds events and asserts the exact
instructions; ``validate_state()`` runs after the interesting steps.
"""

from __future__ import annotations

import signal

import pytest

from tests.test_worker_helpers import (
    MANAGER,
    NONCE,
    challenge,
    config,
    connected,
    fetch,
    finish_ok,
    of,
    one,
    run_task,
    sent,
    start_run,
    welcome,
)
from vinework.constants import TaskResult
from vinework.protocol import (
    CacheInvalid,
    CacheUpdate,
    Heartbeat,
    Hello,
    Leaving,
    TaskDone,
    TransferFailure,
)
from vinework.protocol.auth import manager_proof, worker_proof
from vinework.protocol.messages import CacheReport, Proof
from vinework.worker import events as ev
from vinework.worker.outcome import (
    INLINE_RESULT_MAX,
    Ledger,
    OverCommit,
    Resources,
    inline_limit,
)
from vinework.worker.state import EntryState, InvalidTransition, Link, WorkerState

SIGTERM_STATUS = signal.SIGTERM  # wait status of a process killed by SIGTERM
EXIT = lambda code: code << 8  # noqa: E731  (wait status of exit(code))


# ====================================================================== race (a): joined fetches
def test_second_fetch_of_a_file_in_flight_joins_it() -> None:
    ws = connected()
    first = ws.handle(fetch(1))
    second = ws.handle(fetch(2))
    ws.validate_state()
    start = one(first, ev.StartFetch)
    assert (start.name, start.host, start.port) == ("temp-a", "peer1", 8000)
    assert second == []  # no second transfer
    out = ws.handle(ev.FetchFinished(fetch_id=start.fetch_id, ok=True, size=10, seconds=0.5))
    ws.validate_state()
    assert len(of(out, ev.CommitFetch)) == 1
    answers = sent(out, CacheUpdate)
    assert sorted(a.transfer_id for a in answers) == [1, 2]
    assert all(a.size == 10 for a in answers)
    assert ws.entries["temp-a"].state is EntryState.READY
    assert any("joins" in text for text, _ in ws.story("temp-a"))


def test_fetch_of_a_ready_file_is_answered_at_once() -> None:
    ws = connected(cached=[("temp-a", 5)])
    out = ws.handle(fetch(3))
    assert of(out, ev.StartFetch) == []
    (upd,) = sent(out, CacheUpdate)
    assert (upd.transfer_id, upd.size, upd.seconds) == (3, 5, 0.0)


def test_joined_fetch_failing_at_one_source_is_retried_from_the_other() -> None:
    ws = connected()
    start = one(ws.handle(fetch(1, host="peer1")), ev.StartFetch)
    ws.handle(fetch(2, host="peer2"))
    out = ws.handle(ev.FetchFinished(fetch_id=start.fetch_id, ok=False, reason="no such file",
                                     cause=int(TransferFailure.SOURCE_MISSING)))
    ws.validate_state()
    (inv,) = sent(out, CacheInvalid)
    assert (inv.transfer_id, inv.cause, inv.source) == (1, TransferFailure.SOURCE_MISSING,
                                                       "peer1:8000")
    again = one(out, ev.StartFetch)
    assert again.host == "peer2" and again.fetch_id != start.fetch_id
    out = ws.handle(ev.FetchFinished(fetch_id=again.fetch_id, ok=True, size=10))
    assert [u.transfer_id for u in sent(out, CacheUpdate)] == [2]


def test_local_failure_answers_every_waiter() -> None:
    ws = connected()
    start = one(ws.handle(fetch(1, host="peer1")), ev.StartFetch)
    ws.handle(fetch(2, host="peer2"))
    out = ws.handle(ev.FetchFinished(fetch_id=start.fetch_id, ok=False, reason="disk full",
                                     cause=int(TransferFailure.DISK_FULL)))
    ws.validate_state()
    assert sorted(i.transfer_id for i in sent(out, CacheInvalid)) == [1, 2]
    assert all(i.cause == TransferFailure.DISK_FULL for i in sent(out, CacheInvalid))
    assert of(out, ev.StartFetch) == [] and "temp-a" not in ws.entries


def test_bad_name_is_refused_with_a_typed_cause() -> None:
    ws = connected()
    out = ws.handle(fetch(1, name="../etc/passwd"))
    (inv,) = sent(out, CacheInvalid)
    assert inv.cause == TransferFailure.BAD_NAME and of(out, ev.StartFetch) == []


def test_fetch_from_the_manager_uses_its_transfer_port() -> None:
    ws = connected()
    start = one(ws.handle(fetch(1, host="", port=0)), ev.StartFetch)
    assert (start.host, start.port) == (MANAGER[0], 9124)


# ====================================================================== race (b): unlink while fetching
def test_unlink_during_a_fetch_discards_the_bytes() -> None:
    ws = connected()
    start = one(ws.handle(fetch(1)), ev.StartFetch)
    assert ws.handle(ev.UnlinkRequested(now=0.1, name="temp-a")) == []
    ws.validate_state()
    assert ws.entries["temp-a"].doomed
    out = ws.handle(ev.FetchFinished(fetch_id=start.fetch_id, ok=True, size=10))
    ws.validate_state()
    assert of(out, ev.CommitFetch) == []
    assert one(out, ev.DiscardFetch).fetch_id == start.fetch_id
    (inv,) = sent(out, CacheInvalid)
    assert (inv.transfer_id, inv.cause) == (1, TransferFailure.NONE)
    assert sent(out, CacheUpdate) == []
    assert "temp-a" not in ws.entries
    assert "fetching -> removed" in " ".join(t for t, _ in ws.story("temp-a"))


def test_fetch_after_unlink_during_a_fetch_revives_the_file() -> None:
    ws = connected()
    start = one(ws.handle(fetch(1)), ev.StartFetch)
    ws.handle(ev.UnlinkRequested(now=0.1, name="temp-a"))
    assert of(ws.handle(fetch(2)), ev.StartFetch) == []
    ws.validate_state()
    out = ws.handle(ev.FetchFinished(fetch_id=start.fetch_id, ok=True, size=10))
    ws.validate_state()
    assert len(of(out, ev.CommitFetch)) == 1
    assert [(m.transfer_id, m.cause) for m in sent(out, CacheInvalid)] == \
        [(1, TransferFailure.NONE)]
    assert [m.transfer_id for m in sent(out, CacheUpdate)] == [2]


def test_unlink_of_an_unknown_file_does_nothing() -> None:
    ws = connected()
    assert ws.handle(ev.UnlinkRequested(now=0.0, name="nothing")) == []


# ====================================================================== race (c): unlink under a task
def test_unlink_of_a_pinned_file_waits_for_the_last_task() -> None:
    ws = connected(cached=[("temp-a", 5)])
    r1 = start_run(ws, run_task(1, inputs=[("temp-a", "in")]))
    r2 = start_run(ws, run_task(2, inputs=[("temp-a", "in")]))
    assert ws.entries["temp-a"].pins == 2
    assert ws.handle(ev.UnlinkRequested(now=0.1, name="temp-a")) == []
    ws.validate_state()
    out = finish_ok(ws, r1)
    assert of(out, ev.RemoveFile) == []
    out = finish_ok(ws, r2)
    assert [r.name for r in of(out, ev.RemoveFile)] == ["temp-a"]
    # the file goes after the task's sandbox is released
    kinds = [type(i) for i in out]
    assert kinds.index(ev.CleanupTask) < kinds.index(ev.RemoveFile)
    assert "temp-a" not in ws.entries
    ws.validate_state()


def test_doomed_file_is_not_given_to_a_new_task_nor_announced() -> None:
    ws = connected(cached=[("temp-a", 5)])
    start_run(ws, run_task(1, inputs=[("temp-a", "in")]))
    ws.handle(ev.UnlinkRequested(now=0.1, name="temp-a"))
    out = ws.handle(ev.RunRequested(now=0.2, task=run_task(2, inputs=[("temp-a", "in")]),
                                    wall=1.0))
    (done,) = sent(out, TaskDone)
    assert done.result == TaskResult.INPUT_MISSING and of(out, ev.StartTask) == []
    assert ws.cached() == []


def test_fetch_of_a_doomed_file_cancels_its_removal() -> None:
    ws = connected(cached=[("temp-a", 5)])
    r1 = start_run(ws, run_task(1, inputs=[("temp-a", "in")]))
    ws.handle(ev.UnlinkRequested(now=0.1, name="temp-a"))
    out = ws.handle(fetch(9))
    assert [m.transfer_id for m in sent(out, CacheUpdate)] == [9]
    assert of(finish_ok(ws, r1), ev.RemoveFile) == []
    assert ws.entries["temp-a"].state is EntryState.READY



def test_a_copy_changed_under_a_task_is_never_served_again() -> None:
    # a task changed its shared input in the cache (FileLost): the copy is reported lost,
    # kept for the task still using it, and a Fetch of it is refused, not answered with
    # the changed bytes
    ws = connected(cached=[("temp-a", 5)])
    r1 = start_run(ws, run_task(1, inputs=[("temp-a", "in")]))
    out = ws.handle(ev.FileLost(name="temp-a", reason="temp-a: changed in the cache"))
    assert [m.transfer_id for m in sent(out, CacheInvalid)] == [0]
    out = ws.handle(fetch(9))
    (refused,) = sent(out, CacheInvalid)
    assert refused.transfer_id == 9 and refused.cause == TransferFailure.LOCAL_IO
    assert sent(out, CacheUpdate) == []
    ws.validate_state()
    assert [r.name for r in of(finish_ok(ws, r1), ev.RemoveFile)] == ["temp-a"]
    out = ws.handle(fetch(10))  # gone now: fetched afresh
    assert of(out, ev.StartFetch) and sent(out, CacheInvalid) == []
    ws.validate_state()

# ====================================================================== the transition table
def test_illegal_transition_raises() -> None:
    ws = connected(cached=[("temp-a", 5)])
    with pytest.raises(InvalidTransition):
        ws._transition("temp-a", EntryState.FAILED, "a READY file cannot fail a fetch")
    with pytest.raises(InvalidTransition):
        ws._transition("new", EntryState.REMOVED, "nothing to remove")


# ====================================================================== tasks and outcomes
def test_task_outputs_become_cache_entries() -> None:
    ws = connected()
    rid = start_run(ws, run_task(1, outputs=[("temp-out", "out")]))
    out = ws.handle(ev.TaskExited(run_id=rid, wall=101.0, status=0, output="hi"))
    coll = one(out, ev.CollectOutputs)
    assert coll.outputs == [("temp-out", "out")] and coll.python_result == ""
    out = ws.handle(ev.OutputsCollected(run_id=rid, wall=102.0, stored=[("temp-out", 3)]))
    ws.validate_state()
    (done,) = sent(out, TaskDone)
    assert (done.result, done.exit_code, done.outputs, done.output) == \
        (TaskResult.SUCCESS, 0, [("temp-out", 3)], "hi")
    assert (done.start, done.end) == (100.0, 102.0)
    assert ws.entries["temp-out"].size == 3 and ws.disk_used() == 3


def test_missing_output_fails_the_task_and_removes_the_others() -> None:
    ws = connected()
    rid = start_run(ws, run_task(1, outputs=[("o1", "a"), ("o2", "b")]))
    ws.handle(ev.TaskExited(run_id=rid, wall=101.0, status=0))
    out = ws.handle(ev.OutputsCollected(run_id=rid, wall=102.0, stored=[("o1", 3)],
                                        missing=["b"]))
    ws.validate_state()
    (done,) = sent(out, TaskDone)
    assert done.result == TaskResult.OUTPUT_MISSING and "b" in done.message
    assert [r.name for r in of(out, ev.RemoveFile)] == ["o1"] and "o1" not in ws.entries


def test_nonzero_exit_collects_and_publishes_the_outputs() -> None:
    ws = connected()
    rid = start_run(ws, run_task(1, outputs=[("o1", "a")]))
    out = ws.handle(ev.TaskExited(run_id=rid, wall=101.0, status=EXIT(3)))
    assert sent(out, TaskDone) == [] and one(out, ev.CollectOutputs).outputs == [("o1", "a")]
    out = ws.handle(ev.OutputsCollected(run_id=rid, wall=102.0, stored=[("o1", 4)]))
    ws.validate_state()
    (done,) = sent(out, TaskDone)
    assert (done.result, done.exit_code, done.outputs) == (TaskResult.SUCCESS, 3, [("o1", 4)])
    assert ws.entries["o1"].state is EntryState.READY


def test_python_file_result_is_collected_into_the_cache() -> None:
    ws = connected()
    task = run_task(1, python=True)
    rid = start_run(ws, task)
    out = ws.handle(ev.TaskExited(run_id=rid, wall=1.0, status=0, python_kind="file"))
    assert one(out, ev.CollectOutputs).python_result == "pyout-1-1"
    out = ws.handle(ev.OutputsCollected(run_id=rid, wall=2.0, stored=[("pyout-1-1", 50)]))
    (done,) = sent(out, TaskDone)
    assert done.outputs == [("pyout-1-1", 50)] and done.python_result is None


def test_python_inline_result_travels_in_task_done() -> None:
    ws = connected()
    rid = start_run(ws, run_task(1, python=True))
    out = ws.handle(ev.TaskExited(run_id=rid, wall=1.0, status=0, python_kind="inline",
                                  python_data=b"pickled"))
    # nothing to collect (no outputs, no big stdout): done at once, no CollectOutputs
    assert of(out, ev.CollectOutputs) == []
    (done,) = sent(out, TaskDone)
    assert done.python_result == b"pickled" and done.result == TaskResult.SUCCESS
    assert rid not in ws.runs
    ws.validate_state()


def test_python_task_with_a_big_stdout_still_collects_it() -> None:
    ws = connected()
    rid = start_run(ws, run_task(3, python=True))
    out = ws.handle(ev.TaskExited(run_id=rid, wall=1.0, status=0, python_kind="inline",
                                  python_data=b"pickled", output="x" * 10, stdout_size=10**6,
                                  stdout_big=True))
    (collect,) = of(out, ev.CollectOutputs)
    assert collect.stdout == "stdout-3-1" and sent(out) == []
    out = ws.handle(ev.OutputsCollected(run_id=rid, wall=2.0, stdout_stored=10**6))
    (done,) = sent(out, TaskDone)
    assert done.python_result == b"pickled" and done.stdout_file == "stdout-3-1"
    ws.validate_state()


def test_python_task_with_outputs_still_collects_them() -> None:
    ws = connected()
    rid = start_run(ws, run_task(2, outputs=[("out-1", "out.txt")], python=True))
    out = ws.handle(ev.TaskExited(run_id=rid, wall=1.0, status=0, python_kind="inline",
                                  python_data=b"pickled"))
    (collect,) = of(out, ev.CollectOutputs)
    assert collect.outputs == [("out-1", "out.txt")] and sent(out) == []
    out = ws.handle(ev.OutputsCollected(run_id=rid, wall=2.0, stored=[("out-1", 3)]))
    (done,) = sent(out, TaskDone)
    assert done.python_result == b"pickled" and done.outputs == [("out-1", 3)]


def test_keep_versus_inline() -> None:
    assert inline_limit(run_task(python=True, keep=True)) == -1
    assert inline_limit(run_task(python=True)) == INLINE_RESULT_MAX
    ws = connected()
    out = ws.handle(ev.RunRequested(now=0, task=run_task(1, python=True, keep=True), wall=0))
    assert one(out, ev.StartTask).inline_max == -1


# classify_exit / classify_outputs: every row of the outcome matrix is in
# tests/test_worker_outcomes.py


# ====================================================================== the resource ledger
def test_ledger_refuses_over_commit_and_changes_nothing() -> None:
    led = Ledger(Resources(4, 1000, 1000, 0))
    led.commit(Resources(3, 500, 0, 0))
    with pytest.raises(OverCommit, match="free 1 cores"):
        led.commit(Resources(2, 10, 0, 0))
    with pytest.raises(OverCommit):
        led.commit(Resources(0, 0, 0, 1))
    assert led.committed == Resources(3, 500, 0, 0)
    led.release(Resources(3, 500, 0, 0))
    assert led.free == led.total


def test_over_committing_task_is_forsaken_not_started() -> None:
    ws = connected()
    start_run(ws, run_task(1, cores=3))
    out = ws.handle(ev.RunRequested(now=0, task=run_task(2, cores=2), wall=5.0))
    ws.validate_state()
    (done,) = sent(out, TaskDone)
    assert done.result == TaskResult.FORSAKEN and "cores" in done.message
    assert of(out, ev.StartTask) == []


def test_kill_releases_resources_at_once_and_is_not_reported() -> None:
    ws = connected()
    rid = start_run(ws, run_task(1, cores=4))
    out = ws.handle(ev.KillRequested(now=0.1, task_id=1))
    assert one(out, ev.KillTask).run_id == rid
    ws.validate_state()
    rid2 = start_run(ws, run_task(2, cores=4))  # fits: the killed task's cores are free
    out = ws.handle(ev.TaskExited(run_id=rid, wall=1.0, status=signal.SIGKILL))
    assert sent(out, TaskDone) == [] and one(out, ev.CleanupTask).run_id == rid
    assert rid2 != rid
    ws.validate_state()


def test_duplicate_run_task_is_a_protocol_error() -> None:
    ws = connected()
    start_run(ws, run_task(1))
    out = ws.handle(ev.RunRequested(now=0, task=run_task(1), wall=0))
    assert len(of(out, ev.DropConnection)) == 1 and of(out, ev.StartTask) == []


# ====================================================================== the manager link
def test_start_connects_and_handshake_sends_hello() -> None:
    ws = WorkerState(config(), cached=[("f", 2)])
    assert one(ws.handle(ev.Started(now=0.0)), ev.Connect).timeout == 5.0
    (hello,) = sent(ws.handle(ev.ConnectionOpened(now=0.1, nonce="ab" * 16)), Hello)
    assert (hello.cores, hello.memory, hello.disk, hello.gpus, hello.cached, hello.nonce) == \
        (4, 4000, 10000, 1, [], "ab" * 16)  # nothing about the cache before the proofs
    proof, report = sent(ws.handle(challenge(0.15)))
    assert isinstance(proof, Proof) and proof.proof == ""  # no password here
    assert isinstance(report, CacheReport) and report.cached == [("f", 2)]
    out = ws.handle(welcome(0.2))
    assert ws.link is Link.CONNECTED and "as w7" in one(out, ev.Log).text


def test_failed_connections_back_off_and_give_up_exactly_at_the_timeout() -> None:
    ws = WorkerState(config(timeout=10.0, attempt_timeout=30.0))
    assert one(ws.handle(ev.Started(now=0.0)), ev.Connect).timeout == 10.0
    out = ws.handle(ev.ConnectFailed(now=0.0, reason="refused"))
    assert "retrying in 1 s" in one(out, ev.Log).text
    assert of(ws.handle(ev.Tick(now=0.5)), ev.Connect) == []
    assert one(ws.handle(ev.Tick(now=1.0)), ev.Connect).timeout == 9.0
    out = ws.handle(ev.ConnectFailed(now=1.0, reason="refused"))
    assert "retrying in 2 s" in one(out, ev.Log).text
    assert of(ws.handle(ev.Tick(now=9.99)), ev.Exit) == []
    ex = one(ws.handle(ev.Tick(now=10.0)), ev.Exit)
    assert ex.code == 1 and "giving up" in ex.reason
    assert ws.handle(ev.Tick(now=11.0)) == []


def test_silent_handshake_is_dropped_after_the_connect_timeout() -> None:
    ws = WorkerState(config(attempt_timeout=2.0))
    ws.handle(ev.Started(now=0.0))
    ws.handle(ev.ConnectionOpened(now=0.0))
    assert of(ws.handle(ev.Tick(now=1.9)), ev.DropConnection) == []
    assert "no Welcome" in one(ws.handle(ev.Tick(now=2.0)), ev.DropConnection).reason
    out = ws.handle(ev.ConnectionLost(now=2.0, reason="dropped"))
    assert "retrying" in one(out, ev.Log).text


def test_protocol_error_in_the_first_handshake_exits_2() -> None:
    ws = WorkerState(config())
    ws.handle(ev.Started(now=0.0))
    ws.handle(ev.ConnectionOpened(now=0.0))
    ex = one(ws.handle(ev.ProtocolViolation(now=0.1, error="frame too large")), ev.Exit)
    assert ex.code == 2 and "does not speak the vinework protocol" in ex.reason


def test_message_before_welcome_or_wrong_version_exits_2() -> None:
    for bad, challenged in ((fetch(1), False), (welcome(), False), (fetch(1), True),
                            (welcome(version=1), True), (challenge(), True)):
        ws = WorkerState(config())
        ws.handle(ev.Started(now=0.0))
        ws.handle(ev.ConnectionOpened(now=0.0))
        if challenged:
            ws.handle(challenge())
        assert one(ws.handle(bad), ev.Exit).code == 2


def test_the_password_handshake_proves_both_sides() -> None:
    pw = b"s3cret"
    ws = WorkerState(config(password=pw))
    ws.handle(ev.Started(now=0.0))
    ws.handle(ev.ConnectionOpened(now=0.0, nonce=NONCE))
    good = manager_proof(pw, NONCE, "cd" * 16)
    proof, _ = sent(ws.handle(challenge(proof=good)))
    assert isinstance(proof, Proof) and proof.proof == worker_proof(pw, "cd" * 16, NONCE)
    assert pw.decode() not in repr(proof)
    for bad, says in ((manager_proof(b"other", NONCE, "cd" * 16), "does not know"),
                      ("", "has no password")):
        ws = WorkerState(config(password=pw))
        ws.handle(ev.Started(now=0.0))
        ws.handle(ev.ConnectionOpened(now=0.0, nonce=NONCE))
        out = ws.handle(challenge(proof=bad))
        assert one(out, ev.Exit).code == 1 and says in one(out, ev.Exit).reason
        assert not sent(out)  # no proof, no cache report to a manager that failed
    ws = WorkerState(config())  # no password, a manager that wants one
    ws.handle(ev.Started(now=0.0))
    ws.handle(ev.ConnectionOpened(now=0.0, nonce=NONCE))
    assert "requires a password" in one(ws.handle(challenge(proof=good)), ev.Exit).reason


def test_protocol_error_after_a_session_drops_and_reconnects() -> None:
    ws = connected()
    out = ws.handle(ev.ProtocolViolation(now=1.0, error="garbage"))
    assert of(out, ev.Exit) == [] and len(of(out, ev.DropConnection)) == 1


def test_heartbeats_and_liveness_follow_the_welcome() -> None:
    ws = connected(cached=[("f", 7)], interval=1.0, keepalive_timeout=3.0)
    assert sent(ws.handle(ev.Tick(now=0.5))) == []
    (hb,) = sent(ws.handle(ev.Tick(now=1.0)), Heartbeat)
    assert hb.disk_used == 7
    ws.handle(ev.HeartbeatReceived(now=2.5))
    assert of(ws.handle(ev.Tick(now=5.4)), ev.DropConnection) == []
    drop = one(ws.handle(ev.Tick(now=5.6)), ev.DropConnection)
    assert "silent for 3 s" in drop.reason
    assert of(ws.handle(ev.Tick(now=5.7)), ev.DropConnection) == []  # only once


def test_disconnect_gives_up_every_task_and_reports_none() -> None:
    ws = connected(cached=[("in", 1)])
    r1 = start_run(ws, run_task(1, inputs=[("in", "x")]))
    start_fetch = one(ws.handle(fetch(5, name="other", level=2)), ev.StartFetch)  # WORKER
    out = ws.handle(ev.ConnectionLost(now=3.0, reason="reset"))
    ws.validate_state()
    assert [k.run_id for k in of(out, ev.KillTask)] == [r1]
    assert "disconnected" in of(out, ev.Log)[0].text
    out = ws.handle(ev.TaskExited(run_id=r1, wall=4.0, status=signal.SIGKILL))
    assert sent(out, TaskDone) == []  # nothing to tell, nobody to tell
    # the fetch of a WORKER-level file goes on and keeps the file for the next manager
    out = ws.handle(ev.FetchFinished(fetch_id=start_fetch.fetch_id, ok=True, size=4))
    assert len(of(out, ev.CommitFetch)) == 1 and sent(out) == []
    assert of(ws.handle(ev.Tick(now=3.5)), ev.Connect) == []  # --min-backoff: 1 s
    assert len(of(ws.handle(ev.Tick(now=4.0)), ev.Connect)) == 1
    ws.handle(ev.ConnectionOpened(now=4.1))
    assert ws.link is Link.HANDSHAKE
    ws.validate_state()


def test_new_manager_reusing_a_task_id_gets_a_new_run() -> None:
    ws = connected()
    r1 = start_run(ws, run_task(1))
    ws.handle(ev.ConnectionLost(now=1.0, reason="gone"))
    ws.handle(ev.Tick(now=2.0))
    ws.handle(ev.ConnectionOpened(now=2.0))
    ws.handle(challenge(2.0))
    ws.handle(welcome(2.0))
    r2 = start_run(ws, run_task(1))
    assert r2 != r1
    assert sent(ws.handle(ev.TaskExited(run_id=r1, wall=3.0, status=9)), TaskDone) == []
    ws.validate_state()
    assert ws.live == {1: r2}


def test_idle_timeout_counts_from_the_disconnection() -> None:
    ws = connected(timeout=10.0)
    ws.handle(ev.ConnectionLost(now=100.0, reason="gone"))
    assert of(ws.handle(ev.Tick(now=109.9)), ev.Exit) == []
    assert one(ws.handle(ev.Tick(now=110.0)), ev.Exit).code == 1


# ====================================================================== stopping and draining
def test_signal_without_a_manager_exits_at_once() -> None:
    ws = WorkerState(config())
    ws.handle(ev.Started(now=0.0))
    ws.handle(ev.ConnectFailed(now=0.0, reason="refused"))
    ex = one(ws.handle(ev.StopRequested(now=0.1, signal_name="SIGTERM", drain=True)), ev.Exit)
    assert ex.code == 0 and "SIGTERM" in ex.reason


def test_first_sigterm_drains() -> None:
    ws = connected(cached=[("temp-a", 1)])
    rid = start_run(ws, run_task(1))
    out = ws.handle(ev.StopRequested(now=1.0, signal_name="SIGTERM", drain=True))
    (leaving,) = sent(out, Leaving)
    assert "SIGTERM" in leaving.reason and of(out, ev.KillTask) == [] and ws.draining
    # no new task
    (refused,) = sent(ws.handle(ev.RunRequested(now=1.1, task=run_task(2), wall=1.1)),
                      TaskDone)
    assert refused.result == TaskResult.FORSAKEN
    # fetches still served
    assert sent(ws.handle(fetch(4)), CacheUpdate)
    # the batch system's SIGTERM to the task is not the task's failure
    (done,) = sent(ws.handle(ev.TaskExited(run_id=rid, wall=2.0, status=SIGTERM_STATUS)),
                   TaskDone)
    assert done.result == TaskResult.FORSAKEN
    assert one(ws.handle(ev.ShutdownReceived(now=2.5, reason="drained")), ev.Exit).code == 0
    ws.validate_state()


def test_drain_ends_after_the_drain_timeout() -> None:
    ws = connected(drain_timeout=20.0, timeout=100.0)
    ws.handle(ev.StopRequested(now=1.0, signal_name="SIGTERM", drain=True))
    ws.handle(ev.HeartbeatReceived(now=20.0))
    assert of(ws.handle(ev.Tick(now=20.9)), ev.Exit) == []
    assert "no Shutdown" in one(ws.handle(ev.Tick(now=21.0)), ev.Exit).reason


def test_second_signal_or_sigint_stops_at_once() -> None:
    for second in (ev.StopRequested(now=2, signal_name="SIGTERM", drain=True),
                   ev.StopRequested(now=2, signal_name="SIGINT", drain=False)):
        ws = connected()
        rid = start_run(ws, run_task(1))
        ws.handle(ev.StopRequested(now=1.0, signal_name="SIGTERM", drain=True))
        out = ws.handle(second)
        assert [k.run_id for k in of(out, ev.KillTask)] == [rid]
        assert isinstance(out[-1], ev.Exit)
        ws.validate_state()


def test_sigint_while_connected_stops_at_once() -> None:
    ws = connected()
    out = ws.handle(ev.StopRequested(now=1.0, signal_name="SIGINT", drain=False))
    assert sent(out, Leaving) == [] and one(out, ev.Exit).code == 0


def test_connection_lost_while_draining_exits() -> None:
    ws = connected()
    ws.handle(ev.StopRequested(now=1.0, signal_name="SIGTERM", drain=True))
    assert one(ws.handle(ev.ConnectionLost(now=1.5, reason="closed")), ev.Exit).code == 0


def test_parent_gone_stops_at_once() -> None:
    ws = connected()
    start_run(ws, run_task(1))
    out = ws.handle(ev.ParentGone(now=1.0, pid=4242))
    assert len(of(out, ev.KillTask)) == 1 and "4242" in one(out, ev.Exit).reason


def test_story_traces_a_task_by_stimulus() -> None:
    ws = connected()
    ws.handle(ev.RunRequested(now=0, task=run_task(3), wall=0, stimulus_id="run-3"))
    story = ws.story(3)
    assert story and story[0][1] == "run-3" and "started" in story[0][0]


# ====================================================================== managers come and go
def _ready(ws: WorkerState, tid: int, name: str, level: int) -> None:
    start = one(ws.handle(fetch(tid, name=name, level=level)), ev.StartFetch)
    ws.handle(ev.FetchFinished(fetch_id=start.fetch_id, ok=True, size=tid))


def test_a_lost_manager_takes_its_files_and_leaves_worker_and_forever_ones() -> None:
    ws = connected()
    for tid, (name, level) in enumerate([("t", 0), ("wf", 1), ("wk", 2), ("fe", 3)], 1):
        _ready(ws, tid, name, level)
    rid = start_run(ws, run_task(9, inputs=[("wf", "x")], outputs=[("out", "o")]))
    inflight = one(ws.handle(fetch(20, name="coming")), ev.StartFetch)
    out = ws.handle(ev.ConnectionLost(now=1.0, reason="EOF"))
    ws.validate_state()
    assert sorted(r.name for r in of(out, ev.RemoveFile)) == ["t"]  # wf is pinned: later
    assert [k.run_id for k in of(out, ev.KillTask)] == [rid]
    assert ws.entries["wf"].doomed and ws.entries["coming"].doomed
    out = ws.handle(ev.TaskExited(run_id=rid, wall=2.0, status=signal.SIGKILL))
    assert [r.name for r in of(out, ev.RemoveFile)] == ["wf"]
    out = ws.handle(ev.FetchFinished(fetch_id=inflight.fetch_id, ok=True, size=3))
    assert of(out, ev.CommitFetch) == [] and len(of(out, ev.DiscardFetch)) == 1
    ws.validate_state()
    # the next manager hears of what was kept
    assert len(of(ws.handle(ev.Tick(now=2.0)), ev.Connect)) == 1  # after --min-backoff
    sent(ws.handle(ev.ConnectionOpened(now=2.1, nonce=NONCE)), Hello)
    (report,) = sent(ws.handle(challenge(2.2)), CacheReport)
    assert sorted(report.cached) == [("fe", 4), ("wk", 3)]


def test_a_file_fetched_again_takes_the_higher_level() -> None:
    ws = connected()
    _ready(ws, 1, "f", 1)
    ws.handle(fetch(2, name="f", level=2))
    assert ws.entries["f"].level == 2
    ws.handle(fetch(3, name="f", level=0))
    assert ws.entries["f"].level == 2  # levels only go up
    ws.handle(ev.ConnectionLost(now=1.0, reason="EOF"))
    assert "f" in ws.entries and not ws.entries["f"].doomed


def test_forever_entries_are_handed_to_the_shell_when_they_change() -> None:
    ws = connected(cached=[("old", 2)])  # found at start-up: FOREVER
    start = one(ws.handle(fetch(1, name="new", level=3)), ev.StartFetch)
    out = ws.handle(ev.FetchFinished(fetch_id=start.fetch_id, ok=True, size=5))
    assert one(out, ev.PersistForever).names == ("new", "old")
    _ready(ws, 2, "plain", 1)  # not FOREVER: nothing to record
    out = ws.handle(ev.UnlinkRequested(now=1.0, name="old"))
    assert one(out, ev.PersistForever).names == ("new",)
    out = ws.handle(fetch(3, name="plain", level=3))  # raised to FOREVER
    assert one(out, ev.PersistForever).names == ("new", "plain")
    assert of(ws.handle(fetch(4, name="plain", level=3)), ev.PersistForever) == []


def test_shutdown_exits_and_single_shot_exits_on_eof() -> None:
    ws = connected()
    assert one(ws.handle(ev.ShutdownReceived(now=1.0, reason="bye")), ev.Exit).code == 0
    ws = connected(single_shot=True)
    _ready(ws, 1, "wf", 1)
    out = ws.handle(ev.ConnectionLost(now=1.0, reason="EOF"))
    assert one(out, ev.Exit).code == 0 and of(out, ev.RemoveFile) == []


def test_backoff_doubles_from_min_to_max_and_resets_after_a_session() -> None:
    ws = WorkerState(config(min_backoff=0.5, max_backoff=3.0, timeout=100.0))
    ws.handle(ev.Started(now=0.0))
    now, pauses = 0.0, []
    for _ in range(5):
        ws.handle(ev.ConnectFailed(now=now, reason="refused"))
        assert ws.retry_at is not None
        pauses.append(ws.retry_at - now)
        now = ws.retry_at
        assert len(of(ws.handle(ev.Tick(now=now)), ev.Connect)) == 1
    assert pauses == [0.5, 1.0, 2.0, 3.0, 3.0]
    ws.handle(ev.ConnectionOpened(now=now))
    ws.handle(challenge(now))
    ws.handle(welcome(now))
    ws.handle(ev.ConnectionLost(now=now + 1, reason="EOF"))
    assert ws.retry_at == now + 1 + 0.5


def test_hello_lists_the_features() -> None:
    ws = WorkerState(config(features=("gpu-a100", "big-disk")))
    ws.handle(ev.Started(now=0.0))
    (hello,) = sent(ws.handle(ev.ConnectionOpened(now=0.0)), Hello)
    assert hello.features == ["gpu-a100", "big-disk"]


def test_idle_timeout_drains_a_worker_with_nothing_to_do() -> None:
    ws = connected(idle_timeout=10.0, interval=100.0, keepalive_timeout=1000.0)
    rid = start_run(ws, run_task(1), now=5.0)
    assert sent(ws.handle(ev.Tick(now=14.0)), Leaving) == []  # a task runs
    finish_ok(ws, rid)
    assert sent(ws.handle(ev.Tick(now=20.0)), Leaving) == []  # idle since 14
    start = one(ws.handle(fetch(1, now=21.0)), ev.StartFetch)
    assert sent(ws.handle(ev.Tick(now=30.0)), Leaving) == []  # a fetch is in flight
    ws.handle(ev.FetchFinished(fetch_id=start.fetch_id, ok=True, size=1))
    assert sent(ws.handle(ev.Tick(now=39.9)), Leaving) == []
    (leaving,) = sent(ws.handle(ev.Tick(now=40.0)), Leaving)
    assert "idle" in leaving.reason and ws.draining
    assert one(ws.handle(ev.ShutdownReceived(now=41.0, reason="ok")), ev.Exit).code == 0


def test_wall_time_drains_when_connected_and_exits_when_not() -> None:
    ws = connected(wall_time=50.0, interval=100.0, keepalive_timeout=1000.0)
    assert sent(ws.handle(ev.Tick(now=49.0)), Leaving) == []
    (leaving,) = sent(ws.handle(ev.Tick(now=50.0)), Leaving)
    assert "wall time" in leaving.reason
    ws = WorkerState(config(wall_time=5.0, timeout=100.0))
    ws.handle(ev.Started(now=0.0))
    ws.handle(ev.ConnectFailed(now=0.0, reason="refused"))
    ex = one(ws.handle(ev.Tick(now=5.0)), ev.Exit)
    assert ex.code == 0 and "wall time" in ex.reason
