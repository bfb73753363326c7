"""``vinework plot RUN_DIR`` on a real run's directory (test_txnlog_helpers.py): the four
PNGs exist, are real images with varied pixels, and show that run (its failed task in
red on the timeline, one row per worker core it used); bad input gets a clear message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

try:
    from test_txnlog_helpers import RealRun, real_run
except ImportError:  # tests/ made a package
    from tests.test_txnlog_helpers import RealRun, real_run

mpimg = pytest.importorskip("matplotlib.image")
np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(180)
__all__ = ["real_run"]
NAMES = ("timeline.png", "transfers.png", "workers.png", "recoveries.png")


def _plot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vinework", "plot", *args], text=True,
                          capture_output=True, timeout=120, env=env)


def _rgb(path: str) -> Any:
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4), img.shape
    return (img[:, :, :3] * 255).round().astype(int)


def _bars(path: str) -> Any:
    """The timeline without its legend (which sits right of the axes, past 85%)."""
    img = _rgb(path)
    return img[:, : int(img.shape[1] * 0.85)]


def _has_colour(img: Any, hex_colour: str, tol: int = 12) -> bool:
    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(img - target).max(axis=2) <= tol).any())


def test_plot_writes_four_nonblank_images_of_the_run(real_run: RealRun, tmp_path: Any) -> None:
    out = tmp_path / "plots"
    p = _plot(real_run.run_dir, "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(out / n) for n in NAMES]
    for name in NAMES:
        img = _rgb(str(out / name))
        colours = {tuple(px) for px in img.reshape(-1, 3)[::7]}
        assert len(colours) > 20, (name, len(colours))  # not a blank or flat image
        assert img.std() > 10, name
    timeline = _bars(str(out / "timeline.png"))
    assert _has_colour(timeline, "#1f77b4")  # successful runs
    assert _has_colour(timeline, "#d62728")  # the task whose output was missing
    assert _has_colour(_rgb(str(out / "recoveries.png")), "#2ca02c")  # the re-run task


def test_the_timeline_grows_with_the_run(real_run: RealRun, tmp_path: Any) -> None:
    """Only the first part of the log (w1 alone, two tasks): a shorter timeline."""
    logs = os.path.join(real_run.run_dir, "vine-logs")
    part = tmp_path / "part" / "vine-logs"
    part.mkdir(parents=True)
    with open(os.path.join(logs, "transactions")) as f:
        lines = f.readlines()
    cut = next(i for i, ln in enumerate(lines) if " WORKER worker-w2 CONNECTION " in ln)
    (part / "transactions").write_text("".join(lines[:cut]))
    whole, first = tmp_path / "whole", tmp_path / "first"
    assert _plot(real_run.run_dir, "-o", str(whole)).returncode == 0
    p = _plot(str(part.parent), "-o", str(first))
    assert p.returncode == 0, p.stderr
    h_whole = mpimg.imread(str(whole / "timeline.png")).shape[0]
    h_first = mpimg.imread(str(first / "timeline.png")).shape[0]
    assert h_first < h_whole  # w1's two cores, then w2's rows too
    assert not _has_colour(_bars(str(first / "timeline.png")), "#d62728")  # no failure yet


def test_default_output_and_the_run_info_directory(real_run: RealRun, tmp_path: Any) -> None:
    run_info = tmp_path / "vine-run-info"
    shutil.copytree(real_run.run_dir, run_info / "stamp")
    os.symlink("stamp", run_info / "most-recent")
    p = _plot(str(run_info))  # its most-recent run, plots beside its vine-logs
    assert p.returncode == 0, p.stderr
    for name in NAMES:
        assert os.path.getsize(run_info / "stamp" / "plots" / name) > 1000


def test_bad_input_gets_a_clear_message(tmp_path: Any) -> None:
    p = _plot(str(tmp_path / "nothing-here"))
    assert p.returncode == 2 and "no transactions log under" in p.stderr
    logs = tmp_path / "bad" / "vine-logs"
    logs.mkdir(parents=True)
    (logs / "transactions").write_text("1 2 MANAGER 2 START 0\n2 2 TASK x DONE SUCCESS 0\n")
    p = _plot(str(logs.parent))
    assert p.returncode == 1 and "line 2" in p.stderr, p.stderr
    # without matplotlib: say how to get it
    fake = tmp_path / "no-mpl" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('matplotlib hidden for this test')\n")
    (logs / "transactions").write_text("1 2 MANAGER 2 START 0\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    p = _plot(str(logs.parent), env=env)
    assert p.returncode == 2 and "pip install vinework[plots]" in p.stderr, p.stderr
