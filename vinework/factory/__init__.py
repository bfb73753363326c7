"""Starting workers for a manager: ``Factory(batch_type="local", manager=m)``.

TaskVine's shape: set ``min_workers``, ``max_workers``, ``cores``, ``memory``
(MB), ``disk`` (MB), ``gpus`` and ``timeout`` as attributes, then use the
factory as a context manager (or call ``start()``/``stop()``). The local
factory runs ``vinework worker`` processes on this machine, keeps at least
``min_workers`` alive (restarting any that die) and grows to ``max_workers``
while the manager has more work than its workers can take. Other batch
systems come in later work.
"""

from .local import Factory

__all__ = ["Factory"]
