"""Durability under chaos: a 500-task DAG of temps while workers are killed and replaced.

The same seeded DAG (tasks of 20-200 ms, each hashing its inputs and padding its
output to 64 KB - 1 MB) runs on 4 one-core workers, four times:

    clean       no faults (the reference run)
    1 copy      faults; one copy of each temp, lost temps recomputed
    2 replicas  faults; ``temp-replica-count`` 2
    auto        faults; ``durability auto`` (replicate / checkpoint by expected cost)

In the runs with faults, one seeded schedule SIGKILLs a worker (its process group,
by pid) every 2-5 s and starts a fresh one in its place, at most ``--kills`` times.
Every output that no task consumes comes back to the manager; each run's outputs
must equal the clean run's and the hashes computed here in Python.

Run: ``python bench/bench_chaos.py [--tasks 500] [--kills 6] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import vinework as vine
from vinework.txnlog import read_log

WORKERS = 4
RUN_TIMEOUT = 180.0


@dataclass
class Node:
    i: int
    ins: list[int]
    secs: float
    pad: int


def make_dag(seed: int, n: int, width: int = 25) -> list[Node]:
    """Layers of ``width`` tasks; each reads 1-3 outputs of the layer before, sometimes an older one."""
    rng = random.Random(seed)
    nodes: list[Node] = []
    for i in range(n):
        layer = i // width
        ins: set[int] = set()
        if layer > 0:
            prev = range((layer - 1) * width, layer * width)
            ins.update(rng.sample(prev, rng.randint(1, 3)))
            if layer > 1 and rng.random() < 0.3:
                ins.add(rng.randrange(0, (layer - 1) * width))
        nodes.append(Node(i, sorted(ins), rng.uniform(0.02, 0.2), rng.randint(64 << 10, 1 << 20)))
    return nodes


def command(nd: Node) -> str:
    cat = "".join(f"cat in{k}; " for k in nd.ins)
    return (f"sleep {nd.secs:.3f}; ({cat}echo {nd.i}) | md5sum > out; "
            f"head -c {nd.pad} /dev/zero >> out")


def expected_outputs(nodes: list[Node]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for nd in nodes:
        h = hashlib.md5(b"".join(out[k] for k in nd.ins) + f"{nd.i}\n".encode()).hexdigest()
        out[nd.i] = (h + "  -\n").encode() + bytes(nd.pad)
    return out


class Workers:
    """Worker processes started and ended by pid (each leads its own process group)."""

    def __init__(self, m: vine.Manager, base: str) -> None:
        self.m = m
        self.base = base
        self.live: list[subprocess.Popen[bytes]] = []
        self.all: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        n = len(self.all)
        p = subprocess.Popen(
            [sys.executable, "-m", "vinework", "worker", "localhost", str(self.m.port),
             "--cores", "1", "--memory", "1000", "--disk", "20000",
             "--workdir", os.path.join(self.base, f"w{n}")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self.live.append(p)
        self.all.append(p)

    def kill(self, index: int) -> None:
        p = self.live.pop(index)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        for d in glob.glob(f"/dev/shm/vinework-{p.pid}-*"):  # left behind by SIGKILL
            shutil.rmtree(d, ignore_errors=True)

    def stop_all(self) -> None:
        for p in self.all:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.all:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # the fork server, if it outlived its worker
            for d in glob.glob(f"/dev/shm/vinework-{p.pid}-*"):
                shutil.rmtree(d, ignore_errors=True)


@dataclass
class Result:
    mode: str
    makespan: float
    stats: vine.ManagerStats
    kills: int
    recovery_lines: int
    outputs: dict[int, bytes]


def run(mode: str, nodes: list[Node], faults: bool, kills_max: int, seed: int,
        tune: dict[str, object]) -> Result:
    base = tempfile.mkdtemp(prefix=f"vinework-chaos-{mode.replace(' ', '-')}-")
    m = vine.Manager(port=0, run_info_path=os.path.join(base, "run"))
    ws = Workers(m, base)
    failed = True
    try:
        for k, v in tune.items():
            m.tune(k, v)
        for _ in range(WORKERS):
            ws.start()
        deadline = time.monotonic() + 30
        while m.stats.workers_connected < WORKERS:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not connect")
            time.sleep(0.05)
        consumed = {k for nd in nodes for k in nd.ins}
        sinks: dict[int, str] = {}
        temps: dict[int, vine.File] = {}
        start = time.monotonic()
        for nd in nodes:
            t = vine.Task(command(nd))
            t.set_cores(1)
            for k in nd.ins:
                t.add_input(temps[k], f"in{k}")
            if nd.i in consumed:
                temps[nd.i] = m.declare_temp()
                t.add_output(temps[nd.i], "out")
            else:
                sinks[nd.i] = os.path.join(base, f"sink-{nd.i}")
                t.add_output(m.declare_file(sinks[nd.i]), "out")
            m.submit(t)
        rng = random.Random(seed)  # the same kill schedule in every run with faults
        next_kill = start + rng.uniform(2, 5)
        kills = 0
        done = 0
        seen: set[int] = set()
        while done < len(nodes):
            now = time.monotonic()
            if now - start > RUN_TIMEOUT:
                raise RuntimeError(f"{mode}: only {done} of {len(nodes)} tasks in "
                                   f"{RUN_TIMEOUT} s; {m.stats}")
            if faults and kills < kills_max and now >= next_kill:
                ws.kill(rng.randrange(len(ws.live)))
                ws.start()
                kills += 1
                next_kill = now + rng.uniform(2, 5)
            t = m.wait(0.05)
            if t is None:
                continue
            if not t.successful():
                raise RuntimeError(f"{mode}: task {t.id} failed: {t.result}: {t.error_message} "
                                   f"{t.output!r} (log: {m.txn_path})")
            if t.id in seen:
                raise RuntimeError(f"{mode}: task {t.id} returned twice")
            seen.add(t.id)
            done += 1
        makespan = time.monotonic() - start
        stats = m.stats
        outputs = {}
        for i, path in sinks.items():
            with open(path, "rb") as fh:
                outputs[i] = fh.read()
        m.close()
        recovery_lines = sum(1 for _, kind, f in read_log(m.txn_path)
                             if kind == "TASK" and f[1] == "RECOVERY")
        failed = False
        return Result(mode, makespan, stats, kills, recovery_lines, outputs)
    finally:
        m.close()
        ws.stop_all()
        if failed:  # keep the transaction log, for a look at what went wrong
            for d in glob.glob(os.path.join(base, "w*")):
                shutil.rmtree(d, ignore_errors=True)
        else:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--modes", default="clean,1 copy,2 replicas,auto",
                    help="comma-separated subset of the modes (the first is the reference)")
    args = ap.parse_args()
    nodes = make_dag(args.seed, args.tasks)
    expected = expected_outputs(nodes)
    work = sum(nd.secs for nd in nodes)
    print(f"DAG: {len(nodes)} tasks, {sum(len(nd.ins) for nd in nodes)} edges, "
          f"{work:.1f} s of task time, {sum(len(v) for v in expected.values()) / 1e6:.0f} MB "
          f"of outputs; {WORKERS} one-core workers; up to {args.kills} kills, every 2-5 s")
    modes: list[tuple[str, bool, dict[str, object]]] = [
        ("clean", False, {"durability": "manual"}),
        ("1 copy", True, {"durability": "manual"}),
        ("2 replicas", True, {"durability": "manual", "temp-replica-count": 2}),
        ("auto", True, {"durability": "auto"}),
    ]
    wanted = [w.strip() for w in args.modes.split(",")]
    modes = [md for md in modes if md[0] in wanted]
    results = []
    for mode, faults, tune in modes:
        r = run(mode, nodes, faults, args.kills, args.seed + 1, tune)
        results.append(r)
        print(f"  {mode}: {r.makespan:.1f} s", flush=True)
    ref = results[0].outputs
    assert ref == {i: expected[i] for i in ref}, "the clean run disagrees with the Python hashes"
    hdr = (f"{'mode':<11} {'makespan s':>10} {'kills':>5} {'sent MB':>8} {'recv MB':>8} "
           f"{'peer MB':>8} {'ckpt MB':>8} {'lost':>5} {'recov':>5} {'recov s':>8} "
           f"{'replicas':>8}  results")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        s = r.stats
        same = "identical" if r.outputs == ref else "DIFFERENT"
        assert r.recovery_lines == s.tasks_recovery, (r.mode, r.recovery_lines, s.tasks_recovery)
        print(f"{r.mode:<11} {r.makespan:>10.1f} {r.kills:>5} {s.bytes_sent / 1e6:>8.1f} "
              f"{s.bytes_received / 1e6:>8.1f} {s.bytes_peer / 1e6:>8.1f} "
              f"{s.bytes_checkpointed / 1e6:>8.1f} {s.files_lost:>5} {s.tasks_recovery:>5} "
              f"{s.recovery_seconds:>8.1f} {s.replicas_made:>8}  {same}")
    bad = [r.mode for r in results if r.outputs != ref]
    if bad:
        raise SystemExit(f"results differ from the clean run: {', '.join(bad)}")


if __name__ == "__main__":
    main()
