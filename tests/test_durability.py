"""Real-process tests of temp-file durability: loss, recovery, replicas, checkpoints, pruning.

A manager and ``python -m vinework worker`` processes over TCP on localhost
(the ``manager``/``workers`` fixtures of conftest.py). Workers are "lost" by
SIGKILL of their process group (the worker and its fork server), by pid, the
way a machine disappears. Every wait is bounded and waits on an event (a task
back from ``m.wait``, a counter in ``m.stats``); every process is ended by pid
at teardown by the ``workers`` fixture.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import hashlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest

import vinework as vine
from vinework.txnlog import read_log

try:
    from conftest import poll_until, task_states, wait_all, wait_running, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, task_states, wait_all, wait_running, wait_workers

pytestmark = pytest.mark.timeout(60)

N_LINES = 100000
PRODUCE = f"seq 1 {N_LINES} > out"


# ---------------------------------------------------------------------- helpers
class Pool:
    """Worker processes of one manager, by their manager-side id (w1, w2, ...)."""

    def __init__(self, m: vine.Manager, start: Callable[..., subprocess.Popen[bytes]],
                 tmp_path: Any) -> None:
        self.m = m
        self._start = start
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.dirs: dict[str, str] = {}

    def start(self, cores: int = 1, disk: int = 2000) -> str:
        """Start one worker and wait until it is connected; return its worker id.

        Workers are started one at a time so that the n-th connection is ``w<n>``.
        """
        before = self.m.stats.workers_joined
        connected = self.m.stats.workers_connected
        n_dirs = len(glob.glob(str(self.tmp_path / "worker-*") + "/"))  # directories only
        p = self._start(self.m, cores=cores, memory=1000, disk=disk)
        poll_until(lambda: self.m.stats.workers_joined == before + 1, 20,
                   f"worker {before + 1} to connect")
        wait_workers(self.m, connected + 1, timeout=20)
        wid = f"w{before + 1}"
        self.procs[wid] = p
        self.dirs[wid] = str(self.tmp_path / f"worker-{n_dirs}")
        return wid

    def kill(self, wid: str) -> None:
        """SIGKILL the worker and its fork server; wait until the manager saw it go."""
        p = self.procs.pop(wid)
        lost = self.m.stats.workers_lost
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        # a SIGKILLed worker cannot remove its tmpfs scratch directory
        for d in glob.glob(f"/dev/shm/vinework-{p.pid}-*"):
            shutil.rmtree(d, ignore_errors=True)
        poll_until(lambda: self.m.stats.workers_lost == lost + 1, 15,
                   f"the manager to notice that {wid} is gone")

    def cache_path(self, wid: str, f: vine.File) -> str:
        return os.path.join(self.dirs[wid], "cache", f.cache_name)


@pytest.fixture
def pool(manager: vine.Manager, workers: Any, tmp_path: Any) -> Pool:
    return Pool(manager, workers, tmp_path)


def task(cmd: str, inputs: dict[str, vine.File] | None = None,
         outputs: dict[str, vine.File] | None = None) -> vine.Task:
    t = vine.Task(cmd)
    for remote, f in (inputs or {}).items():
        t.add_input(f, remote)
    for remote, f in (outputs or {}).items():
        t.add_output(f, remote)
    t.set_cores(1)
    return t


def wait_one(m: vine.Manager, timeout: float = 30.0) -> vine.Task:
    (t,) = wait_all(m, 1, timeout=timeout)
    return t


def assert_ok(t: vine.Task) -> None:
    assert t.successful(), (t.id, t.command, str(t.result), t.exit_code, t.output,
                            t.error_message)


def assert_drained(m: vine.Manager) -> None:
    """Nothing more comes back from wait(): no task (e.g. a recovered producer) twice."""
    assert m.wait(0.5) is None
    assert m.empty()


def produce_temp(m: vine.Manager, cmd: str = PRODUCE, checkpoint: bool = False
                 ) -> tuple[vine.File, vine.Task]:
    f = m.declare_temp(checkpoint=checkpoint)
    p = task(cmd, outputs={"out": f})
    m.submit(p)
    return f, p


# ---------------------------------------------------------------------- (a) loss + recovery
def test_lost_temp_is_recomputed_for_a_later_consumer(manager, pool):
    m = manager
    # TaskVine's one copy and recomputation: under the automatic policy the remade copy
    # would be weighed afresh once a worker was lost, and its choice (keep one copy or
    # checkpoint) depends on measured timings; test_auto_policy_* cover that choice
    m.tune("durability", "manual")
    w1 = pool.start()
    pool.start()
    f, p = produce_temp(m)
    back = wait_one(m)
    assert back is p
    assert_ok(p)
    holder = p.worker
    assert holder in (w1, "w2")
    assert m.get_file_replica_count(f) == 1
    pool.kill(holder)
    assert m.get_file_replica_count(f) == 0
    st = m.stats
    assert st.files_lost == 1 and st.tasks_recovery == 0  # lost, but nothing needs it yet

    c = task("wc -l < in", inputs={"in": f})
    m.submit(c)
    back = wait_one(m)
    assert back is c  # the recovery run of p is not returned
    assert_ok(c)
    assert c.output.strip() == str(N_LINES)
    assert c.worker != holder
    st = m.stats
    assert st.tasks_recovery == 1
    assert st.files_lost == 1
    assert st.recovery_seconds > 0
    assert st.tasks_done == 2 and st.tasks_failed == 0
    assert_drained(m)

    # (g) the file's story tells who made it, that it was lost, and the recomputation
    story = "\n".join(m.file_story(f))
    assert f"made by task {p.id} on {holder}" in story
    assert f"copy lost with worker {holder}" in story
    assert f"re-running task {p.id}" in story
    assert f"recomputed by task {p.id}" in story
    assert story.index(f"made by task {p.id}") < story.index(f"recomputed by task {p.id}")
    assert story.splitlines()[-1] == f"now: copies on {c.worker}"


def test_temp_lost_while_its_consumer_waits_is_recovered_at_once(manager, pool):
    m = manager
    pool.start()
    pool.start()
    # the slow producer takes one worker ...
    slow_f, slow = produce_temp(m, "sleep 3; seq 1 5 > out")
    slow_worker = wait_running(m, slow.id)
    # ... so the fast one runs on the other
    fast_f, fast = produce_temp(m)
    c = task("cat a b | wc -l", inputs={"a": fast_f, "b": slow_f})
    m.submit(c)
    back = wait_one(m)
    assert back is fast
    assert_ok(fast)
    assert fast.worker != slow_worker
    states = task_states(m)
    assert states[c.id][0] == "WAITING" and states[slow.id][0] == "RUNNING"

    pool.kill(fast.worker)
    # lost while a consumer needs it: the producer is re-run without waiting for the slow one
    poll_until(lambda: m.stats.tasks_recovery == 1, 5, "the recovery to start")
    assert task_states(m)[slow.id][0] == "RUNNING"

    done = wait_all(m, 2, timeout=30)
    assert {t.id for t in done} == {slow.id, c.id}
    for t in done:
        assert_ok(t)
    assert c.output.strip() == str(N_LINES + 5)
    st = m.stats
    assert st.tasks_recovery == 1 and st.files_lost == 1 and st.workers_lost == 1
    assert_drained(m)


def test_fetch_file_of_a_lost_temp_recomputes_it(manager, pool):
    m = manager
    pool.start()
    pool.start()
    f, p = produce_temp(m, "seq 1 1000 > out")
    assert_ok(wait_one(m))
    pool.kill(p.worker)
    data = m.fetch_file(f, timeout=20)
    assert data == "".join(f"{i}\n" for i in range(1, 1001)).encode()
    assert m.stats.tasks_recovery == 1
    assert_drained(m)


def test_lost_python_temp_output_is_recomputed(manager, pool):
    m = manager
    pool.start()
    pool.start()
    t = vine.PythonTask(sum, [1, 2, 3])
    t.enable_temp_output()
    m.submit(t)
    assert_ok(wait_one(m))
    pool.kill(t.worker)
    assert cloudpickle.loads(m.fetch_file(t.output_file, timeout=20)) == 6
    assert m.stats.tasks_recovery == 1
    assert_drained(m)


# ---------------------------------------------------------------------- (b) replicas
def test_two_replicas_survive_the_loss_of_the_producers_worker(manager, pool):
    m = manager
    m.tune("temp-replica-count", 2)
    pool.start()
    pool.start()
    f, p = produce_temp(m)
    assert_ok(wait_one(m))
    poll_until(lambda: m.get_file_replica_count(f) == 2, 15, "a second replica")
    assert m.stats.replicas_made >= 1
    assert m.stats.bytes_peer >= len(PRODUCE) and m.stats.bytes_peer > 0

    pool.kill(p.worker)
    assert m.get_file_replica_count(f) == 1
    c = task("wc -l < in", inputs={"in": f})
    m.submit(c)
    assert wait_one(m) is c
    assert_ok(c)
    assert c.output.strip() == str(N_LINES)
    st = m.stats
    assert st.tasks_recovery == 0 and st.files_lost == 0
    assert st.replicas_made >= 1

    # a new worker joins: the policy restores the second copy
    made = st.replicas_made
    pool.start()
    poll_until(lambda: m.get_file_replica_count(f) == 2, 15, "the lost replica to be remade")
    assert m.stats.replicas_made == made + 1
    assert_drained(m)


# ---------------------------------------------------------------------- (e) checkpoints
def test_checkpointed_temp_survives_the_loss_of_every_worker(manager, pool, tmp_path):
    m = manager
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    m.tune("checkpoint-dir", str(ckpt))
    a = pool.start()
    b = pool.start()
    f, p = produce_temp(m, checkpoint=True)
    assert_ok(wait_one(m))
    size = len("".join(f"{i}\n" for i in range(1, N_LINES + 1)))
    poll_until(lambda: m.stats.bytes_checkpointed > 0, 15, "the checkpoint")
    assert m.stats.bytes_checkpointed == size
    assert (ckpt / f.cache_name).stat().st_size == size

    pool.kill(a)
    pool.kill(b)
    assert m.stats.workers_connected == 0
    assert m.stats.files_lost == 0  # the manager still has it
    pool.start()
    c = task("wc -l < in", inputs={"in": f})
    m.submit(c)
    assert wait_one(m) is c
    assert_ok(c)
    assert c.output.strip() == str(N_LINES)
    st = m.stats
    assert st.tasks_recovery == 0 and st.files_lost == 0
    assert st.bytes_sent >= size  # it came back from the manager
    assert "checkpointed at the manager" in "\n".join(m.file_story(f))
    assert_drained(m)


def test_auto_policy_protects_new_temps_once_a_worker_was_lost(manager, pool):
    m = manager
    m.tune("durability", "auto")
    for _ in range(3):
        pool.start()
    early, p1 = produce_temp(m, "sleep 0.2; seq 1 10 > out")
    assert_ok(wait_one(m))
    assert m.stats.bytes_checkpointed == 0 and m.stats.replicas_made == 0  # no risk seen yet
    pool.kill(p1.worker)  # a worker that worked (idle ones leaving do not count as losses)
    late, p2 = produce_temp(m, "sleep 0.2; seq 1 20 > out")
    assert_ok(wait_one(m))
    # a small file with a real chance of loss: saving it at the manager is cheapest
    poll_until(lambda: m.stats.bytes_checkpointed > 0, 10, "the auto policy's checkpoint")
    for w in list(pool.procs):
        pool.kill(w)
    pool.start()
    c = task("wc -l < in", inputs={"in": late})
    m.submit(c)
    assert wait_one(m) is c
    assert_ok(c)
    assert c.output.strip() == "20"
    assert m.stats.tasks_recovery == 0
    assert "auto policy chose checkpoint" in "\n".join(m.file_story(late))
    decisions = {fields[0]: fields[1] for _, kind, fields in read_txn(m) if kind == "DURABILITY"}
    assert decisions == {early.cache_name: "ONE", late.cache_name: "CHECKPOINT"}


# ---------------------------------------------------------------------- (f) pruning
def test_released_temps_are_pruned_held_ones_are_kept(manager, pool):
    m = manager
    wid = pool.start()
    dropped, p1 = produce_temp(m, "seq 1 10 > out")
    kept, p2 = produce_temp(m, "seq 1 20 > out")
    c1 = task("wc -l < in", inputs={"in": dropped})
    c2 = task("wc -l < in", inputs={"in": kept})
    m.submit(c1)
    m.submit(c2)
    done = wait_all(m, 4, timeout=30)
    for t in done:
        assert_ok(t)
    assert c1.output.strip() == "10" and c2.output.strip() == "20"
    dropped_path = pool.cache_path(wid, dropped)
    kept_path = pool.cache_path(wid, kept)
    assert os.path.exists(dropped_path) and os.path.exists(kept_path)
    assert m.stats.files_pruned == 0

    # the user lets go of ``dropped`` (and of the tasks that named it)
    del dropped, p1, c1, done, t
    gc.collect()
    poll_until(lambda: m.stats.files_pruned == 1, 10, "the released temp to be pruned")
    poll_until(lambda: not os.path.exists(dropped_path), 10, "the worker to delete it")
    # the held one is untouched
    assert m.get_file_replica_count(kept) == 1
    assert os.path.exists(kept_path)
    assert m.stats.files_pruned == 1

    # a task after the prune still works with the held temp
    c3 = task("wc -l < in", inputs={"in": kept})
    m.submit(c3)
    assert_ok(wait_one(m))
    assert c3.output.strip() == "20"

    m.undeclare_file(kept)
    poll_until(lambda: m.get_file_replica_count(kept) == 0, 10, "the undeclared temp to go")
    poll_until(lambda: not os.path.exists(kept_path), 10, "the worker to delete it")
    assert m.stats.files_pruned == 2
    assert m.stats.tasks_recovery == 0


def test_a_pruned_temp_is_recomputed_when_a_lost_descendant_needs_it(manager, pool):
    m = manager
    first = pool.start()
    a, ta = produce_temp(m, "seq 1 1000 > out")
    b = m.declare_temp()
    tb = task("tail -n 3 in > out", inputs={"in": a}, outputs={"out": b})
    m.submit(tb)
    for t in wait_all(m, 2, timeout=30):
        assert_ok(t)
    a_path = pool.cache_path(first, a)
    del a, ta, tb, t
    gc.collect()
    poll_until(lambda: m.stats.files_pruned == 1, 10, "a to be pruned")
    poll_until(lambda: not os.path.exists(a_path), 10, "the worker to delete a")

    pool.start()
    pool.kill(first)  # b is lost; a was pruned: both must be remade
    d = task("cat in", inputs={"in": b})
    m.submit(d)
    assert wait_one(m) is d
    assert_ok(d)
    assert d.output == "998\n999\n1000\n"
    assert m.stats.tasks_recovery == 2
    # a, made again for the recovery and still released by the user, is pruned again
    poll_until(lambda: m.stats.files_pruned == 2, 10, "the remade a to be pruned again")
    assert m.get_file_replica_count(b) == 1
    assert_drained(m)


# ---------------------------------------------------------------------- (h) recursion
def test_a_lost_chain_is_recomputed_from_its_start(manager, pool):
    m = manager
    first = pool.start()
    a, ta = produce_temp(m, "seq 1 1000 > out")
    b = m.declare_temp()
    tb = task("sed -e 's/$/x/' in > out", inputs={"in": a}, outputs={"out": b})
    c = m.declare_temp()
    tc = task("grep -c 1x in > out", inputs={"in": b}, outputs={"out": c})
    m.submit(tb)
    m.submit(tc)
    for t in wait_all(m, 3, timeout=30):
        assert_ok(t)
        assert t.worker == first
    pool.start()
    pool.kill(first)
    assert m.stats.files_lost == 3

    d = task("cat in", inputs={"in": c})
    m.submit(d)
    assert wait_one(m) is d
    assert_ok(d)
    assert d.output == "100\n"  # of 1x..1000x, the lines with "1x"
    st = m.stats
    assert st.tasks_recovery == 3  # ta, tb and tc, each once
    assert_drained(m)
    log = read_txn(m)
    recovered = [int(fields[0]) for _, kind, fields in log
                 if kind == "TASK" and fields[1] == "RECOVERY"]
    assert sorted(recovered) == sorted([ta.id, tb.id, tc.id])


def test_only_the_lost_part_of_a_chain_is_recomputed(manager, pool):
    m = manager
    first = pool.start()
    a, ta = produce_temp(m, "seq 1 1000 > out")
    b = m.declare_temp()
    tb = task("tail -n 7 in > out", inputs={"in": a}, outputs={"out": b})
    m.submit(tb)
    for t in wait_all(m, 2, timeout=30):
        assert_ok(t)
    # the first worker is kept busy, so a side consumer of a runs on the second one,
    # which gets a copy of a
    blocker = task("sleep 2")
    m.submit(blocker)
    assert wait_running(m, blocker.id) == first
    second = pool.start()
    side = task("wc -l < in", inputs={"in": a})
    m.submit(side)
    got = {t.id: t for t in wait_all(m, 2, timeout=30)}
    assert got[side.id].worker == second and got[blocker.id].worker == first
    assert m.get_file_replica_count(a) == 2
    pool.kill(first)
    assert m.get_file_replica_count(a) == 1

    d = task("cat in", inputs={"in": b})
    m.submit(d)
    assert wait_one(m) is d
    assert_ok(d)
    assert d.output == "".join(f"{i}\n" for i in range(994, 1001))
    assert m.stats.tasks_recovery == 1  # only tb: a still had a copy
    assert_drained(m)


# ---------------------------------------------------------------------- (i) failed producers
def test_consumer_of_a_failed_producer_ends_input_missing(manager, pool):
    m = manager
    pool.start()
    start = time.monotonic()
    f, p = produce_temp(m, "exit 1")
    c = task("cat in", inputs={"in": f})
    m.submit(c)
    got = {t.id: t for t in wait_all(m, 2, timeout=15)}
    assert got[p.id].exit_code == 1 and not p.successful()
    assert c.result == vine.VINE_RESULT_INPUT_MISSING
    assert str(p.id) in c.error_message
    # a consumer submitted after the failure ends at once too
    late = task("cat in", inputs={"in": f})
    m.submit(late)
    assert wait_one(m, timeout=5) is late
    assert late.result == vine.VINE_RESULT_INPUT_MISSING
    assert time.monotonic() - start < 15
    assert m.stats.tasks_recovery == 0
    assert_drained(m)


def test_failed_recovery_run_ends_the_consumer_input_missing(manager, pool, tmp_path):
    m = manager
    pool.start()
    pool.start()
    mark = tmp_path / "ran-once"
    # succeeds the first time only (the workers share this host's filesystem)
    f, p = produce_temp(m, f"if [ -e {mark} ]; then exit 3; fi; touch {mark}; seq 1 10 > out")
    assert_ok(wait_one(m))
    pool.kill(p.worker)
    c = task("cat in", inputs={"in": f})
    m.submit(c)
    assert wait_one(m, timeout=15) is c
    assert c.result == vine.VINE_RESULT_INPUT_MISSING
    assert m.stats.tasks_recovery == 1
    assert_drained(m)


# ---------------------------------------------------------------------- (d) chaos
def read_txn(m: vine.Manager) -> list[tuple[int, str, list[str]]]:
    m.close()  # flushes the transaction log
    return read_log(m.txn_path)


def chaos_dag(seed: int, layers: int, width: int) -> list[tuple[int, list[int], float]]:
    """(node, input nodes, sleep seconds) in topological order; seeded."""
    rng = random.Random(seed)
    nodes: list[tuple[int, list[int], float]] = []
    for layer in range(layers):
        for j in range(width):
            i = layer * width + j
            ins: list[int] = []
            if layer > 0:
                prev = range((layer - 1) * width, layer * width)
                ins = rng.sample(prev, rng.randint(1, 2))
                if layer > 1 and rng.random() < 0.5:
                    ins.append(rng.randrange(0, (layer - 1) * width))
            nodes.append((i, sorted(set(ins)), rng.uniform(0.02, 0.05)))
    return nodes


def chaos_command(i: int, ins: list[int], secs: float) -> str:
    cat = " ".join(f"in{k}" for k in ins)
    return f"sleep {secs:.3f}; ({'cat ' + cat + '; ' if ins else ''}echo {i}) | md5sum > out"


def chaos_expected(nodes: list[tuple[int, list[int], float]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for i, ins, _ in nodes:
        data = b"".join(out[k] for k in ins) + f"{i}\n".encode()
        out[i] = (hashlib.md5(data).hexdigest() + "  -\n").encode()
    return out


def test_chaos_dag_of_temps_survives_random_worker_kills(manager, pool, tmp_path):
    """150 tasks on 4 workers; a seeded schedule kills a random worker every 1-2 s (3 times).

    The last layer (which also reads temps of earlier layers) is submitted once the
    kills are over, so that temps lost with the killed workers are needed again.
    """
    m = manager
    layers, width = 10, 15
    nodes = chaos_dag(1, layers, width)
    expected = chaos_expected(nodes)
    for _ in range(4):
        pool.start()
    temps: dict[int, vine.File] = {}
    sinks: dict[int, str] = {}
    ids: set[int] = set()
    last_layer = (layers - 1) * width

    def submit(i: int, ins: list[int], secs: float) -> None:
        t = vine.Task(chaos_command(i, ins, secs))
        t.set_cores(1)
        for k in ins:
            t.add_input(temps[k], f"in{k}")
        if i >= last_layer:  # the last layer comes back to the manager
            sinks[i] = str(tmp_path / f"sink-{i}")
            t.add_output(m.declare_file(sinks[i]), "out")
        else:
            temps[i] = m.declare_temp()
            t.add_output(temps[i], "out")
        ids.add(m.submit(t))

    for node in nodes[:last_layer]:
        submit(*node)
    rng = random.Random(1)
    kills = 0
    next_kill = time.monotonic() + rng.uniform(1, 2)
    returned: list[int] = []
    deadline = time.monotonic() + 45
    while len(returned) < len(nodes):
        assert time.monotonic() < deadline, f"{len(returned)} of {len(nodes)} back; {m.stats}"
        t = m.wait(0.05)
        if t is not None:
            assert_ok(t)
            returned.append(t.id)
        if kills < 3 and time.monotonic() >= next_kill:
            victim = rng.choice(sorted(pool.procs, key=lambda w: int(w[1:])))
            pool.kill(victim)
            pool.start()
            kills += 1
            next_kill = time.monotonic() + rng.uniform(1, 2)
        if kills == 3 and len(ids) == last_layer and len(returned) == last_layer:
            for node in nodes[last_layer:]:
                submit(*node)
    assert sorted(returned) == sorted(ids)  # each task exactly once
    assert len(ids) == len(nodes)
    assert_drained(m)
    for i, path in sinks.items():
        with open(path, "rb") as fh:
            assert fh.read() == expected[i], i
    # temps read back from wherever they now live (recomputed if need be) are right too
    for i in rng.sample(sorted(temps), 10):
        assert m.fetch_file(temps[i], timeout=20) == expected[i], i

    st = m.stats
    assert kills == 3 and st.workers_lost == 3 and st.workers_connected == 4
    assert st.tasks_done == len(nodes) and st.tasks_failed == 0
    assert st.tasks_recovery >= 1 and st.files_lost >= 1
    log = read_txn(m)
    temp_names = {f.cache_name for f in temps.values()}
    lost_at: dict[str, int] = {}
    recoveries = 0
    for n, (_, kind, fields) in enumerate(log):
        if kind == "FILE" and fields[1] == "LOST":
            lost_at.setdefault(fields[0], n)
        if kind == "TASK" and fields[1] == "RECOVERY":
            recoveries += 1
            assert fields[4:6] == ["to", "remake"], fields
            name = fields[6]
            assert name in temp_names
            assert name in lost_at and lost_at[name] < n, (
                f"recovery of {name} without a loss before it:\n"
                + "\n".join(" ".join([kind, *fields]) for _, kind, fields in log
                             if name in fields or any(name in x for x in fields)))
    assert recoveries == st.tasks_recovery
    assert st.tasks_recovery <= st.files_lost
    print(f"chaos: kills={kills} files_lost={st.files_lost} recoveries={recoveries} "
          f"recovery_seconds={st.recovery_seconds:.2f}")
