"""DaskVine's ``task_mode="function-calls"`` with real workers: the same graphs give the
same results as ``task_mode="tasks"`` (arrays, bags, dataframes, delayed), with
intermediates kept on the workers, ``lib_resources``, ``lib_extra_functions``, and a
task's exception raised from ``compute``. The library made for a ``get`` is removed
after it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.bag as db
import pandas as pd
import pytest

from tests.conftest import poll_until, stop_process
from vinework.dask_executor import DaskVine

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskVine]:
    base = tmp_path_factory.mktemp("daskvine-calls")
    dv = DaskVine(port=0, run_info_path=str(base / "run-info"), shutdown=True)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "vinework", "worker", "localhost", str(dv.port), "--cores", "2",
         "--memory", "2000", "--disk", "4000", "--workdir", str(base / f"w{i}"),
         "--timeout", "30"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True) for i in range(2)]
    try:
        poll_until(lambda: dv.workers_connected == 2, 30, "2 workers")
        yield dv
    finally:
        dv.close()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
            stop_process(p)


def both(m: DaskVine, x: Any, **opts: Any) -> tuple[Any, Any]:
    tasks = dask.compute(x, scheduler=m.get, **opts)[0]
    calls = dask.compute(x, scheduler=m.get, task_mode="function-calls", **opts)[0]
    return tasks, calls


def test_arrays_bags_and_delayed_match_task_mode(m: DaskVine) -> None:
    x = da.arange(400, chunks=50)
    y = ((x * 3 + 1) ** 2).sum() - x.mean()
    a, b = both(m, y)
    assert a == b == dask.compute(y, scheduler="sync")[0]
    bag = db.from_sequence(range(60), npartitions=6).map(lambda v: v % 7).frequencies()
    a, b = both(m, bag)
    assert sorted(a) == sorted(b) == sorted(dask.compute(bag, scheduler="sync")[0])
    d = dask.delayed(sum)([dask.delayed(pow)(i, 2) for i in range(20)])
    assert both(m, d) == (2470, 2470)
    assert not any(r["library"].startswith("dask-library") for r in m.library_instances()
                   if r["calls"])


def test_dataframe_groupby_matches(m: DaskVine) -> None:
    import dask.dataframe as dd
    pdf = pd.DataFrame({"k": [i % 5 for i in range(200)], "v": list(range(200))})
    ddf = dd.from_pandas(pdf, npartitions=4)
    q = ddf.groupby("k").v.sum()
    a, b = both(m, q)
    pd.testing.assert_series_equal(a.sort_index(), b.sort_index())


def double(v: int) -> int:
    return 2 * v


def test_lib_options_and_errors(m: DaskVine) -> None:
    x = da.ones(40, chunks=10).sum()
    assert x.compute(scheduler=m.get, task_mode="function-calls",
                     lib_resources={"cores": 1, "slots": 4},
                     lib_extra_functions=[double], lib_modules=["numpy"]) == 40
    with pytest.raises(ValueError, match="lib_resources"):
        x.compute(scheduler=m.get, task_mode="function-calls", lib_resources={"cpus": 1})

    def boom(v: Any) -> Any:
        raise KeyError("deliberate")
    with pytest.raises(KeyError, match="deliberate"):
        dask.delayed(boom)(1).compute(scheduler=m.get, task_mode="function-calls")


def test_libraries_of_finished_gets_are_removed(m: DaskVine, tmp_path: Path) -> None:
    da.ones(10, chunks=5).sum().compute(scheduler=m.get, task_mode="function-calls")
    assert not [n for n in m._libraries if n.startswith("dask-library")]
