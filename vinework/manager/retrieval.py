"""Bringing files back to the manager: task outputs, ``fetch_file`` and checkpoints.

Part of the manager's pure state (mixed into ``ManagerState``): it decides
which worker to retrieve from, emits ``Retrieve`` commands, and settles the
tasks and fetch requests waiting on them when ``RetrievalDone`` arrives.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from ..constants import CacheLevel, TaskResult
from ..protocol import Unlink
from .events import FetchDone, FetchRequested, RetrievalDone, Retrieve
from .records import TaskRecord, TState, _RetrievalFor
from .replicas import MANAGER

if TYPE_CHECKING:
    from .state import ManagerState


def _retrieve(self: ManagerState, t: TaskRecord, name: str, dest: str, kind: str) -> None:
    rid = self._start_retrieval(name, t.worker or "", dest, kind, t.spec.task_id)
    t.retrievals.add(rid)

def _start_retrieval(self: ManagerState, name: str, wid: str, dest: str, kind: str, task_id: int = 0) -> int:
    rid = self._next_retrieval
    self._next_retrieval += 1
    w = self.workers[wid]
    self._retrievals[rid] = _RetrievalFor(kind, name, wid, task_id, dest)
    f = self.files.get(name)
    self._out.append(Retrieve(rid, wid, w.host, w.transfer_port, name, dest,
                              f.size if f else -1))
    return rid

def _on_retrieval_done(self: ManagerState, ev: RetrievalDone) -> None:
    r = self._retrievals.pop(ev.retrieval_id, None)
    if r is None:
        return
    w = self.workers.get(r.worker)
    if ev.ok:
        self.stats.bytes_received += ev.size
        self.stats.transfers_received += 1
        if w is not None:
            w.bytes_out += ev.size
        self._log("TRANSFER", r.name, "DONE", r.worker, MANAGER, ev.size, round(ev.seconds, 6))
        self.durability.transfer_measured(ev.size, ev.seconds, to_manager=True)
    else:
        self._log("TRANSFER", r.name, "FAILED", r.worker, MANAGER, ev.error[:200])
    if r.kind == "fetch" or r.kind == "checkpoint":
        f = self.files.get(r.name)
        if f is None:
            return
        if ev.ok:
            f.at_manager, f.manager_path = True, r.dest
            if r.kind == "checkpoint":
                self.stats.bytes_checkpointed += ev.size
                self.durability.checkpointed(r.name)
            for req in f.fetch_requests:
                self._out.append(FetchDone(req, r.dest))
            f.fetch_requests.clear()
            self._retry_unsourced()  # transfers waiting for a manager copy can start
        elif f.fetch_requests:
            if self.replicas.ready_workers(r.name):
                reqs = list(f.fetch_requests)
                f.fetch_requests.clear()
                for req in reqs:
                    self._serve_fetch(req, r.name)
            else:
                for req in f.fetch_requests:
                    self._out.append(FetchDone(req, None, f"could not fetch: {ev.error}"))
                f.fetch_requests.clear()
        self.durability.recheck(r.name)
        return
    t = self.tasks.get(r.task_id)
    if t is None or t.state is not TState.RETRIEVING or ev.retrieval_id not in t.retrievals:
        return
    t.retrievals.discard(ev.retrieval_id)
    if ev.ok:
        f = self.files.get(r.name)
        if f is not None and r.kind == "task":
            f.at_manager, f.manager_path = True, r.dest
            if f.spec.cache_level <= CacheLevel.TASK and w is not None:
                self.replicas.remove(r.name, r.worker)
                self._send(r.worker, Unlink(name=r.name))
        if r.kind == "python":
            t.result_path = r.dest
            if w is not None:
                self.replicas.remove(r.name, r.worker)
                self._send(r.worker, Unlink(name=r.name))
    elif w is None or (ev.error.startswith("source:") and t.forsaken < 3):
        # the worker went away with the outputs, or cannot serve them (a killed worker
        # refuses connections before its disconnection is seen): run the task again
        if w is not None:
            t.forsaken += 1
            self._task_log(t, "RETRY", f"output {r.name} not served: {ev.error[:120]}")
        t.retrievals.clear()
        t.worker = None
        self._requeue(t)
        return
    else:
        t.message = f"could not retrieve output {r.name}: {ev.error}"
    if not t.retrievals:
        t.worker = None
        d = t.done
        if t.message.startswith("could not retrieve"):
            self._finish(t, TaskResult.OUTPUT_TRANSFER_ERROR, d.exit_code if d else -1,
                         d.output if d else "")
        else:
            self._finish(t, TaskResult.SUCCESS, d.exit_code if d else 0, d.output if d else "")

# ================================================================ fetch_file
def _on_fetch_requested(self: ManagerState, ev: FetchRequested) -> None:
    f = self.files.get(ev.name)
    if f is None:
        self._out.append(FetchDone(ev.request_id, None, f"unknown file {ev.name}"))
        return
    self._serve_fetch(ev.request_id, ev.name)

def _serve_fetch(self: ManagerState, req: int, name: str) -> None:
    f = self.files[name]
    if f.at_manager and f.manager_path:
        self._out.append(FetchDone(req, f.manager_path))
        return
    holders = self.replicas.ready_workers(name)
    if holders:
        pending = [r for r in self._retrievals.values()
                   if r.name == name and r.kind in ("fetch", "checkpoint")]
        f.fetch_requests.append(req)
        if not pending:
            self._start_retrieval(name, holders[0],
                                  posixpath.join(self.staging_dir, name), "fetch")
        return
    if f.failed_producer is not None:
        self._out.append(FetchDone(req, None, f"producer task {f.failed_producer} failed"))
        return
    f.fetch_requests.append(req)
    if f.producer is None:
        self._out.append(FetchDone(req, None, f"no copy of {name} exists"))
        f.fetch_requests.remove(req)
        return
    self._ensure_coming(name)

# ================================================================ misc
