"""The worker's core, serverless libraries: instances, their resources, and their calls.

``LibraryHandling`` takes ``StartLibrary`` (check the library's input files,
commit its resources in the ``Ledger``, pin its inputs, then
``StartLibraryProcess``), ``StopLibrary`` (``StopLibraryProcess``), and the
shell's reports of an instance's process (ready: ``LibraryReady`` to the
manager; ended: release what it held, ``LibraryEnded``). A stopped instance
gives its resources back at once, before its process is gone: the manager may
start another library in them with the very next message. A FunctionCall
(``RunTask.library_instance``) takes none of the worker's resources of its
own: it runs in its library's, and ``TaskHandling._on_run`` asks
``_call_refused`` whether its instance is here. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.messages import LibraryEnded, LibraryReady, StartLibrary
from .base import CoreBase, R
from .events import (
    DEBUG,
    INFO,
    LibraryProcessEnded,
    LibraryProcessReady,
    LibraryStartRequested,
    LibraryStopRequested,
    StartLibraryProcess,
    StopLibraryProcess,
)
from .outcome import OverCommit, Resources


@dataclass(slots=True)
class LibraryInstance:
    """One library instance on this worker."""

    instance_id: int
    name: str
    ask: Resources
    gpu_ids: tuple[int, ...]
    inputs: tuple[str, ...]  # cache names pinned
    ready: bool = False
    stopping: bool = False
    pid: int = 0
    released: bool = False  # its resources and pins were given back (at StopLibrary)


class LibraryHandling(CoreBase):
    """StartLibrary, StopLibrary and the life of library processes."""

    libraries: dict[int, LibraryInstance]  # (set by WorkerState.__init__)

    def _on_start_library(self, ev: LibraryStartRequested) -> None:
        msg: StartLibrary = ev.library  # type: ignore[assignment]
        libs = self.libraries
        if msg.instance_id in libs:
            self._violation(f"StartLibrary for instance {msg.instance_id}, already started")
            return
        for name, remote in msg.inputs:
            entry = self.entries.get(name)
            if entry is None or entry.state is not R or entry.doomed:
                self._library_failed(msg.instance_id, f"input {name} ({remote}) of library "
                                     f"{msg.name} is not in the cache")
                return
        ask = Resources(msg.cores, msg.memory, msg.disk, msg.gpus)
        try:
            gpu_ids = self.ledger.commit(ask)
        except OverCommit as e:
            self._library_failed(msg.instance_id, f"worker {self.worker_id} cannot start "
                                 f"library {msg.name}: it {e}")
            return
        inputs = tuple(dict.fromkeys(n for n, _ in msg.inputs))
        for name in inputs:
            self.entries[name].pins += 1
        libs[msg.instance_id] = LibraryInstance(msg.instance_id, msg.name, ask, gpu_ids, inputs)
        self._record(f"library-{msg.instance_id}", f"starting {msg.name} ({ask})")
        self._log(INFO, f"starting library {msg.name} (instance {msg.instance_id}, "
                  f"{msg.exec_mode} mode, {msg.slots} slots, {ask})")
        self._emit(StartLibraryProcess(stimulus_id=self._sid, library=msg, gpu_ids=gpu_ids))

    def _library_failed(self, instance_id: int, why: str) -> None:
        """It could not start here, for this worker's reasons (not the library's set-up)."""
        self._log(INFO, why)
        self._send(LibraryEnded(instance_id=instance_id, reason=why))

    def _on_stop_library(self, ev: LibraryStopRequested) -> None:
        inst = self.libraries.get(ev.instance_id)
        if inst is None or inst.stopping:
            return
        inst.stopping = True
        # give its resources back now: the manager may start another library in them, and
        # its StartLibrary comes right after this message
        self._release_library(inst)
        self._log(DEBUG, f"stopping library {inst.name} (instance {inst.instance_id}): "
                  f"{ev.reason}")
        self._emit(StopLibraryProcess(stimulus_id=self._sid, instance_id=inst.instance_id))

    def _on_library_ready(self, ev: LibraryProcessReady) -> None:
        inst = self.libraries.get(ev.instance_id)
        if inst is None:
            return
        inst.ready, inst.pid = True, ev.pid
        self._record(f"library-{inst.instance_id}", f"ready, pid {ev.pid}")
        self._send(LibraryReady(instance_id=inst.instance_id, pid=ev.pid))

    def _on_library_ended(self, ev: LibraryProcessEnded) -> None:
        inst = self.libraries.pop(ev.instance_id, None)
        if inst is None:
            return  # given up already (the manager connection ended)
        self._release_library(inst)
        self._record(f"library-{inst.instance_id}", f"ended: {ev.reason}")
        self._log(INFO if inst.stopping else DEBUG,
                  f"library {inst.name} (instance {inst.instance_id}) ended: {ev.reason}")
        self._send(LibraryEnded(instance_id=inst.instance_id, reason=ev.reason,
                                setup_failed=ev.setup_failed and not inst.ready,
                                output=ev.output, pid=ev.pid or inst.pid))

    def _release_library(self, inst: LibraryInstance) -> None:
        if inst.released:
            return
        inst.released = True
        self.ledger.release(inst.ask, inst.gpu_ids)
        for name in inst.inputs:
            entry = self.entries.get(name)
            if entry is None:
                continue
            entry.pins -= 1
            if entry.pins == 0 and entry.doomed:
                self._remove(name, "its last pin was released")

    def _stop_libraries(self, why: str) -> None:
        """Stop every instance at once (the manager that asked for them is gone)."""
        libs = self.libraries
        for inst in list(libs.values()):
            del libs[inst.instance_id]
            self._release_library(inst)
            self._emit(StopLibraryProcess(stimulus_id=self._sid, instance_id=inst.instance_id))

    def _call_refused(self, instance_id: int) -> str:
        """Why a FunctionCall for ``instance_id`` cannot run here ("" if it can)."""
        inst = self.libraries.get(instance_id)
        if inst is None:
            return f"library instance {instance_id} is not running on this worker"
        if inst.stopping:
            return f"library {inst.name} (instance {instance_id}) is stopping"
        return ""
