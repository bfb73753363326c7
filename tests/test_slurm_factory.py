"""The Slurm factory against a real single-machine Slurm (tests/slurm_cluster.py).

Workers arrive as Slurm jobs; the factory scales up under load; a job cancelled
by hand with ``scancel`` (SIGTERM first) drains, so its temp moves to another
worker and nothing is recomputed; jobs killed outright lose their temps, which
the manager recovers, and the factory replaces them; lowering ``max_workers``
drains the surplus; idle workers leave by their timeout; and no job of the
factory is left after ``stop()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import vinework as vine

try:
    from conftest import poll_until, wait_all
    from slurm_cluster import SlurmCluster, slurm_cluster
except ImportError:  # pragma: no cover
    from tests.conftest import poll_until, wait_all
    from tests.slurm_cluster import SlurmCluster, slurm_cluster

__all__ = ["slurm_cluster"]

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def slurm_env(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> SlurmCluster:
    """The cluster, with SLURM_CONF set for the sbatch/squeue/scancel the factory runs."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.conf)
    return slurm_cluster


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[vine.Manager]:
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run"), shutdown=True)
    try:
        yield m
    finally:
        m.close()


def _temp_task(m: vine.Manager, data: str) -> tuple[vine.File, vine.Task]:
    f = m.declare_temp()
    t = vine.Task(f"echo {data} > out")
    t.add_output(f, "out")
    t.set_cores(1)
    return f, t


def _reader(f: vine.File) -> vine.Task:
    t = vine.Task("cat in")
    t.add_input(f, "in")
    t.set_cores(1)
    return t


def _gone(cl: SlurmCluster, ids: list[str]) -> bool:
    live = cl.jobs()
    return not any(i in live and live[i] in ("PENDING", "RUNNING", "COMPLETING")
                   for i in ids)


def test_slurm_workers_scale_drain_recover_and_clean_up(
        slurm_env: SlurmCluster, manager: vine.Manager, tmp_path: Path) -> None:
    m = manager
    f = vine.Factory(batch_type="slurm", manager=m)
    f.min_workers, f.max_workers, f.cores, f.timeout = 1, 3, 1, 60
    f.scratch_dir = str(tmp_path / "factory")
    all_jobs: list[str] = []
    with f:
        poll_until(lambda: m.stats.workers_connected == 1, 60, "the first Slurm worker")
        (first_job,) = list(f.jobs)
        all_jobs.append(first_job)
        temp, prod = _temp_task(m, "drained-data")
        m.submit(prod)
        assert wait_all(m, 1, 60)[0].successful()

        # under load: three one-core tasks want three workers
        sleepers = [vine.Task("sleep 4") for _ in range(3)]
        for t in sleepers:
            t.set_cores(1)
            m.submit(t)
        poll_until(lambda: m.stats.workers_connected == 3, 90, "three Slurm workers")
        all_jobs += [j for j in f.jobs if j not in all_jobs]
        assert all(t.successful() for t in wait_all(m, 3, 60))

        # scancel by hand: SIGTERM first, the worker drains and its temp moves away
        slurm_env.run("scancel", first_job)
        poll_until(lambda: _gone(slurm_env, [first_job]), 60, "the cancelled job to end")
        reader = _reader(temp)
        m.submit(reader)
        (done,) = wait_all(m, 1, 60)
        assert done.successful() and done.output == "drained-data\n"
        st = m.stats
        assert st.tasks_recovery == 0 and st.files_lost == 0, st

        # killed outright: every worker's temps are lost; the factory replaces the
        # workers and the manager recomputes the temp
        temp2, prod2 = _temp_task(m, "recovered-data")
        m.submit(prod2)
        assert wait_all(m, 1, 60)[0].successful()
        def settled() -> list[str]:
            live, jobs = slurm_env.jobs(), list(f.jobs)
            ok = jobs and all(live.get(j) == "RUNNING" for j in jobs) \
                and m.stats.workers_connected == len(jobs)
            return jobs if ok else []
        killed = poll_until(settled, 60, "every worker job running and connected")
        all_jobs += [j for j in killed if j not in all_jobs]
        gone_before = m.stats.workers_removed
        slurm_env.run("scancel", "--signal=KILL", "--full", *killed)
        poll_until(lambda: m.stats.workers_removed >= gone_before + len(killed), 60,
                   "the manager to see the killed workers go")
        poll_until(lambda: m.stats.workers_connected >= 1, 90, "a replacement worker")
        reader2 = _reader(temp2)
        m.submit(reader2)
        (done2,) = wait_all(m, 1, 120)
        assert done2.successful() and done2.output == "recovered-data\n"
        st = m.stats
        # recovered: recomputed, or from the copy the manager's durability policy kept
        assert st.tasks_recovery >= 1 or st.bytes_checkpointed > 0, st
        assert any(j not in killed for j in f.jobs), "the factory replaced no worker"
        all_jobs += [j for j in f.jobs if j not in all_jobs]

        # scale down by lowering max_workers while running: the surplus drains
        for t in [vine.Task("sleep 3") for _ in range(3)]:
            t.set_cores(1)
            m.submit(t)
        poll_until(lambda: len(f.jobs) >= 2, 90, "more workers under load")
        all_jobs += [j for j in f.jobs if j not in all_jobs]
        f.max_workers = f.min_workers = 1
        assert all(t.successful() for t in wait_all(m, 3, 90))
        poll_until(lambda: m.stats.workers_connected == 1, 90, "the surplus to drain")
        all_jobs += [j for j in f.jobs if j not in all_jobs]
    # stop(): every job the factory submitted is gone
    assert f.jobs == {}
    poll_until(lambda: _gone(slurm_env, all_jobs), 60, "the factory's jobs to end")


def test_idle_slurm_workers_leave_by_their_timeout(
        slurm_env: SlurmCluster, manager: vine.Manager, tmp_path: Path) -> None:
    m = manager
    f = vine.Factory(batch_type="slurm", manager=m, min_workers=0, max_workers=2,
                     cores=1, timeout=3)
    f.scratch_dir = str(tmp_path / "factory")
    with f:
        assert f.jobs == {}  # no tasks, min 0: no job
        tasks = [vine.Task("sleep 2") for _ in range(2)]
        for t in tasks:
            t.set_cores(1)
            m.submit(t)
        poll_until(lambda: len(f.jobs) == 2, 60, "two worker jobs under load")
        jobs = list(f.jobs)
        assert all(t.successful() for t in wait_all(m, 2, 90))
        poll_until(lambda: not f.jobs, 60, "idle workers to leave")
        poll_until(lambda: _gone(slurm_env, jobs), 60, "their jobs to end")
        assert m.stats.workers_removed >= 2 and m.stats.workers_connected == 0


def test_a_failing_sbatch_is_reported(slurm_env: SlurmCluster, manager: vine.Manager,
                                      tmp_path: Path) -> None:
    f = vine.Factory(batch_type="slurm", manager=manager, min_workers=1,
                     batch_options="--partition=no-such-partition")
    f.scratch_dir = str(tmp_path / "factory")
    with pytest.raises(RuntimeError, match="sbatch"):
        f.start()
    assert f.jobs == {}


SCRIPT = """
import sys, time
import vinework as vine
m = vine.Manager(port=0, run_info_path=sys.argv[1], shutdown=True)
f = vine.Factory(batch_type="slurm", manager=m, min_workers=1, cores=1, timeout=60)
f.scratch_dir = sys.argv[2]
with f:
    print(*f.jobs, flush=True)
    if sys.argv[3] == "raise":
        raise RuntimeError("the user's script failed")
    time.sleep(120)
"""


@pytest.mark.parametrize("how", ["sigterm", "raise"])
def test_jobs_are_cancelled_on_sigterm_and_on_an_exception(
        slurm_env: SlurmCluster, tmp_path: Path, how: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "run"),
                          str(tmp_path / "factory"), how], env=slurm_env.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    try:
        assert p.stdout is not None
        jobs = p.stdout.readline().split()
        assert jobs, p.stderr.read() if p.stderr else ""
        if how == "sigterm":
            os.kill(p.pid, signal.SIGTERM)
            assert p.wait(timeout=60) == -signal.SIGTERM
        else:
            assert p.wait(timeout=60) == 1
        poll_until(lambda: _gone(slurm_env, jobs), 60, "the script's jobs to be cancelled")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_vinework_factory_command_on_slurm(slurm_env: SlurmCluster, manager: vine.Manager,
                                           tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    m = manager
    p = subprocess.Popen([sys.executable, "-m", "vinework", "factory", "-T", "slurm",
                          "127.0.0.1", str(m.port), "-w", "0", "-W", "2", "--cores", "1",
                          "-t", "60", "-S", str(tmp_path / "factory")], env=slurm_env.env,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        tasks = [vine.Task("sleep 2") for _ in range(2)]
        for t in tasks:
            t.set_cores(1)
            m.submit(t)
        poll_until(lambda: m.stats.workers_connected == 2, 90, "two workers from Slurm")
        assert all(t.successful() for t in wait_all(m, 2, 60))
        jobs = [j for j, s in slurm_env.jobs().items() if s == "RUNNING"]
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=60) == 0
        poll_until(lambda: _gone(slurm_env, jobs), 60, "the command's jobs to be cancelled")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
