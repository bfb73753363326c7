"""The local backend: ``vinework worker`` processes on this machine, by pid.

The workers belong to the process that made the Factory: each is started with
``--parent-pid`` (it exits within a second of that process dying, however it
dies). Draining sends SIGTERM (the worker's work and temps move elsewhere
first); ``cancel`` ends them at once, without a drain: SIGINT, then SIGKILL of
the worker's process group after ``STOP_GRACE`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

from .base import FactoryBase, JobSpec

STOP_GRACE = 3.0  # seconds a worker has to exit after SIGINT before it is SIGKILLed


class LocalBackend:
    """Worker processes of this machine; a job id is the worker's pid."""

    name = "local"

    def __init__(self, log_file: str | None) -> None:
        self.log_file = log_file
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def submit(self, job: JobSpec) -> str:
        argv = list(job.argv)
        argv += ["--parent-pid", str(os.getpid())]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        env = dict(os.environ)
        env.update(job.env)
        if job.scratch_dir:
            env["TMPDIR"] = job.scratch_dir
        try:
            p = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                 env=env, start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        self.procs[str(p.pid)] = p
        return str(p.pid)

    def alive(self, ids: list[str]) -> set[str]:
        out = set()
        for i in ids:
            p = self.procs.get(i)
            if p is not None and p.poll() is None:
                out.add(i)
            elif p is not None:
                del self.procs[i]
        return out

    def drain(self, job_id: str) -> None:
        p = self.procs.get(job_id)
        if p is not None and p.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGTERM)

    def cancel(self, ids: list[str]) -> None:
        procs = [self.procs.pop(i) for i in ids if i in self.procs]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGINT)  # at once: no drain
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=STOP_GRACE)
            with contextlib.suppress(OSError):  # its group holds its fork server
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


class LocalFactory(FactoryBase):
    """``Factory(batch_type="local")``: worker processes on this machine."""

    batch_type = "local"

    def backend(self) -> LocalBackend:
        be = LocalBackend(self.log_file)
        self.__dict__["_local"] = be
        return be

    def worker_cores(self) -> int:
        return int(self._opts["cores"] or os.cpu_count() or 1)

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        """The worker processes alive or not yet reaped (in start order)."""
        be = self.__dict__.get("_local")
        return list(be.procs.values()) if be is not None else []
