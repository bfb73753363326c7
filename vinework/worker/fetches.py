"""The worker's core, fetches: bringing files into the cache for the manager.

``FetchHandling`` answers ``Fetch`` and ``Unlink`` and the ends of transfers:
at most one transfer per name is in flight, joined by every ``Fetch`` of it,
and every ``Fetch`` gets exactly one answer (see the theory of operation in
``state.py``). Pure: no I/O, no clock.

A ``Fetch`` with a URL (a URL file the worker fetches itself) reaches the core
as a ``FetchRequested`` whose ``host`` is the URL and whose ``port`` is
``URL_PORT``; its waiter and its ``StartFetch`` carry them the same way, so a
URL is one more source: a ``Fetch`` of the same name from a peer joins it, and
when the URL fails, the waiters that named a peer are served from there.
``url_of`` tells the shell which fetches are URL fetches.
"""

from __future__ import annotations

from ..protocol import CacheInvalid, CacheUpdate, TransferFailure
from .base import CoreBase, D, F, R, X
from .cache import CacheError, check_cache_name
from .events import (
    CommitFetch,
    DiscardFetch,
    FetchFinished,
    FetchRequested,
    FileLost,
    StartFetch,
    UnlinkRequested,
)
from .records import InFlight, Waiter

URL_PORT = -1  # the port of a source that is a URL (its host field holds the URL)


def url_of(host: str, port: int) -> str:
    """The URL a fetch source stands for, or "" for a transfer server at host:port."""
    return host if port == URL_PORT and "://" in host else ""


class FetchHandling(CoreBase):
    """Fetch, Unlink and transfer ends."""

    def _on_fetch(self, ev: FetchRequested) -> None:
        try:
            check_cache_name(ev.name)
        except CacheError as e:
            self._send(CacheInvalid(name=ev.name, transfer_id=ev.transfer_id, reason=str(e),
                                    cause=TransferFailure.BAD_NAME))
            return
        w = Waiter(ev.transfer_id, ev.host or self.config.manager_host,
                   ev.port or self.manager_transfer_port, ev.size)
        entry = self.entries.get(ev.name)
        if entry is not None and entry.state is R and entry.lost:
            # its copy here changed under a task (still pinned by one): not a copy of it
            self._send(CacheInvalid(name=ev.name, transfer_id=ev.transfer_id,
                                    reason=f"{ev.name}: the copy here was changed by a task; "
                                           "removed when the tasks using it end",
                                    cause=TransferFailure.LOCAL_IO))
            return
        if entry is not None and entry.state is R:
            if entry.doomed:
                entry.doomed = False
                self._record(ev.name, f"removal cancelled by Fetch #{ev.transfer_id}")
            self._raise_level(entry, ev.cache_level)
            self._send(CacheUpdate(name=ev.name, size=entry.size, seconds=0.0,
                                   transfer_id=ev.transfer_id, source=w.source))
            return
        fl = self.fetching.get(ev.name)
        if fl is not None:
            fl.waiters.append(w)
            if entry is None:
                self._transition(ev.name, F, f"Fetch #{ev.transfer_id} revives it")
                entry = self.entries[ev.name]
                entry.level = 0
            else:
                entry.doomed = False
            self._raise_level(entry, ev.cache_level)
            self._record(ev.name, f"Fetch #{ev.transfer_id} from {w.source} joins "
                         f"fetch {fl.fetch_id} from {fl.source}")
            return
        self._transition(ev.name, F, f"Fetch #{ev.transfer_id} from {w.source}")
        entry = self.entries[ev.name]
        entry.level = 0
        self._raise_level(entry, ev.cache_level)
        self._start_fetch(ev.name, w, [w])

    def _start_fetch(self, name: str, src: Waiter, waiters: list[Waiter]) -> None:
        self._next_fetch += 1
        fl = InFlight(self._next_fetch, name, src.host, src.port, waiters)
        self.fetching[name] = fl
        self._emit(StartFetch(stimulus_id=self._sid, fetch_id=fl.fetch_id, name=name,
                              host=src.host, port=src.port, size=src.size))

    def _on_fetch_finished(self, ev: FetchFinished) -> None:
        fl = next((f for f in self.fetching.values() if f.fetch_id == ev.fetch_id), None)
        if fl is None:
            raise AssertionError(f"end of unknown fetch {ev.fetch_id}")
        name = fl.name
        del self.fetching[name]
        for w in fl.cancelled:
            self._send(CacheInvalid(name=name, transfer_id=w.transfer_id, source=fl.source,
                                    reason="unlinked during the transfer",
                                    cause=TransferFailure.NONE))
        entry = self.entries.get(name)
        if entry is None or entry.state is not F:
            # unlinked and not asked again, or a task produced the name meanwhile
            self._emit(DiscardFetch(stimulus_id=self._sid, fetch_id=fl.fetch_id))
            for w in fl.waiters:
                self._answer_ready(name, w, 0.0)
            return
        if entry.doomed:
            self._emit(DiscardFetch(stimulus_id=self._sid, fetch_id=fl.fetch_id))
            self._transition(name, D, f"fetch {fl.fetch_id} ended after an Unlink")
            return
        if ev.ok:
            self._emit(CommitFetch(stimulus_id=self._sid, fetch_id=fl.fetch_id, name=name))
            self._transition(name, R, f"fetched from {fl.source} ({ev.size} bytes, "
                             f"{ev.seconds:.3f} s)", size=ev.size)
            for w in fl.waiters:
                self._answer_ready(name, w, ev.seconds)
            return
        self._emit(DiscardFetch(stimulus_id=self._sid, fetch_id=fl.fetch_id))
        cause = TransferFailure(ev.cause) if ev.cause in TransferFailure._value2member_map_ \
            else TransferFailure.UNKNOWN
        told = [w for w in fl.waiters if not cause.at_source or w.source == fl.source]
        rest = [w for w in fl.waiters if w not in told]
        for w in told:
            self._send(CacheInvalid(name=name, transfer_id=w.transfer_id, reason=ev.reason,
                                    source=fl.source, cause=cause))
        if rest:
            self._transition(name, F, f"{fl.source} failed ({ev.reason}); trying {rest[0].source}")
            self._start_fetch(name, rest[0], rest)
            return
        self._transition(name, X, f"fetch from {fl.source} failed: {ev.reason}")

    def _answer_ready(self, name: str, w: Waiter, seconds: float) -> None:
        entry = self.entries[name]
        self._send(CacheUpdate(name=name, size=entry.size, seconds=seconds,
                               transfer_id=w.transfer_id, source=w.source))

    def _on_unlink(self, ev: UnlinkRequested) -> None:
        entry = self.entries.get(ev.name)
        if entry is None:
            return
        if entry.state is F:
            fl = self.fetching[ev.name]
            fl.cancelled.extend(fl.waiters)
            fl.waiters.clear()
            entry.doomed = True
            self._record(ev.name, "doomed by Unlink during the transfer")
            return
        self._remove(ev.name, "Unlink")

    def _on_file_lost(self, ev: FileLost) -> None:
        entry = self.entries.get(ev.name)
        if entry is None or entry.state is not R:
            return
        self._send(CacheInvalid(name=ev.name, transfer_id=0, reason=ev.reason,
                                cause=TransferFailure.LOCAL_IO))
        entry.lost = True
        self._remove(ev.name, f"lost: {ev.reason}")
