"""The transaction and performance logs of a real run follow TaskVine's documented formats.

The run (test_txnlog_helpers.py) has real workers, a temp passed worker to worker, a
buffer from the manager, an output back, a non-zero exit, a missing output and a
recovery after a worker is killed. Every line of its transactions log is checked
twice: by a small parser written here from TaskVine's manual ("Transactions Log
Format": ``time manager_pid SUBJECT ...``, the kinds, states and field orders) and by
``vinework.observe.txnparse``, so the log does not just agree with the code that
reads it. The performance log's header is TaskVine's column list and its rows are
numbers, cumulative columns never going down.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any

import pytest

from vinework.observe import txnparse
from vinework.observe.perflog import COLUMNS, CUMULATIVE
from vinework.txnlog import read_log

try:
    from test_txnlog_helpers import RealRun, real_run
except ImportError:  # tests/ made a package
    from tests.test_txnlog_helpers import RealRun, real_run

pytestmark = pytest.mark.timeout(180)
__all__ = ["real_run"]

# ---------------------------------------------------------------------- the manual's grammar
RESULT = (r"(SUCCESS|UNKNOWN|INPUT_MISSING|OUTPUT_MISSING|STDOUT_MISSING|SIGNAL|"
          r"RESOURCE_EXHAUSTION|MAX_RETRIES|MAX_END_TIME|MAX_WALL_TIME|FORSAKEN|CANCELLED|"
          r"[A-Z_]+)")
JSON = r"(\{\S*\})"  # a JSON dictionary without spaces
DOCUMENTED = {
    "MANAGER": r"MANAGER (\d+) (START|END) (\d+)",
    "CONNECTION": r"WORKER (\S+) CONNECTION (\S+):(\d+)",
    "DISCONNECTION": r"WORKER (\S+) DISCONNECTION "
                     r"(UNKNOWN|IDLE_OUT|FAST_ABORT|FAILURE|STATUS_WORKER|EXPLICIT)",
    "RESOURCES": r"WORKER (\S+) RESOURCES " + JSON,
    "CACHE_UPDATE": r"WORKER (\S+) CACHE_UPDATE (\S+) ([\d.]+) (\d+) (\d+)",
    "TRANSFER": r"WORKER (\S+) TRANSFER (INPUT|OUTPUT) (\S+) ([\d.]+) (\d+) (\d+)",
    "WAITING": r"TASK (\d+) WAITING (\S+) (FIRST_RESOURCES|MAX_RESOURCES) (\d+) " + JSON,
    "RUNNING": r"TASK (\d+) RUNNING (\S+) (FIRST_RESOURCES|MAX_RESOURCES) " + JSON,
    "WAITING_RETRIEVAL": r"TASK (\d+) WAITING_RETRIEVAL (\S+)",
    "RETRIEVED": r"TASK (\d+) RETRIEVED " + RESULT + r" (-?\d+) " + JSON + " " + JSON,
    "DONE": r"TASK (\d+) DONE " + RESULT + r" (-?\d+)",
    "APPLICATION": r"APPLICATION (.*)",
}
COMPILED = {k: re.compile(v + "$") for k, v in DOCUMENTED.items()}


def parse_documented(path: str) -> tuple[list[str], list[tuple[int, int, str, tuple[str, ...]]]]:
    """(header lines, [(time, pid, which, groups)]) of TaskVine's records; a line that
    is neither a comment, blank, VINEWORK (vinework's own, skipped as TaskVine's tools
    skip subjects they do not know) nor one of the documented records fails the test."""
    header, out = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.startswith("#"):
                header.append(line)
                continue
            if not line:
                continue
            t, pid, rest = line.split(" ", 2)
            assert t.isdigit() and pid.isdigit(), f"line {n}: {line}"
            if rest.startswith("VINEWORK "):
                continue
            for which, rx in COMPILED.items():
                m = rx.match(rest)
                if m:
                    out.append((int(t), int(pid), which, m.groups()))
                    break
            else:
                pytest.fail(f"line {n} follows no documented record: {line}")
    return header, out


def _logs(run: RealRun) -> tuple[str, str]:
    logs = os.path.join(run.run_dir, "vine-logs")
    return os.path.join(logs, "transactions"), os.path.join(logs, "performance")


# ---------------------------------------------------------------------- transactions
def test_every_line_follows_the_documented_grammar(real_run: RealRun) -> None:
    txn, _ = _logs(real_run)
    header, recs = parse_documented(txn)
    assert header[0] == "# time manager_pid MANAGER manager_pid START|END time_from_origin"
    assert any("TASK task_id WAITING category_name" in h for h in header)
    pids = {pid for _, pid, _, _ in recs}
    assert len(pids) == 1  # the manager's pid on every line
    managers = [g for _, _, w, g in recs if w == "MANAGER"]
    assert [g[1] for g in managers] == ["START", "END"] and managers[0][0] == str(pids.pop())
    assert recs[0][2] == "MANAGER" and recs[-1][2] == "MANAGER"
    times = [t for t, _, _, _ in recs]
    assert times == sorted(times)
    for _, _, which, g in recs:
        if which in ("RESOURCES", "WAITING", "RUNNING", "RETRIEVED"):
            for word in g[-2:] if which == "RETRIEVED" else g[-1:]:
                pairs = json.loads(word, object_pairs_hook=lambda kv: kv)
                assert len({k for k, _ in pairs}) == len(pairs), word  # no key twice
                for name, v in pairs:  # TaskVine's [value, "unit"]
                    assert isinstance(v, list) and len(v) == 2 and isinstance(v[1], str), name
    # and vinework's own parser agrees, line for line
    mine = [r for r in txnparse.parse_file(txn) if r.subject != "VINEWORK"]
    assert [(r.time_us, r.subject) for r in mine] == \
        [(t, "WORKER" if w in ("CONNECTION", "DISCONNECTION", "RESOURCES", "CACHE_UPDATE",
                               "TRANSFER") else "MANAGER" if w == "MANAGER" else
          "APPLICATION" if w == "APPLICATION" else "TASK") for t, _, w, _ in recs]


def test_tasks_done_match_the_program_and_their_results(real_run: RealRun) -> None:
    txn, _ = _logs(real_run)
    _, recs = parse_documented(txn)
    done = Counter(int(g[0]) for _, _, w, g in recs if w == "DONE")
    # one DONE per task, and one more for each recovery run of a finished task
    assert done == Counter({tid: 1 + (tid in real_run.recovered) for tid in real_run.task_ids})
    last_done = {int(g[0]): (g[1], int(g[2])) for _, _, w, g in recs if w == "DONE"}
    assert last_done == real_run.results
    assert ("SUCCESS", 3) in last_done.values()  # a non-zero exit is still a SUCCESS
    assert "OUTPUT_MISSING" in {r for r, _ in last_done.values()}
    assert "CANCELLED" in {r for r, _ in last_done.values()}  # never placed
    running = [g[1] for _, _, w, g in recs if w in ("RUNNING", "WAITING_RETRIEVAL")]
    assert running and all(w.startswith("worker-") for w in running)
    # each task's lines come in TaskVine's order, WAITING first, attempts counting up
    by_task: dict[int, list[tuple[str, tuple[str, ...]]]] = {}
    for _, _, w, g in recs:
        if w in ("WAITING", "RUNNING", "WAITING_RETRIEVAL", "RETRIEVED", "DONE"):
            by_task.setdefault(int(g[0]), []).append((w, g))
    order = {"WAITING": 0, "RUNNING": 1, "WAITING_RETRIEVAL": 2, "RETRIEVED": 3, "DONE": 4}
    for tid, lines in by_task.items():
        assert lines[0][0] == "WAITING", (tid, lines)
        attempts = [int(g[3]) for w, g in lines if w == "WAITING"]
        assert attempts == list(range(1, len(attempts) + 1)), (tid, attempts)
        for (a, _), (b, _) in zip(lines, lines[1:], strict=False):
            assert order[b] > order[a] or b == "WAITING", (tid, lines)
    measured = [json.loads(g[4]) for _, _, w, g in recs if w == "RETRIEVED"]
    assert any("time_worker_start" in m and "wall_time" in m for m in measured)


def test_workers_connect_and_disconnect_in_pairs(real_run: RealRun) -> None:
    txn, _ = _logs(real_run)
    _, recs = parse_documented(txn)
    connected: dict[str, int] = {}
    reasons = {}
    for _, _, w, g in recs:
        if w == "CONNECTION":
            assert g[0] not in connected
            connected[g[0]] = 1
        elif w == "DISCONNECTION":
            assert connected.pop(g[0]) == 1  # every disconnection follows its connection
            reasons[g[0]] = g[1]
        elif w in ("RESOURCES", "CACHE_UPDATE", "TRANSFER"):
            assert g[0] in connected, (w, g)
    assert not connected  # all gone by MANAGER END
    assert all(w.startswith("worker-") for w in reasons)  # TaskVine's tools want the prefix
    assert reasons["worker-" + real_run.killed] == "FAILURE"  # killed; the other left as the manager closed
    assert set(reasons.values()) == {"FAILURE", "EXPLICIT"}


def test_transfers_by_path_and_vinework_extras(real_run: RealRun) -> None:
    txn, _ = _logs(real_run)
    _, recs = parse_documented(txn)
    kinds = Counter((w, g[1]) if w == "TRANSFER" else (w, "") for _, _, w, g in recs
                    if w in ("TRANSFER", "CACHE_UPDATE"))
    assert kinds[("TRANSFER", "INPUT")] >= 1  # the buffer, from the manager
    assert kinds[("TRANSFER", "OUTPUT")] >= 1  # the output file, back to the manager
    assert kinds[("CACHE_UPDATE", "")] >= 1  # the temp, worker to worker
    for _, _, w, g in recs:
        if w == "CACHE_UPDATE":
            assert float(g[2]) > 0 and int(g[4]) > 0
    # vinework's records, with what TaskVine's lines leave out
    mine = read_log(txn)
    peer = [f for _, k, f in mine if k == "TRANSFER" and f[1] == "DONE"
            and f[2].startswith("w") and f[3].startswith("w")]
    assert peer, "no worker-to-worker transfer"
    assert any(k == "TASK" and f[1] == "RECOVERY" for _, k, f in mine)
    assert any(k == "FILE" and f[1] == "LOST" for _, k, f in mine)


# ---------------------------------------------------------------------- performance
def test_performance_log_columns_are_taskvines_and_parse_as_numbers(real_run: RealRun) -> None:
    _, perf = _logs(real_run)
    with open(perf) as f:
        lines = f.read().splitlines()
    header = lines[0]
    assert header.startswith("# timestamp workers_connected workers_init workers_idle")
    names = header[2:].split()
    assert tuple(names) == COLUMNS
    rows = [[float(x) for x in ln.split()] for ln in lines[1:] if ln.strip()]
    assert len(rows) >= 2 and all(len(r) == len(names) for r in rows)
    col: dict[str, list[float]] = {n: [r[i] for r in rows] for i, n in enumerate(names)}
    for name in CUMULATIVE:
        assert col[name] == sorted(col[name]), name
    assert max(col["workers_connected"]) >= 1 and col["workers_joined"][-1] == 2
    assert col["tasks_submitted"][-1] == len(real_run.task_ids)
    assert col["tasks_done"][-1] == len(real_run.task_ids)
    assert col["workers_lost"][-1] >= 1 and col["bytes_sent"][-1] > 0
    assert txnparse.read_perf(perf)[1] == rows


# ---------------------------------------------------------------------- bad input
def test_malformed_lines_are_reported_with_their_line_number(tmp_path: Any) -> None:
    bad = tmp_path / "transactions"
    bad.write_text("# a header\n1 2 MANAGER 2 START 0\n3 2 TASK 1 RUNNING w1 {}\n")
    with pytest.raises(txnparse.TxnFormatError, match="line 3"):
        txnparse.parse_file(str(bad))
    bad.write_text("1 2 WORKER w1 DISCONNECTION BORED\n")
    with pytest.raises(txnparse.TxnFormatError, match="disconnection code"):
        txnparse.parse_file(str(bad))
