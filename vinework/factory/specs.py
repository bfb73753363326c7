"""Job descriptions for HTCondor, PBS/Torque, SGE/UGE, LSF and Kubernetes workers.

Each ``*_submit`` function turns one worker ``JobSpec`` into the text its batch
system takes: an HTCondor submit description, a PBS / SGE / LSF job script
with its ``#PBS`` / ``#$`` / ``#BSUB`` directives, or a Kubernetes ``Job``
manifest (a dict, JSON-able). These are generated and checked against the
systems' documented formats in the tests, not run against a live system here.
``start()`` on such a factory submits through the system's own command
(``condor_submit``, ``qsub``, ``bsub``, ``kubectl``) when it is on PATH, and
otherwise raises ``RuntimeError`` saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

from .base import FactoryBase, JobSpec
from .slurm import BatchError, job_script, run_batch


def condor_submit(job: JobSpec) -> str:
    """An HTCondor submit description for one worker (``queue 1`` at the end)."""
    exe, *args = job.argv
    log = os.path.join(job.scratch_dir, f"worker-{job.index}")
    lines = [
        "universe = vanilla",
        f"executable = {exe}",
        "arguments = \"" + " ".join("'" + a.replace("'", "''").replace('"', '""') + "'"
                                    for a in args) + "\"",
        f"output = {log}.out",
        f"error = {log}.err",
        f"log = {log}.condorlog",
        "getenv = true",
        "should_transfer_files = NO",
    ]
    if job.env:
        env = " ".join(f"{k}='{v}'" for k, v in sorted(job.env.items()))
        lines.append(f'environment = "{env}"')
    if job.cores:
        lines.append(f"request_cpus = {job.cores}")
    if job.memory:
        lines.append(f"request_memory = {job.memory}")
    if job.disk:
        lines.append(f"request_disk = {job.disk * 1024}")  # KiB
    if job.gpus:
        lines.append(f"request_gpus = {job.gpus}")
    if job.condor_requirements:
        lines.append(f"requirements = {job.condor_requirements}")
    lines += [ln for ln in job.batch_options.split(";") if ln.strip()]
    lines.append("queue 1")
    return "\n".join(lines) + "\n"


def _directives(prefix: str, opts: list[str], job: JobSpec) -> str:
    script = job_script(job).split("\n", 1)
    head = [script[0]] + [f"{prefix} {o}" for o in opts]
    if job.batch_options:
        head.append(f"{prefix} {job.batch_options}")
    return "\n".join(head) + "\n" + script[1]


def pbs_submit(job: JobSpec) -> str:
    """A PBS/Torque job script (``qsub``): ``#PBS`` directives, then the worker."""
    res = f"nodes=1:ppn={job.cores or 1}"
    if job.gpus:
        res += f":gpus={job.gpus}"
    opts = ["-N vinework-worker", f"-l {res}", "-j oe",
            f"-o {os.path.join(job.scratch_dir, f'worker-{job.index}.log')}"]
    if job.memory:
        opts.append(f"-l mem={job.memory}mb")
    return _directives("#PBS", opts, job)


def sge_submit(job: JobSpec) -> str:
    """An SGE/UGE job script (``qsub``): ``#$`` directives, then the worker."""
    opts = ["-N vinework-worker", "-cwd", "-j y", "-S /bin/sh",
            f"-o {os.path.join(job.scratch_dir, f'worker-{job.index}.log')}"]
    if job.cores and job.cores > 1:
        opts.append(f"-pe smp {job.cores}")
    if job.memory:
        opts.append(f"-l h_vmem={job.memory}M")
    return _directives("#$", opts, job)


def lsf_submit(job: JobSpec) -> str:
    """An LSF job script (``bsub < script``): ``#BSUB`` directives, then the worker."""
    opts = ["-J vinework-worker", f"-n {job.cores or 1}",
            f"-o {os.path.join(job.scratch_dir, f'worker-{job.index}.log')}"]
    if job.memory:
        opts.append(f'-R "rusage[mem={job.memory}]"')
    if job.gpus:
        opts.append(f'-gpu "num={job.gpus}"')
    return _directives("#BSUB", opts, job)


def k8s_job(job: JobSpec) -> dict[str, Any]:
    """A Kubernetes ``batch/v1`` Job manifest running one worker in ``job.image``."""
    if not job.image:
        raise ValueError("a k8s worker needs an image: set factory.k8s_image")
    requests: dict[str, str] = {"cpu": str(job.cores or 1)}
    if job.memory:
        requests["memory"] = f"{job.memory}Mi"
    if job.disk:
        requests["ephemeral-storage"] = f"{job.disk}Mi"
    limits = dict(requests)
    if job.gpus:
        limits["nvidia.com/gpu"] = str(job.gpus)
    argv = ["vinework" if a.endswith("python") or "python3" in a else a for a in job.argv]
    if argv[:3] == ["vinework", "-m", "vinework"]:
        argv = ["vinework"] + argv[3:]
    container: dict[str, Any] = {
        "name": "vinework-worker", "image": job.image, "command": argv,
        "resources": {"requests": requests, "limits": limits},
        "env": [{"name": k, "value": v} for k, v in sorted(job.env.items())],
    }
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"vinework-worker-{os.getpid()}-{job.index}",
                     "labels": {"app": "vinework-worker"}},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": {"app": "vinework-worker"}},
            "spec": {"restartPolicy": "Never", "containers": [container]}}},
    }


class _CommandBackend:
    """Submits through a batch system's own command, when it is installed here."""

    name = ""
    command = ""
    cancel_cmd = ""

    def __init__(self) -> None:
        if shutil.which(self.command) is None:
            raise RuntimeError(
                f"batch_type {self.name!r}: {self.command} is not on PATH. vinework writes "
                f"{self.name} job descriptions (vinework.factory.specs) but has not run "
                f"them against a live {self.name} system; only 'local' and 'slurm' are "
                "tested for real")

    def text(self, job: JobSpec) -> str:
        raise NotImplementedError

    def submit(self, job: JobSpec) -> str:
        out = run_batch([self.command], stdin=self.text(job))
        m = re.search(r"(\d+)", out)
        if m is None:
            raise BatchError(f"{self.command} answered {out.strip()!r}, not a job id")
        return m.group(1)

    def alive(self, ids: list[str]) -> set[str]:
        return set(ids)  # cannot ask portably; ended workers are replaced by demand

    def drain(self, job_id: str) -> None:
        run_batch([self.cancel_cmd, job_id])

    def cancel(self, ids: list[str]) -> None:
        if ids:
            run_batch([self.cancel_cmd, *ids])


class _Condor(_CommandBackend):
    name, command, cancel_cmd = "condor", "condor_submit", "condor_rm"

    def text(self, job: JobSpec) -> str:
        return condor_submit(job)


class _Pbs(_CommandBackend):
    name, command, cancel_cmd = "pbs", "qsub", "qdel"

    def text(self, job: JobSpec) -> str:
        return pbs_submit(job)


class _Sge(_Pbs):
    name = "sge"

    def text(self, job: JobSpec) -> str:
        return sge_submit(job)


class _Lsf(_CommandBackend):
    name, command, cancel_cmd = "lsf", "bsub", "bkill"

    def text(self, job: JobSpec) -> str:
        return lsf_submit(job)


class _K8s(_CommandBackend):
    name, command, cancel_cmd = "k8s", "kubectl", "kubectl"

    def submit(self, job: JobSpec) -> str:
        manifest = k8s_job(job)
        run_batch(["kubectl", "create", "-f", "-"], stdin=json.dumps(manifest))
        return str(manifest["metadata"]["name"])

    def drain(self, job_id: str) -> None:
        self.cancel([job_id])

    def cancel(self, ids: list[str]) -> None:
        if ids:
            run_batch(["kubectl", "delete", "job", *ids, "--wait=false"])


class CondorFactory(FactoryBase):
    """``Factory(batch_type="condor")``."""

    batch_type = "condor"

    def backend(self) -> _Condor:
        return _Condor()


class PbsFactory(FactoryBase):
    """``Factory(batch_type="pbs")`` (also "torque")."""

    batch_type = "pbs"

    def backend(self) -> _Pbs:
        return _Pbs()


class SgeFactory(FactoryBase):
    """``Factory(batch_type="sge")`` (also "uge")."""

    batch_type = "sge"

    def backend(self) -> _Sge:
        return _Sge()


class LsfFactory(FactoryBase):
    """``Factory(batch_type="lsf")``."""

    batch_type = "lsf"

    def backend(self) -> _Lsf:
        return _Lsf()


class K8sFactory(FactoryBase):
    """``Factory(batch_type="k8s")``: one Kubernetes Job per worker."""

    batch_type = "k8s"

    def backend(self) -> _K8s:
        return _K8s()


__all__ = ["condor_submit", "k8s_job", "lsf_submit", "pbs_submit", "sge_submit"]
