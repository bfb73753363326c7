"""Real-worker tests of what tasks write into files and buffers, content names,
``unlink_when_done`` and the mount flags (symlinked inputs, failure/success-only outputs)."""

from __future__ import annotations

import gc
import os
from typing import Any

import pytest

import vinework as vine
from vinework.contentnames import ContentNames

try:
    from conftest import poll_until, wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, wait_all, wait_workers

pytestmark = pytest.mark.timeout(60)


def _one(m: vine.Manager, t: vine.Task, timeout: float = 30.0) -> vine.Task:
    m.submit(t)
    [back] = wait_all(m, 1, timeout)
    assert back is t
    return t


# ---------------------------------------------------------------------- buffers as outputs
def test_a_buffer_output_holds_what_the_task_wrote_and_feeds_the_next_task(
        cluster: vine.Manager) -> None:
    m = cluster
    buf = m.declare_buffer()
    t = vine.Task("printf 'made by a task' > out.txt")
    t.add_output(buf, "out.txt")
    assert _one(m, t).successful()
    assert buf.contents() == b"made by a task" and len(buf) == 14
    # as an input of a later task: its new content, under the content name of those bytes
    assert buf.cache_name == m.declare_buffer(b"made by a task").cache_name
    u = vine.Task("cat in.txt")
    u.add_input(buf, "in.txt")
    assert _one(m, u).output == "made by a task"


def test_a_consumer_submitted_while_the_buffer_is_being_written_waits_for_it(
        cluster: vine.Manager) -> None:
    m = cluster
    buf = m.declare_buffer(b"old")
    before = vine.Task("cat in")
    before.add_input(buf, "in")
    writer = vine.Task("sleep 0.3; echo new > out")
    writer.add_output(buf, "out")
    after = vine.Task("cat in")
    after.add_input(buf, "in")
    for t in (before, writer, after):
        m.submit(t)
    wait_all(m, 3)
    assert before.output == "old" and after.output == "new\n"
    assert buf.contents() == b"new\n"


def test_undeclaring_one_of_two_buffers_of_the_same_bytes_leaves_the_other(
        cluster: vine.Manager) -> None:
    """Buffers of the same bytes share one cache name; undeclaring one handle must not
    take the content from a task that reads the other (two DaskVine runs hit this)."""
    m = cluster
    first = m.declare_buffer(b"same bytes", cache="workflow")
    second = m.declare_buffer(b"same bytes", cache="workflow")
    assert first.cache_name == second.cache_name
    gate = m.declare_temp()
    slow = vine.Task("sleep 0.5; echo go > gate")
    slow.add_output(gate, "gate")
    reader = vine.Task("cat gate >/dev/null && cat in")
    reader.add_input(gate, "gate")
    reader.add_input(second, "in")
    m.submit(slow)
    m.submit(reader)
    m.undeclare_file(first)  # while the reader waits for its gate
    m.undeclare_file(first)  # twice: still only one handle let go
    wait_all(m, 2)
    assert reader.successful(), (reader.result, reader.std_output)
    assert reader.output == "same bytes"
    assert m.get_file_replica_count(second) >= 1  # still held for `second`
    assert second.path is not None and os.path.exists(second.path)  # the manager's copy too
    m.undeclare_file(second)  # the last handle: now it goes from the workers
    poll_until(lambda: m.get_file_replica_count(second) == 0, 10, "the buffer forgotten")
    assert not os.path.exists(second.path)  # and from the manager's staging directory


def test_a_buffer_submitted_again_after_it_was_undeclared_is_sent_again(
        cluster: vine.Manager) -> None:
    """Its staging file went with the undeclaration; the File still has its bytes, so a
    later task reading it gets them (staged and declared again), as before."""
    m = cluster
    b = m.declare_buffer(b"again")
    for _ in range(2):
        t = vine.Task("cat in")
        t.add_input(b, "in")
        assert _one(m, t).output == "again", (t.result, t.std_output)
        m.undeclare_file(b)
        assert b.path is not None and not os.path.exists(b.path)


def test_a_long_run_of_buffers_leaves_nothing_in_staging(cluster: vine.Manager) -> None:
    """Every buffer declared and undeclared: its staging file goes with the last handle
    (DaskVine uploads every value it holds as a buffer: a long-lived manager filled its
    disk with them, one file per distinct value)."""
    m = cluster
    staging = os.path.dirname(m.declare_buffer(b"probe").path or "")
    before = set(os.listdir(staging))
    for i in range(5):
        b = m.declare_buffer(f"value {i}".encode())
        t = vine.Task("cat in")
        t.add_input(b, "in")
        assert _one(m, t).output == f"value {i}"
        m.undeclare_file(b)
    assert set(os.listdir(staging)) <= before


# ---------------------------------------------------------------------- content names
def test_an_unchanged_file_is_not_sent_again_even_if_touched(
        manager: vine.Manager, workers: Any, tmp_path: Any) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    data = tmp_path / "data.txt"
    data.write_bytes(b"x" * 100_000)
    f = m.declare_file(str(data), cache=True)

    def cat() -> vine.Task:
        t = vine.Task("wc -c < data")
        t.add_input(f, "data")
        return _one(m, t)

    assert cat().output.strip() == "100000"
    sent = m.stats.bytes_sent
    assert sent >= 100_000
    first = f.cache_name
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched
    assert cat().output.strip() == "100000"
    assert f.cache_name == first and m.stats.bytes_sent == sent  # not sent again
    data.write_bytes(b"y" * 50_000)  # changed
    assert cat().output.strip() == "50000"
    assert f.cache_name != first and m.stats.bytes_sent >= sent + 50_000


def test_content_names_follow_content_and_are_hashed_once(tmp_path: Any) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"same" * 50_000)
    b.write_bytes(b"same" * 50_000)
    memo = str(tmp_path / "memo")
    names = ContentNames(memo)
    assert names.name(str(a), 0o644) == names.name(str(b), 0o644)  # same bytes, same name
    assert names.name(str(a), 0o755) != names.name(str(a), 0o644)  # mode travels with it
    assert names.hashed == 2
    names.name(str(a), 0o644)
    assert names.hashed == 2  # remembered while (size, mtime, inode) are unchanged
    again = ContentNames(memo)  # a second run reads the memo from disk
    again.name(str(a), 0o644)
    assert again.hashed == 0
    a.write_bytes(b"other" * 40_000)
    assert again.name(str(a), 0o644) != again.name(str(b), 0o644)
    assert again.hashed == 1  # a again; b from the memo


def test_a_file_written_by_a_task_after_being_an_input_keeps_old_readers_old(
        manager: vine.Manager, workers: Any, tmp_path: Any) -> None:
    """A task submitted before the writer reads the old content, even if the writer's
    output lands first; a task submitted after the writer reads what it wrote."""
    m = manager
    workers(m, cores=1)
    wait_workers(m, 1)
    path = tmp_path / "state.txt"
    path.write_text("old\n")
    f = m.declare_file(str(path), cache=True)
    blocker = vine.Task("sleep 0.5")  # holds the only core: the readers cannot start early
    blocker.set_priority(10)
    writer = vine.Task("echo new > state.txt")
    writer.add_output(f, "state.txt")
    writer.set_priority(5)  # runs (and is brought back) before the early reader
    early = vine.Task("cat state.txt")
    early.add_input(f, "state.txt")
    early.set_priority(1)
    late = vine.Task("cat state.txt")
    late.add_input(f, "state.txt")
    m.submit(blocker)
    m.submit(early)
    m.submit(writer)
    m.submit(late)
    wait_all(m, 4)
    assert writer.successful() and path.read_text() == "new\n"
    assert early.output == "old\n"
    assert late.output == "new\n"
    # the written file is reused under the name it came back as: not sent again
    sent = m.stats.bytes_sent
    again = vine.Task("cat state.txt")
    again.add_input(f, "state.txt")
    assert _one(m, again).output == "new\n"
    assert m.stats.bytes_sent == sent


# ---------------------------------------------------------------------- unlink_when_done
def _uwd(m: vine.Manager, tmp_path: Any, name: str) -> tuple[Any, vine.File]:
    p = tmp_path / name
    p.write_text("hello")
    return p, m.declare_file(str(p), unlink_when_done=True)


def test_unlink_when_done_waits_for_the_tasks_using_it(cluster: vine.Manager,
                                                      tmp_path: Any) -> None:
    m = cluster
    p, f = _uwd(m, tmp_path, "in.txt")
    t = vine.Task("sleep 0.3; cat in")
    t.add_input(f, "in")
    m.submit(t)
    m.undeclare_file(f)
    assert p.exists()  # a task still uses it
    [back] = wait_all(m, 1)
    assert back.output == "hello"
    assert not p.exists()  # the last task came back: deleted


def test_unlink_when_done_on_dropping_the_file(cluster: vine.Manager, tmp_path: Any) -> None:
    m = cluster
    p, f = _uwd(m, tmp_path, "in.txt")
    t = vine.Task("cat in")
    t.add_input(f, "in")
    m.submit(t)
    del f
    gc.collect()
    assert p.exists()  # the task holds it
    wait_all(m, 1)
    assert p.exists()  # the user still holds the task, and the task the File
    del t
    gc.collect()
    assert not p.exists()
    # a File never used by a task: dropping it deletes the file
    q, g = _uwd(m, tmp_path, "lonely.txt")
    del g
    gc.collect()
    assert not q.exists()


def test_unlink_when_done_with_a_cancelled_task(manager: vine.Manager, tmp_path: Any) -> None:
    m = manager  # no worker: the task never runs
    p, f = _uwd(m, tmp_path, "in.txt")
    t = vine.Task("cat in")
    t.add_input(f, "in")
    m.submit(t)
    m.undeclare_file(f)
    assert p.exists()
    assert m.cancel_by_task_id(t.id)
    [back] = wait_all(m, 1, timeout=10)
    assert back.result == "cancelled"
    assert not p.exists()


def test_unlink_when_done_of_an_output_read_by_a_later_task(cluster: vine.Manager,
                                                            tmp_path: Any) -> None:
    m = cluster
    p = tmp_path / "partial"
    f = m.declare_file(str(p), unlink_when_done=True)
    t1 = vine.Task("echo partial > out")
    t1.add_output(f, "out")
    t2 = vine.Task("cat in")
    t2.add_input(f, "in")
    m.submit(t1)
    m.submit(t2)
    m.undeclare_file(f)
    wait_all(m, 2)
    assert t2.output == "partial\n"
    assert not p.exists()


# ---------------------------------------------------------------------- mount flags
def test_mount_symlink_places_a_symlink(cluster: vine.Manager, tmp_path: Any) -> None:
    m = cluster
    src = tmp_path / "data"
    src.write_text("linked")
    f = m.declare_file(str(src))
    t = vine.Task("test -L link && test ! -L plain && cat link plain")
    t.add_input(f, "link", mount_symlink=True)
    t.add_input(f, "plain")
    assert _one(m, t).output == "linkedlinked"
    assert t.successful()


def test_failure_only_and_success_only_outputs(cluster: vine.Manager, tmp_path: Any) -> None:
    m = cluster

    def task(code: int, tag: str) -> tuple[vine.Task, Any, Any]:
        log, res = tmp_path / f"log-{tag}", tmp_path / f"res-{tag}"
        t = vine.Task(f"echo log > log; echo res > res; exit {code}")
        t.add_output(m.declare_file(str(log)), "log", failure_only=True)
        t.add_output(m.declare_file(str(res)), "res", success_only=True)
        return t, log, res

    ok, ok_log, ok_res = task(0, "ok")
    bad, bad_log, bad_res = task(3, "bad")
    m.submit(ok)
    m.submit(bad)
    wait_all(m, 2)
    assert ok.successful() and ok_res.read_text() == "res\n" and not ok_log.exists()
    assert bad.result == "success" and bad.exit_code == 3
    assert bad_log.read_text() == "log\n" and not bad_res.exists()
    # an optional output the task did not make is not "output missing"
    quiet = vine.Task("true")
    quiet.add_output(m.declare_file(str(tmp_path / "never")), "never", success_only=True)
    assert _one(m, quiet).successful()


def test_strict_input_runs_where_the_file_is(cluster: vine.Manager, tmp_path: Any) -> None:
    m = cluster
    src = tmp_path / "data"
    src.write_text("strict")
    f = m.declare_file(str(src), cache=True)
    # nowhere yet: TaskVine ends the task at once
    t = vine.Task("cat data")
    t.add_input(f, "data", strict_input=True)
    assert _one(m, t).result == "fixed location missing"
    first = vine.Task("cat data")
    first.add_input(f, "data")
    assert _one(m, first).output == "strict"
    for _ in range(3):
        u = vine.Task("cat data")
        u.add_input(f, "data", strict_input=True)
        assert _one(m, u).output == "strict"
        assert u.worker == first.worker


def test_failure_only_outputs_come_back_from_real_failures(cluster: vine.Manager,
                                                           tmp_path: Any) -> None:
    """A time-limit kill, another output missing and a raising PythonTask all keep their
    failure_only outputs (and never their success_only ones)."""
    m = cluster
    log1, ok1 = tmp_path / "kill.log", tmp_path / "kill.ok"
    t1 = vine.Task("echo started > log; echo fine > ok; sleep 30")
    t1.set_time_max(1)
    t1.add_output(m.declare_file(str(log1)), "log", failure_only=True)
    t1.add_output(m.declare_file(str(ok1)), "ok", success_only=True)
    log2 = tmp_path / "missing.log"
    t2 = vine.Task("echo no result made > log")
    t2.add_output(m.declare_file(str(log2)), "log", failure_only=True)
    t2.add_output(m.declare_file(str(tmp_path / "result")), "result")
    log3 = tmp_path / "py.log"

    def write_then_raise() -> None:  # (defined here: pickled by value)
        with open("trace.txt", "w") as f:
            f.write("about to fail\n")
        raise ZeroDivisionError("on purpose")
    t3 = vine.PythonTask(write_then_raise)
    t3.add_output(m.declare_file(str(log3)), "trace.txt", failure_only=True)
    for t in (t1, t2, t3):
        m.submit(t)
    got = {t.id: t for t in wait_all(m, 3)}
    assert got[t1.id].result == "max wall time"
    assert log1.read_text() == "started\n" and not ok1.exists()
    assert got[t2.id].result == "output missing"
    assert log2.read_text() == "no result made\n"
    assert isinstance(got[t3.id].output, ZeroDivisionError)
    assert log3.read_text() == "about to fail\n"
