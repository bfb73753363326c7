"""Starting workers for a manager: ``Factory(batch_type=..., manager=m)``.

TaskVine's shape: set ``min_workers``, ``max_workers``, ``cores``, ``memory``
(MB), ``disk`` (MB), ``gpus``, ``timeout`` and the other ``vine_factory``
options as attributes (unknown names raise AttributeError), then use the
factory as a context manager (or ``start()``/``stop()``). ``base.py`` holds the
options, the demand and the supervising thread; ``local.py`` runs worker
processes here, ``slurm.py`` submits them as Slurm jobs, ``specs.py`` writes
and submits HTCondor, PBS, SGE, LSF and Kubernetes job descriptions, ``cli.py``
is ``vinework factory`` / ``vine_factory``.
"""

from .base import BATCH_TYPES, FactoryBase, JobSpec

Factory = FactoryBase

__all__ = ["BATCH_TYPES", "Factory", "FactoryBase", "JobSpec"]
