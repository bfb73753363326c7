"""The Slurm backend: each worker is one batch job (``sbatch``), watched with ``squeue``.

The job script ``exec``s the worker, so the job's signals reach it: ``scancel``
(SIGTERM, then SIGKILL after Slurm's ``KillWait``) makes it drain, the manager
moving its work and temps elsewhere first; scaling down does the same with
``scancel --signal=TERM --batch`` (without ``--batch`` a signal only reaches job
steps, and a worker job has none). ``cancel`` is a plain ``scancel`` of the
factory's own job ids. Worker resources become ``--cpus-per-task``, ``--mem``
(MB), ``--tmp`` (MB) and ``--gres=gpu:N``; ``batch_options`` are added to every
``sbatch`` as words.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from .base import FactoryBase, JobSpec

BATCH_TIMEOUT = 30.0  # seconds one sbatch/squeue/scancel may take


class BatchError(RuntimeError):
    """A batch system command failed (the message has its output)."""


def run_batch(argv: list[str], stdin: str | None = None) -> str:
    """Run one batch command; its stdout (BatchError with its words if it fails)."""
    try:
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                           timeout=BATCH_TIMEOUT, check=False)
    except FileNotFoundError:
        raise BatchError(f"{argv[0]} is not on PATH: is the batch system installed "
                         "here?") from None
    except subprocess.TimeoutExpired:
        raise BatchError(f"{' '.join(argv)} did not answer in {BATCH_TIMEOUT:.0f} s") from None
    if r.returncode != 0:
        raise BatchError(f"{' '.join(argv)} failed ({r.returncode}): "
                         f"{(r.stderr or r.stdout).strip()}")
    return r.stdout


def job_script(job: JobSpec) -> str:
    """The shell script of one worker job: its environment, then ``exec`` the worker."""
    lines = ["#!/bin/sh"]
    for k, v in sorted(job.env.items()):
        lines.append(f"export {k}={shlex.quote(v)}")
    if job.scratch_dir:
        lines.append(f"export TMPDIR={shlex.quote(job.scratch_dir)}")
    lines.append("exec " + " ".join(shlex.quote(a) for a in job.argv))
    return "\n".join(lines) + "\n"


def sbatch_argv(job: JobSpec) -> list[str]:
    """``sbatch`` and its options for one worker job (the script comes on stdin)."""
    argv = ["sbatch", "--parsable", "--job-name", "vinework-worker",
            "--output", os.path.join(job.scratch_dir, f"worker-{job.index}-%j.log")]
    if job.cores:
        argv += ["--cpus-per-task", str(job.cores)]
    if job.memory:
        argv += ["--mem", str(job.memory)]
    if job.disk:
        argv += ["--tmp", str(job.disk)]
    if job.gpus:
        argv += [f"--gres=gpu:{job.gpus}"]
    argv += shlex.split(job.batch_options)
    return argv


class SlurmBackend:
    """sbatch / squeue / scancel, for the job ids this factory submitted."""

    name = "slurm"

    def submit(self, job: JobSpec) -> str:
        out = run_batch(sbatch_argv(job), stdin=job_script(job)).strip()
        jid = out.split(";")[0]
        if not jid.isdigit():
            raise BatchError(f"sbatch answered {out!r}, not a job id")
        return jid

    def alive(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        want = set(ids)
        out = run_batch(["squeue", "--noheader", "--format=%i %T", "--name=vinework-worker"])
        live = set()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in want and parts[1] not in ("COMPLETED", "CANCELLED", "FAILED",
                                                    "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                                                    "OUT_OF_MEMORY", "BOOT_FAIL"):
                live.add(parts[0])
        return live

    def drain(self, job_id: str) -> None:
        run_batch(["scancel", "--signal=TERM", "--batch", job_id])

    def cancel(self, ids: list[str]) -> None:
        if ids:
            run_batch(["scancel", *ids])


class SlurmFactory(FactoryBase):
    """``Factory(batch_type="slurm")``: each worker is a Slurm job."""

    batch_type = "slurm"

    def backend(self) -> SlurmBackend:
        return SlurmBackend()
