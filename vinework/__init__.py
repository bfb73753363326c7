"""vinework: a TaskVine-compatible workflow engine whose intermediates stay on workers.

Layout: ``protocol`` (wire messages and codec, no I/O; and the peer-transfer
protocol both sides use), ``core`` (the manager's pure state machine: no I/O, no
threads, no clock), ``manager`` (the asyncio shell around the core and the user's
``api``), ``worker`` (a pure ``state`` core in an asyncio shell: cache, sandbox,
fork server), ``factory`` (starting workers), ``dask`` (DaskVine). This module only re-exports the public API:
``import vinework as vine`` then ``vine.Manager``, ``vine.Task``, ``vine.PythonTask``,
``vine.Factory`` and TaskVine's ``VINE_*`` constants.
"""

from .constants import *  # noqa: F403
from .constants import CacheLevel, TaskResult
from .core import ManagerStats
from .factory import Factory
from .file import File, FileKind
from .manager.api import Manager
from .manager.errors import ManagerError
from .task import PythonTask, RemoteTaskError, Task, TaskOutputUnavailable

__version__ = "0.1.0"

__all__ = [
    "CacheLevel", "Factory", "File", "FileKind", "Manager", "ManagerError", "ManagerStats",
    "PythonTask",
    "RemoteTaskError", "Task", "TaskOutputUnavailable", "TaskResult", "__version__",
]
__all__ += [n for n in dir() if n.startswith("VINE_")]
