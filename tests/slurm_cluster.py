"""A real single-machine Slurm for the tests: munged, slurmctld and slurmd in a private dir.

``slurm_cluster()`` (a pytest fixture, session-scoped, for the tests that import it)
writes its own ``slurm.conf`` (the real ``hostname``, 8 CPUs claimed through
``SlurmdParameters=config_overrides`` so several one-core workers run at once on a
small machine, ``KillWait=30`` so a worker has time to drain after scancel's
SIGTERM), starts the three daemons, waits until ``sinfo`` shows the node idle and
yields a ``SlurmCluster`` whose ``env`` has ``SLURM_CONF`` set. At the end it cancels
every job still known and stops the daemons by the pids they wrote.

It skips, saying why, when not root or when the packages are missing
(``scripts/setup/slurm.sh`` installs them; CI runs that as root, so there it runs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

NODE_CPUS = 8
KILL_WAIT = 30
START_TIMEOUT = 60.0

CONF = """\
ClusterName=vinetest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge-run/munge.socket.2
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/slurmd.%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
MinJobAge=30
KillWait={kill_wait}
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""

NEEDED = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel",
          "sinfo")


@dataclass
class SlurmCluster:
    """A running single-node Slurm: its state dir, config and an environment to use it."""

    root: str
    conf: str
    env: dict[str, str]
    pids: list[int] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True) -> str:
        """Run a Slurm command against this cluster; its stdout."""
        p = subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                           timeout=30)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def jobs(self) -> dict[str, str]:
        """Job id -> state of every job Slurm still lists."""
        out = self.run("squeue", "-h", "-o", "%i %T")
        return dict(line.split(None, 1) for line in out.splitlines() if line.strip())

    def log(self, name: str) -> str:
        """The tail of one of the daemons' logs (for failure messages)."""
        try:
            with open(os.path.join(self.root, "log", name), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_from(path: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                return int(f.read().strip())
        time.sleep(0.05)
    raise RuntimeError(f"no pid file {path} after {timeout} s")


def _stop(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        # reap it if it is our child (slurmctld/slurmd daemonize, so usually not)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def skip_reason() -> str | None:
    """Why a real Slurm cannot run here, or None."""
    if os.geteuid() != 0:
        return "a single-machine Slurm needs root (CI runs as root)"
    missing = [c for c in NEEDED if shutil.which(c) is None]
    if missing:
        return (f"Slurm is not installed (missing {', '.join(missing)}); "
                "scripts/setup/slurm.sh installs it")
    return None


def start_cluster() -> SlurmCluster:
    """Start munged, slurmctld and slurmd in a fresh dir; wait until the node is idle."""
    d = tempfile.mkdtemp(prefix="vinework-slurm-")
    for sub in ("munge-key", "munge-run", "state", "spool", "log"):
        os.makedirs(os.path.join(d, sub))
    os.chmod(os.path.join(d, "munge-key"), 0o700)
    os.chmod(os.path.join(d, "munge-run"), 0o755)
    os.chmod(d, 0o755)
    host = socket.gethostname()
    conf = os.path.join(d, "slurm.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(host=host, d=d, cpus=NODE_CPUS, kill_wait=KILL_WAIT,
                            ctld_port=_free_port(), slurmd_port=_free_port()))
    env = dict(os.environ, SLURM_CONF=conf)
    env.pop("SLURM_JOB_ID", None)
    cl = SlurmCluster(root=d, conf=conf, env=env)
    key = os.path.join(d, "munge-key", "munge.key")
    subprocess.run(["mungekey", "-c", "-k", key, "-b", "1024"], check=True,
                   capture_output=True, timeout=30)
    subprocess.run(["munged", "-S", os.path.join(d, "munge-run", "munge.socket.2"),
                    f"--key-file={key}",
                    f"--pid-file={os.path.join(d, 'munge-run', 'munged.pid')}",
                    f"--log-file={os.path.join(d, 'log', 'munged.log')}",
                    f"--seed-file={os.path.join(d, 'munge-key', 'munged.seed')}"],
                   check=True, capture_output=True, timeout=30)
    cl.pids.append(_pid_from(os.path.join(d, "munge-run", "munged.pid"), 10))
    try:
        subprocess.run(["slurmctld", "-f", conf], env=env, check=True, capture_output=True,
                       timeout=30)
        cl.pids.append(_pid_from(os.path.join(d, "slurmctld.pid"), 20))
        subprocess.run(["slurmd", "-f", conf], env=env, check=True, capture_output=True,
                       timeout=30)
        cl.pids.append(_pid_from(os.path.join(d, f"slurmd.{host}.pid"), 20))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            out = cl.run("sinfo", "-h", "-N", "-o", "%T", check=False).split()
            if out and all(s.startswith("idle") for s in out):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm node not idle after {START_TIMEOUT} s "
                                   f"(sinfo: {out}); slurmd log:\n{cl.log(f'slurmd.{host}.log')}")
            time.sleep(0.2)
    except BaseException:
        stop_cluster(cl)
        raise
    return cl


def stop_cluster(cl: SlurmCluster) -> None:
    """Cancel every job, stop the daemons (by pid, slurmd first), remove the dir."""
    with contextlib.suppress(Exception):
        ids = list(cl.jobs())
        if ids:
            cl.run("scancel", "--signal=KILL", "--full", *ids, check=False)
            cl.run("scancel", *ids, check=False)
    for pid in reversed(cl.pids):
        _stop(pid)
    shutil.rmtree(cl.root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node Slurm for this test session (skips when it cannot run)."""
    why = skip_reason()
    if why is not None:
        pytest.skip(why)
    cl = start_cluster()
    try:
        yield cl
    finally:
        stop_cluster(cl)
