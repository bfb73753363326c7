"""Security with real processes: results unpickled only in the user's thread, password
authentication (both ways, refusals logged, a failed peer never a worker), transfer
tokens, and the bounds on what an unauthenticated connection may send."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import vinework as vine

try:
    from conftest import wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import wait_all, wait_workers

pytestmark = pytest.mark.timeout(60)


def test_a_result_is_unpickled_in_the_thread_that_reads_it(manager: vine.Manager,
                                                           workers: Any) -> None:
    class Probe:  # (a local class: cloudpickle sends it by value)
        def __setstate__(self, state: dict[str, Any]) -> None:
            import threading as th
            self.__dict__.update(state)
            self.unpickled_in = th.current_thread().name

    def make() -> Probe:
        p = Probe()
        p.value = 42  # type: ignore[attr-defined]
        return p

    m = manager
    workers(m)
    wait_workers(m, 1)
    t = vine.PythonTask(make)
    m.submit(t)
    (done,) = wait_all(m, 1)
    box: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: box.update(out=done.output), name="the-reader")
    reader.start()
    reader.join(10)
    assert box["out"].value == 42
    assert box["out"].unpickled_in == "the-reader"  # not the manager's loop thread
    assert done.output is box["out"]  # made once
