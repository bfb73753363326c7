"""Serverless libraries in the core: installed libraries, their instances, and the calls.

Theory of operation
-------------------
*Libraries and instances.* ``install_library`` records a ``LibrarySpec``; no
process starts then. An *instance* is one running copy of a library on one
worker: it holds the library's resources there (by TaskVine's rule, a whole
worker unless the library set some) and runs up to ``slots`` calls at once
(default: its cores). Instances start on demand: a READY FunctionCall goes to
the instance of its library with the most free slots; when none has a free
slot, a new instance is started on a worker where the library fits, if need
be by evicting idle instances (no call assigned) of *other* libraries there,
never a busy one. So several instances share a worker when their resources
allow, and a worker serving one library can be taken over by another. A plain
task that needs the resources of idle instances evicts them too, but only
instances idle for ``IDLE_GRACE_FOR_TASKS`` seconds whose library has no call
waiting (calls come in waves: without that, tasks and calls taking turns on a
worker would restart the library every time).

*Starting.* An instance is made when its first call is placed, and its
``StartLibrary`` is sent just before that call's ``RunTask`` (so the
library's own input files, staged with the call, are on the worker first).
``LibraryReady`` (the set-up ran: functions loaded, context made) records the
process id; ``LibraryEnded`` (it crashed, a call exited it, its set-up failed,
it was stopped) forgets the instance and gives back its resources. The
worker reports every call the instance was running as "library exit"
*before* ``LibraryEnded``; such a call is run again (on a new instance) within
its retry budget (``set_retries(n)``; without one, ``LIBRARY_EXIT_RETRIES``),
then ends "library exit". A library is restarted by the next call that needs
it, never eagerly.

*Missing library.* A call naming a library that is not installed (never, or
removed) ends at once with "missing library".

*Broken library.* When ``SETUP_ATTEMPTS`` instances in a row fail their set-up
(the functions do not unpickle, a hoisted module does not import, the context
function raises) and none became ready in between, the library is *broken*:
its waiting calls, and every later one, end at once with "library exit" and the
set-up's error in their message, instead of starting instance after instance.
Installing it again (``remove_library`` then ``install_library``) clears that.

*Queues.* READY calls wait in one heap per library (priority, then
submission order), not in the tasks' heap: a call waits for a slot of its
library, not for cores, so one library's calls never hold up other tasks'
placement, and a pass over a blocked library costs one look at its head. A
pass runs only after something that may unblock a head (``_calls_dirty``: a
slot or resources freed, an instance or a worker gone or come, a new head), or
on a Tick: with 10,000 calls queued behind the slots, a submission costs no
pass at all.

Nothing here does I/O: instances are records, starts and stops are ``Send``
commands, log text is a ``LibraryLog`` command.
"""

from __future__ import annotations

import heapq

from ..protocol import TaskDone
from ..protocol.messages import LibraryEnded, LibraryReady, StartLibrary, StopLibrary
from .base import CoreBase
from .events import (
    LibraryInstalled,
    LibraryLog,
    LibraryRemoved,
    LibraryReported,
    LibrarySpec,
    Notice,
)
from .fast import RO, TR, T
from .records import LibraryInstance, TaskRecord, WorkerRecord
from .scheduling import Resources, could_ever_fit, task_allocation

LIBRARY_EXIT_RETRIES = 2  # re-runs of a call whose library ended under it (no set_retries)
SETUP_ATTEMPTS = 3  # instances whose set-up failed in a row before a library is broken
IDLE_GRACE_FOR_TASKS = 2.0  # seconds an instance is idle before a task may evict it


class LibraryLifecycle(CoreBase):
    """Libraries: install, remove, instances on workers, calls placed on them."""

    # ================================================================ events
    def _on_library_installed(self, ev: LibraryInstalled) -> None:
        self._calls_dirty = True
        self._lib_noted.discard(ev.spec.name)
        spec = ev.spec
        self.libraries[spec.name] = spec
        self._lib_setup_failures.pop(spec.name, None)
        self._lib_broken.pop(spec.name, None)
        self._log("LIBRARY", spec.name, "INSTALLED", spec.exec_mode, spec.slots or "-",
                  spec.cores if spec.cores is not None else "-")

    def _on_library_removed(self, ev: LibraryRemoved) -> None:
        if self.libraries.pop(ev.name, None) is None:
            return
        self._log("LIBRARY", ev.name, "REMOVED")
        for iid in list(self._lib_instances.get(ev.name, ())):
            self._stop_instance(self.instances[iid], "its library was removed")
        queue = self._lib_ready.pop(ev.name, [])
        for _, _, tid in queue:
            t = self.tasks.get(tid)
            if t is not None and t.state is T.READY:
                self._missing_library(t)

    def _on_library_reported(self, ev: LibraryReported) -> None:
        m = ev.message
        if type(m) is LibraryReady:
            inst = self.instances.get(m.instance_id)
            if inst is None or inst.worker != ev.worker_id:
                return
            inst.ready, inst.pid = True, m.pid
            self._lib_setup_failures.pop(inst.library, None)
            self._log("LIBRARY", inst.library, "STARTED", ev.worker_id, inst.instance_id,
                      m.pid)
            self._out.append(LibraryLog(inst.library, inst.instance_id, ev.worker_id,
                                        f"[vinework] instance {inst.instance_id} ready on "
                                        f"worker {ev.worker_id}, pid {m.pid}\n", self._stim))
        elif type(m) is LibraryEnded:
            name = self._instance_names.pop(m.instance_id, "")
            inst = self.instances.get(m.instance_id)
            if inst is not None and inst.worker == ev.worker_id:
                name = inst.library
                self._forget_instance(inst)
                for tid in list(inst.calls):  # assigned, not yet sent: place them again
                    t = self.tasks[tid]
                    if t.state is T.STAGING:
                        self._requeue(t, RO.WORKER_FAULT,
                                      f"library {name} instance {m.instance_id} ended")
            self._log("LIBRARY", name or "-", "FAILURE" if m.setup_failed else "ENDED",
                      ev.worker_id, m.instance_id, m.reason[:200])
            if m.setup_failed and name in self.libraries:
                self._setup_failed(name, m.reason)
            if name:
                head = (f"[vinework] instance {m.instance_id} on worker {ev.worker_id} "
                        f"(pid {m.pid or '?'}) ended: {m.reason}\n")
                self._out.append(LibraryLog(name, m.instance_id, ev.worker_id,
                                            m.output + ("\n" if m.output and not
                                                        m.output.endswith("\n") else "")
                                            + head, self._stim))

    # ================================================================ queries
    def library_instances(self) -> list[dict[str, object]]:
        """The running instances: library, instance id, worker, pid, slots, calls."""
        return [{"library": i.library, "instance": i.instance_id, "worker": i.worker,
                 "pid": i.pid, "ready": i.ready, "slots": i.slots, "calls": len(i.calls),
                 "calls_done": i.calls_done, "cores": i.alloc.cores,
                 "memory": i.alloc.memory, "disk": i.alloc.disk}
                for i in self.instances.values()]

    # ================================================================ readiness
    def _push_ready(self, t: TaskRecord) -> None:
        """A task became READY: into the tasks' heap, or its library's queue."""
        s = t.spec
        if not s.library:
            heapq.heappush(self._ready, (-s.priority, t.seq, s.task_id))
        elif s.library not in self.libraries:
            self._missing_library(t)
        elif s.library in self._lib_broken:
            self._broken_library(t)
        else:
            queue = self._lib_ready.setdefault(s.library, [])
            item = (-s.priority, t.seq, s.task_id)
            if not queue or item < queue[0]:
                self._calls_dirty = True  # a new head: it may be placeable
            heapq.heappush(queue, item)

    def _setup_failed(self, name: str, reason: str) -> None:
        n = self._lib_setup_failures.get(name, 0) + 1
        self._lib_setup_failures[name] = n
        if n < SETUP_ATTEMPTS or name in self._lib_broken:
            return
        why = (f"library {name} is broken: the set-up of {n} instances in a row failed "
               f"(last: {reason})")
        self._lib_broken[name] = why
        self._log("LIBRARY", name, "BROKEN", n, reason[:200])
        for _, _, tid in self._lib_ready.pop(name, []):
            t = self.tasks.get(tid)
            if t is not None and t.state is T.READY:
                self._broken_library(t)

    def _broken_library(self, t: TaskRecord) -> None:
        t.message = self._lib_broken[t.spec.library]
        self._end(t, RO.FAILED, TR.LIBRARY_EXIT, -1, "", "library broken")

    def _missing_library(self, t: TaskRecord) -> None:
        t.message = f"no library named {t.spec.library!r} is installed"
        self._end(t, RO.FAILED, TR.MISSING_LIBRARY, -1, "", "missing library")

    # ================================================================ placement
    def _schedule_calls(self) -> None:
        """Place READY calls, library by library, until each library's head cannot go."""
        self._calls_dirty = False
        if not self.workers:
            return
        for name in list(self._lib_ready):
            queue = self._lib_ready[name]
            while queue:
                t = self.tasks.get(queue[0][2])
                if t is None or t.state is not T.READY:
                    heapq.heappop(queue)
                    continue
                if t.spec.start_after and t.spec.start_after > self.now:
                    self._deferred = True
                    break
                if not self._place_call(t):
                    break
                heapq.heappop(queue)
            if not queue:
                self._lib_ready.pop(name, None)

    def _place_call(self, t: TaskRecord) -> bool:
        s = t.spec
        avoid = t.avoid
        best: LibraryInstance | None = None
        room = 0
        for iid in self._lib_instances.get(s.library, ()):
            inst = self.instances[iid]
            free = inst.slots - len(inst.calls)
            if free <= room or inst.dead:
                continue
            w = self.workers.get(inst.worker)
            if w is None or w.draining or (avoid and w.worker_id in avoid):
                continue
            best, room = inst, free
        if best is None:
            best = self._new_instance(self.libraries[s.library], t)
            if best is None:
                return False
        best.calls[s.task_id] = None
        lib = self.libraries[s.library]
        extra = [n for n, _ in lib.inputs] if not best.started else []
        t.run.instance = best.instance_id
        self._assign(t, best.worker, Resources(0, 0, 0, 0), extra)
        return True

    def _new_instance(self, lib: LibrarySpec, t: TaskRecord) -> LibraryInstance | None:
        """Start an instance of ``lib`` where it fits (evicting idle instances of other
        libraries if that makes room), or None."""
        if all(w.free.cores <= 0 and w.free.gpus <= 0 for w in self.workers.values()) \
                and not any(not i.calls and i.library != lib.name
                            for i in self.instances.values()):
            return None  # (fast: no room anywhere, and nothing to evict)
        declared = (lib.cores, lib.memory, lib.disk, lib.gpus)
        feats = t.spec.features
        choice: tuple[tuple[int, int, int], WorkerRecord, Resources,
                      list[LibraryInstance]] | None = None
        for w in self.workers.values():
            if w.draining or (t.avoid and w.worker_id in t.avoid) \
                    or (feats and not w.features.issuperset(feats)):
                continue
            alloc = task_allocation(w.total, *declared)
            if alloc.cores == 0 and alloc.gpus == 0:
                continue
            victims: list[LibraryInstance] = []
            if not alloc.fits_in(w.free):
                free = Resources(w.free.cores, w.free.memory, w.free.disk, w.free.gpus)
                idle = sorted((self.instances[i] for i in self._on_worker.get(w.worker_id, ())
                               if not self.instances[i].calls
                               and self.instances[i].library != lib.name),
                              key=lambda i: (i.since, i.instance_id))
                for inst in idle:
                    victims.append(inst)
                    free.add(inst.alloc)
                    if alloc.fits_in(free):
                        break
                if not alloc.fits_in(free):
                    continue
            key = (-len(victims), w.free.cores, -len(w.running))
            if choice is None or key > choice[0]:
                choice = (key, w, alloc, victims)
        if choice is None:
            self._explain_unplaceable_library(lib, declared)
            return None
        _, w, alloc, victims = choice
        for inst in victims:
            self._stop_instance(inst, f"evicted: idle, and library {lib.name} needs room")
        self._next_instance += 1
        slots = lib.slots if lib.slots > 0 else max(1, alloc.cores)
        inst = LibraryInstance(self._next_instance, lib.name, w.worker_id, alloc, slots,
                               since=self.now, idle_since=self.now)
        w.free.sub(alloc)
        self.instances[inst.instance_id] = inst
        self._instance_names[inst.instance_id] = lib.name
        self._lib_instances.setdefault(lib.name, {})[inst.instance_id] = None
        self._on_worker.setdefault(w.worker_id, {})[inst.instance_id] = None
        self._log("LIBRARY", lib.name, "WAITING", w.worker_id, inst.instance_id, alloc.cores,
                  alloc.memory, alloc.disk, slots)
        return inst

    def _explain_unplaceable_library(self, lib: LibrarySpec,
                                     declared: tuple[int | None, ...]) -> None:
        """Say once (a Notice) when no connected worker could ever hold the library: its
        calls wait for a bigger worker, as tasks that fit nowhere do."""
        if lib.name in self._lib_noted or not self.workers:
            return
        totals = [w.total for w in self.workers.values() if not w.draining]
        if could_ever_fit(totals, (lib.cores, lib.memory, lib.disk, lib.gpus)):
            return
        self._lib_noted.add(lib.name)
        biggest = max(totals, key=lambda r: (r.cores, r.memory, r.disk), default=None)
        have = (f"the largest has {biggest.cores} cores, {biggest.memory} MB memory, "
                f"{biggest.disk} MB disk, {biggest.gpus} gpus" if biggest else "none is up")
        text = (f"library {lib.name}: no connected worker could ever hold an instance (it "
                f"needs cores={lib.cores} memory={lib.memory} disk={lib.disk} "
                f"gpus={lib.gpus}; {have}); its calls wait for a bigger worker")
        self._out.append(Notice(text, self._stim))
        self._log("LIBRARY", lib.name, "UNPLACEABLE", text)

    def _library_start(self, t: TaskRecord) -> None:
        """Just before a call's RunTask: its instance's StartLibrary, if not sent yet."""
        inst = self.instances.get(t.run.instance)
        if inst is None or inst.started:
            return
        inst.started = True
        lib = self.libraries[inst.library]
        a = inst.alloc
        self._send(inst.worker, StartLibrary(
            instance_id=inst.instance_id, name=lib.name, payload=lib.payload,
            exec_mode=lib.exec_mode, slots=inst.slots, cores=a.cores, memory=a.memory,
            disk=a.disk, gpus=a.gpus, inputs=list(lib.inputs), env=list(lib.env),
            env_unset=list(lib.env_unset), init_command=lib.init_command))
        self._log("LIBRARY", lib.name, "SENT", inst.worker, inst.instance_id)

    def _stop_instance(self, inst: LibraryInstance, why: str) -> None:
        """Stop an instance now (its resources are free at once: the worker frees them
        when it reads the StopLibrary, before any later StartLibrary)."""
        if inst.started and inst.worker in self.workers:
            self._send(inst.worker, StopLibrary(instance_id=inst.instance_id, reason=why))
        self._log("LIBRARY", inst.library, "STOPPED", inst.worker, inst.instance_id, why)
        self._forget_instance(inst)
        if not inst.started:
            self._instance_names.pop(inst.instance_id, None)
        for tid in list(inst.calls):  # (only a removal stops a busy instance)
            t = self.tasks[tid]
            if t.state is T.STAGING:
                self._requeue(t, RO.WORKER_FAULT, why)

    def _forget_instance(self, inst: LibraryInstance) -> None:
        self._calls_dirty = True  # its resources are free
        self.instances.pop(inst.instance_id, None)
        by_lib = self._lib_instances.get(inst.library)
        if by_lib is not None:
            by_lib.pop(inst.instance_id, None)
            if not by_lib:
                del self._lib_instances[inst.library]
        on = self._on_worker.get(inst.worker)
        if on is not None:
            on.pop(inst.instance_id, None)
            if not on:
                del self._on_worker[inst.worker]
        w = self.workers.get(inst.worker)
        if w is not None:
            w.free.add(inst.alloc)

    def _forget_worker_instances(self, wid: str) -> None:
        """The worker is gone: so are its instances (their calls are requeued with it)."""
        for iid in list(self._on_worker.get(wid, ())):
            inst = self.instances[iid]
            self._log("LIBRARY", inst.library, "LOST", wid, iid)
            self._instance_names.pop(iid, None)
            self._forget_instance(inst)

    def _call_slot_freed(self, t: TaskRecord) -> None:
        """A call's run gave back its slot (it ended, or was moved)."""
        self._calls_dirty = True
        inst = self.instances.get(t.run.instance)
        if inst is not None and inst.calls.pop(t.spec.task_id, 0) is None:
            inst.calls_done += 1
            if not inst.calls:
                inst.idle_since = self.now

    # ================================================================ call outcomes
    def _call_library_exit(self, t: TaskRecord, d: TaskDone) -> None:
        """A call's library ended under it: again (a new instance), within its budget."""
        inst = self.instances.get(t.run.instance)
        if inst is not None:
            inst.dead = True  # (it holds its resources until the worker says it ended)
        n = t.spec.retries
        budget = n if n >= 1 else LIBRARY_EXIT_RETRIES
        charged = 1 + sum(1 for r in t.runs if r.recovery is t.run.recovery and r.outcome in
                          (RO.WORKER_LOST, RO.WORKER_FAULT))
        if charged > budget:
            t.message = f"{d.message} (tried {len(t.runs)} times)"
            self._end(t, RO.FAILED, TR.LIBRARY_EXIT, d.exit_code, d.output, "library exit")
            return
        self._requeue(t, RO.WORKER_FAULT, f"library exit: {d.message[:160]}")

    def _evict_idle_for_tasks(self) -> None:
        """Tasks wait for resources idle library instances hold: stop those instances
        (the library restarts on demand), on workers where that would make room."""
        if not self._ready or not self.instances:
            return
        t = self.tasks.get(self._ready[0][2])
        if t is None or t.state is not T.READY:
            return
        s = t.spec
        if s.start_after > self.now or s.mount_flags:
            return  # (not startable yet, or tied to where its strict inputs are)
        declared = self._declared(s) if self.limits else (s.cores, s.memory, s.disk, s.gpus)
        for w in self.workers.values():
            if w.draining or (t.avoid and w.worker_id in t.avoid) \
                    or (s.features and not w.features.issuperset(s.features)):
                continue
            # an instance idle for a while, whose library has no call waiting: calls come
            # in waves, and a library restart costs a process and its set-up
            idle = [i for i in (self.instances[x] for x in self._on_worker.get(w.worker_id, ()))
                    if not i.calls and self.now - i.idle_since >= IDLE_GRACE_FOR_TASKS
                    and not self._lib_ready.get(i.library)]
            if not idle:
                continue
            alloc = task_allocation(w.total, *declared)
            if alloc.fits_in(w.free):
                return  # it fits somewhere already: the scheduler's business
            free = Resources(w.free.cores, w.free.memory, w.free.disk, w.free.gpus)
            chosen = []
            for inst in idle:
                chosen.append(inst)
                free.add(inst.alloc)
                if alloc.fits_in(free):
                    for v in chosen:
                        self._stop_instance(v, f"evicted: idle, and task {s.task_id} "
                                            "needs its resources")
                    return

