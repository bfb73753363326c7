"""``vinework plot RUN_DIR``: PNG plots of a run, drawn from its TaskVine-format logs.

RUN_DIR is a run's directory (``vine-run-info/<stamp>``, the one holding
``vine-logs/``), its ``vine-logs`` directory, or a ``vine-run-info`` directory (its
``most-recent`` run). Four images are written (to ``RUN_DIR/plots`` unless ``-o``):

- ``timeline.png``: one row per worker core, a bar per task run from dispatch to
  its result, coloured by how it ended (recovery runs hatched);
- ``transfers.png``: bytes moved over time, one cumulative line per path
  (manager->worker, worker->worker, url->worker, worker->manager);
- ``workers.png``: workers connected over time (and tasks running, from the
  performance log when there is one);
- ``recoveries.png``: when workers failed, files were lost and tasks were re-run
  to remake them.

matplotlib (the ``plots`` extra) is imported only here, with its Agg backend.
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys
from typing import Any

from .txnparse import Run, TxnFormatError, parse_file, read_perf

PATHS = ("manager->worker", "worker->worker", "url->worker", "worker->manager")
COLOURS = {"SUCCESS": "tab:blue", "LOST": "tab:gray", "RUNNING": "tab:olive"}


def find_logs(path: str) -> str:
    """The ``vine-logs`` directory of RUN_DIR (raises FileNotFoundError saying where
    it looked)."""
    tried = [path, os.path.join(path, "vine-logs"),
             os.path.join(path, "most-recent", "vine-logs")]
    for d in tried:
        if os.path.isfile(os.path.join(d, "transactions")):
            return d
    raise FileNotFoundError(
        f"no transactions log under {path!r} (looked for "
        + ", ".join(os.path.join(d, "transactions") for d in tried) + ")")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError("matplotlib is not installed: pip install vinework[plots]") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


MAX_ROWS = 150  # more worker cores than this: one row per worker, bars overlapping


Rows = tuple[list[tuple[str, int]], list[tuple[int, Any]], dict[str, int], bool]


def _rows(run: Run) -> Rows:
    """Rows (worker, slot), runs placed on rows, each worker's first row, and whether
    rows are cores: a run takes the lowest slot of its worker free at its start."""
    by_worker: dict[str, list[Any]] = {w: [] for w in run.workers}
    for tr in run.runs:
        by_worker.setdefault(tr.worker, []).append(tr)
    rows: list[tuple[str, int]] = []
    placed: list[tuple[int, Any]] = []
    first: dict[str, int] = {}
    for wid in sorted(by_worker, key=lambda w: (len(w), w)):
        first[wid] = base = len(rows)
        free: list[int] = []  # slots free now (a heap)
        busy: list[tuple[float, int]] = []  # (end, slot) (a heap)
        n = 0
        for tr in sorted(by_worker[wid], key=lambda r: r.start):
            while busy and busy[0][0] <= tr.start:
                heapq.heappush(free, heapq.heappop(busy)[1])
            if free:
                slot = heapq.heappop(free)
            else:
                slot, n = n, n + 1
            heapq.heappush(busy, (tr.end, slot))
            placed.append((base + slot, tr))
        rows.extend((wid, i) for i in range(max(1, n)))
    if len(rows) <= MAX_ROWS:
        return rows, placed, first, True
    order = sorted(by_worker, key=lambda w: (len(w), w))  # too many cores: a row per worker
    first = {w: i for i, w in enumerate(order)}
    return ([(w, 0) for w in order],
            [(first[tr.worker], tr) for w in order for tr in by_worker[w]], first, False)


def plot_timeline(plt: Any, run: Run, recovered: set[tuple[int, int]], out: str) -> None:
    """One row per worker core (or per worker, for many cores); a bar per task run."""
    rows, placed, first, per_core = _rows(run)
    height = min(40.0, 1.5 + 0.35 * max(1, len(rows)))
    fig, ax = plt.subplots(figsize=(11, height), dpi=100)
    end = max(run.end, 1e-3)
    from matplotlib.collections import PolyCollection

    groups: dict[tuple[str, bool], list[list[tuple[float, float]]]] = {}
    for row, tr in placed:  # one collection of rectangles per look (a bar each is slow)
        key = (COLOURS.get(tr.result, "tab:red"), (tr.task_id, tr.attempt) in recovered)
        x0, x1 = tr.start, tr.start + max(tr.end - tr.start, end / 500)
        groups.setdefault(key, []).append(
            [(x0, row - 0.4), (x0, row + 0.4), (x1, row + 0.4), (x1, row - 0.4)])
    for (colour, hatched), verts in groups.items():
        ax.add_collection(PolyCollection(
            verts, facecolors=colour, edgecolors="black",
            linewidths=0.3 if len(placed) < 2000 else 0.0, hatch="//" if hatched else None,
            alpha=1.0 if per_core else 0.5))
    for wid, (t0, t1) in run.workers.items():
        ax.plot([t0, t1], [first[wid] - 0.45] * 2, color="black", linewidth=0.8)
    labels = [f"{w.removeprefix('worker-')} #{s}" if per_core else w.removeprefix("worker-")
              for w, s in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=8 if len(rows) < 60 else 5)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.invert_yaxis()
    ax.set_xlim(0, end * 1.02)
    ax.set_xlabel("seconds since the manager started")
    ax.set_title(f"tasks on workers ({len(run.runs)} runs, {len(run.workers)} workers)")
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color="tab:blue", label="success"),
                       Patch(color="tab:red", label="failed"),
                       Patch(color="tab:gray", label="worker lost"),
                       Patch(facecolor="white", edgecolor="black", hatch="//",
                             label="recovery run")], loc="upper left",
              bbox_to_anchor=(1.005, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_transfers(plt: Any, run: Run, out: str) -> None:
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    drew = False
    biggest = max([sum(m.size for m in run.moved if m.path == p) for p in PATHS] + [1.0])
    unit, scale = next((u, f) for u, f in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1.0))
                       if biggest >= f)
    end = max(run.end, 1e-3)
    for path in PATHS:
        moves = sorted((m for m in run.moved if m.path == path), key=lambda m: m.end)
        if not moves:
            continue
        xs, ys, total = [0.0], [0.0], 0.0
        for m in moves:
            total += m.size
            xs.append(m.end)
            ys.append(total / scale)
        xs.append(end)
        ys.append(total / scale)
        ax.step(xs, ys, where="post", linewidth=2,
                label=f"{path}: {total / scale:.3g} {unit} in {len(moves)}")
        drew = True
    if not drew:
        ax.text(0.5, 0.5, "no transfers in this run", ha="center", va="center",
                transform=ax.transAxes)
    else:
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlim(0, max(run.end, 1e-3) * 1.02)
    ax.set_xlabel("seconds since the manager started")
    ax.set_ylabel(f"{unit} moved (cumulative)")
    ax.set_title("bytes moved, by path")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_workers(plt: Any, run: Run, perf: tuple[list[str], list[list[float]]] | None,
                 out: str) -> None:
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    events = sorted([(t0, 1) for t0, _ in run.workers.values()]
                    + [(t1, -1) for _, t1 in run.workers.values()])
    xs, ys, n = [0.0], [0], 0
    for t, d in events:
        n += d
        xs.append(t)
        ys.append(n)
    ax.step(xs, ys, where="post", label="workers connected", linewidth=2)
    if perf is not None and perf[1]:
        names, rows = perf
        i, j = names.index("timestamp"), names.index("tasks_running")
        start = run.start_us
        ax.step([(r[i] - start) / 1e6 for r in rows], [r[j] for r in rows], where="post",
                label="tasks running (performance log)", linestyle="--")
    ax.set_xlim(0, max(run.end, 1e-3) * 1.02)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds since the manager started")
    ax.set_ylabel("count")
    ax.set_title("workers connected")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_recoveries(plt: Any, run: Run, failures: list[tuple[float, str]], out: str) -> None:
    fig, ax = plt.subplots(figsize=(10, 3.5), dpi=100)
    lanes = [("worker failed", [(t, w.removeprefix("worker-")) for t, w in failures]),
             ("file lost", [(t, f[:24]) for t, f in run.lost]),
             ("task re-run", [(t, f"task {tid}") for t, tid in run.recoveries])]
    colours = ("tab:red", "tab:orange", "tab:green")
    for y, ((label, points), colour) in enumerate(zip(lanes, colours, strict=True)):
        if points:
            ax.scatter([t for t, _ in points], [y] * len(points), s=60, color=colour,
                       label=f"{label} ({len(points)})", zorder=3)
            for t, text in points[:20]:
                ax.annotate(text, (t, y), textcoords="offset points", xytext=(4, 6),
                            fontsize=7)
    if not any(points for _, points in lanes):
        ax.text(0.5, 0.5, "no failures or recoveries in this run", ha="center",
                va="center", transform=ax.transAxes)
    else:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_yticks(range(len(lanes)), [label for label, _ in lanes])
    ax.set_ylim(-0.7, len(lanes) - 0.3)
    ax.set_xlim(0, max(run.end, 1e-3) * 1.02)
    ax.set_xlabel("seconds since the manager started")
    ax.set_title("failures and recoveries")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_run(run_dir: str, out_dir: str | None = None) -> list[str]:
    """Write the four PNGs of the run at ``run_dir``; return their paths."""
    logs = find_logs(run_dir)
    plt = _pyplot()
    records = parse_file(os.path.join(logs, "transactions"))
    run = Run.from_records(records)
    perf_path = os.path.join(logs, "performance")
    perf = read_perf(perf_path) if os.path.isfile(perf_path) else None
    failures = [((r.time_us - run.start_us) / 1e6, r.target) for r in records
                if r.subject == "WORKER" and r.event == "DISCONNECTION"
                and r.args[0] == "FAILURE"]
    recovered: set[tuple[int, int]] = set()
    pending = {tid for _, tid in run.recoveries}
    for tr in sorted(run.runs, key=lambda r: r.start):  # a recovery's run: the next one
        if tr.task_id in pending and any(t <= tr.start and tid == tr.task_id
                                         for t, tid in run.recoveries):
            recovered.add((tr.task_id, tr.attempt))
            pending.discard(tr.task_id)
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(logs)), "plots")
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, n) for n in
             ("timeline.png", "transfers.png", "workers.png", "recoveries.png")]
    plot_timeline(plt, run, recovered, paths[0])
    plot_transfers(plt, run, paths[1])
    plot_workers(plt, run, perf, paths[2])
    plot_recoveries(plt, run, failures, paths[3])
    return paths


def main(argv: list[str], prog: str = "vinework plot") -> int:
    """The command: ``vinework plot RUN_DIR [-o OUT_DIR]``."""
    ap = argparse.ArgumentParser(prog=prog, description="Draw PNG plots of a run from its "
                                 "transaction and performance logs.")
    ap.add_argument("run_dir", metavar="RUN_DIR",
                    help="a run's directory (vine-run-info/<stamp>), its vine-logs, or "
                         "a vine-run-info directory (its most-recent run)")
    ap.add_argument("-o", "--output", metavar="OUT_DIR",
                    help="where to write the PNGs (default: RUN_DIR/plots)")
    args = ap.parse_args(argv)
    try:
        paths = plot_run(args.run_dir, args.output)
    except (FileNotFoundError, TxnFormatError, RuntimeError, OSError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2 if isinstance(e, (FileNotFoundError, RuntimeError)) else 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
