"""vinework: a TaskVine-compatible workflow engine whose intermediates stay on workers.

Layout: ``protocol`` (wire messages and codec, no I/O), ``manager`` (a pure state
machine in ``state``/``scheduling``/``replicas``/``durability`` inside the asyncio
``server`` and the user's ``api``), ``worker`` (cache, sandbox, transfers, fork server),
``factory`` (starting workers). This module only re-exports the public API:
``import vinework as vine`` then ``vine.Manager``, ``vine.Task``, ``vine.PythonTask``,
``vine.Factory`` and TaskVine's ``VINE_*`` constants.
"""

from .constants import *  # noqa: F403
from .constants import CacheLevel, TaskResult
from .factory import Factory
from .file import File, FileKind
from .manager.api import Manager
from .manager.stats import ManagerStats
from .task import PythonTask, RemoteTaskError, Task, TaskOutputUnavailable

__version__ = "0.1.0"

__all__ = [
    "CacheLevel", "Factory", "File", "FileKind", "Manager", "ManagerStats", "PythonTask",
    "RemoteTaskError", "Task", "TaskOutputUnavailable", "TaskResult", "__version__",
]
__all__ += [n for n in dir() if n.startswith("VINE_")]
