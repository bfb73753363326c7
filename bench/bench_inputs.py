"""The cost of placing a task's inputs so that the task cannot change the cached copy.

Before (the baseline, measured in the same run): an input was a hard link to the
cached file (a symlink across filesystems, as for PythonTask sandboxes on
/dev/shm): O(1) whatever the size, but a task writing into its input changed the
cache. Now (``sandbox.prepare``): a reflink where the filesystem can, else a copy
up to ``COPY_MAX`` bytes, else a hard link to the cached file made read-only and
checked after the task (``SharedInput.changed``). Also timed: a copy at every
size ("copy always"), which is what ``COPY_MAX`` trades against.

What is timed, per input and per size: one sandbox made, the input placed, the
check after the task (for shared inputs), and the sandbox released (emptied for
reuse, as ``SandboxPool.release`` does), i.e. the whole per-task cost an input
adds. Medians over ``ROUNDS`` rounds (default 7) of ``N`` placements (fewer for
big files), alternating the methods inside each round. Both the cache and the
sandbox on the workdir's disk (/tmp) and the cache on /tmp with the sandbox on
/dev/shm (where PythonTask sandboxes live).

Run: ``python bench/bench_inputs.py [ROUNDS]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from vinework.worker import sandbox as sb

SIZES = [1 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20]


def _old_prepare(box: str, src: str) -> None:
    dest = os.path.join(box, "in")
    try:
        os.link(src, dest)
    except OSError:
        os.symlink(src, dest)


def _time(method: str, cache_file: str, pool: sb.SandboxPool, n: int) -> float:
    """Seconds per placement (sandbox acquire + place + check + release)."""
    t0 = time.perf_counter()
    for _ in range(n):
        box = pool.acquire()
        if method == "before":
            _old_prepare(box, cache_file)
        else:
            copy_max = sb.COPY_MAX if method == "now" else 1 << 62
            for inp in sb.prepare(box, [("f", "in")], {"f": cache_file}, copy_max=copy_max):
                assert not inp.changed()
        pool.release(box)
    return (time.perf_counter() - t0) / n


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    cache_dir = tempfile.mkdtemp(prefix="vinework-bench-inputs-", dir="/tmp")
    places = [("/tmp -> /tmp", tempfile.mkdtemp(prefix="vinework-bench-boxes-", dir="/tmp"))]
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        places.append(("/tmp -> /dev/shm", tempfile.mkdtemp(prefix="vinework-bench-",
                                                           dir="/dev/shm")))
    print(f"COPY_MAX = {sb.COPY_MAX >> 20} MiB; medians of {rounds} rounds; "
          "microseconds per input (sandbox made, input placed, checked, sandbox emptied)")
    print(f"{'where':18} {'size':>8} {'before (link)':>14} {'now':>10} {'copy always':>12}"
          f" {'now/before':>10}")
    try:
        for where, box_root in places:
            pool = sb.SandboxPool(box_root)
            for size in SIZES:
                path = os.path.join(cache_dir, f"f{size}")
                with open(path, "wb") as f:
                    f.write(os.urandom(min(size, 1 << 20)) * max(1, size >> 20))
                n = max(3, min(2000, (64 << 20) // size))
                res: dict[str, list[float]] = {"before": [], "now": [], "copy": []}
                for _ in range(rounds):
                    for method in res:
                        res[method].append(_time(method, path, pool, n))
                os.chmod(path, 0o644)
                med = {k: statistics.median(v) * 1e6 for k, v in res.items()}
                label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
                print(f"{where:18} {label:>8} {med['before']:>14.1f} {med['now']:>10.1f} "
                      f"{med['copy']:>12.1f} {med['now'] / med['before']:>10.1f}x", flush=True)
                os.unlink(path)
    finally:
        import shutil

        shutil.rmtree(cache_dir, ignore_errors=True)
        for _, root in places:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
