"""The package's public names load on first use: every name in ``vinework.__all__``
resolves (also through ``from vinework import *`` and ``dir``), and a worker process
imports none of the manager's modules, nor Dask."""

from __future__ import annotations

import subprocess
import sys

import pytest

import vinework

pytestmark = pytest.mark.timeout(60)


def test_every_public_name_resolves() -> None:
    for name in vinework.__all__:
        assert getattr(vinework, name) is not None, name
    assert set(vinework.__all__) <= set(dir(vinework))
    assert set(vinework._LAZY) <= set(vinework.__all__)  # no lazy name left unexported
    assert vinework.DaskVineDag.__name__ == "DaskGraph"
    assert vinework.Manager.__module__ == "vinework.manager.api"
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        vinework.NoSuchThing  # noqa: B018


def test_star_import_gives_the_api() -> None:
    ns: dict[str, object] = {}
    exec("from vinework import *", ns)
    assert ns["Task"] is vinework.Task and ns["FuturesExecutor"] is vinework.FuturesExecutor
    assert ns["VINE_RESULT_SUCCESS"] == vinework.VINE_RESULT_SUCCESS


def test_a_worker_imports_no_manager_module() -> None:
    code = ("import sys, vinework.worker.main, vinework.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('vinework.manager', "
            "'vinework.core', 'vinework.futures', 'vinework.dask', 'dask'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=50, check=True).stdout.strip()
    assert out == "[]"
