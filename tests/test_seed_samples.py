"""The two Python samples of the seed article, run on vinework with real workers.

Source: /work/shared/seed/taskvine-insights-intermediate-data-model.md ("Using temp
outputs in the Python API"). Only what the brief allows is changed: the import
(``import vinework as vine``), ``vine.Manager(port=0, ...)``, and workers started as
``vinework worker --cores N --memory MB --disk MB localhost PORT``. The test adds
what the samples leave implicit (the produce.py/consume.py scripts, shipped with
``add_input(m.declare_file(...))``) and checks the results.
"""

from __future__ import annotations

import subprocess
import sys

import cloudpickle
import pytest

import vinework as vine

try:
    from conftest import stop_process, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import stop_process, wait_workers

pytestmark = pytest.mark.timeout(60)

# make_big/use_big live in this module, which workers cannot import: ship them by value
# (a script run as __main__ gets this from cloudpickle automatically)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def start_seed_workers(tmp_path):
    """Start workers with the exact command-line shape of the brief."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(m: vine.Manager, n: int = 2, cores: int = 2) -> None:
        for i in range(len(procs), len(procs) + n):
            workdir = tmp_path / f"seed-worker-{i}"
            workdir.mkdir()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "vinework", "worker", "--cores", str(cores),
                 "--memory", "1000", "--disk", "2000", "--workdir", str(workdir),
                 "--timeout", "30", "localhost", str(m.port)],
                stdin=subprocess.DEVNULL, start_new_session=True,
            ))
        wait_workers(m, len(procs))

    yield start
    for p in procs:
        stop_process(p)


PRODUCE = """\
import sys
with open(sys.argv[1], "w") as f:
    for i in range(1000):
        f.write(f"line {i}\\n")
"""

CONSUME = """\
import sys
with open(sys.argv[1]) as f:
    lines = f.read().splitlines()
print(len(lines), lines[0], lines[-1], sum(int(x.split()[1]) for x in lines))
"""


def test_sample_1_declare_temp(tmp_path, start_seed_workers):
    (tmp_path / "produce.py").write_text(PRODUCE)
    (tmp_path / "consume.py").write_text(CONSUME)

    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run-info"))
    start_seed_workers(m)

    # A temp file represents an intermediate result.
    F = m.declare_temp()

    # Producer writes F on its worker.
    tA = vine.Task("python3 produce.py out.dat")
    tA.add_input(m.declare_file(str(tmp_path / "produce.py")), "produce.py")
    tA.add_output(F, "out.dat")
    m.submit(tA)

    # Consumer reads F (TaskVine will fetch it from a worker that has it).
    tB = vine.Task("python3 consume.py in.dat")
    tB.add_input(m.declare_file(str(tmp_path / "consume.py")), "consume.py")
    tB.add_input(F, "in.dat")
    m.submit(tB)

    returned = []
    while not m.empty():
        t = m.wait(5)
        if t:
            returned.append(t)

    try:
        assert returned == [tA, tB]  # the consumer can only run after its producer
        assert tA.successful(), (str(tA.result), tA.output)
        assert tB.successful(), (str(tB.result), tB.output)
        assert tB.output == f"1000 line 0 line 999 {sum(range(1000))}\n"
        st = m.stats
        assert st.bytes_received_files == 0  # F never went to the manager
        # only B's output text came back, inside its completion message
        assert st.bytes_received == st.bytes_received_inline == len(tB.output), st
        assert m.get_file_replica_count(F) >= 1
        assert m.fetch_file(F, timeout=10) == "".join(f"line {i}\n" for i in range(1000)).encode()
    finally:
        m.close()


def make_big():
    # pretend this is a big intermediate
    return {"x": "..." * 10_000_000}


def use_big(filename):
    with open(filename, "rb") as f:
        data = cloudpickle.load(f)
    return len(data["x"])


def test_sample_2_enable_temp_output(tmp_path, start_seed_workers):
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run-info"))
    start_seed_workers(m)

    tA = vine.PythonTask(make_big)
    tA.enable_temp_output()          # keep output on worker
    m.submit(tA)

    # IMPORTANT: downstream tasks consume the output via the File object.
    tB = vine.PythonTask(use_big, "in.p")
    tB.add_input(tA.output_file, "in.p")
    m.submit(tB)

    results = {}
    while not m.empty():
        t = m.wait(5)
        if t and t.successful():
            # tB is not temp-output, so we can read it normally
            results[t.id] = t

    try:
        assert set(results) == {tA.id, tB.id}, (str(tA.result), str(tB.result))
        assert tB.output == 30_000_000
        with pytest.raises(vine.TaskOutputUnavailable, match="output_file"):
            _ = tA.output
        st = m.stats
        # ~30 MB of make_big's result stayed on workers: no file came back to the
        # manager; only tB's small result, inline in its completion message (counted)
        assert st.bytes_received_files == 0, st
        assert 0 < st.bytes_received_inline < 100, st
        assert st.bytes_received == st.bytes_received_inline, st
        assert st.bytes_sent == 0, st
        if tA.worker != tB.worker:
            assert st.bytes_peer >= 30_000_000
        assert m.get_file_replica_count(tA.output_file) >= 1
    finally:
        m.close()
