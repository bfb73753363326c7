"""The Manager's controls: tuning, scheduling, resources, categories, hosts, workers.

``tune`` accepts every TaskVine tunable name: the ones that mean something in
vinework take effect, the others are accepted and logged once as having no
effect (``core.tunables.NO_EFFECT``); an unknown name or a bad value logs a
warning and returns -1, as TaskVine does. The rest are TaskVine's setters:
keepalive, scheduler, resource limits per manager and per category, category
modes, blocking hosts, shutting idle workers down, monitoring, peer transfers.
Security settings (passwords) raise ``NotImplementedError`` until they land.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .._later import not_yet
from ..constants import scheduler_name
from ..core import HoistRequested, Tuned
from ..core.events import HostBlocked, ResourcesLimited, WorkersReleased
from ..core.tunables import NO_EFFECT, TUNABLES, Tunables
from ..protocol.auth import read_password_file
from .base import ManagerBase

log = logging.getLogger("vinework.manager")

_CATEGORY_MODES = {"fixed": 0, "max": 1, "min waste": 2, "min_waste": 2, "max throughput": 3,
                   "max_throughput": 3, "greedy bucketing": 4, "greedy_bucketing": 4,
                   "exhaustive bucketing": 5, "exhaustive_bucketing": 5,
                   "det greedy bucketing": 6, "det_greedy_bucketing": 6,
                   "det exhaustive bucketing": 7, "det_exhaustive_bucketing": 7,
                   "quantized bucketing": 8, "quantized_bucketing": 8}


class ControlMethods(ManagerBase):
    """Settings that change how the manager schedules (see the module docstring)."""

    _category_modes: dict[str, int]
    _monitoring: bool

    # ------------------------------------------------------------------ tune
    def tune(self, name: str, value: Any) -> int:
        """Set a parameter by TaskVine's (or vinework's) name; 0 on success, -1 (with a
        logged warning) for an unknown name or a bad value. Never raises."""
        if name in NO_EFFECT:
            self._say_once("tune:" + name, f"tune({name!r}): accepted, no effect in vinework "
                           f"({NO_EFFECT[name]})")
            return 0
        if name not in TUNABLES:
            log.warning("tune: unknown parameter %r (ignored)", name)
            return -1
        try:
            Tunables().set(name, value)  # checked here, in the caller's thread
        except ValueError as e:
            log.warning("tune(%r, %r): %s (ignored)", name, value, e)
            return -1
        self._post(Tuned(now=time.monotonic(), name=name, value=value))
        self._tuned[name] = value
        return 0

    def disable_peer_transfers(self) -> None:
        """Move every file through the manager (the comparison baseline)."""
        self.tune("peer-transfers", False)

    def enable_peer_transfers(self) -> None:
        """Let workers fetch files from each other (the default)."""
        self.tune("peer-transfers", True)

    def set_keepalive_interval(self, interval: float) -> None:
        """Seconds between liveness messages to each worker."""
        self.tune("keepalive-interval", interval)

    def set_keepalive_timeout(self, timeout: float) -> None:
        """A worker silent this many seconds is considered lost."""
        self.tune("keepalive-timeout", timeout)

    def set_scheduler(self, scheduler: str | int) -> None:
        """How a worker is picked for a task: "files" (the one holding most of its input
        bytes; the default), "fcfs", "time", "rand", "worst", "disk", or a
        ``VINE_SCHEDULE_*`` number."""
        mode = scheduler_name(scheduler)
        if not mode:
            raise ValueError("the manager needs a scheduler, not VINE_SCHEDULE_UNSET")
        self.tune("scheduler", mode)

    # ------------------------------------------------------------------ resources
    def _limit(self, category: str, which: str, rmd: dict[str, Any]) -> None:
        known = {"cores", "memory", "disk", "gpus"}
        vals: dict[str, int | None] = {}
        for k, v in dict(rmd).items():
            if k in known:
                vals[k] = None if v is None or v < 0 else int(v)
            else:
                self._say_once(f"res:{k}", f"resource {k!r}: no effect in vinework "
                               "(cores, memory, disk and gpus are scheduled)")
        self._post(ResourcesLimited(now=time.monotonic(), category=category, which=which,
                                    cores=vals.get("cores"), memory=vals.get("memory"),
                                    disk=vals.get("disk"), gpus=vals.get("gpus")))

    def set_resources_max(self, rmd: dict[str, Any]) -> None:
        """What a task that leaves a resource unset asks for (e.g. ``{"cores": 2}``)."""
        self._limit("", "max", rmd)

    def set_resources_min(self, rmd: dict[str, Any]) -> None:
        """The least any task asks for of each resource."""
        self._limit("", "min", rmd)

    def set_category_resources_max(self, category: str, rmd: dict[str, Any]) -> None:
        """What a task of ``category`` that leaves a resource unset asks for."""
        self._limit(str(category), "max", rmd)

    def set_category_resources_min(self, category: str, rmd: dict[str, Any]) -> None:
        """The least a task of ``category`` asks for of each resource."""
        self._limit(str(category), "min", rmd)

    def set_category_first_allocation_guess(self, category: str, rmd: dict[str, Any]) -> None:
        """TaskVine's first guess for automatic allocation; vinework's categories use
        their maximum (fixed allocation), so this sets nothing and says so."""
        self._say_once("first-guess", "set_category_first_allocation_guess: no effect "
                       "(no automatic resource labelling; tasks get their category maximum)")

    def set_category_mode(self, category: str, mode: str | int) -> None:
        """How tasks of ``category`` are sized: "fixed" and "max" (a task gets what it asks
        for, else its category's maximum) take effect; the automatic modes ("min waste",
        "max throughput", bucketing) are accepted and behave as "max"."""
        if isinstance(mode, int) and not isinstance(mode, bool):
            if not 0 <= mode <= 8:
                raise ValueError(f"unknown category mode {mode}")
            number = mode
        else:
            key = str(mode).lower()
            if key not in _CATEGORY_MODES:
                raise ValueError(f"unknown category mode {mode!r}; use fixed, max, min waste, "
                                 "max throughput or a bucketing mode")
            number = _CATEGORY_MODES[key]
        if number > 1:
            self._say_once("mode:" + str(number), f"category mode {mode!r}: vinework does "
                           "not label resources automatically; it behaves as 'max'")
        self._category_modes[str(category)] = number

    def set_category_autolabel_resource(self, category: str, resource: str,
                                        autolabel: bool) -> None:
        self._say_once("autolabel", "set_category_autolabel_resource: no effect (no "
                       "automatic resource labelling)")

    def set_category_max_concurrent(self, category: str, max_concurrent: int) -> None:
        not_yet("a limit on the concurrent tasks of a category")

    def initialize_categories(self, filename: str, rm: Any = None) -> None:
        not_yet("initialize_categories (resource summaries of earlier runs)")

    def enable_monitoring(self, watchdog: bool = True, time_series: bool = False) -> None:
        """Report the resources each task used (``t.resources_measured``: wall time, cpu
        time, max rss) and ``t.limits_exceeded`` when it used more memory than it was
        given. vinework measures every task anyway; the watchdog does not kill (see the
        README), and time series are not recorded."""
        self._monitoring = True
        if time_series:
            self._say_once("time-series", "enable_monitoring(time_series=True): time "
                           "series are not recorded")

    def enable_disconnect_slow_workers(self, multiplier: float) -> None:
        self._say_once("slow", "enable_disconnect_slow_workers: no effect (slow workers "
                       "are not disconnected)")

    def enable_disconnect_slow_workers_category(self, name: str, multiplier: float) -> None:
        self.enable_disconnect_slow_workers(multiplier)

    # ------------------------------------------------------------------ hosts, workers
    def block_host(self, host: str) -> None:
        """Disconnect the workers on ``host`` (hostname or address) and refuse new ones."""
        self._post(HostBlocked(now=time.monotonic(), host=str(host)))

    def block_host_with_timeout(self, host: str, timeout: float) -> None:
        """``block_host`` for ``timeout`` seconds."""
        self._post(HostBlocked(now=time.monotonic(), host=str(host),
                               until=time.monotonic() + max(0.001, float(timeout))))

    def unblock_host(self, host: str | None = None) -> None:
        """Accept workers from ``host`` again (every host when None)."""
        self._post(HostBlocked(now=time.monotonic(), host=host or "", blocked=False))

    blacklist = block_host
    blacklist_with_timeout = block_host_with_timeout

    def blacklist_clear(self, host: str | None = None) -> None:
        self.unblock_host(host)

    def workers_shutdown(self, n: int = 0) -> int:
        """Tell up to ``n`` idle workers (0: all of them) to exit; returns how many. A
        worker holding the only copy of a temp is kept."""
        self._post(WorkersReleased(now=time.monotonic(), count=max(0, int(n))))
        return int(self._ask(lambda: self._state._released_last))

    def set_draining_by_hostname(self, hostname: str, drain_mode: bool = True) -> int:
        not_yet("set_draining_by_hostname (drain workers by name; a SIGTERM to a worker "
                "drains it)")

    def hoist_modules(self, *modules: str) -> None:
        """Have every worker's warm interpreter import these modules (TaskVine's hoisting)."""
        self._post(HoistRequested(now=time.monotonic(), modules=list(modules)))

    # ------------------------------------------------------------------ naming, security
    def set_name(self, name: str) -> None:
        """The project name (shown in logs and status; no catalog server is contacted)."""
        self.name = str(name)

    def set_property(self, name: str, value: Any) -> None:
        """A free-form property shown by ``status("manager")`` (TaskVine sends these to the
        catalog; vinework contacts none)."""
        self._properties[str(name)] = str(value)

    def set_priority(self, priority: int) -> None:
        """The manager's priority among managers sharing workers (shown by status)."""
        self._properties["priority"] = str(int(priority))

    def set_catalog_servers(self, catalogs: str) -> None:
        self._say_once("catalog", "set_catalog_servers: vinework contacts no catalog server")

    def update_catalog(self) -> None:
        self._say_once("catalog", "update_catalog: vinework contacts no catalog server")

    def set_manager_preferred_connection(self, mode: str) -> None:
        self._say_once("preferred", "set_manager_preferred_connection: no effect (workers "
                       "connect to the address they are given)")

    def set_password(self, password: str) -> None:
        """Workers must prove they know ``password`` (and the manager proves it to them)
        before anything else: a mutual HMAC challenge over fresh nonces; the password never
        crosses the network. Workers take it with ``--password FILE``. Set it before any
        worker connects (a worker admitted earlier stays)."""
        pw = password.encode() if isinstance(password, str) else bytes(password)
        if not pw:
            raise ValueError("the password is empty")
        self._server.password = pw

    def set_password_file(self, path: str) -> None:
        """``set_password`` with the contents of a file (without a trailing newline)."""
        self._server.password = read_password_file(path)

    def set_min_task_id(self, minid: int) -> int:
        """Task ids given from now on start at ``minid`` (if above the next id)."""
        with self._cond:
            self._next_id = max(self._next_id, int(minid))
            return self._next_id

    def tasks_left_count(self, ntasks: int) -> None:
        self._say_once("left", "tasks_left_count: no effect (used by TaskVine's worker "
                       "ramp-down)")
