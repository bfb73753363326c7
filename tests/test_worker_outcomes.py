"""What a task attempt comes back as: TaskVine's outcome matrix, its stdout, its environment.

Three tiers. Pure tests of ``classify_exit`` / ``classify_outputs`` (one per
row of the matrix), of the task environment and command wrapper
(``taskenv``), and of the core's handling of end times, big stdout, gpu
indices and cache levels. Then the shell's ``take_output`` on real files. Then
real ``vinework worker`` processes driven by a fake manager over TCP (the
codec of ``vinework.protocol``), which check the whole path: exit codes and
signals, time limits, the variables a task sees, stdout kept as a cache file
and served by the transfer server, and what was measured.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_worker_helpers import connected, of, one, run_task, sent, start_run
from tests.test_worker_process import TRANSFER_KEY, FakeManager, WorkerProc
from vinework.constants import CacheLevel, TaskResult
from vinework.protocol import Hello, RunTask, TaskDone, Unlink
from vinework.protocol.auth import make_token
from vinework.protocol.transfer import TransferError, fetch_file
from vinework.worker import events as ev
from vinework.worker.outcome import (
    OUTPUT_INLINE_MAX,
    TIME_KILL_EXIT,
    Collect,
    Ledger,
    Resources,
    Verdict,
    classify_exit,
    classify_outputs,
)
from vinework.worker.sandbox import OUTPUT_NAME, take_output
from vinework.worker.taskenv import (
    TMP_DIR_NAME,
    environment_changes,
    task_environment,
    wrap_command,
)

EXIT = lambda code: code << 8  # noqa: E731  (wait status of exit(code))


# ====================================================================== the matrix, pure
def verdict_of(status: int = 0, python: bool = False, draining: bool = False,
               **facts: Any) -> Verdict | Collect:
    args: dict[str, Any] = dict(timed_out=False, disk_exhausted=False, setup_error="")
    args.update(facts)
    return classify_exit(run_task(python=python, time_max=5.0), status=status,
                         draining=draining, **args)


@pytest.mark.parametrize("row, status, facts, want", [
    ("exit 0: the outputs decide", EXIT(0), {}, Collect(0)),
    ("exit 3: the outputs decide, code kept", EXIT(3), {}, Collect(3)),
    ("command not found (sh: 127)", EXIT(127), {}, Collect(127)),
    ("not executable (sh: 126)", EXIT(126), {}, Collect(126)),
    ("killed by a signal the worker did not send", signal.SIGKILL, {}, Collect(9)),
    ("SIGSEGV", signal.SIGSEGV, {}, Collect(11)),
    ("time_max exceeded", signal.SIGKILL, dict(timed_out=True),
     (TaskResult.MAX_WALL_TIME, TIME_KILL_EXIT)),
    ("time_end passed", signal.SIGKILL, dict(end_time_passed=True),
     (TaskResult.MAX_END_TIME, TIME_KILL_EXIT)),
    ("the disk filled", EXIT(1), dict(disk_exhausted=True), (TaskResult.DISK_EXHAUSTION, 1)),
    ("an input missing", 0, dict(setup_error="input x missing"),
     (TaskResult.INPUT_MISSING, -1)),
    ("the worker's own error", 0, dict(worker_error="EIO making the sandbox"),
     (TaskResult.FORSAKEN, -1)),
])
def test_command_exit_matrix(row: str, status: int, facts: dict[str, Any], want: Any) -> None:
    got = verdict_of(status, **facts)
    if isinstance(want, Collect):
        assert got == want, row
    else:
        assert isinstance(got, Verdict) and (got.result, got.exit_code) == want, row


def test_signal_during_a_drain_is_forsaken() -> None:
    got = verdict_of(signal.SIGTERM, draining=True)
    assert isinstance(got, Verdict) and (got.result, got.exit_code) == (TaskResult.FORSAKEN, -15)


def test_time_limit_wins_over_the_signal_it_sent() -> None:
    got = verdict_of(signal.SIGKILL, timed_out=True, draining=True)
    assert isinstance(got, Verdict) and got.result is TaskResult.MAX_WALL_TIME


@pytest.mark.parametrize("status, facts, draining, want", [
    (0, dict(python_kind="inline"), False, Collect(0)),
    (0, dict(python_kind="file"), False, Collect(0)),
    (0, dict(python_kind="error"), False, (TaskResult.SUCCESS, 1)),
    (signal.SIGKILL, dict(python_kind="crash"), False, (TaskResult.SIGNAL, -9)),
    (EXIT(70), dict(python_kind="crash"), False, (TaskResult.UNKNOWN, 1)),
    (signal.SIGKILL, dict(python_kind="crash"), True, (TaskResult.FORSAKEN, -9)),
    (signal.SIGKILL, dict(python_kind="crash", timed_out=True), False,
     (TaskResult.MAX_WALL_TIME, 9)),
    (signal.SIGKILL, dict(python_kind="crash", end_time_passed=True), False,
     (TaskResult.MAX_END_TIME, 9)),
])
def test_python_exit_matrix(status: int, facts: dict[str, Any], draining: bool,
                            want: Any) -> None:
    got = verdict_of(status, python=True, draining=draining, **facts)
    if isinstance(want, Collect):
        assert got == want
    else:
        assert isinstance(got, Verdict) and (got.result, got.exit_code) == want


@pytest.mark.parametrize("code, facts, want", [
    (0, {}, (TaskResult.SUCCESS, 0)),
    (3, {}, (TaskResult.SUCCESS, 3)),  # non-zero exit, every output there
    (9, {}, (TaskResult.SUCCESS, 9)),  # a signal, every output there
    (0, dict(missing=["out"]), (TaskResult.OUTPUT_MISSING, 0)),
    (3, dict(missing=["out"]), (TaskResult.OUTPUT_MISSING, 3)),  # whatever the exit code
    (1, dict(disk_full="big"), (TaskResult.DISK_EXHAUSTION, 1)),
    (0, dict(result_error="EIO"), (TaskResult.OUTPUT_MISSING, 1)),
])
def test_outputs_matrix(code: int, facts: dict[str, Any], want: tuple[TaskResult, int]) -> None:
    args: dict[str, Any] = dict(missing=[], disk_full="", result_error="", python_result=None)
    args.update(facts)
    v = classify_outputs(exit_code=code, **args)
    assert (v.result, v.exit_code) == want
    if args["missing"]:
        assert "out" in v.message


# ====================================================================== the core: tasks
def test_missing_output_after_a_nonzero_exit_is_output_missing_with_that_code() -> None:
    ws = connected()
    rid = start_run(ws, run_task(1, outputs=[("o1", "a"), ("o2", "b")]))
    ws.handle(ev.TaskExited(run_id=rid, wall=101.0, status=EXIT(2)))
    out = ws.handle(ev.OutputsCollected(run_id=rid, wall=102.0, stored=[("o1", 3)],
                                        missing=["b"]))
    ws.validate_state()
    (done,) = sent(out, TaskDone)
    assert (done.result, done.exit_code, done.outputs) == (TaskResult.OUTPUT_MISSING, 2, [])
    assert "o1" not in ws.entries


def test_signal_death_publishes_outputs_with_the_signal_number() -> None:
    ws = connected()
    rid = start_run(ws, run_task(1, outputs=[("o1", "a")]))
    out = ws.handle(ev.TaskExited(run_id=rid, wall=1.0, status=signal.SIGSEGV))
    assert one(out, ev.CollectOutputs).outputs == [("o1", "a")]
    (done,) = sent(ws.handle(ev.OutputsCollected(run_id=rid, wall=2.0, stored=[("o1", 1)])),
                   TaskDone)
    assert (done.result, done.exit_code, done.outputs) == (TaskResult.SUCCESS, 11, [("o1", 1)])


def test_end_time_already_passed_is_not_started() -> None:
    ws = connected()
    out = ws.handle(ev.RunRequested(now=0, task=run_task(1, time_end=99.0), wall=100.0))
    (done,) = sent(out, TaskDone)
    assert (done.result, done.exit_code) == (TaskResult.MAX_END_TIME, TIME_KILL_EXIT)
    assert of(out, ev.StartTask) == [] and ws.ledger.committed == Resources()
    # a future end time starts it; the shell enforces it
    assert one(ws.handle(ev.RunRequested(now=0, task=run_task(2, time_end=200.0), wall=100.0)),
               ev.StartTask).task.time_end == 200.0


def test_big_stdout_of_a_success_becomes_a_cache_file() -> None:
    ws = connected()
    rid = start_run(ws, run_task(4, outputs=[("o1", "a")]))
    out = ws.handle(ev.TaskExited(run_id=rid, wall=1.0, status=0, output="x" * 10,
                                  stdout_size=5_000_000, stdout_big=True,
                                  measured=[1.5, 1.0, 20.0]))
    coll = one(out, ev.CollectOutputs)
    assert coll.stdout == "stdout-4-1" and coll.outputs == [("o1", "a")]
    out = ws.handle(ev.OutputsCollected(run_id=rid, wall=2.0, stored=[("o1", 3)],
                                        stdout_stored=5_000_000))
    ws.validate_state()
    (done,) = sent(out, TaskDone)
    assert (done.stdout_file, done.stdout_size, done.output) == ("stdout-4-1", 5_000_000,
                                                                 "x" * 10)
    assert done.outputs == [("o1", 3)]  # the stdout file is not an output
    assert done.measured == [1.5, 1.0, 20.0]
    assert ws.entries["stdout-4-1"].level == CacheLevel.WORKFLOW
    # the manager retrieves it, then unlinks it
    assert [r.name for r in of(ws.handle(ev.UnlinkRequested(now=1, name="stdout-4-1")),
                              ev.RemoveFile)] == ["stdout-4-1"]


def test_big_stdout_of_a_timed_out_task_is_kept_too() -> None:
    ws = connected()
    rid = start_run(ws, run_task(5, outputs=[("o1", "a")], time_max=1.0))
    out = ws.handle(ev.TaskExited(run_id=rid, wall=1.0, status=signal.SIGKILL, timed_out=True,
                                  stdout_size=10**6, stdout_big=True))
    coll = one(out, ev.CollectOutputs)
    assert coll.outputs == [] and coll.stdout == "stdout-5-1" and sent(out, TaskDone) == []
    (done,) = sent(ws.handle(ev.OutputsCollected(run_id=rid, wall=2.0, stdout_stored=10**6)),
                   TaskDone)
    assert (done.result, done.exit_code, done.stdout_file) == (TaskResult.MAX_WALL_TIME, 9,
                                                               "stdout-5-1")
    ws.validate_state()


def test_stdout_that_could_not_be_kept_says_so_inline() -> None:
    ws = connected()
    rid = start_run(ws, run_task(6))
    ws.handle(ev.TaskExited(run_id=rid, wall=1.0, status=0, output="abc", stdout_size=10**6,
                            stdout_big=True))
    (done,) = sent(ws.handle(ev.OutputsCollected(run_id=rid, wall=2.0,
                                                 stdout_error="No space left")), TaskDone)
    assert done.stdout_file == "" and "No space left" in done.output
    assert done.output.startswith("abc") and "stdout-6-1" not in ws.entries


def test_stdout_of_a_task_killed_while_collecting_is_removed() -> None:
    ws = connected()
    rid = start_run(ws, run_task(7))
    ws.handle(ev.TaskExited(run_id=rid, wall=1.0, status=0, stdout_size=10**6, stdout_big=True))
    ws.handle(ev.KillRequested(now=1.0, task_id=7))
    out = ws.handle(ev.OutputsCollected(run_id=rid, wall=2.0, stdout_stored=10**6))
    assert [r.name for r in of(out, ev.RemoveFile)] == ["stdout-7-1"] and sent(out) == []
    ws.validate_state()


def test_small_stdout_travels_inline_with_its_size() -> None:
    ws = connected()
    rid = start_run(ws, run_task(8))
    ws.handle(ev.TaskExited(run_id=rid, wall=1.0, status=0, output="héllo", stdout_size=6))
    (done,) = sent(ws.handle(ev.OutputsCollected(run_id=rid, wall=2.0)), TaskDone)
    assert (done.output, done.stdout_file, done.stdout_size) == ("héllo", "", 6)


def test_gpu_indices_are_given_and_taken_back() -> None:
    led = Ledger(Resources(4, 100, 100, 3))
    a = led.commit(Resources(1, 0, 0, 2))
    b = led.commit(Resources(1, 0, 0, 1))
    assert (a, b) == ((0, 1), (2,))
    led.release(Resources(1, 0, 0, 2), a)
    assert led.commit(Resources(1, 0, 0, 1)) == (0,)
    ws = connected(resources=Resources(4, 1000, 1000, 2))
    out = ws.handle(ev.RunRequested(now=0, task=run_task(1, gpus=1), wall=0))
    assert one(out, ev.StartTask).gpu_ids == (0,)
    out = ws.handle(ev.RunRequested(now=0, task=run_task(2, gpus=1), wall=0))
    assert one(out, ev.StartTask).gpu_ids == (1,)
    ws.handle(ev.KillRequested(now=0, task_id=1))
    ws.validate_state()
    out = ws.handle(ev.RunRequested(now=0, task=run_task(3, gpus=1), wall=0))
    assert one(out, ev.StartTask).gpu_ids == (0,)
    ws.validate_state()


# ====================================================================== task environment
def test_task_environment() -> None:
    task = RunTask(task_id=1, attempt=1, command="true", inputs=[], outputs=[],
                   env=[("OMP_NUM_THREADS", "7"), ("MINE", "x")], cores=2, memory=300, disk=40,
                   gpus=2, time_max=0, env_unset=["HOME", "MINE"])
    env = task_environment({"DISPLAY": ":0", "HOME": "/root", "PATH": "/bin"}, task, "/sb",
                           (1, 3))
    tmp = f"/sb/{TMP_DIR_NAME}"
    assert env == {"PATH": "/bin", "CORES": "2", "OMP_NUM_THREADS": "7",
                   "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
                   "VECLIB_MAXIMUM_THREADS": "2", "NUMEXPR_NUM_THREADS": "2", "MEMORY": "300",
                   "DISK": "40", "GPUS": "2", "CUDA_VISIBLE_DEVICES": "1,3", "TMPDIR": tmp,
                   "TMP": tmp, "TEMP": tmp, "VINE_SANDBOX": "/sb"}


def test_task_environment_without_cores_or_gpus() -> None:
    sets, unset = environment_changes(run_task(cores=0, gpus=0), "/sb")
    d = dict(sets)
    assert d["CORES"] == "0" and d["OMP_NUM_THREADS"] == "1" and "CUDA_VISIBLE_DEVICES" not in d
    assert unset == ["DISPLAY"]
    task = RunTask(task_id=1, attempt=1, command="", inputs=[], outputs=[],
                   env=[("DISPLAY", ":9")], cores=1, memory=1, disk=1, gpus=0, time_max=0)
    assert task_environment({"DISPLAY": ":0"}, task, "/sb")["DISPLAY"] == ":9"


def test_wrap_command() -> None:
    assert wrap_command("echo a; echo b", "") == "echo a; echo b"
    assert wrap_command("echo a; echo b", "time -p") == "time -p /bin/sh -c 'echo a; echo b'"
    assert wrap_command("echo 'x'", "nice {}") == "nice 'echo '\"'\"'x'\"'\"''"
    assert wrap_command("echo a", "env X=1 []") == "env X=1 echo a"


# ====================================================================== take_output
def _write_output(box: Path, data: bytes) -> None:
    (box / OUTPUT_NAME).write_bytes(data)


def test_take_output_small_large_and_truncated(tmp_path: Path) -> None:
    _write_output(tmp_path, b"hello\n")
    out = take_output(str(tmp_path), 1 << 30)
    assert (out.text, out.size, out.big) == ("hello\n", 6, False)
    big = b"a" * OUTPUT_INLINE_MAX + b"b" * 1000
    _write_output(tmp_path, big)
    out = take_output(str(tmp_path), 1 << 30)
    assert out.big and out.text == "a" * OUTPUT_INLINE_MAX and out.size == len(big)
    assert (tmp_path / OUTPUT_NAME).read_bytes() == big
    _write_output(tmp_path, big)
    out = take_output(str(tmp_path), OUTPUT_INLINE_MAX + 10)
    kept = (tmp_path / OUTPUT_NAME).read_bytes()
    assert out.big and out.size == len(kept)
    assert kept.startswith(b"a" * OUTPUT_INLINE_MAX + b"b" * 10 + b"\n[vinework: output truncated")
    assert kept.endswith(b"]\n") and kept.count(b"\n") == 2


def test_take_output_with_a_small_stdout_max_stays_inline(tmp_path: Path) -> None:
    _write_output(tmp_path, b"0123456789" * 10)
    out = take_output(str(tmp_path), 15)
    assert not out.big and out.text.startswith("012345678901234\n[vinework: output truncated")
    assert take_output(str(tmp_path / "nowhere"), 100).size == 0


# ====================================================================== real workers
def run_msg(task_id: int, command: str, **kw: Any) -> RunTask:
    fields: dict[str, Any] = dict(task_id=task_id, attempt=1, command=command, inputs=[],
                                  outputs=[], env=[], cores=1, memory=10, disk=10, gpus=0,
                                  time_max=0)
    fields.update(kw)
    return RunTask(**fields)


def run_one(m: FakeManager, msg: RunTask, timeout: float = 20.0) -> TaskDone:
    m.send(msg)
    done: TaskDone = m.recv_type(TaskDone, timeout=timeout)
    assert done.task_id == msg.task_id
    return done


@pytest.fixture
def fm() -> Iterator[FakeManager]:
    m = FakeManager()
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """``spawn(*args)``: a worker process on its own --workdir, ended by pid at teardown."""
    procs: list[WorkerProc] = []

    def start_worker(*args: str) -> WorkerProc:
        w = WorkerProc([*args, "--workdir", str(tmp_path / f"w{len(procs)}")])
        procs.append(w)
        return w

    try:
        yield start_worker
    finally:
        for w in procs:
            w.stop()


@dataclass
class Connected:
    fake: FakeManager
    hello: Hello


@pytest.fixture
def worker(spawn: Any, fm: FakeManager) -> Connected:
    """A real worker (4 cores) connected to the fake manager."""
    spawn("127.0.0.1", str(fm.port), "--cores", "4", "--memory", "1000", "--disk", "1000")
    return Connected(fm, fm.handshake(interval=1.0, timeout=60.0))


def test_outcomes_of_real_commands(worker: Connected, tmp_path: Path) -> None:
    m = worker.fake
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    cases = [
        (run_msg(1, "echo out > o; exit 3", outputs=[("c-o1", "o")]),
         (TaskResult.SUCCESS, 3, ["c-o1"])),
        (run_msg(2, "exit 4", outputs=[("c-o2", "never")]), (TaskResult.OUTPUT_MISSING, 4, [])),
        (run_msg(3, "no-such-command-vinework"), (TaskResult.SUCCESS, 127, [])),
        (run_msg(4, str(script)), (TaskResult.SUCCESS, 126, [])),
        (run_msg(5, "echo x > o; kill -9 $$", outputs=[("c-o5", "o")]),
         (TaskResult.SUCCESS, 9, ["c-o5"])),
        (run_msg(6, "sleep 30", time_max=0.3), (TaskResult.MAX_WALL_TIME, 9, [])),
        (run_msg(7, "sleep 30", time_end=time.time() + 0.3), (TaskResult.MAX_END_TIME, 9, [])),
        (run_msg(8, "true", time_end=time.time() - 1), (TaskResult.MAX_END_TIME, 9, [])),
    ]
    for msg, (result, code, outs) in cases:
        done = run_one(m, msg)
        got = (done.result, done.exit_code, [n for n, _ in done.outputs])
        assert got == (result, code, outs), (msg.command, done.message, done.output)


def test_the_environment_a_command_sees(worker: Connected) -> None:
    names = ["CORES", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "MEMORY", "DISK", "GPUS",
             "TMPDIR", "TMP", "TEMP", "DISPLAY", "MINE", "GONE", "HOME"]
    dump = ("python3 -c 'import json, os, sys; json.dump({n: os.environ.get(n) for n in "
            f"sys.argv[1:]}}, sys.stdout)' {' '.join(names)}; "
            "test -d \"$TMPDIR\" && test -w \"$TMPDIR\" || exit 5")
    done = run_one(worker.fake, run_msg(
        1, dump, cores=3, memory=200, disk=30, env=[("MINE", "yes"), ("GONE", "x")],
        env_unset=["GONE", "HOME"]))
    assert (done.result, done.exit_code) == (TaskResult.SUCCESS, 0), done.output
    env = json.loads(done.output)
    tmp = env["TMPDIR"]
    assert tmp.endswith("/" + TMP_DIR_NAME) and env["TMP"] == env["TEMP"] == tmp
    assert {k: env[k] for k in names if k not in ("TMPDIR", "TMP", "TEMP")} == {
        "CORES": "3", "OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3", "VECLIB_MAXIMUM_THREADS": "3", "NUMEXPR_NUM_THREADS": "3",
        "MEMORY": "200", "DISK": "30", "GPUS": "0", "DISPLAY": None, "MINE": "yes",
        "GONE": None, "HOME": None}


def test_measured_wall_cpu_and_memory(worker: Connected) -> None:
    burn = ("python3 -c 'import time\nb = bytearray(60 << 20)\nt = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass'")
    done = run_one(worker.fake, run_msg(1, burn))
    assert done.result == TaskResult.SUCCESS and done.exit_code == 0, done.output
    wall, cpu, rss = done.measured
    assert wall >= cpu >= 0.3  # one thread: cpu time cannot exceed wall time
    assert 60 <= rss < 1000  # the bytearray's 60 MB, measured through /bin/sh's wait


def test_big_stdout_is_kept_in_the_cache_and_served(worker: Connected, tmp_path: Path
                                                    ) -> None:
    m, hello = worker.fake, worker.hello
    n = 3 * OUTPUT_INLINE_MAX
    done = run_one(m, run_msg(1, f"head -c {n} /dev/zero | tr '\\0' x; echo end >&2"))
    assert done.result == TaskResult.SUCCESS and done.stdout_file == "stdout-1-1"
    assert done.stdout_size == n + 4 and done.output == "x" * OUTPUT_INLINE_MAX
    dest = tmp_path / "got"
    size, _ = fetch_file("127.0.0.1", hello.transfer_port, "stdout-1-1", str(dest),
                         token=make_token(TRANSFER_KEY, "stdout-1-1"))
    assert size == n + 4 and dest.read_bytes() == b"x" * n + b"end\n"
    # capped at stdout_max, with the notice
    done = run_one(m, run_msg(2, f"head -c {n} /dev/zero", stdout_max=OUTPUT_INLINE_MAX + 5))
    size, _ = fetch_file("127.0.0.1", hello.transfer_port, "stdout-2-1", str(dest),
                         token=make_token(TRANSFER_KEY, "stdout-2-1"))
    data = dest.read_bytes()
    assert size == done.stdout_size == len(data) and b"output truncated" in data
    # the manager unlinks it once retrieved
    m.send(Unlink(name="stdout-1-1"))
    m.send(run_msg(3, "true"))  # a marker: the Unlink was handled before it
    m.recv_type(TaskDone)
    with pytest.raises(TransferError):
        fetch_file("127.0.0.1", hello.transfer_port, "stdout-1-1", str(dest),
                         token=make_token(TRANSFER_KEY, "stdout-1-1"))


def test_python_task_environment_measured_and_time_limit(worker: Connected) -> None:
    from vinework.pickling import dumps_call

    def env_of() -> dict[str, str | None]:
        import os as _os
        import tempfile as _tempfile

        return {n: _os.environ.get(n) for n in ("CORES", "MEMORY", "DISPLAY", "MINE", "GONE")} \
            | {"tmp": _tempfile.gettempdir()}

    import cloudpickle

    for mode in ("direct", "fork"):
        msg = run_msg(10 if mode == "direct" else 11, "", cores=2, memory=77,
                      env=[("MINE", "m"), ("GONE", "g")], env_unset=["GONE"],
                      python_payload=dumps_call(env_of, (), {}), python_mode=mode)
        done = run_one(worker.fake, msg)
        assert done.result == TaskResult.SUCCESS, (mode, done.message, done.python_error)
        assert done.python_result is not None
        value = cloudpickle.loads(done.python_result)
        assert value["tmp"].endswith(TMP_DIR_NAME), mode
        del value["tmp"]
        assert value == {"CORES": "2", "MEMORY": "77", "DISPLAY": None, "MINE": "m",
                         "GONE": None}, mode
        assert len(done.measured) == 3 and all(x >= 0 for x in done.measured), mode

    def sleepy() -> None:
        import time as _time

        _time.sleep(30)

    for mode, tid in (("direct", 12), ("fork", 13)):
        msg = run_msg(tid, "", python_payload=dumps_call(sleepy, (), {}), python_mode=mode,
                      time_max=0.3)
        done = run_one(worker.fake, msg)
        assert (done.result, done.exit_code) == (TaskResult.MAX_WALL_TIME, 9), mode
    msg = run_msg(14, "", python_payload=dumps_call(sleepy, (), {}), python_mode="fork",
                  time_end=time.time() + 0.3)
    done = run_one(worker.fake, msg)
    assert (done.result, done.exit_code) == (TaskResult.MAX_END_TIME, 9)


def test_a_direct_call_sees_none_of_the_environment_an_earlier_call_left(
        worker: Connected) -> None:
    """Two calls in a row in one warm executor: what the first set, changed or removed
    (its task's variables, its own os.environ edits, an inherited variable it unset, its
    working directory) is gone for the second, which sees the worker's environment with
    its own task's changes only."""
    from vinework.pickling import dumps_call

    def meddle() -> int:
        import os as _os

        _os.environ["LEAKED"] = "1"
        _os.environ["HOME"] = "/nowhere"
        _os.environ.pop("PATH", None)
        _os.chdir("/")
        return _os.getpid()

    def look() -> dict[str, object]:
        import os as _os

        return {"pid": _os.getpid(), "cwd": _os.getcwd(),
                **{n: _os.environ.get(n) for n in ("FIRST", "SECOND", "LEAKED", "HOME",
                                                     "CORES", "DISPLAY")},
                "path": bool(_os.environ.get("PATH")), "vine": _os.environ.get("VINE_SANDBOX")}

    import cloudpickle

    first = run_one(worker.fake, run_msg(
        20, "", cores=2, env=[("FIRST", "a")], env_unset=["HOME"],
        python_payload=dumps_call(meddle, (), {}), python_mode="direct"))
    assert first.result == TaskResult.SUCCESS, (first.message, first.python_error)
    second = run_one(worker.fake, run_msg(
        21, "", cores=1, env=[("SECOND", "b")],
        python_payload=dumps_call(look, (), {}), python_mode="direct"))
    assert second.result == TaskResult.SUCCESS, (second.message, second.python_error)
    assert second.python_result is not None and first.python_result is not None
    seen = cloudpickle.loads(second.python_result)
    assert seen["pid"] == cloudpickle.loads(first.python_result)  # the same executor
    assert seen["cwd"] == seen["vine"]  # its own sandbox
    assert seen["FIRST"] is None and seen["LEAKED"] is None and seen["SECOND"] == "b"
    assert seen["HOME"] == os.environ.get("HOME") and seen["path"]
    assert seen["CORES"] == "1" and seen["DISPLAY"] is None


def test_task_wrapper_wraps_every_command(spawn: Any, fm: FakeManager) -> None:
    spawn("127.0.0.1", str(fm.port), "--task-wrapper", "env WRAPPED=yes")
    fm.handshake(interval=1.0, timeout=60.0)
    done = run_one(fm, run_msg(1, "echo $WRAPPED; echo two"))
    assert done.output == "yes\ntwo\n" and done.exit_code == 0
