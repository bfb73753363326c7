"""The local factory: ``vinework worker`` processes on this machine, kept alive by a thread.

The workers belong to the process that made the Factory: each is started with
``--parent-pid`` (it exits within a second of that process dying, however it
dies), and ``stop()`` ends them at once, without a drain: SIGINT, then SIGKILL
of the worker's process group after ``STOP_GRACE`` seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any

STOP_GRACE = 3.0  # seconds a worker has to exit after SIGINT before it is SIGKILLed


class Factory:
    """Starts and stops workers for a manager (TaskVine's ``Factory``)."""

    def __init__(self, batch_type: str = "local", manager: Any = None,
                 manager_host_port: str | None = None, manager_name: str | None = None,
                 log_file: str | None = None, **kwargs: Any) -> None:
        if batch_type != "local":
            raise ValueError(f"batch_type {batch_type!r} is not supported yet; use 'local'")
        if manager is None and manager_host_port is None:
            raise ValueError("Factory needs manager= or manager_host_port='HOST:PORT'")
        if manager is not None:
            self.host, self.port = "localhost", int(manager.port)
        else:
            host, _, port = str(manager_host_port).rpartition(":")
            self.host, self.port = host or "localhost", int(port)
        self.manager = manager
        self.min_workers = 1
        self.max_workers = 1
        self.cores: int | None = None
        self.memory: int | None = None
        self.disk: int | None = None
        self.gpus: int | None = None
        self.timeout = 60.0
        self.scratch_dir: str | None = None
        self.password: str | None = None  # a password file the workers prove they know
        self.ssl = False  # workers speak TLS to the manager (Manager(ssl=...))
        self.log_file = log_file
        for k, v in kwargs.items():
            setattr(self, k, v)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Factory:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "vinework", "worker", self.host, str(self.port),
                "--timeout", str(self.timeout), "--parent-pid", str(os.getpid())]
        for opt in ("cores", "memory", "disk", "gpus"):
            v = getattr(self, opt)
            if v is not None:
                argv += [f"--{opt}", str(int(v))]
        if self.password:
            argv += ["--password", str(self.password)]
        if self.ssl:
            argv.append("--ssl")
        return argv

    def _spawn(self) -> None:
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        env = dict(os.environ)
        if self.scratch_dir:
            env["TMPDIR"] = self.scratch_dir
        p = subprocess.Popen(self._argv(), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
        self.procs.append(p)

    def _wanted(self) -> int:
        lo, hi = max(0, int(self.min_workers)), max(0, int(self.max_workers))
        hi = max(lo, hi)
        m = self.manager
        if m is None:
            return hi
        try:
            busy = not m.empty()
        except Exception:
            busy = True
        return hi if busy else lo

    def start(self) -> None:
        """Start ``min_workers`` now (at least one), and a thread that keeps the count right."""
        if self.scratch_dir is None:
            self.scratch_dir = tempfile.mkdtemp(prefix="vinework-factory-")
        with self._lock:
            for _ in range(max(1, int(self.min_workers), self._wanted())):
                self._spawn()
        self._thread = threading.Thread(target=self._supervise, daemon=True,
                                        name="vine-factory")
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                self.procs = [p for p in self.procs if p.poll() is None]
                while len(self.procs) < self._wanted() and not self._stop.is_set():
                    self._spawn()

    def stop(self) -> None:
        """Stop every worker this factory started (by pid) and wait for them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for p in self.procs:
                if p.poll() is None:
                    try:
                        os.kill(p.pid, signal.SIGINT)  # at once: no drain
                    except OSError:
                        pass
            for p in self.procs:
                try:
                    p.wait(timeout=STOP_GRACE)
                except subprocess.TimeoutExpired:
                    pass
                try:  # the worker leads its own group: its fork server goes with it
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
            self.procs.clear()
        if self.scratch_dir and self.scratch_dir.startswith(tempfile.gettempdir()):
            import shutil

            shutil.rmtree(self.scratch_dir, ignore_errors=True)

    @property
    def workers(self) -> int:
        """Worker processes currently alive."""
        return sum(1 for p in self.procs if p.poll() is None)
