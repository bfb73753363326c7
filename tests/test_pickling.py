"""The PythonTask payload: a script's function is pickled once and reused only while
nothing it depends on can have changed (pure, no processes)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from typing import Any

import pytest

from vinework.pickling import dumps_call, dumps_exception, function_bytes, loads_call


def script(src: str) -> dict[str, Any]:
    """Run ``src`` as if it were the user's script (module ``__main__``: pickled by value)."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(src, ns)
    return ns


def call(payload: bytes) -> Any:
    fn, args, kwargs = loads_call(payload)
    return fn(*args, **kwargs)


def test_an_unchanged_function_is_pickled_once() -> None:
    ns = script("K = 10\ndef f(x):\n    return x + K\n")
    a = function_bytes(ns["f"])
    assert function_bytes(ns["f"]) is a
    assert call(dumps_call(ns["f"], (1,), {})) == 11


def test_a_rebound_global_is_seen() -> None:
    ns = script("K = 10\ndef f(x):\n    return x + K\n")
    first = dumps_call(ns["f"], (1,), {})
    ns["K"] = 20
    assert call(first) == 11 and call(dumps_call(ns["f"], (1,), {})) == 21


def test_a_mutated_global_is_seen_every_time() -> None:
    ns = script("TABLE = [1]\ndef f(i):\n    return TABLE[i]\n")
    assert call(dumps_call(ns["f"], (0,), {})) == 1
    ns["TABLE"][0] = 5  # same object, new content: the function is never cached
    assert call(dumps_call(ns["f"], (0,), {})) == 5
    assert function_bytes(ns["f"]) is not function_bytes(ns["f"])


def test_closures_defaults_nested_code_and_redefinitions_are_seen() -> None:
    ns = script(
        "def make(n):\n    def add(x):\n        return x + n\n    return add\n"
        "def g(x, k=1):\n    return (lambda y: y * M)(x) + k\nM = 2\n")
    assert call(dumps_call(ns["make"](3), (1,), {})) == 4
    assert call(dumps_call(ns["make"](7), (1,), {})) == 8
    g = ns["g"]
    assert call(dumps_call(g, (5,), {})) == 11
    ns["M"] = 3  # read only by the lambda nested in g
    assert call(dumps_call(g, (5,), {})) == 16
    g.__defaults__ = (100,)
    assert call(dumps_call(g, (5,), {})) == 115
    exec("def g(x, k=1):\n    return -x\n", ns)
    assert call(dumps_call(ns["g"], (5,), {})) == -5


def test_a_function_calling_another_script_function_is_not_cached() -> None:
    ns = script("def h(x):\n    return x\ndef f(x):\n    return h(x) + 1\n")
    assert call(dumps_call(ns["f"], (1,), {})) == 2
    exec("def h(x):\n    return 10 * x\n", ns)
    assert call(dumps_call(ns["f"], (1,), {})) == 11


def test_arguments_of_any_kind_and_builtins() -> None:
    ns = script("class Point:\n    def __init__(self, x):\n        self.x = x\n"
                "def norm(p, scale=1):\n    return p.x * scale\n")
    assert call(dumps_call(ns["norm"], (ns["Point"](4),), {"scale": 2})) == 8
    assert call(dumps_call(abs, (-3,), {})) == 3
    assert call(dumps_call(lambda *a, **k: (a, k), (1, "x"), {"z": None})) == ((1, "x"),
                                                                                 {"z": None})


class TwoArgError(Exception):
    """Its ``__init__`` takes other arguments than its ``.args`` holds."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"{code}: {why}")
        self.code, self.why = code, why


class KwOnlyError(Exception):
    def __init__(self, *, code: int) -> None:
        super().__init__(code)
        self.code = code


def test_an_exception_whose_init_does_not_take_its_args_comes_back_as_itself() -> None:
    for e in (TwoArgError(7, "bad"), KwOnlyError(code=9)):
        cls, args = e.__reduce__()[:2]
        with pytest.raises(TypeError):  # what unpickling its own reduction does
            cls(*args)
        back = pickle.loads(dumps_exception(e))
        assert type(back) is type(e) and str(back) == str(e) and back.code == e.code
    two = pickle.loads(dumps_exception(TwoArgError(7, "bad")))
    assert two.why == "bad" and two.args == ("7: bad",)


def test_an_exception_keeps_its_notes_and_loses_only_attributes_that_cannot_travel() -> None:
    e = TwoArgError(1, "x")
    e.add_note("a note")
    e.lock = threading.Lock()  # type: ignore[attr-defined]  # (cannot be pickled)
    back = pickle.loads(dumps_exception(e))
    assert type(back) is TwoArgError and back.code == 1 and back.__notes__ == ["a note"]
    assert not hasattr(back, "lock")
    plain = pickle.loads(dumps_exception(ValueError("ordinary")))
    assert type(plain) is ValueError and plain.args == ("ordinary",)


def test_a_system_exit_keeps_its_code_where_tblib_reduces_every_exception() -> None:
    """dask.distributed installs tblib's reducer for every exception class, which builds
    them without ``__init__`` (SystemExit's ``code`` came back None); in a subprocess,
    since the installation is for the whole interpreter."""
    pytest.importorskip("tblib.pickling_support")
    code = ("import pickle, tblib.pickling_support\n"
            "tblib.pickling_support.install()\n"
            "from vinework.pickling import dumps_exception\n"
            "try:\n    raise SystemExit(3)\n"
            "except SystemExit as e:\n    back = pickle.loads(dumps_exception(e))\n"
            "print(type(back).__name__, back.code)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split() == ["SystemExit", "3"]


def test_the_cause_of_an_exception_travels_with_it() -> None:
    """``raise ... from ...``: pickling drops ``__cause__``; dask's sync scheduler keeps it."""
    try:
        try:
            raise TwoArgError(5, "inner")
        except TwoArgError as inner:
            raise LookupError("outer") from inner
    except LookupError as e:
        back = pickle.loads(dumps_exception(e))
    assert type(back) is LookupError and back.args == ("outer",)
    assert type(back.__cause__) is TwoArgError and back.__cause__.code == 5
    loop = ValueError("loop")
    loop.__cause__ = loop  # (a cycle: bounded, not endless)
    again = pickle.loads(dumps_exception(loop))
    assert type(again) is ValueError
