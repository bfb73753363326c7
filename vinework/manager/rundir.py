"""The run-info directory layout, as TaskVine makes it.

``<run_info_path>/<stamp>/`` holds this run: ``vine-logs/`` (``transactions``,
``debug``, ``performance``), ``staging/`` (buffers, fetched and checkpointed
files; removed when the manager closes) and ``library-logs/``;
``<run_info_path>/vine-cache/`` is shared by every run, and
``<run_info_path>/most-recent`` links to the latest run. The stamp is
``%Y-%m-%dT%H%M%S`` (or ``run_info_template``); a second manager started in
the same second gets ``-2``, ``-3``, ... instead of sharing the directory.
``VINE_RUNTIME_INFO_DIR`` is set to the run's directory, as TaskVine does.
The run's directory, the staging directory and ``vine-cache`` are mode 0700:
other users cannot read the logs (they name files and tasks), nor the outputs.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil

_console: logging.Handler | None = None  # stderr for warnings, added once per process


class RunInfo:
    """The directories of one manager run."""

    def __init__(self, run_info_path: str = "vine-run-info", template: str | None = None,
                 staging_path: str | None = None) -> None:
        self.root = os.path.abspath(run_info_path)
        os.makedirs(self.root, exist_ok=True)
        stamp = template or datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
        run, n = os.path.join(self.root, stamp), 1
        while True:
            try:
                os.makedirs(run)
                break
            except FileExistsError:
                if template:  # the user named it: use it as it is
                    break
                n += 1
                run = os.path.join(self.root, f"{stamp}-{n}")
        self.runtime = run
        self.logs = os.path.join(run, "vine-logs")
        self.library_logs = os.path.join(run, "library-logs")
        if staging_path:
            self.staging = os.path.abspath(os.path.join(staging_path, "vine-staging"))
        else:
            self.staging = os.path.join(run, "staging")
        self.cache = os.path.join(self.root, "vine-cache")
        for d in (self.logs, self.library_logs, self.staging, self.cache):
            os.makedirs(d, exist_ok=True)
        # private: logs name files and tasks, staging holds outputs, the cache their names
        for d in (run, self.staging, self.cache):
            with contextlib.suppress(OSError):
                os.chmod(d, 0o700)
        self.transactions = os.path.join(self.logs, "transactions")
        self.debug = os.path.join(self.logs, "debug")
        self.performance = os.path.join(self.logs, "performance")
        link = os.path.join(self.root, "most-recent")
        with contextlib.suppress(OSError):
            tmp = f"{link}.{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(os.path.basename(run), tmp)
            os.replace(tmp, link)
        os.environ["VINE_RUNTIME_INFO_DIR"] = run
        self._handler: logging.Handler | None = None

    def start_debug_log(self) -> None:
        """Copy vinework's log records (INFO and up) into ``vine-logs/debug``; warnings
        still reach stderr when the program configured no logging of its own."""
        global _console
        lg = logging.getLogger("vinework")
        if _console is None and not logging.getLogger().handlers:
            _console = logging.StreamHandler()
            _console.setLevel(logging.WARNING)
            _console.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            lg.addHandler(_console)
        h = logging.FileHandler(self.debug)
        h.setLevel(logging.INFO)
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        lg.addHandler(h)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
        self._handler = h

    def close(self) -> None:
        """Stop the debug log and remove the staging directory (as TaskVine does)."""
        if self._handler is not None:
            logging.getLogger("vinework").removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        shutil.rmtree(self.staging, ignore_errors=True)
