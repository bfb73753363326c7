"""Workers in the core: joining, liveness, leaving, draining, and explained waits.

``WorkerLifecycle`` records what each worker offers, decides liveness from
``Tick`` events (one timeout, ``keepalive-timeout``, the same one the worker
is told in its Welcome) and sends heartbeats; a lost worker's tasks get new
runs and its only copies are handled as losses. A draining worker (SIGTERM
from a batch system) takes no task; its running tasks go elsewhere and the
temps only it holds are copied to a peer with room (or checkpointed) before it
is told to go. It also explains waits: a task no connected worker could ever
run, and a manager with no worker, are each said once after a delay.
"""

from __future__ import annotations

from typing import Any

from ..protocol import (
    Heartbeat,
    Hoist,
    Kill,
    Shutdown,
    Unlink,
)
from .base import (
    CoreBase,
)
from .events import (
    DropWorker,
    HoistRequested,
    HostBlocked,
    Notice,
    Tick,
    Tuned,
    WorkerHeard,
    WorkerJoined,
    WorkerLeaving,
    WorkerLeft,
    WorkersReleased,
)
from .fast import RO, RS, T
from .records import (
    WorkerRecord,
)
from .scheduling import Resources


class WorkerLifecycle(CoreBase):
    """Workers: join, liveness, loss, drain, hints; and tuning and hoisting."""

    # ================================================================ workers
    def _on_worker_joined(self, ev: WorkerJoined) -> None:
        refuse = ""
        if self._is_blocked(ev.host, ev.hostname):
            refuse = "its host is blocked"
        elif 0 <= self.tune.max_workers <= len(self.workers):
            refuse = f"max-workers ({self.tune.max_workers}) are connected"
        if refuse:
            self._log("WORKER", ev.worker_id, "REFUSED", refuse)
            self._out.append(DropWorker(ev.worker_id, refuse, self._stim))
            return
        total = Resources(ev.cores, ev.memory, ev.disk, ev.gpus)
        w = WorkerRecord(ev.worker_id, ev.host, ev.transfer_port, ev.hostname, total,
                         Resources(ev.cores, ev.memory, ev.disk, ev.gpus), last_heard=self.now,
                         features=frozenset(ev.features), started=self.now)
        self.workers[ev.worker_id] = w
        self.stats.workers_connected += 1
        self.stats.workers_joined += 1
        self._calls_dirty = True  # (room for library instances)
        self._no_worker_since, self._no_worker_noted = None, False
        self._log("WORKER", ev.worker_id, "CONNECTION", ev.host, ev.cores, ev.memory, ev.disk)
        if self.hoisted:
            self._send(ev.worker_id, Hoist(modules=list(self.hoisted)))
        for name, size in ev.cached:
            f = self.files.get(name)
            if f is not None and not f.pruned:
                if f.size < 0:
                    f.size = size
                self.replicas.set_ready(name, ev.worker_id, size)
                self._file_became_available(name)
            elif f is None and not name.startswith(("temp-", "pyout-", "stdout-")):
                # kept by the worker from an earlier manager (cache level worker/forever):
                # it counts as a copy once a file of that name is declared (a temp never
                # outlives its manager: one we do not know is garbage)
                self._unclaimed.setdefault(name, {})[ev.worker_id] = size
            else:
                self._send(ev.worker_id, Unlink(name=name))
        for tid in self._unplaceable:  # a bigger worker may make them placeable
            u = self.tasks.get(tid)
            if u is not None:
                u.unplaceable_since = -1.0
        self._unplaceable.clear()
        self._retry_unsourced()

    def _on_worker_heard(self, ev: WorkerHeard) -> None:
        w = self.workers.get(ev.worker_id)
        if w is not None and ev.disk_used >= 0:
            w.disk_used = ev.disk_used
        if w is not None and ev.running is not None and w.running:
            self._check_listed(ev.worker_id, ev.running)

    def _on_worker_left(self, ev: WorkerLeft) -> None:
        self._worker_gone(ev.worker_id, ev.reason)

    def _worker_gone(self, wid: str, reason: str) -> None:
        w = self.workers.pop(wid, None)
        if w is None:
            return
        self.stats.workers_connected -= 1
        self.stats.workers_removed += 1
        self._forget_worker_instances(wid)
        is_loss = not w.draining or bool(self._drain_wait.get(wid))
        if is_loss:
            self.stats.workers_lost += 1  # a drained worker left as agreed: not a loss
        self._drain_wait.pop(wid, None)
        self._log("WORKER", wid, "DISCONNECTION", reason)
        if not self.workers:
            self._no_worker_since = self.now
        names, transfers = self.replicas.drop_worker(wid)
        for name in [n for n, holders in self._unclaimed.items() if wid in holders]:
            del self._unclaimed[name][wid]  # no record outlives the worker it is about
            if not self._unclaimed[name]:
                del self._unclaimed[name]
        for key in [k for k in self._mini_wait if k[1] == wid]:
            del self._mini_wait[key]
        for key in [k for k in self._stage_wait if k[1] == wid]:
            del self._stage_wait[key]
        for key in [k for k in self._unsourced if k[1] == wid]:
            del self._unsourced[key]
        forsaken = sorted(w.running)
        for tid in forsaken:
            t = self.tasks[tid]
            t.staging.clear()
            t.run.worker, t.run.alloc = None, None  # (the worker's resources are gone too)
        w.running.clear()
        lost = dict.fromkeys(names)
        for tr in transfers:  # transfers from the lost worker to others must find a new source
            if tr.dest != wid and tr.dest in self.workers:
                self.replicas.remove(tr.name, tr.dest)
                if self.available(tr.name):
                    if self._stage_wait.get((tr.name, tr.dest)):
                        self._source_transfer(tr.name, tr.dest)
                else:
                    lost[tr.name] = None
        for name in lost:
            f = self.files.get(name)
            if f is not None and not f.pruned and not self.available(name):
                self._later(self._file_lost, name, f"last copy was on {wid}")
        for tid in forsaken:  # after the losses, so a recovery is logged after its loss
            t = self.tasks[tid]
            self._later(self._run_lost, t, RO.WORKER_LOST, f"worker lost: {reason}")
        self.durability.worker_lost(wid, names, worked=is_loss and bool(w.tasks_done or names))

    def _on_worker_leaving(self, ev: WorkerLeaving) -> None:
        """Drain: no new task there; its running tasks go elsewhere; the temps only it
        holds are copied to a peer with room (else checkpointed); then tell it to go."""
        w = self.workers.get(ev.worker_id)
        if w is None or w.draining:
            return
        w.draining = True
        self._log("WORKER", w.worker_id, "DRAINING", ev.reason)
        for tid in sorted(w.running):
            t = self.tasks[tid]
            if t.state is T.RUNNING:
                self._send(w.worker_id, Kill(task_id=tid))
            self._requeue(t, RO.WORKER_LOST, f"worker draining: {ev.reason}")
        save: dict[str, None] = {}
        for name in self.replicas.files_on(w.worker_id):
            f = self.files.get(name)
            if f is None or f.at_manager or f.pruned or f.spec.kind != "temp":
                continue
            if self.replicas.state(name, w.worker_id) is not RS.READY:
                continue
            if self.replicas.count_ready(name) > 1:
                continue
            save[name] = None
            self._save_from_draining(name, w)
        self._drain_wait[w.worker_id] = save
        self._maybe_drained(w.worker_id)

    def _save_from_draining(self, name: str, w: WorkerRecord) -> None:
        f = self.files[name]
        dests = sorted((x for x in self.workers.values() if not x.draining
                        and self.replicas.state(name, x.worker_id) is None
                        and self.durability.disk_free(x) > max(0, f.size)),
                       key=lambda x: (-self.durability.disk_free(x), x.worker_id))
        if dests and self.tune.peer_transfers and f.spec.peer_transfer:
            dest = dests[0].worker_id
            self._start_fetch(name, dest, w.worker_id, replication=True)
            self.file_story_add(name, f"moving off draining {w.worker_id} to {dest}")
        else:
            self._checkpoint(name, w.worker_id)
            self.file_story_add(name, f"checkpointing off draining {w.worker_id}")

    def _drain_saved(self, name: str) -> None:
        for wid, names in self._drain_wait.items():
            if name in names and (self.replicas.count_ready(name) > 1 or self.available(name)
                                  and self.files[name].at_manager or wid not in self.workers):
                del names[name]
                self._later(self._maybe_drained, wid)

    def _maybe_drained(self, wid: str) -> None:
        names = self._drain_wait.get(wid)
        if names is not None and not names:
            self._send(wid, Shutdown(reason="drained"))
            self._log("WORKER", wid, "DRAINED", "-")

    def _on_tick(self, ev: Tick) -> None:
        timeout = self.tune.keepalive_timeout
        for w in list(self.workers.values()):
            if self.now - w.last_heard > timeout:
                why = f"no message for {timeout:g} s"
                self._out.append(DropWorker(w.worker_id, why, self._stim))
                self._worker_gone(w.worker_id, why)
        if self.now - self._heartbeat_at >= self.tune.keepalive_interval:
            self._heartbeat_at = self.now
            self._heartbeat_seq += 1
            for wid in self.workers:
                self._send(wid, Heartbeat(seq=self._heartbeat_seq))
        self._retry_unsourced()
        if self._timed and self._timed[0][0] <= self.now:
            self._expire()
        if self._deadlines and self._deadlines[0][0] <= self.now:
            self._check_deadlines()
        if self._deferred:
            self._deferred = False
            self._schedule()
        self._explain_waits()
        self._compact()

    def _compact(self) -> None:
        """Give back the tables of the big dicts once most of their entries are gone (a
        dict never shrinks by itself: after a burst of 100,000 tasks its table would stay)."""
        tables: tuple[tuple[dict[Any, Any], str], ...] = ((self.tasks, "tasks"),
                                                          (self.files, "files"))
        for d, name in tables:
            peak = self._peaks.get(name, 0)
            if len(d) > peak:
                self._peaks[name] = len(d)
            elif peak > 1024 and len(d) < peak // 4:
                keep = dict(d)  # the same dict object stays (the policy holds it)
                d.clear()
                d.update(keep)
                self._peaks[name] = len(d)

    def _explain_waits(self) -> None:
        if not self.workers and self._unreturned > 0:
            if self._no_worker_since is None:
                self._no_worker_since = self.now
            elif (not self._no_worker_noted
                  and self.now - self._no_worker_since >= self.tune.no_worker_hint_delay):
                self._no_worker_noted = True
                text = (f"{self._unreturned} task(s) wait, and no worker has been connected "
                        f"for {self.now - self._no_worker_since:.0f} s: start workers with "
                        f"'vinework worker HOST PORT' or a Factory")
                self._out.append(Notice(text, self._stim))
                self._log("MANAGER", "HINT", text)
        delay = self.tune.unplaceable_hint_delay
        for tid in list(self._unplaceable):
            t = self.tasks.get(tid)
            if t is None or t.state is not T.READY or t.unplaceable_since < 0:
                del self._unplaceable[tid]
                continue
            if self.now - t.unplaceable_since >= delay and not t.unplaceable_noted:
                t.unplaceable_noted = True
                s = t.spec
                biggest = max(self.workers.values(), key=lambda w: w.total.cores, default=None)
                have = (f"the largest has {biggest.total.cores} cores, {biggest.total.memory} MB "
                        f"memory, {biggest.total.disk} MB disk, {biggest.total.gpus} gpus"
                        if biggest else "none is connected")
                t.message = (f"no connected worker could ever run it: it needs cores={s.cores} "
                             f"memory={s.memory} disk={s.disk} gpus={s.gpus}; {have}")
                self._out.append(Notice(f"task {s.task_id}: {t.message}", self._stim))
                self._log("TASK", s.task_id, "UNPLACEABLE", "-", t.attempt, t.message)

    # ================================================================ misc
    # ================================================================ blocking, releasing
    def _is_blocked(self, host: str, hostname: str) -> bool:
        for h in (host, hostname):
            until = self._blocked.get(h)
            if until is not None:
                if until == 0 or until > self.now:
                    return True
                del self._blocked[h]
        return False

    def _on_host_blocked(self, ev: HostBlocked) -> None:
        if not ev.blocked:
            if ev.host:
                self._blocked.pop(ev.host, None)
            else:
                self._blocked.clear()
            self._log("MANAGER", "UNBLOCK", ev.host or "*")
            return
        self._blocked[ev.host] = ev.until
        self.stats.workers_blocked += 1
        self._log("MANAGER", "BLOCK", ev.host, ev.until)
        for w in list(self.workers.values()):
            if ev.host in (w.host, w.hostname):
                why = f"host {ev.host} blocked"
                self._send(w.worker_id, Shutdown(reason=why))
                self._out.append(DropWorker(w.worker_id, why, self._stim))
                self._worker_gone(w.worker_id, why)

    def _on_workers_released(self, ev: WorkersReleased) -> None:
        n = 0
        for w in list(self.workers.values()):
            if ev.count and n >= ev.count:
                break
            if w.running or w.draining:
                continue
            if any(self.replicas.count_ready(name) == 1 and self.files.get(name) is not None
                   and self.files[name].spec.kind == "temp" and not self.files[name].at_manager
                   for name in self.replicas.files_on(w.worker_id)):
                continue  # it holds the only copy of a temp: keep it
            n += 1
            self.stats.workers_released += 1
            self._send(w.worker_id, Shutdown(reason="workers_shutdown"))
            self._out.append(DropWorker(w.worker_id, "released", self._stim))
            self._worker_gone(w.worker_id, "released by workers_shutdown")
        self._released_last = n

    def _on_tuned(self, ev: Tuned) -> None:
        self.tune.set(ev.name, ev.value)
        self._log("MANAGER", "TUNE", ev.name, ev.value)

    def _on_hoist(self, ev: HoistRequested) -> None:
        new = [m for m in ev.modules if m not in self.hoisted]
        self.hoisted.extend(new)
        if new:
            for wid in self.workers:
                self._send(wid, Hoist(modules=list(new)))
