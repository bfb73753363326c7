"""A worker's claims about the copies it holds are checked by the core (pure: no
processes): a claim must answer a transfer the manager sent to that worker, for that
file, with the file's size; a failure report may end only its sender's transfers. A
claim that does not is refused (logged, the worker told to drop the copy) and changes
nothing the manager believes."""

from __future__ import annotations

from tests.core_helpers import Driver, messages
from vinework.core import FileDeclared, FileSpec, ReplicaFailed, ReplicaReady
from vinework.core.fast import T
from vinework.protocol import TransferFailure, Unlink


def fetching_buffer() -> tuple[Driver, int]:
    """w1 is fetching buffer ``x`` (10 bytes) from the manager for task 1; w2 is idle."""
    d = Driver()
    d.join("w1")
    d.join("w2", cores=0)
    d.ev(FileDeclared, spec=FileSpec(name="x", kind="buffer", path="/staging/x", size=10))
    d.submit(1, inputs=["x"])
    ((tr, (dest, _)),) = d.fetches.items()
    assert dest == "w1"
    return d, tr


def refused(out: list, worker: str, name: str) -> bool:
    return ((worker, Unlink(name=name)) in messages(out, Unlink)
            and logged(out, "REFUSED"))


def logged(out: list, word: str) -> bool:
    return any(type(c).__name__ == "Log" and word in map(str, c.fields) for c in out)


def test_a_claim_for_another_workers_transfer_is_refused_and_that_transfer_goes_on() -> None:
    d, tr = fetching_buffer()
    out = d.ev(ReplicaReady, worker_id="w2", name="x", size=10, seconds=0.1, transfer_id=tr)
    assert refused(out, "w2", "x")
    assert not d.s.replicas.is_ready("x", "w2")
    assert tr in d.s.replicas.transfers  # w1's transfer was not ended by w2's claim
    d.ev(ReplicaReady, worker_id="w1", name="x", size=10, seconds=0.1, transfer_id=tr)
    assert d.s.tasks[1].state is T.RUNNING


def test_a_claim_that_answers_no_transfer_is_refused() -> None:
    d, tr = fetching_buffer()
    for bogus in (0, tr + 1000):
        out = d.ev(ReplicaReady, worker_id="w2", name="x", size=10, seconds=0.1,
                   transfer_id=bogus)
        assert refused(out, "w2", "x")
    assert d.s.replicas.ready_workers("x") == []


def test_a_claim_of_the_wrong_size_is_refused_and_the_file_keeps_its_size() -> None:
    d, tr = fetching_buffer()
    out = d.ev(ReplicaReady, worker_id="w1", name="x", size=10**12, seconds=0.1,
               transfer_id=tr)
    assert refused(out, "w1", "x")
    assert d.s.files["x"].size == 10
    assert not d.s.replicas.is_ready("x", "w1")
    assert d.s.tasks[1].state is not T.RUNNING  # it waits for a true copy


def test_a_failure_report_for_another_workers_transfer_changes_nothing() -> None:
    d, tr = fetching_buffer()
    out = d.ev(ReplicaFailed, worker_id="w2", name="x", transfer_id=tr, reason="lie",
               cause=TransferFailure.SOURCE_MISSING)
    assert logged(out, "REFUSED")
    assert tr in d.s.replicas.transfers and d.s.files["x"].at_manager
    d.ev(ReplicaReady, worker_id="w1", name="x", size=10, seconds=0.1, transfer_id=tr)
    assert d.s.tasks[1].state is T.RUNNING
