"""``validate_state``: every invariant of the manager's core, checked in one pass.

The test suite runs it after every event (``Tunables.validate``), and
``m.tune("validate", True)`` turns it on in a real run. It only reads the
records; a breach raises ``AssertionError`` naming the task, file or worker.
It takes the state untyped so that it does not import ``state.py``.
"""

from __future__ import annotations

from typing import Any

from .fast import RS, T
from .records import TaskState
from .replicas import MANAGER, ReplicaState, is_origin
from .transitions import TASK


def validate(s: Any) -> None:
    """Raise AssertionError if any invariant of ``s`` (a ManagerState) does not hold."""
    counts = dict.fromkeys(TaskState, 0)
    for wid, w in s.workers.items():
        assert w.worker_id == wid
        used = {"cores": 0, "memory": 0, "disk": 0, "gpus": 0}
        for tid in w.running:
            t = s.tasks[tid]
            assert t.state in (T.STAGING, T.RUNNING), (tid, t.state)
            assert t.worker == wid, (tid, t.worker, wid)
            assert t.run.alloc is not None, tid
            for r in used:
                used[r] += getattr(t.run.alloc, r)
        for inst in getattr(s, "instances", {}).values():  # library instances hold theirs
            if inst.worker == wid:
                for r in used:
                    used[r] += getattr(inst.alloc, r)
                for tid in inst.calls:
                    t = s.tasks[tid]
                    assert t.worker == wid and t.run.instance == inst.instance_id, \
                        (tid, "a library call on an instance it does not run on")
        for r, n in used.items():
            free, total = getattr(w.free, r), getattr(w.total, r)
            assert 0 <= free <= total, (wid, r, free, total)
            assert free + n == total, (wid, r, free, n, total)
    unreturned = 0
    for tid, t in s.tasks.items():
        counts[t.state] += 1
        assert t.runs, (tid, "no run record")
        assert [r.attempt for r in t.runs] == list(range(len(t.runs))), tid
        assert all(r.outcome is not None for r in t.runs[:-1]), (tid, "an earlier run is open")
        for i in range(1, len(t.story)):
            pair = (TaskState(t.story[i][1]), TaskState(t.story[i][2]))
            assert pair in TASK, (tid, "story holds an illegal transition", pair)
        if t.story:
            assert t.story[-1][2] == t.state.value, (tid, t.story[-1], t.state)
        if t.state not in (T.RETRIEVED, T.DONE) or t.run.recovery:
            if not t.run.recovery:
                unreturned += 1
        if t.state in (T.RUNNING, T.STAGING):
            assert t.worker in s.workers, (tid, t.state, t.worker)
            assert tid in s.workers[t.worker].running, (tid, t.worker)
            assert t.run.alloc is not None, tid
        if t.state is T.WAITING_RETRIEVAL:
            assert t.retrievals, tid
            assert t.run.alloc is None, tid
        if t.state is T.STAGING:
            assert t.staging, tid
            for name in t.staging:
                assert tid in s._stage_wait.get((name, t.worker), ()), (tid, name)
        if t.state is T.RUNNING:
            assert not t.staging, tid
            for name, _ in t.spec.inputs:  # (an input undeclared meanwhile: the worker
                f = s.files.get(name)  # keeps it pinned until the task ends)
                assert s.replicas.state(name, t.worker) is not None or f is None \
                    or f.undeclared or name in t.run.lost_inputs, (tid, name)
        if t.state in (T.INITIAL, T.READY, T.WAITING, T.RETRIEVED, T.DONE):
            assert t.worker is None, (tid, t.state, t.worker)
            assert t.run.alloc is None, (tid, t.state)
            assert not any(tid in w.running for w in s.workers.values()), tid
        if t.state is T.READY:
            for name, _ in t.spec.inputs:
                assert s.available(name), (tid, "READY but input has no copy", name)
        if t.state is T.WAITING:
            assert t.missing, tid
            for name, _ in t.spec.inputs:
                if not s.available(name):
                    assert name in t.missing, (tid, "WAITING but does not wait for", name)
                    assert tid in s.files[name].waiting, (tid, name)
        if t.state in (T.RETRIEVED, T.DONE):
            assert t.run.outcome is not None, (tid, "finished with an open run")
        else:
            assert t.run.outcome is None, (tid, t.state, "an active task's run is closed")
        if t.state not in (T.RETRIEVED, T.DONE):
            for name, _ in t.spec.inputs:
                f = s.files.get(name)
                assert f is not None and tid in f.consumers, (tid, "not a consumer of", name)
    assert counts == s._counts, (counts, s._counts)
    assert s.unreturned() == unreturned, (s.unreturned(), unreturned)
    for name, f in s.files.items():
        for tid in f.consumers:
            assert tid in s.tasks, (name, "consumer record gone", tid)
        if f.spec.kind in ("url", "mini"):  # got by workers from its origin: never at
            assert f.spec.url and not f.at_manager, (name, "URL file")  # the manager
        if f.pruned and not f.undeclared:
            assert not s.replicas.holders(name), (name, "pruned but still has replicas")
    for name, holders in s.replicas.where.items():
        for wid, st in holders.items():
            assert wid in s.workers, (name, "replica on an unknown worker", wid)
            assert isinstance(st, ReplicaState)
            assert name in s.replicas.by_worker.get(wid, {}), (name, wid)
    for wid, names in s.replicas.by_worker.items():
        total = 0
        for name in names:
            assert s.replicas.state(name, wid) is not None, (wid, name)
            total += s.replicas.sizes.get((name, wid), 0)
        assert total == s.replicas.bytes_on(wid), (wid, total, s.replicas.bytes_on(wid))
    for tr in s.replicas.transfers.values():
        assert tr.dest in s.workers, tr
        assert tr.source == MANAGER or tr.source in s.workers or (
            is_origin(tr.source) and s.files[tr.name].spec.kind in ("url", "mini")
            and s.files[tr.name].spec.url == tr.source), tr
        assert s.replicas.state(tr.name, tr.dest) is RS.PENDING, tr
    for name in s.replicas.origin_failures:
        assert name in s.files and s.files[name].spec.kind in ("url", "mini"), (name, "origin")
    for wid in s._drain_wait:
        assert wid in s.workers and s.workers[wid].draining, wid
