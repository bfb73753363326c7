"""What every batch system's factory shares: options, demand, supervision, cleanup.

``FactoryBase`` holds TaskVine's factory options as attributes (``_`` for ``-``):
an unknown one raises ``AttributeError``; options TaskVine fixes once the factory
runs (``batch_type``, ``manager_name`` and the ones not in ``CHANGEABLE``) raise
``ValueError`` when set after ``start()``. A thread looks at the manager every
``cycle`` seconds, computes how many workers it wants (``wanted``: between
``min_workers`` and ``max_workers``, enough cores for the waiting and running
tasks, at most ``workers_per_cycle`` new ones a cycle), submits jobs through the
batch system's ``Backend`` and notices jobs the batch system ended (they are
replaced while still wanted). Idle workers leave by their own ``--timeout``
(a worker's idle timeout drains it first); lowering ``max_workers`` while running
drains the surplus (SIGTERM through the batch system).

``stop()`` (also at ``__exit__``, at interpreter exit and on SIGTERM) cancels every
job the factory submitted.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

log = logging.getLogger("vinework.factory")

# TaskVine's vine_factory options, by attribute name, with vinework's defaults
OPTIONS: dict[str, Any] = {
    "amazon_config": None, "autosize": False, "batch_options": None, "capacity": False,
    "catalog": None, "condor_requirements": None, "config_file": None, "cores": None,
    "debug": None, "debug_file": None, "debug_file_size": None, "disk": None,
    "env": None, "extra_options": None, "factory_timeout": None, "foremen_name": None,
    "gpus": None, "k8s_image": None, "k8s_worker_image": None, "max_workers": 1,
    "memory": None, "mesos_master": None, "mesos_path": None, "mesos_preload": None,
    "min_workers": 1, "password": None, "python_env": None, "python_package": None,
    "run_factory_as_manager": False, "runos": None, "scratch_dir": None, "ssl": False,
    "tasks_per_worker": None, "timeout": 60.0, "worker_binary": None,
    "workers_per_cycle": 5, "wrapper": None, "wrapper_input": None,
}
# changeable while the factory runs (TaskVine's list)
CHANGEABLE = frozenset(
    "autosize capacity cores disk factory_timeout foremen_name manager_name max_workers "
    "memory min_workers tasks_per_worker timeout workers_per_cycle condor_requirements"
    .split())
# TaskVine options vinework cannot honour (no catalog, Amazon, Mesos, foremen, packed
# Python environments or wrappers): setting one to anything but its default raises
# NotImplementedError
UNSUPPORTED = frozenset(
    "amazon_config catalog foremen_name mesos_master mesos_path mesos_preload runos "
    "run_factory_as_manager python_env python_package wrapper wrapper_input capacity "
    "autosize".split())
CYCLE = 1.0  # seconds between looks at the manager (TaskVine: 30 s)
MANY_TASKS = 2000  # above this, demand comes from m.stats (waiting tasks: one core each)


class Backend(Protocol):
    """One batch system: submit a worker, say which jobs live, drain or cancel them."""

    name: str

    def submit(self, job: JobSpec) -> str:
        """Submit one worker job; its id (raises RuntimeError with the system's words)."""

    def alive(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are still pending or running."""

    def drain(self, job_id: str) -> None:
        """SIGTERM the worker: it drains (its work and temps move away), then exits."""

    def cancel(self, ids: list[str]) -> None:
        """End these jobs now."""


@dataclass
class JobSpec:
    """What one worker job needs: its command line, resources and environment."""

    argv: list[str]
    cores: int | None
    memory: int | None  # MB
    disk: int | None  # MB
    gpus: int | None
    env: dict[str, str] = field(default_factory=dict)
    batch_options: str = ""
    scratch_dir: str = ""
    index: int = 0
    condor_requirements: str = ""
    image: str = ""


_live: weakref.WeakSet[FactoryBase] = weakref.WeakSet()
_hooked = False
_prev_term: Any = None


def _stop_all() -> None:
    for f in list(_live):
        with contextlib.suppress(Exception):
            f.stop()


def _on_term(signum: int, frame: FrameType | None) -> None:
    _stop_all()
    prev = _prev_term
    if callable(prev):
        prev(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _hook_exit() -> None:
    """Cancel every live factory's jobs at interpreter exit and on SIGTERM (main thread)."""
    global _hooked, _prev_term
    if _hooked:
        return
    _hooked = True
    atexit.register(_stop_all)
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            prev = signal.getsignal(signal.SIGTERM)
            if prev in (signal.SIG_DFL, None) or callable(prev):
                _prev_term = prev if callable(prev) else None
                signal.signal(signal.SIGTERM, _on_term)


BATCH_TYPES = {"local": ("local", "LocalFactory"), "slurm": ("slurm", "SlurmFactory"),
               "condor": ("specs", "CondorFactory"), "pbs": ("specs", "PbsFactory"),
               "torque": ("specs", "PbsFactory"), "sge": ("specs", "SgeFactory"),
               "uge": ("specs", "SgeFactory"), "lsf": ("specs", "LsfFactory"),
               "k8s": ("specs", "K8sFactory")}


class FactoryBase:
    """TaskVine's ``Factory``: keeps workers for a manager alive through a batch system.

    ``Factory(batch_type=...)`` makes the factory of that batch system (one of
    ``BATCH_TYPES``; anything else raises ValueError).
    """

    batch_type = "local"

    def __new__(cls, batch_type: str = "local", *args: Any, **kwargs: Any) -> FactoryBase:
        if cls is FactoryBase:
            if batch_type not in BATCH_TYPES:
                raise ValueError(f"batch_type {batch_type!r} is not supported; use one of "
                                 f"{', '.join(sorted(BATCH_TYPES))}")
            import importlib
            mod, name = BATCH_TYPES[batch_type]
            cls = getattr(importlib.import_module(f"vinework.factory.{mod}"), name)
        return object.__new__(cls)

    def __init__(self, batch_type: str = "local", manager: Any = None,
                 manager_host_port: str | None = None, manager_name: str | None = None,
                 factory_binary: str | None = None, worker_binary: str | None = None,
                 log_file: str | None = None, **opts: Any) -> None:
        d = self.__dict__
        d["_running"] = False
        d["_opts"] = dict(OPTIONS)
        d["batch_type"] = batch_type if batch_type in BATCH_TYPES else type(self).batch_type
        if manager_name is not None and manager is None and manager_host_port is None:
            raise ValueError("manager_name= needs a catalog server, which vinework does "
                             "not have; give manager= or manager_host_port='HOST:PORT'")
        if manager is None and manager_host_port is None:
            raise ValueError("Factory needs manager= or manager_host_port='HOST:PORT'")
        if manager is not None:
            host, port = _manager_host(), int(manager.port)
        else:
            h, sep, p = str(manager_host_port).rpartition(":")
            if not sep or not p.isdigit() or not 0 < int(p) < 65536:
                raise ValueError(f"manager_host_port {manager_host_port!r} is not HOST:PORT")
            host, port = h.strip("[]") or "localhost", int(p)
        d["manager"] = manager
        d["host"], d["port"] = host, port
        d["manager_name"] = manager_name
        d["log_file"] = log_file
        d["jobs"] = {}  # job id -> JobSpec
        d["_draining"] = set()
        d["_stop"] = threading.Event()
        d["_thread"] = None
        d["_lock"] = threading.RLock()
        d["_made_scratch"] = False
        d["_index"] = 0
        # (tasks, cores) wanted, for a factory apart from the manager (cli.py)
        d["demand_fn"] = None
        tls = getattr(manager, "using_ssl", False) if manager is not None else False
        if tls() if callable(tls) else tls:  # (a property here; a method in TaskVine)
            self._opts["ssl"] = True
        if worker_binary is not None:
            self._opts["worker_binary"] = worker_binary
        for k, v in opts.items():
            setattr(self, k, v)

    # ------------------------------------------------------------------ options
    def __getattr__(self, name: str) -> Any:
        opts = self.__dict__.get("_opts")
        if opts is not None and name in opts:
            return opts[name]
        raise AttributeError(f"{type(self).__name__} has no option {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("batch_type", "manager_name"):
            raise ValueError(f"{name} is fixed when the factory is made")
        if name not in OPTIONS:
            if name in self.__dict__ or name in type(self).__dict__:
                object.__setattr__(self, name, value)
                return
            raise AttributeError(f"{name!r} is not a factory option (TaskVine's options, "
                                 f"'_' for '-': {', '.join(sorted(OPTIONS))})")
        if name in UNSUPPORTED and value not in (None, False, OPTIONS[name]):
            raise NotImplementedError(
                f"factory option {name} ({name.replace('_', '-')}) is not supported by "
                "vinework (no catalog, Amazon, Mesos, foremen, packed Python environments "
                "or wrappers)")
        if self._running and name not in CHANGEABLE:
            raise ValueError(f"{name} cannot be changed while the factory runs")
        self._opts[name] = _check(name, value)

    def set_environment(self, env: dict[str, str]) -> None:
        """Environment variables for every worker (TaskVine's ``set_environment``)."""
        self._opts["env"] = dict(env)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> FactoryBase:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def backend(self) -> Backend:
        """The batch system this factory submits to (subclasses)."""
        raise NotImplementedError

    def start(self) -> FactoryBase:
        """Submit ``min_workers`` workers and start the thread that keeps the count right;
        returns the factory."""
        if self._running:
            return self
        d = self.__dict__
        d["_backend"] = self.backend()
        if self._opts["scratch_dir"] is None:
            self._opts["scratch_dir"] = tempfile.mkdtemp(prefix="vinework-factory-")
            d["_made_scratch"] = True
        os.makedirs(self._opts["scratch_dir"], exist_ok=True)
        d["_running"] = True
        self._stop.clear()
        _live.add(self)
        _hook_exit()
        try:
            self.cycle()
        except BaseException:
            self.stop()
            raise
        d["_thread"] = threading.Thread(target=self._supervise, daemon=True,
                                        name=f"vine-factory-{self.batch_type}")
        self._thread.start()
        return self

    def _supervise(self) -> None:
        while not self._stop.wait(CYCLE):
            try:
                self.cycle()
            except Exception as e:  # a batch command failed: say so, try next cycle
                log.warning("factory cycle: %s", e)

    def stop(self) -> None:
        """Cancel every job this factory submitted and stop its thread."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=10)
        with self._lock:
            if self.jobs and "_backend" in self.__dict__:
                self._backend.cancel(list(self.jobs))
            self.jobs.clear()
            self.__dict__["_running"] = False
        _live.discard(self)
        if self._made_scratch:
            import shutil
            shutil.rmtree(self._opts["scratch_dir"], ignore_errors=True)
            self._opts["scratch_dir"] = None
            self.__dict__["_made_scratch"] = False

    # ------------------------------------------------------------------ demand
    def worker_cores(self) -> int:
        """Cores one worker offers (its ``--cores``; unset: 1 for a batch job)."""
        return int(self._opts["cores"] or 1)

    def demand(self) -> tuple[int, int]:
        """(tasks waiting or running, cores they need) at the manager."""
        if self.demand_fn is not None:
            n, c = self.demand_fn()
            return int(n), int(c)
        m = self.manager
        if m is None:
            return 0, 0
        st = m.stats
        if st.tasks_waiting + st.tasks_on_workers > MANY_TASKS:  # skip the per-task scan
            return (st.tasks_waiting + st.tasks_on_workers,
                    st.committed_cores + st.tasks_waiting)
        rows = m.status("tasks")
        n, cores = 0, 0
        wc = self.worker_cores()
        for r in rows:
            if r.get("taskvine_state") in ("WAITING", "READY", "RUNNING", "INITIAL"):
                n += 1
                c = r.get("cores") or 0
                cores += min(wc, int(math.ceil(c))) if c and c > 0 else wc
        return n, cores

    def wanted(self) -> int:
        """Workers wanted now: clamp(min, max, enough for the manager's tasks)."""
        lo = max(0, int(self._opts["min_workers"]))
        hi = max(lo, int(self._opts["max_workers"]))
        n, cores = self.demand()
        tpw = self._opts["tasks_per_worker"]
        need = math.ceil(n / tpw) if tpw else math.ceil(cores / self.worker_cores())
        return max(lo, min(hi, need))

    def cycle(self) -> None:
        """One look: forget ended jobs, submit up to ``workers_per_cycle`` new ones,
        drain the surplus above ``max_workers``."""
        with self._lock:
            if not self._running:
                return
            be = self._backend
            if self.jobs:
                alive = be.alive(list(self.jobs))
                for jid in list(self.jobs):
                    if jid not in alive:
                        del self.jobs[jid]
                        self._draining.discard(jid)
            live = [j for j in self.jobs if j not in self._draining]
            want = self.wanted()
            per = max(1, int(self._opts["workers_per_cycle"]))
            for _ in range(min(per, max(0, want - len(live)))):
                spec = self.job_spec()
                jid = be.submit(spec)
                self.jobs[jid] = spec
                log.info("submitted worker job %s to %s", jid, be.name)
            hi = max(int(self._opts["min_workers"]), int(self._opts["max_workers"]))
            for jid in live[hi:]:
                be.drain(jid)
                self._draining.add(jid)

    # ------------------------------------------------------------------ the worker job
    def worker_argv(self) -> list[str]:
        """The worker's command line for a job of this factory."""
        o = self._opts
        wb = o["worker_binary"]
        argv = [wb] if wb else [sys.executable, "-m", "vinework", "worker"]
        argv += [self.host, str(self.port), "--timeout", str(float(o["timeout"]))]
        cores = o["cores"] if o["cores"] is not None else (
            None if self.batch_type == "local" else 1)
        for opt, v in (("cores", cores), ("memory", o["memory"]), ("disk", o["disk"]),
                       ("gpus", o["gpus"])):
            if v is not None:
                argv += [f"--{opt}", str(int(v))]
        if o["password"]:
            argv += ["--password", str(o["password"])]
        if o["ssl"]:
            argv.append("--ssl")
        if o["debug"]:
            argv.append(f"--debug={o['debug']}")
        if o["extra_options"]:
            import shlex
            argv += shlex.split(str(o["extra_options"]))
        return argv

    def job_spec(self) -> JobSpec:
        """A JobSpec for the next worker."""
        o = self._opts
        self.__dict__["_index"] = self._index + 1
        env = {str(k): str(v) for k, v in (o["env"] or {}).items()}
        return JobSpec(argv=self.worker_argv(), cores=o["cores"], memory=o["memory"],
                       disk=o["disk"], gpus=o["gpus"], env=env,
                       batch_options=str(o["batch_options"] or ""),
                       scratch_dir=str(o["scratch_dir"] or tempfile.gettempdir()),
                       index=self._index,
                       condor_requirements=_requirements(o["condor_requirements"]),
                       image=str(o["k8s_worker_image"] or o["k8s_image"] or ""))

    @property
    def workers(self) -> int:
        """Worker jobs this factory holds now (pending or running)."""
        return len(self.jobs)


def _manager_host() -> str:
    """The name workers use to reach an in-process manager: this machine's name."""
    import socket
    return socket.gethostname()


def _requirements(reqs: Any) -> str:
    if not reqs:
        return ""
    if isinstance(reqs, str):
        return reqs
    return " && ".join(f"({r})" for r in reqs)


_INTS = ("min_workers", "max_workers", "workers_per_cycle", "cores", "memory", "disk",
         "gpus", "tasks_per_worker", "factory_timeout")


def _check(name: str, value: Any) -> Any:
    """A valid value for option ``name`` (ValueError/TypeError saying why not)."""
    if value is None:
        if name in ("min_workers", "max_workers", "workers_per_cycle", "timeout"):
            raise ValueError(f"{name} needs a value")
        return None
    if name in _INTS:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"{name} must be a whole number, got {value!r}")
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {value!r}") from None
        if n < 0 or (name == "workers_per_cycle" and n < 1):
            raise ValueError(f"{name} must be {'>= 1' if name == 'workers_per_cycle' else '>= 0'}"
                             f", got {n}")
        return n
    if name == "timeout":
        try:
            t = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"timeout must be a number of seconds, got {value!r}") from None
        if not t > 0:
            raise ValueError(f"timeout must be positive, got {t}")
        return t
    if name == "env":
        if not isinstance(value, dict):
            raise TypeError(f"env must be a dict of variables, got {type(value).__name__}")
        return dict(value)
    return value
