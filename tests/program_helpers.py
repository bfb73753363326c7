"""What the TaskVine-style program tests share: the wait loop and the functions their
PythonTasks run (pickled by value: workers cannot import the tests)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest

import vinework as vine

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---------------------------------------------------------------------- the wait loop
def drain(m: vine.Manager, timeout: float = 60.0,
          on_task: Callable[[vine.Task], None] | None = None) -> list[vine.Task]:
    """TaskVine's loop, ``while not m.empty(): t = m.wait(5)``, with a deadline."""
    deadline = time.monotonic() + timeout
    done: list[vine.Task] = []
    while not m.empty():
        if time.monotonic() > deadline:
            pytest.fail(f"manager not empty after {timeout} s; {len(done)} tasks back; "
                        f"stats: {m.stats}")
        t = m.wait(5)
        if t:
            done.append(t)
            if on_task is not None:
                on_task(t)
    return done


def nothing_back_for(m: vine.Manager, seconds: float) -> bool:
    """True if no task comes back from ``wait`` for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if m.wait(0.2) is not None:
            return False
    return True


# ---------------------------------------------------------------------- functions
def my_sum(x: int, y: int, negate: bool = False) -> int:
    from operator import add, mul

    return mul(-1 if negate else 1, add(x, y))


def square(x: int) -> int:
    return x * x


def divide(a: float, b: float) -> float:
    return a / b


def greet(word: str) -> str:
    return f"{word}"


def read_pickled_and_greet(remote_name: str) -> str:
    import cloudpickle as cp

    with open(remote_name, "rb") as f:
        word = cp.load(f)
    return f"{word} world!"


def env_value(name: str) -> str | None:
    return os.environ.get(name)


def largest(seq: Any) -> Any:
    return max(seq)


def product_of_pair(p: tuple[int, int]) -> int:
    return p[0] * p[1]


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def total(xs: list[int]) -> int:
    return sum(xs)


