"""Cache eviction with a real worker: a worker offering little disk runs tasks whose
cached inputs together exceed it; the least recently used are evicted and every task
succeeds, with the worker's cache within its disk at the end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import vinework as vine
from vinework.trees import tree_size

try:
    from conftest import poll_until, wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, wait_all, wait_workers

pytestmark = pytest.mark.timeout(90)
MB = 1 << 20


def _cache_bytes(workdir: Path) -> int:
    cache = workdir / "cache"
    total = 0
    for e in os.scandir(cache):
        if e.name.startswith("."):
            continue
        total += tree_size(e.path) if e.is_dir(follow_symlinks=False) else e.stat().st_size
    return total


def test_a_small_disk_evicts_least_recently_used_inputs(manager: vine.Manager, workers: Any,
                                                        tmp_path: Path) -> None:
    m = manager
    workers(m, cores=1, disk=8)
    wait_workers(m, 1)
    files = []
    for i in range(8):
        p = tmp_path / f"in-{i}.dat"
        p.write_bytes(bytes([i]) * (3 * MB // 2))
        files.append(m.declare_file(str(p), cache=True))
    order = [0, 1, 2, 0, 3, 4, 5, 0, 6, 7, 0]  # input 0 stays in use: never evicted
    for i in order:
        t = vine.Task(f"test $(wc -c < in) = {3 * MB // 2} && echo ok")
        t.add_input(files[i], "in")
        t.set_disk(1)
        m.submit(t)
        (done,) = wait_all(m, 1)
        assert done.successful(), (done.result, done.output)
    assert m.stats.files_evicted >= 3
    # input 0 was used every few tasks: it was never sent again after the first time
    assert "evicted" not in "\n".join(m.file_story(files[0]))
    assert any("evicted from" in line for f in files[1:4] for line in m.file_story(f))
    workdir = tmp_path / "worker-0"
    poll_until(lambda: _cache_bytes(workdir) <= 8 * MB, 10, "the worker's cache to shrink")
