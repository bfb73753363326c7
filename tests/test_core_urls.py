"""Pure tests of URL files in the cores: who fetches, from where, and when it ends.

A URL file (kind "url") has no producer and no manager copy: the worker that
needs it is told ``Fetch(url=...)``, unless a peer holding a copy can send it.
A permanent failure (SOURCE_MISSING) ends its consumers at once with result
"forsaken"; a transient one forsakes the consumer on that worker (it runs
elsewhere), and ``url-fetch-attempts`` failures end every consumer. The worker's
core sees a URL as one more source (host = the URL, port = ``URL_PORT``).
"""

from __future__ import annotations

from tests.state_helpers import (
    done,
    fresh,
    host,
    join,
    port,
    ready,
    run,
    sends,
    spec,
    step,
    submit,
)
from tests.test_worker_helpers import connected, fetch, one, sent
from vinework.constants import CacheLevel, TaskResult
from vinework.core import ManagerState
from vinework.core import TaskState as TState
from vinework.core.events import (
    Command,
    FetchDone,
    FetchRequested,
    FileDeclared,
    FileSpec,
    ReplicaFailed,
    RetrievalDone,
    Retrieve,
    Send,
    TaskReturned,
    WorkerLeft,
)
from vinework.protocol import CacheInvalid, CacheUpdate, Fetch, RunTask, TransferFailure
from vinework.worker import events as wev
from vinework.worker.fetches import URL_PORT, url_of

URL = "http://data.example/input.dat"
NAME = "url-0123"


def url_file(name: str = NAME, url: str = URL, cache_level: int = CacheLevel.WORKFLOW,
             peer_transfer: bool = True) -> FileDeclared:
    return FileDeclared(spec=FileSpec(name=name, kind="url", url=url, cache_level=cache_level,
                                      peer_transfer=peer_transfer))


def url_fetch(dest: str, transfer_id: int, name: str = NAME, url: str = URL,
              cache_level: int = CacheLevel.WORKFLOW) -> Send:
    return Send(dest, Fetch(transfer_id=transfer_id, name=name, host="", port=0, size=-1,
                            cache_level=cache_level, url=url))


def failed(wid: str, transfer_id: int, cause: TransferFailure, reason: str,
           name: str = NAME) -> ReplicaFailed:
    return ReplicaFailed(worker_id=wid, name=name, transfer_id=transfer_id, reason=reason,
                         cause=cause)


def returns(cmds: list[Command]) -> list[TaskReturned]:
    return [c for c in cmds if isinstance(c, TaskReturned)]


def fetches(cmds: list[Command]) -> list[tuple[str, Fetch]]:
    return [(c.worker_id, c.message) for c in sends(cmds, Fetch)]  # type: ignore[misc]


def placed_on(s: ManagerState, tid: int) -> str:
    w = s.tasks[tid].worker
    assert w is not None, tid
    return w


def test_the_worker_fetches_the_url_itself() -> None:
    s = fresh()
    step(s, join("w1"), url_file())
    assert s.available(NAME)  # a URL can always be fetched: the task is READY at once
    cmds = step(s, submit(spec(1, inputs=[NAME])))
    assert cmds == [url_fetch("w1", 1)]
    assert s.tasks[1].state is TState.STAGING
    cmds = step(s, ready("w1", NAME, 1234, 1))
    assert cmds == [run(s, "w1", 1)]
    assert s.stats.bytes_sent == 0 and s.stats.bytes_peer == 0
    assert s.files[NAME].size == 1234 and not s.files[NAME].at_manager


def test_a_second_consumer_gets_the_copy_from_a_peer() -> None:
    s = fresh()
    step(s, join("w1", cores=1), url_file())
    step(s, submit(spec(1, inputs=[NAME])))
    step(s, ready("w1", NAME, 100, 1))
    step(s, join("w2", cores=1))
    cmds = step(s, submit(spec(2, inputs=[NAME])))  # w1 is busy: w2, from w1's copy
    assert fetches(cmds) == [("w2", Fetch(transfer_id=2, name=NAME, host=host("w1"),
                                          port=port("w1"), size=100,
                                          cache_level=CacheLevel.WORKFLOW))]
    step(s, ready("w2", NAME, 100, 2))
    assert s.stats.bytes_peer == 100 and s.stats.bytes_sent == 0


def test_without_peer_transfers_each_worker_fetches_the_url() -> None:
    s = fresh()
    step(s, join("w1", cores=1), url_file(peer_transfer=False))
    step(s, submit(spec(1, inputs=[NAME])))
    step(s, ready("w1", NAME, 100, 1))
    step(s, join("w2", cores=1))
    cmds = step(s, submit(spec(2, inputs=[NAME])))
    assert cmds == [url_fetch("w2", 2)]  # never through the manager


def test_fetches_of_one_url_at_once_are_limited() -> None:
    s = fresh()
    s.tune.transfer_source_max = 2
    step(s, url_file(), *(join(f"w{i}", cores=1) for i in range(1, 5)))
    cmds = step(s, *(submit(spec(i, inputs=[NAME])) for i in range(1, 5)))
    assert sorted(w for w, f in fetches(cmds)) == ["w1", "w2"]
    assert all(f.url == URL for _, f in fetches(cmds))
    cmds = step(s, ready("w1", NAME, 10, 1))  # now a peer has it: the others get it there
    got = fetches(cmds)
    assert sorted(w for w, _ in got) == ["w3", "w4"]
    assert all(f.url == "" and f.host == host("w1") for _, f in got)


def test_a_404_ends_the_consumer_at_once_with_forsaken() -> None:
    s = fresh()
    step(s, join("w1", cores=1), join("w2", cores=1), url_file())
    cmds = step(s, submit(spec(1, inputs=[NAME])), submit(spec(2, inputs=[NAME])))
    assert sorted(w for w, _ in fetches(cmds)) == ["w1", "w2"]
    x1, x2 = s.replicas.in_flight_to(NAME, "w1"), s.replicas.in_flight_to(NAME, "w2")
    assert x1 is not None and x2 is not None
    cmds = step(s, failed("w1", x1, TransferFailure.SOURCE_MISSING,
                          f"{URL}: HTTP 404 Not Found"))
    back = returns(cmds)
    assert sorted(r.task_id for r in back) == [1, 2]  # both consumers end: not retried
    for r in back:
        assert r.result == TaskResult.FORSAKEN and r.attempts == 1
        assert URL in r.message and "404" in r.message and "permanent" in r.message
    assert not fetches(cmds) and not sends(cmds, RunTask)
    # the late failure of the other fetch, which no task waits for any more, is not counted
    step(s, failed("w2", x2, TransferFailure.SOURCE_MISSING, f"{URL}: HTTP 404 Not Found"))
    assert not s.replicas.origin_failures
    # a task submitted later tries the URL again
    cmds = step(s, submit(spec(3, inputs=[NAME])))
    assert [f.url for _, f in fetches(cmds)] == [URL]


def test_a_transient_failure_forsakes_the_consumer_then_the_limit_ends_it() -> None:
    s = fresh()
    step(s, join("w1", cores=1), join("w2", cores=1), url_file())
    step(s, submit(spec(1, inputs=[NAME])))
    seen = []
    for n in range(1, 4):
        wid = placed_on(s, 1)
        seen.append(wid)
        xfer = s.replicas.in_flight_to(NAME, wid)
        assert xfer is not None
        cmds = step(s, failed(wid, xfer, TransferFailure.SOURCE_UNREACHABLE,
                              f"{URL}: HTTP 503 Service Unavailable"))
        if n < 3:
            assert not returns(cmds)
            assert s.tasks[1].state is TState.STAGING  # forsaken there: placed elsewhere
            assert placed_on(s, 1) != wid
    assert seen == ["w1", "w2", "w1"]  # every worker forsook it: all tried again
    [r] = returns(cmds)
    assert r.result == TaskResult.FORSAKEN and r.attempts == 3
    assert "503" in r.message and "failed 3 times" in r.message and URL in r.message
    assert not s.replicas.origin_failures  # counted anew for later tasks


def test_max_forsaken_ends_the_task_before_the_url_limit() -> None:
    s = fresh()
    step(s, join("w1"), url_file())
    step(s, submit(spec(1, inputs=[NAME], max_forsaken=0)))
    cmds = step(s, failed("w1", 1, TransferFailure.SOURCE_UNREACHABLE,
                          f"{URL}: timed out after 1 s"))
    [r] = returns(cmds)
    assert r.result == TaskResult.FORSAKEN and r.message.startswith("forsaken 1 times")
    assert "timed out" in r.message


def test_url_attempts_is_a_tunable() -> None:
    s = fresh()
    s.tune.set("url-fetch-attempts", 1)
    step(s, join("w1"), url_file())
    step(s, submit(spec(1, inputs=[NAME])))
    cmds = step(s, failed("w1", 1, TransferFailure.SOURCE_BROKEN,
                          f"{URL}: closed after 10 of 20 bytes"))
    [r] = returns(cmds)
    assert "failed 1 time;" in r.message


def test_a_failed_url_with_a_peer_copy_uses_the_peer() -> None:
    s = fresh()
    step(s, join("w1", cores=1), join("w2", cores=1), url_file(), url_file(name="u2"))
    step(s, submit(spec(1, inputs=[NAME])))
    step(s, ready("w1", NAME, 50, 1))  # w1 has it and runs task 1
    s.tune.transfer_source_max = 0  # no peer free for now: w2 must use the URL ...
    cmds = step(s, submit(spec(2, inputs=[NAME])))
    assert fetches(cmds) == []  # (limit 0: nothing at all)
    s.tune.transfer_source_max = 3
    s.replicas.source_load["w1"] = 3  # ... the peer is busy: the URL it is
    s._retry_unsourced()
    xfer = s.replicas.in_flight_to(NAME, "w2")
    assert xfer is not None and s.replicas.transfers[xfer].source == URL
    s.replicas.source_load.pop("w1")
    cmds = step(s, failed("w2", xfer, TransferFailure.SOURCE_MISSING, f"{URL}: HTTP 410 Gone"))
    assert not returns(cmds)
    assert [(w, f.host) for w, f in fetches(cmds)] == [("w2", host("w1"))]


def test_fetch_file_of_a_url_has_a_worker_fetch_it() -> None:
    s = fresh()
    step(s, join("w1"), url_file())
    cmds = step(s, FetchRequested(request_id=7, name=NAME))
    assert cmds == [url_fetch("w1", 1)]
    cmds = step(s, ready("w1", NAME, 5, 1))
    [r] = [c for c in cmds if isinstance(c, Retrieve)]
    cmds = step(s, RetrievalDone(retrieval_id=r.retrieval_id, ok=True, size=5))
    assert [c for c in cmds if isinstance(c, FetchDone)] == [FetchDone(7, r.dest)]
    assert not s.files[NAME].at_manager  # tasks still get it from the URL or a peer


def test_fetch_file_of_a_missing_url_fails() -> None:
    s = fresh()
    step(s, url_file())
    cmds = step(s, FetchRequested(request_id=1, name=NAME))
    [d] = [c for c in cmds if isinstance(c, FetchDone)]
    assert d.path is None and "no worker" in d.error
    step(s, join("w1"))
    step(s, FetchRequested(request_id=2, name=NAME))
    cmds = step(s, failed("w1", 1, TransferFailure.SOURCE_MISSING, f"{URL}: HTTP 404"))
    [d] = [c for c in cmds if isinstance(c, FetchDone)]
    assert d.path is None and "404" in d.error and d.request_id == 2


def test_a_url_file_is_never_lost() -> None:
    s = fresh()
    step(s, join("w1", cores=1), join("w2", cores=1), url_file())
    step(s, submit(spec(1, inputs=[NAME])))
    step(s, ready("w1", NAME, 50, 1))
    step(s, done("w1", 1))
    step(s, WorkerLeft(worker_id="w1", reason="gone"))
    assert s.stats.files_lost == 0 and s.available(NAME)
    cmds = step(s, submit(spec(2, inputs=[NAME])))
    assert cmds == [url_fetch("w2", 2)]


def test_a_task_level_url_is_fetched_again_for_each_task() -> None:
    s = fresh()
    step(s, join("w1", cores=1), url_file(cache_level=CacheLevel.TASK))
    step(s, submit(spec(1, inputs=[NAME])))
    step(s, ready("w1", NAME, 50, 1))
    step(s, done("w1", 1))  # cache=False: unlinked after its task
    cmds = step(s, submit(spec(2, inputs=[NAME])))
    assert cmds == [url_fetch("w1", 2, cache_level=CacheLevel.TASK)]


# ---------------------------------------------------------------------- the worker's core
def test_worker_core_starts_a_url_fetch() -> None:
    ws = connected()
    start = one(ws.handle(fetch(1, name=NAME, host=URL, port=URL_PORT, size=-1)),
                wev.StartFetch)
    assert url_of(start.host, start.port) == URL
    assert url_of("peer1", 8000) == "" and url_of(URL, 8000) == ""
    out = ws.handle(wev.FetchFinished(fetch_id=start.fetch_id, ok=True, size=7, seconds=0.1))
    ws.validate_state()
    (upd,) = sent(out, CacheUpdate)
    assert (upd.transfer_id, upd.size) == (1, 7)


def test_worker_core_serves_a_peer_waiter_when_the_url_fails() -> None:
    ws = connected()
    start = one(ws.handle(fetch(1, name=NAME, host=URL, port=URL_PORT, size=-1)),
                wev.StartFetch)
    assert ws.handle(fetch(2, name=NAME, host="peer1", port=8000)) == []  # joins it
    out = ws.handle(wev.FetchFinished(fetch_id=start.fetch_id, ok=False,
                                      cause=int(TransferFailure.SOURCE_MISSING),
                                      reason=f"{URL}: HTTP 404 Not Found"))
    ws.validate_state()
    (inv,) = sent(out, CacheInvalid)
    assert inv.transfer_id == 1 and inv.cause == TransferFailure.SOURCE_MISSING
    again = one(out, wev.StartFetch)
    assert (again.host, again.port) == ("peer1", 8000)
