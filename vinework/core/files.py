"""Files in the core: declarations, transfers between caches, retrievals, fetch_file.

``FileLogistics`` keeps the manager's view of every file and moves copies: it
picks a source for each transfer (a peer first, the manager if it holds a
copy; at most ``worker-source-max-transfers`` at once per source; a failing
source avoided for a while), routes a temp through the manager when peer
transfers are off, brings outputs, large results, checkpoints and
``fetch_file`` copies back to the manager, and answers each fetch request.
Failure causes are typed (``TransferFailure``): who is to blame decides what
happens next.

URL files (kind "url", ``declare_url``) have no producer and no manager copy:
a worker fetches one from its URL itself (``Fetch.url``), unless a peer that
holds a copy can send it (peer transfers allowed). Such a file is always
*available* (it can be fetched again: never lost for good). A failed fetch
from the URL is counted per file: a permanent failure (``SOURCE_MISSING``:
HTTP 404/410, no such file) or ``url-fetch-attempts`` failures (default 3; the
worker already retried each transient error itself) end every task waiting
for it with result "forsaken" and the URL's error in its message; below that,
the tasks that waited for it on that worker are forsaken (run elsewhere, up to
``Task.set_max_forsaken``). ``fetch_file`` of a URL file brings a worker's copy,
or has a worker fetch it first.

Mini-task files (kind "mini": ``declare_minitask``, ``declare_untar``,
``declare_poncho``) are origin files too: their origin ``mini://NAME`` is the
worker that needs one making it itself, by running the mini task there. Every
input of the mini task must be in that worker's cache first: the core brings
them like inputs of the tasks waiting for the file (they join those tasks'
staging), and sends the ``Fetch`` that makes the file once the last one is
there (``_mini_wait``). A peer's copy is preferred, as for URLs; failures are
counted and end the waiting tasks as URL failures do.
"""

from __future__ import annotations

import dataclasses
import posixpath

from ..constants import CacheLevel
from ..protocol import (
    Fetch,
    TransferFailure,
    Unlink,
)
from .base import (
    WORKER_FAULT_ATTEMPTS,
    CoreBase,
)
from .events import (
    DropWorker,
    FetchDone,
    FetchRequested,
    FileDeclared,
    FileReleased,
    FileUndeclared,
    ReplicaFailed,
    ReplicaReady,
    RetrievalDone,
    Retrieve,
)
from .fast import RK, RO, TR, T
from .records import (
    FileRecord,
    RetrievalKind,
    RetrievalRecord,
    TaskRecord,
    WorkerRecord,
)
from .replicas import MANAGER, ReplicaState, Transfer, is_origin

# kinds whose every copy has the size first recorded (a URL may change between fetches)
_SIZED = frozenset(("temp", "buffer", "file"))

ORIGIN_KINDS = ("url", "mini")  # files a worker gets from their origin itself
BAD_DATA_LIMIT = 3  # transfers with wrong bytes after which a worker is disconnected


class FileLogistics(CoreBase):
    """Files: declarations, transfers, retrievals and fetch requests."""

    # ================================================================ files
    def available(self, name: str) -> bool:
        """True if a copy of ``name`` can be had: the manager's, a worker's, or its URL."""
        f = self.files.get(name)
        if f is None:
            return False
        return f.at_manager or self.replicas.count_ready(name) > 0 or (
            f.spec.kind in ORIGIN_KINDS and not f.undeclared)

    def _on_file_declared(self, ev: FileDeclared) -> None:
        s = ev.spec
        old = self.files.get(s.name)
        if s.kind in ORIGIN_KINDS and not s.url and old is not None and old.spec.url:
            s = dataclasses.replace(s, url=old.spec.url)  # declared again without its URL
        at_manager = s.kind in ("file", "buffer") and s.path is not None and s.size >= 0
        if old is not None:
            old.spec = s
            old.released = old.pruned = old.undeclared = False
            if at_manager:
                old.at_manager, old.manager_path, old.size = True, s.path, s.size
            return
        f = self.files[s.name] = FileRecord(s, s.size, at_manager,
                                            s.path if at_manager else None)
        kept = self._unclaimed.pop(s.name, None)
        if kept:  # workers kept it from an earlier manager: those are copies
            for wid, size in kept.items():
                if wid in self.workers:
                    if f.size < 0:
                        f.size = size
                    self.replicas.set_ready(s.name, wid, size)
            self._file_became_available(s.name)

    def _on_file_undeclared(self, ev: FileUndeclared) -> None:
        f = self.files.get(ev.name)
        if f is None:
            return
        for w in self.replicas.forget_file(ev.name):
            if w in self.workers:
                self._send(w, Unlink(name=ev.name))
        self.stats.files_pruned += 1 if f.spec.kind == "temp" else 0
        self._log("FILE", ev.name, "UNDECLARED", f.size)
        self.file_story_add(ev.name, "undeclared by the user")
        f.released = f.pruned = f.undeclared = True
        f.at_manager = False
        for key in [k for k in self._stage_wait if k[0] == ev.name]:
            self._unsourced.pop(key, None)
            for tid in self._stage_wait.pop(key):
                t = self.tasks.get(tid)
                if t is not None and t.state is T.STAGING:
                    t.message = f"input {ev.name} was undeclared"
                    self._end(t, RO.INPUT_FAILED, TR.INPUT_MISSING, -1, "",
                              "input undeclared")
        for tid in list(f.consumers):
            t = self.tasks.get(tid)
            if t is None:
                continue
            if t.state in (T.WAITING, T.READY, T.STAGING):  # (a staging one may have had it
                t.message = f"input {ev.name} was undeclared"  # already: it is unlinked)
                self._end(t, RO.INPUT_FAILED, TR.INPUT_MISSING, -1, "",
                          "input undeclared")
            elif t.state is T.RUNNING:  # its worker keeps the copy linked until it ends
                t.run.lost_inputs = t.run.lost_inputs | {ev.name}
        self._later(self._maybe_forget_file, ev.name)

    def _on_file_released(self, ev: FileReleased) -> None:
        f = self.files.get(ev.name)
        if f is None:
            return
        if f.spec.kind == "temp":
            self.durability.released_by_user(ev.name)
        else:
            f.released = True
            self._later(self._maybe_forget_file, ev.name)

    # ================================================================ transfers
    def _source_transfer(self, name: str, dest: str, replication: bool = False) -> None:
        """Start bringing ``name`` to ``dest``, or remember to when a source frees up."""
        if self.replicas.in_flight_to(name, dest) is not None:
            self._unsourced.pop((name, dest), None)
            return
        if self.replicas.is_ready(name, dest):  # made there meanwhile (e.g. by a re-run)
            self._unsourced.pop((name, dest), None)
            self._stage_arrived(name, dest)
            return
        f = self.files[name]
        if f.spec.kind in ORIGIN_KINDS:
            self._url_source_transfer(name, dest, replication)
            return
        # a cache=False copy is deleted by its worker when its task ends, before the core
        # hears of it: a peer is no source for it while the manager has one
        peers_ok = self.tune.peer_transfers and f.spec.peer_transfer and not (
            f.at_manager and f.spec.cache_level <= CacheLevel.TASK and f.spec.kind != "temp")
        src = self.replicas.pick_source(
            name, dest, self.now, self.tune.transfer_source_max, peers_ok, f.at_manager
        )
        if src is None and not peers_ok and not f.at_manager \
                and self.replicas.ready_workers(name):
            # no peer transfers: the file must come to the manager first, then go out
            if not replication:  # (a replication is retried by the durability policy)
                self._unsourced[(name, dest)] = None
            if not any(r.name == name and r.kind in (RK.FETCH, RK.CHECKPOINT)
                       for r in self._retrievals.values()):
                holder = self.replicas.ready_workers(name)[0]
                self._start_retrieval(name, holder, posixpath.join(self.staging_dir, name),
                                      RK.FETCH)
                self._log("TRANSFER", name, "QUEUED", "-", dest, f"via the manager from {holder}")
            return
        if src is None:
            if replication:
                return  # retried by the durability policy after the next event
            if not self.available(name):
                self._unsourced[(name, dest)] = None
                self._later(self._file_lost, name, "no source left")
            elif (name, dest) not in self._unsourced:  # (logged once, not at every retry)
                self._unsourced[(name, dest)] = None
                self._log("TRANSFER", name, "QUEUED", "-", dest, "all sources busy or avoided")
            return
        self._unsourced.pop((name, dest), None)
        self._start_fetch(name, dest, src, replication)

    def _start_fetch(self, name: str, dest: str, src: str, replication: bool = False) -> None:
        """Tell ``dest`` to fetch ``name`` from ``src`` (a worker, or MANAGER)."""
        tr = self.replicas.start_transfer(name, dest, src, self.now, replication)
        f = self.files[name]
        if is_origin(src):  # the worker fetches the URL itself (its size may have changed)
            s = f.spec
            self._send(dest, Fetch(transfer_id=tr.transfer_id, name=name, host="", port=0,
                                   size=-1, cache_level=s.cache_level, url=src,
                                   mini_kind=s.mini_kind, mini_command=s.mini_command,
                                   mini_inputs=list(s.mini_inputs), mini_env=list(s.mini_env),
                                   mini_source=s.mini_source))
            self._log("TRANSFER", name, "START", src, dest, tr.transfer_id)
            return
        if src == MANAGER:
            host, port = "", 0  # the worker uses the manager's address it knows
        else:
            sw = self.workers[src]
            host, port = sw.host, sw.transfer_port
        self._send(dest, Fetch(transfer_id=tr.transfer_id, name=name, host=host, port=port,
                               size=f.size, cache_level=f.spec.cache_level,
                               checksum=f.checksum if src != MANAGER else ""))
        self._log("TRANSFER", name, "START", src, dest, tr.transfer_id)

    def _checkpoint(self, name: str, worker: str) -> None:
        """Bring ``name`` from ``worker`` to the checkpoint directory at the manager."""
        base = self.tune.checkpoint_dir or self.staging_dir
        self._start_retrieval(name, worker, posixpath.join(base, name), RK.CHECKPOINT)
        self._log("FILE", name, "CHECKPOINT", worker)

    def _retry_unsourced(self) -> None:
        if not self._unsourced:
            return
        waiting = list(self._unsourced)
        if len(waiting) > 1:
            # rarest first (stable: ties keep their order): a file few workers hold is not
            # starved behind a popular one whose queue would take every freed source slot
            count = self.replicas.count_ready
            waiting.sort(key=lambda nd: count(nd[0]))
        for name, dest in waiting:
            if dest in self.workers and name in self.files and self._stage_wait.get((name, dest)):
                self._source_transfer(name, dest)  # (it stays queued, unlogged, if it must)
            elif dest not in self.workers or not self._stage_wait.get((name, dest)):
                self._unsourced.pop((name, dest), None)

    def _foreign_transfer(self, transfer_id: int, name: str, wid: str) -> bool:
        """True when ``transfer_id`` is under way but is not a transfer of ``name`` to
        ``wid``: a worker may answer only for its own transfers."""
        tr = self.replicas.transfers.get(transfer_id)
        return tr is not None and (tr.dest != wid or tr.name != name)

    def _refuse_claim(self, ev: ReplicaReady, why: str) -> None:
        """A worker claimed a copy the manager never asked it for, or of the wrong size:
        it is not recorded (the worker is told to drop it) and the claim is logged."""
        self._log("TRANSFER", ev.name, "REFUSED", "-", ev.worker_id, why)
        if not self.replicas.is_ready(ev.name, ev.worker_id):
            self._send(ev.worker_id, Unlink(name=ev.name))

    def _on_replica_ready(self, ev: ReplicaReady) -> None:
        if ev.worker_id not in self.workers:
            return
        f = self.files.get(ev.name)
        if not ev.transfer_id or ev.transfer_id >= self.replicas.next_transfer_id \
                or self._foreign_transfer(ev.transfer_id, ev.name, ev.worker_id):
            self._refuse_claim(ev, f"claim #{ev.transfer_id} answers no transfer to it")
            return
        if f is not None and f.size >= 0 and ev.size != f.size and f.spec.kind in _SIZED:
            self._refuse_claim(ev, f"claims {ev.size} bytes; the file has {f.size}")
            if self.replicas.in_flight_to(ev.name, ev.worker_id) == ev.transfer_id:
                self._on_replica_failed(ReplicaFailed(
                    now=ev.now, worker_id=ev.worker_id, name=ev.name,
                    transfer_id=ev.transfer_id, reason=f"claimed {ev.size} bytes",
                    cause=TransferFailure.LOCAL_IO))
            return
        tr = self.replicas.end_transfer(ev.transfer_id)
        if tr is None:
            # a late answer to a transfer the core already gave up on (its source was lost):
            # the bytes are there all the same, so a newer transfer to here is not needed
            newer = self.replicas.in_flight_to(ev.name, ev.worker_id)
            if newer is not None:
                tr = self.replicas.end_transfer(newer)
        if f is None or f.pruned:  # undeclared or pruned meanwhile: it is not wanted there
            self.replicas.remove(ev.name, ev.worker_id)
            self._send(ev.worker_id, Unlink(name=ev.name))
            return
        if f.size < 0 or ev.size > 0:
            f.size = ev.size
        self.replicas.set_ready(ev.name, ev.worker_id, ev.size)
        dest = self.workers[ev.worker_id]
        if tr is not None:
            dest.bytes_in += ev.size
            if is_origin(tr.source):  # fetched by the worker: no byte through the manager
                self.replicas.origin_reset(ev.name)
                self.file_story_add(ev.name, f"fetched from {tr.source} by {ev.worker_id}")
            elif tr.source == MANAGER:
                self.stats.bytes_sent += ev.size
                self.stats.transfers_sent += 1
            else:
                self.stats.bytes_peer += ev.size
                self.stats.transfers_peer += 1
                pair = (tr.source, ev.worker_id)
                self.peer_pairs[pair] = self.peer_pairs.get(pair, 0) + ev.size
                src = self.workers.get(tr.source)
                if src is not None:
                    src.bytes_out += ev.size
            self._log("TRANSFER", ev.name, "DONE", tr.source, ev.worker_id, ev.size,
                      round(ev.seconds, 6))
            if not is_origin(tr.source):
                self.durability.transfer_measured(ev.size, ev.seconds)
            if tr.replication:
                self.stats.replicas_made += 1
                self.file_story_add(ev.name, f"replica made on {ev.worker_id}")
        self._stage_arrived(ev.name, ev.worker_id)
        if self._mini_wait:
            self._mini_input_arrived(ev.name, ev.worker_id)
        self._file_became_available(ev.name)
        self._drain_saved(ev.name)
        self._retry_unsourced()
        self._trim_cache(ev.worker_id)

    def _stage_arrived(self, name: str, wid: str) -> None:
        for tid in self._stage_wait.pop((name, wid), ()):
            t = self.tasks.get(tid)
            if t is None or t.state is not T.STAGING or t.worker != wid:
                continue
            t.staging.discard(name)
            if not t.staging:
                self._run(t)

    def _on_replica_failed(self, ev: ReplicaFailed) -> None:
        if self._foreign_transfer(ev.transfer_id, ev.name, ev.worker_id):
            self._log("TRANSFER", ev.name, "REFUSED", "-", ev.worker_id,
                      f"failure of #{ev.transfer_id}, a transfer to another worker")
            return
        tr = self.replicas.end_transfer(ev.transfer_id) if ev.transfer_id else None
        if ev.transfer_id and tr is None:
            # a late failure of a transfer the core already ended (replaced after its source
            # was lost, or made moot by a copy that arrived): nothing of it is left to undo
            self._log("TRANSFER", ev.name, "FAILED", "-", ev.worker_id,
                      f"{ev.cause.name}: (stale) {ev.reason[:200]}")
            return
        self.replicas.remove(ev.name, ev.worker_id)
        if not ev.transfer_id:
            self._lost_under_running(ev.name, ev.worker_id)
        if ev.cause is TransferFailure.NONE:  # the worker cancelled it for our Unlink
            if ev.worker_id in self.workers and ev.name in self.files \
                    and self._stage_wait.get((ev.name, ev.worker_id)):
                self._source_transfer(ev.name, ev.worker_id)
            return
        self._log("TRANSFER", ev.name, "FAILED", tr.source if tr else "-", ev.worker_id,
                  f"{ev.cause.name}: {ev.reason[:200]}")
        if tr is not None and is_origin(tr.source):
            self._url_fetch_failed(ev, tr)
            return
        at_source = ev.cause.at_source
        if tr is not None and tr.source != MANAGER:
            avoid = True
            src = self.workers.get(tr.source)
            if ev.cause is TransferFailure.BAD_DATA and src is not None:
                self._served_bad_data(ev.name, src.worker_id, ev.reason)
                src = None  # (its copy is dropped: nothing more to decide about it)
            if ev.cause is TransferFailure.SOURCE_MISSING and src is not None and not any(
                    self.tasks[o].state is T.RUNNING and any(
                        n == ev.name for n, _ in self.tasks[o].spec.inputs)
                    for o in src.running):
                # the source said it has no copy (an unreachable or broken source may still
                # have one: it is only avoided for a while); a task running there with it
                # as input has it linked, and its own outcome will tell
                self.replicas.remove(ev.name, tr.source)
                self._lost_under_running(ev.name, tr.source)  # (a task staging there too)
                if not self.available(ev.name):
                    self._later(self._file_lost, ev.name, f"{tr.source} no longer has it")
                avoid = False  # it answered: a sound source, only without that copy
            if avoid:  # (its other files go elsewhere for a while)
                self.replicas.avoid(tr.source, self.now + self.tune.transfer_avoid_seconds)
            if at_source:
                if src is not None and src.draining and ev.name in self._drain_wait.get(
                        tr.source, {}):
                    self._save_from_draining(ev.name, src)  # try the manager instead
        if ev.worker_id not in self.workers or ev.name not in self.files:
            return
        if tr is not None and tr.source == MANAGER and at_source:
            self._manager_copy_missing(ev.name, ev.reason)
            return
        if ev.cause in (TransferFailure.DISK_FULL, TransferFailure.LOCAL_IO):
            self._no_room(ev.name, ev.worker_id, ev.reason)  # elsewhere, not here again
            return
        if self._stage_wait.get((ev.name, ev.worker_id)):
            self._source_transfer(ev.name, ev.worker_id)  # a lost file is handled there
        elif not self.available(ev.name):
            self._later(self._file_lost, ev.name, ev.reason)

    def _lost_under_running(self, name: str, wid: str) -> None:
        """``wid`` lost its copy of ``name`` (a task changed it in the cache): tasks running
        there with it as input keep their pinned copy until they end, their own outcome
        tells; a task staging there, which had it already, is placed again; no new task
        is given that copy (the worker refuses a Fetch of it until it is gone)."""
        w = self.workers.get(wid)
        if w is None:
            return
        for tid in sorted(w.running):
            t = self.tasks[tid]
            if not any(n == name for n, _ in t.spec.inputs):
                continue
            if t.state is T.RUNNING:
                t.run.lost_inputs = t.run.lost_inputs | {name}
                self.file_story_add(name, f"lost on {wid} while task {tid} ran with it")
            elif t.state is T.STAGING and name not in t.staging:
                self._requeue(t, RO.WORKER_LOST, f"input {name} lost on {wid}")

    def _served_bad_data(self, name: str, wid: str, reason: str) -> None:
        """``wid`` served bytes of ``name`` that do not match its checksum: its copy is
        not one; a worker that does it ``BAD_DATA_LIMIT`` times is disconnected."""
        self.file_story_add(name, f"{wid} served wrong bytes: {reason[:160]}")
        self._log("FILE", name, "BAD_DATA", wid, reason[:200])
        if self.replicas.state(name, wid) is not None:
            self.replicas.remove(name, wid)
            self._send(wid, Unlink(name=name))
        n = self._bad_data[wid] = self._bad_data.get(wid, 0) + 1
        if n >= BAD_DATA_LIMIT:
            why = f"served wrong bytes {n} times"
            self._out.append(DropWorker(wid, why, self._stim))
            self._later(self._worker_gone, wid, why)
        if not self.available(name):
            self._later(self._file_lost, name, f"the copy on {wid} was wrong")

    def _manager_copy_missing(self, name: str, reason: str) -> None:
        """The manager could not read its own copy of ``name``: fetch it from a worker that
        has one, or remake it (a temp), or end every task that needs it."""
        f = self.files[name]
        f.at_manager = False
        keys = [k for k in self._stage_wait if k[0] == name]
        if self.available(name):  # a worker still has a copy
            for _, dest in keys:
                if dest in self.workers and self._stage_wait.get((name, dest)):
                    self._source_transfer(name, dest)
            return
        if f.producer is not None and f.spec.kind == "temp":
            self._later(self._file_lost, name, f"the manager's copy is unreadable: {reason}")
            return
        why = f"input {name} could not be read at the manager: {reason}"
        for key in keys:
            for tid in self._stage_wait.pop(key):
                t = self.tasks.get(tid)
                if t is not None and t.state is T.STAGING:
                    t.message = why
                    self._end(t, RO.INPUT_FAILED, TR.INPUT_MISSING, -1, "",
                              "input missing at the manager")
        for tid in list(f.consumers):
            t = self.tasks.get(tid)
            if t is not None and t.state in (T.WAITING, T.READY):
                t.message = why
                self._end(t, RO.INPUT_FAILED, TR.INPUT_MISSING, -1, "",
                          "input missing at the manager")

    # ================================================================ retrievals
    def _start_retrieval(self, name: str, wid: str, dest: str, kind: RetrievalKind,
                         task_id: int = 0) -> int:
        rid = self._next_retrieval
        self._next_retrieval += 1
        w = self.workers[wid]
        self._retrievals[rid] = RetrievalRecord(kind, name, wid, task_id, dest)
        f = self.files.get(name)
        self._out.append(Retrieve(rid, wid, w.host, w.transfer_port, name, dest,
                                  f.size if f else -1, self._stim,
                                  f.checksum if f is not None else ""))
        return rid

    def _on_retrieval_done(self, ev: RetrievalDone) -> None:
        r = self._retrievals.pop(ev.retrieval_id, None)
        if r is None:
            return
        w = self.workers.get(r.worker)
        if ev.ok:
            self.stats.bytes_received += ev.size
            self.stats.bytes_received_files += ev.size
            self.stats.transfers_received += 1
            if w is not None:
                w.bytes_out += ev.size
            self._log("TRANSFER", r.name, "DONE", r.worker, MANAGER, ev.size,
                      round(ev.seconds, 6))
            self.durability.transfer_measured(ev.size, ev.seconds, to_manager=True)
        else:
            self._log("TRANSFER", r.name, "FAILED", r.worker, MANAGER,
                      f"{ev.cause.name}: {ev.error[:200]}")
        if r.kind in (RK.FETCH, RK.CHECKPOINT):
            self._file_retrieved(r, ev)
        else:
            self._output_retrieved(r, ev, w)

    def _file_retrieved(self, r: RetrievalRecord, ev: RetrievalDone) -> None:
        f = self.files.get(r.name)
        if f is None:
            return
        if ev.ok:
            if f.spec.kind not in ORIGIN_KINDS:  # (always fetched from its origin or a peer)
                f.at_manager, f.manager_path = True, r.dest
            f.lost = False
            if r.kind is RK.CHECKPOINT:
                self.stats.bytes_checkpointed += ev.size
                self.file_story_add(r.name, "checkpointed at the manager")
            for req in f.fetch_requests:
                self._out.append(FetchDone(req, r.dest, "", self._stim))
            f.fetch_requests.clear()
            self._drain_saved(r.name)
            self._retry_unsourced()  # transfers waiting for a manager copy can start
        else:
            if r.worker in self._drain_wait and r.name in self._drain_wait[r.worker]:
                del self._drain_wait[r.worker][r.name]  # nowhere to save it: it may be lost
                self._later(self._maybe_drained, r.worker)
            if f.fetch_requests:
                if self.replicas.ready_workers(r.name):
                    reqs, f.fetch_requests = f.fetch_requests, []
                    for req in reqs:
                        self._serve_fetch(req, r.name)
                else:
                    for req in f.fetch_requests:
                        self._out.append(FetchDone(req, None, f"could not fetch: {ev.error}",
                                                   self._stim))
                    f.fetch_requests.clear()
        self.durability.recheck(r.name)

    def _output_retrieved(self, r: RetrievalRecord, ev: RetrievalDone,
                          w: WorkerRecord | None) -> None:
        t = self.tasks.get(r.task_id)
        if t is None or t.state is not T.WAITING_RETRIEVAL or ev.retrieval_id not in t.retrievals:
            return
        t.retrievals = t.retrievals - {ev.retrieval_id}
        if r.kind is RK.STDOUT:
            if w is None:  # its worker left with the outputs: run it again
                t.retrievals = frozenset()
                self._requeue(t, RO.OUTPUT_LOST, f"worker {r.worker} left")
                return
            self._send(r.worker, Unlink(name=r.name))
            if ev.ok:
                t.stdout_path = r.dest
            else:
                t.message = f"the task's stdout beyond what came inline was lost: {ev.error}"
            if t.done is not None:
                self._settle_report(t, r.worker, t.done)
            return
        if ev.ok:
            f = self.files.get(r.name)
            if f is not None and r.kind is RK.TASK_OUTPUT:
                f.at_manager, f.manager_path = True, r.dest
                if f.spec.cache_level <= CacheLevel.TASK and w is not None:
                    self.replicas.remove(r.name, r.worker)
                    self._send(r.worker, Unlink(name=r.name))
            if r.kind is RK.PYTHON_RESULT:
                t.result_path = r.dest
                self.replicas.remove(r.name, r.worker)
                if w is not None:
                    self._send(r.worker, Unlink(name=r.name))
        elif w is None or (ev.cause.at_source
                           and t.count(RO.OUTPUT_LOST) < WORKER_FAULT_ATTEMPTS):
            # the worker went away with the outputs, or cannot serve them (a killed worker
            # refuses connections before its disconnection is seen): run the task again
            t.retrievals = frozenset()
            self._requeue(t, RO.OUTPUT_LOST, f"output {r.name} not served: {ev.error[:120]}")
            return
        else:
            t.run.unretrieved = r.name
            t.message = f"could not retrieve output {r.name}: {ev.error}"
        if not t.retrievals:
            d = t.done
            code = d.exit_code if d else -1
            out = d.output if d else ""
            if t.run.final_failure is not None:  # failure_only outputs of a failed task
                self._end(t, RO.FAILED, t.run.final_failure, code, out)
            elif t.run.unretrieved:
                self._end(t, RO.OUTPUT_LOST, TR.OUTPUT_TRANSFER_ERROR, code, out)
            else:
                self._end(t, RO.SUCCEEDED, TR.SUCCESS, code, out)

    # ---------------------------------------------------------------- fetch_file
    def _on_fetch_requested(self, ev: FetchRequested) -> None:
        if ev.name not in self.files:
            self._out.append(FetchDone(ev.request_id, None, f"unknown file {ev.name}",
                                       self._stim))
            return
        self._serve_fetch(ev.request_id, ev.name)

    def _serve_fetch(self, req: int, name: str) -> None:
        f = self.files[name]
        if f.at_manager and f.manager_path:
            self._out.append(FetchDone(req, f.manager_path, "", self._stim))
            return
        holders = self.replicas.ready_workers(name)
        if holders:
            pending = any(r.name == name and r.kind in (RK.FETCH,
                                                        RK.CHECKPOINT)
                          for r in self._retrievals.values())
            f.fetch_requests.append(req)
            if not pending:
                self._start_retrieval(name, holders[0], posixpath.join(self.staging_dir, name),
                                      RK.FETCH)
            return
        if f.spec.kind in ORIGIN_KINDS and not f.undeclared:
            f.fetch_requests.append(req)  # served when a worker has fetched it
            if not self.replicas.in_flight(name):
                self._url_fetch_for_request(name)
            return
        if f.failed_producer is not None:
            self._out.append(FetchDone(req, None, f"producer task {f.failed_producer} failed",
                                       self._stim))
            return
        if f.producer is None or f.pruned and f.spec.kind != "temp":
            self._out.append(FetchDone(req, None, f"no copy of {name} exists", self._stim))
            return
        f.fetch_requests.append(req)
        self._later(self._ensure_coming, name)

    # ---------------------------------------------------------------- URL files
    def _url_blocked(self, name: str) -> bool:
        """True once the URL of ``name`` failed for good for now (permanently, or
        ``url-fetch-attempts`` times): only a peer's copy may still be had."""
        return self.replicas.origin_failures.get(name, 0) >= max(1, self.tune.url_fetch_attempts)

    def _url_source_transfer(self, name: str, dest: str, replication: bool) -> None:
        """Bring URL file ``name`` to ``dest``: from a peer holding a copy (peer transfers
        allowed), else ``dest`` fetches it from its URL (at most ``transfer-source-max``
        fetches of one URL at once)."""
        f = self.files[name]
        peers_ok = self.tune.peer_transfers and f.spec.peer_transfer
        blocked = self._url_blocked(name)
        src = self.replicas.pick_source(name, dest, self.now, self.tune.transfer_source_max,
                                        peers_ok, False, "" if blocked else f.spec.url)
        if src is not None:
            self._unsourced.pop((name, dest), None)
            if is_origin(src) and f.spec.mini_inputs and not self._mini_inputs_at(name, dest):
                return  # its inputs come first (``_mini_input_arrived`` starts it)
            self._start_fetch(name, dest, src, replication)
            return
        if replication:
            return
        if blocked and not (peers_ok and self.replicas.ready_workers(name)):
            self._later(self._url_give_up, name)
            return
        if (name, dest) not in self._unsourced:  # (logged once, not at every retry)
            self._unsourced[(name, dest)] = None
            self._log("TRANSFER", name, "QUEUED", "-", dest, "all sources busy or avoided")

    def _url_fetch_failed(self, ev: ReplicaFailed, tr: Transfer) -> None:
        """A worker could not fetch URL file ``ev.name`` from its URL (after its own retries
        of a transient error): count it; give up at the limit (or at once for a permanent
        error) unless a peer has a copy; else the tasks that waited for it there go
        elsewhere (forsaken, as in TaskVine)."""
        name, wid = ev.name, ev.worker_id
        f = self.files.get(name)
        if f is None or f.spec.kind not in ORIGIN_KINDS or f.undeclared or not (
                f.fetch_requests or self._stage_wait.get((name, wid))):
            self._retry_unsourced()  # (nothing waits for it there any more: not counted)
            return
        limit = max(1, self.tune.url_fetch_attempts)
        n = self.replicas.origin_failed(name)
        reason = ev.reason[:300] or ev.cause.name
        if tr.source not in reason:
            reason = f"{tr.source}: {reason}"
        if ev.cause is TransferFailure.SOURCE_MISSING:
            self.replicas.origin_failures[name] = limit  # permanent: never asked again
            self.replicas.origin_errors[name] = f"{reason} (a permanent error: not retried)"
        else:
            self.replicas.origin_errors[name] = (
                f"{reason} (failed {n} time{'s' if n > 1 else ''}; url-fetch-attempts {limit})")
        self.file_story_add(name, f"fetch on {wid} failed: {reason}")
        if wid not in self.workers:
            self._retry_unsourced()
            return
        peers_ok = self.tune.peer_transfers and f.spec.peer_transfer
        if self._url_blocked(name):
            if peers_ok and self.replicas.ready_workers(name):
                if self._stage_wait.get((name, wid)):
                    self._source_transfer(name, wid)  # a peer's copy will do
            else:
                self._url_give_up(name)
            self._retry_unsourced()
            return
        why = f"input {name} could not be fetched on {wid}: {reason}"
        for tid in list(self._stage_wait.pop((name, wid), {})):
            t = self.tasks.get(tid)
            if t is not None and t.state is T.STAGING and t.worker == wid:
                self._url_forsake(t, wid, why)
        if f.fetch_requests and not self.replicas.in_flight(name):
            self._url_fetch_for_request(name, avoid=wid)
        self._retry_unsourced()

    def _url_forsake(self, t: TaskRecord, wid: str, why: str) -> None:
        """TaskVine's rule for a task its worker could not set up: run it elsewhere,
        unless ``set_max_forsaken(n)`` is spent (then it ends "forsaken")."""
        m = t.spec.max_forsaken
        if 0 <= m <= t.count(RO.FORSAKEN):
            t.message = f"forsaken {m + 1} times: {why}"
            self._end(t, RO.FORSAKEN, TR.FORSAKEN, -1, "", "forsaken")
            return
        avoid = t.avoid | {wid}
        if all(w in avoid for w in self.workers):
            avoid = frozenset()  # every worker forsook it: try them all again
        t.avoid = frozenset(avoid)
        self._requeue(t, RO.FORSAKEN, f"forsaken on {wid}: {why[:160]}")

    def _url_give_up(self, name: str) -> None:
        """The URL of ``name`` cannot be fetched and no peer has a copy: end every task
        waiting for it ("forsaken", with the error) and answer its fetch requests; the
        count starts again, so a task submitted later tries the URL anew."""
        f = self.files.get(name)
        if f is None or self.replicas.count_ready(name) and self.tune.peer_transfers \
                and f.spec.peer_transfer:
            return
        err = self.replicas.origin_errors.pop(name, f"{f.spec.url}: cannot be fetched")
        self.replicas.origin_reset(name)
        why = f"input {name} could not be fetched: {err}"
        self._log("FILE", name, "FAILED", err[:200])
        self.file_story_add(name, f"given up: {err}")
        for key in [k for k in self._stage_wait if k[0] == name]:
            self._unsourced.pop(key, None)
            for tid in self._stage_wait.pop(key):
                t = self.tasks.get(tid)
                if t is not None and t.state is T.STAGING:
                    t.message = why
                    self._end(t, RO.FORSAKEN, TR.FORSAKEN, -1, "", "input URL failed")
        for tid in list(f.consumers):
            t = self.tasks.get(tid)
            if t is not None and t.state in (T.WAITING, T.READY):
                t.message = why
                self._end(t, RO.FORSAKEN, TR.FORSAKEN, -1, "", "input URL failed")
        if f.fetch_requests:
            for req in f.fetch_requests:
                self._out.append(FetchDone(req, None, why, self._stim))
            f.fetch_requests.clear()
            self.durability.recheck(name)

    def _url_fetch_for_request(self, name: str, avoid: str = "") -> None:
        """``fetch_file`` of a URL file no worker holds: have a worker fetch it (the one with
        the most free disk, another than ``avoid`` if possible); its copy is then brought
        to the manager."""
        f = self.files[name]
        ws = [w for w in self.workers.values() if not w.draining]
        if avoid and len(ws) > 1:
            ws = [w for w in ws if w.worker_id != avoid]
        if not ws:
            why = f"no worker is connected to fetch {f.spec.url}"
            for req in f.fetch_requests:
                self._out.append(FetchDone(req, None, why, self._stim))
            f.fetch_requests.clear()
            return
        free = self.durability.disk_free
        dest = min(ws, key=lambda w: (-free(w), w.worker_id)).worker_id
        if f.spec.mini_inputs and not self._mini_inputs_at(name, dest):
            return
        self._start_fetch(name, dest, f.spec.url)

    # ---------------------------------------------------------------- mini-task files
    def _mini_inputs_at(self, name: str, dest: str) -> bool:
        """True if every input of mini-task file ``name`` is ready at ``dest``; else start
        bringing the missing ones (as inputs of the tasks waiting for ``name`` there) and
        remember to make ``name`` when they have come."""
        f = self.files[name]
        missing = [i for i, _ in f.spec.mini_inputs
                   if self.replicas.state(i, dest) is not ReplicaState.READY]
        if not missing:
            return True
        waiting = self._stage_wait.get((name, dest), {})
        for i in missing:
            if i not in self.files:
                self._log("FILE", name, "FAILED", f"its mini task's input {i} is not declared")
                continue
            self._mini_wait.setdefault((i, dest), {})[name] = None
            for tid in waiting:
                t = self.tasks.get(tid)
                if t is not None and t.state is T.STAGING and t.worker == dest:
                    t.staging.add(i)
                    self._stage_wait.setdefault((i, dest), {})[tid] = None
            if self.replicas.state(i, dest) is None:
                self._source_transfer(i, dest, replication=not waiting)
        return False

    def _mini_input_arrived(self, name: str, wid: str) -> None:
        """``name`` is ready at ``wid``: make the mini-task files that waited for it there."""
        for mini in self._mini_wait.pop((name, wid), ()):
            f = self.files.get(mini)
            if f is None or f.undeclared or self.replicas.state(mini, wid) is not None:
                continue
            if self._stage_wait.get((mini, wid)):
                self._source_transfer(mini, wid)
            elif f.fetch_requests and not self.replicas.in_flight(mini):
                if self._mini_inputs_at(mini, wid):
                    self._start_fetch(mini, wid, f.spec.url)
