"""``vinework demo``: a small DAG on local workers, showing what ran where and where bytes went.

The DAG: a buffer is split by 4 producer tasks into 4 temp files (kept on the
workers), 4 consumers each read two temps (moved worker-to-worker), and a
final PythonTask sums the consumers' results. Nothing intermediate passes
through the manager; the printed byte counts show it.
"""

from __future__ import annotations

import tempfile

from rich.console import Console
from rich.table import Table


def run_demo(workers: int = 2) -> int:
    import vinework as vine

    console = Console()
    with tempfile.TemporaryDirectory(prefix="vinework-demo-") as tmp:
        with vine.Manager(port=0, name="demo", run_info_path=tmp) as m:
            factory = vine.Factory(batch_type="local", manager=m)
            factory.min_workers = factory.max_workers = workers
            factory.cores, factory.memory, factory.disk = 2, 1000, 2000
            with factory:
                seed = m.declare_buffer(b"vinework " * 1000)
                temps = []
                for i in range(4):
                    f = m.declare_temp()
                    t = vine.Task(f"for k in $(seq 200); do cat seed.txt; done > part.dat; "
                                  f"echo producer {i}")
                    t.add_input(seed, "seed.txt")
                    t.add_output(f, "part.dat")
                    t.set_cores(1)
                    m.submit(t)
                    temps.append(f)
                sums = []
                for i in range(4):
                    t = vine.PythonTask(_count_bytes, "a.dat", "b.dat")
                    t.add_input(temps[i], "a.dat")
                    t.add_input(temps[(i + 1) % 4], "b.dat")
                    t.set_cores(1)
                    m.submit(t)
                    sums.append(t)
                table = Table(title="what ran where")
                for col in ("task", "command", "worker", "result", "output"):
                    table.add_column(col)
                total = 0
                while not m.empty():
                    done = m.wait(10)
                    if done is None:
                        continue
                    t = done
                    out = t.output if isinstance(t, vine.PythonTask) else t.output.strip()
                    if isinstance(t, vine.PythonTask) and t.successful():
                        total += out
                    table.add_row(str(t.id), t.command[:40], t.worker, str(t.result), str(out))
                console.print(table)
                s = m.stats
                bytes_table = Table(title="where the bytes went")
                bytes_table.add_column("path")
                bytes_table.add_column("bytes", justify="right")
                bytes_table.add_column("transfers", justify="right")
                bytes_table.add_row("manager -> worker", f"{s.bytes_sent:,}", str(s.transfers_sent))
                bytes_table.add_row("worker -> manager", f"{s.bytes_received:,}",
                                    str(s.transfers_received))
                bytes_table.add_row("worker -> worker", f"{s.bytes_peer:,}", str(s.transfers_peer))
                console.print(bytes_table)
                console.print(f"sum of consumer results: {total:,} bytes read by consumers")
                ok = total == 4 * 2 * 200 * 9000
                console.print("[green]demo ok[/green]" if ok else "[red]demo result wrong[/red]")
                return 0 if ok else 1


def _count_bytes(a: str, b: str) -> int:
    import os

    return os.path.getsize(a) + os.path.getsize(b)
