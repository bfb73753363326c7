"""The PythonTask payload: a script's function is pickled once and reused only while
nothing it depends on can have changed (pure, no processes)."""

from __future__ import annotations

from typing import Any

from vinework.pickling import dumps_call, function_bytes, loads_call


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
