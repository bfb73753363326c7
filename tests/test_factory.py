"""The Factory's options, the job descriptions for the batch systems not run here, the
local factory's demand and the ``vinework factory`` command against a real manager.

HTCondor submit descriptions are parsed by HTCondor's own Python bindings; the
Kubernetes Job manifest is validated against a subset of the ``batch/v1`` Job
schema written from the Kubernetes API reference; PBS, SGE and LSF scripts are
checked for their documented directive forms. None of these systems runs here.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import vinework as vine
from vinework.factory.base import JobSpec
from vinework.factory.specs import condor_submit, k8s_job, lsf_submit, pbs_submit, sge_submit

try:
    from conftest import poll_until, wait_all
except ImportError:  # pragma: no cover
    from tests.conftest import poll_until, wait_all

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[vine.Manager]:
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run"), shutdown=True)
    try:
        yield m
    finally:
        m.close()


def _job(**kw: object) -> JobSpec:
    base: dict[str, object] = dict(
        argv=[sys.executable, "-m", "vinework", "worker", "login1", "9123", "--cores", "4",
              "--password", "/home/me/pw file"],
        cores=4, memory=8000, disk=20000, gpus=1, env={"OMP_NUM_THREADS": "4"},
        scratch_dir="/scratch/me", index=3)
    base.update(kw)
    return JobSpec(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- options
def test_unknown_options_raise_attribute_error(manager: vine.Manager) -> None:
    f = vine.Factory(batch_type="slurm", manager=manager)
    with pytest.raises(AttributeError, match="not a factory option"):
        f.max_wrokers = 3
    with pytest.raises(AttributeError):
        _ = f.no_such_option
    with pytest.raises(AttributeError):
        vine.Factory(batch_type="slurm", manager=manager, colour="red")
    f.condor_requirements = ['MachineGroup == "disc"', "has_matlab == true"]
    f.k8s_image, f.batch_options = "img", "-p short"
    with pytest.raises(NotImplementedError, match="python-env"):
        f.python_env = "env.tar.gz"
    assert f.batch_options == "-p short" and f.timeout == 60.0 and f.min_workers == 1


def test_bad_values_and_batch_types_are_refused(manager: vine.Manager) -> None:
    with pytest.raises(ValueError, match="batch_type 'mesos'"):
        vine.Factory(batch_type="mesos", manager=manager)
    with pytest.raises(ValueError, match="manager="):
        vine.Factory(batch_type="slurm")
    with pytest.raises(ValueError, match="HOST:PORT"):
        vine.Factory(batch_type="slurm", manager_host_port="nohost")
    with pytest.raises(ValueError, match="catalog"):
        vine.Factory(batch_type="slurm", manager_name="proj")
    f = vine.Factory(batch_type="local", manager=manager)
    for name, bad in (("min_workers", -1), ("workers_per_cycle", 0), ("cores", "many"),
                      ("timeout", 0)):
        with pytest.raises(ValueError, match=name):
            setattr(f, name, bad)
    with pytest.raises(TypeError):
        f.env = ["A=1"]
    with pytest.raises(ValueError, match="fixed"):
        f.batch_type = "slurm"


def test_local_factory_follows_demand_and_fixes_options_while_running(
        manager: vine.Manager) -> None:
    m = manager
    f = vine.Factory(batch_type="local", manager=m, min_workers=0, max_workers=2, cores=1,
                     timeout=30)
    with f as started:
        assert started is f and f.workers == 0  # nothing to do, min 0
        tasks = [vine.Task("sleep 1") for _ in range(2)]
        for t in tasks:
            t.set_cores(1)
            m.submit(t)
        poll_until(lambda: m.stats.workers_connected == 2, 30, "two workers for two tasks")
        with pytest.raises(ValueError, match="while the factory runs"):
            f.env = {"A": "1"}
        f.max_workers = 3  # changeable while running
        assert all(t.successful() for t in wait_all(m, 2, 30))
        f.min_workers = f.max_workers = 1
        poll_until(lambda: m.stats.workers_connected == 1, 30, "the surplus worker to drain")
        procs = f.procs
    assert all(p.poll() is not None for p in procs)


# ---------------------------------------------------------------------- job descriptions
def test_condor_submit_description_parses_with_htcondor() -> None:
    htcondor = pytest.importorskip("htcondor2", reason="HTCondor's Python bindings "
                                   "(PyPI htcondor) are not installed")
    text = condor_submit(_job(condor_requirements='(MachineGroup == "disc") && (x == 1)'))
    sub = htcondor.Submit(text)
    d = dict(sub)
    assert d["executable"] == sys.executable
    assert d["request_cpus"] == "4" and d["request_memory"] == "8000"
    assert d["request_disk"] == str(20000 * 1024) and d["request_gpus"] == "1"
    assert d["requirements"] == '(MachineGroup == "disc") && (x == 1)'
    assert d["output"].startswith("/scratch/me/worker-3")
    # HTCondor's "new" argument syntax: single quotes group words with spaces
    args = d["arguments"].strip('"')
    words = shlex.split(args.replace("''", "\\'"))
    assert words[:5] == ["-m", "vinework", "worker", "login1", "9123"]
    assert "/home/me/pw file" in words
    assert sub.getQArgs() == "1"


def test_pbs_sge_lsf_scripts_have_their_documented_directives() -> None:
    job = _job()
    pbs = pbs_submit(job).splitlines()
    assert pbs[0] == "#!/bin/sh"
    assert "#PBS -l nodes=1:ppn=4:gpus=1" in pbs and "#PBS -l mem=8000mb" in pbs
    assert "#PBS -N vinework-worker" in pbs
    sge = sge_submit(job).splitlines()
    assert "#$ -pe smp 4" in sge and "#$ -l h_vmem=8000M" in sge and "#$ -cwd" in sge
    lsf = lsf_submit(job).splitlines()
    assert "#BSUB -n 4" in lsf and '#BSUB -R "rusage[mem=8000]"' in lsf
    for script in (pbs, sge, lsf):
        # directives come before the first command, as qsub/bsub read them
        first_cmd = next(i for i, ln in enumerate(script[1:], 1) if not ln.startswith("#"))
        assert all(not ln.startswith(("#PBS", "#$", "#BSUB")) for ln in script[first_cmd:])
        assert script[-1].startswith("exec ") and "'/home/me/pw file'" in script[-1]
        assert "export OMP_NUM_THREADS=4" in script


# the parts of Kubernetes' batch/v1 Job schema (API reference) that a worker Job uses
QUANTITY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"}
K8S_JOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "batch/v1"},
        "kind": {"const": "Job"},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "maxLength": 63,
                     "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "required": ["template"], "properties": {
            "backoffLimit": {"type": "integer", "minimum": 0},
            "template": {"type": "object", "required": ["spec"], "properties": {
                "spec": {"type": "object", "required": ["containers"], "properties": {
                    "restartPolicy": {"enum": ["Never", "OnFailure"]},
                    "containers": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["name", "image"],
                        "additionalProperties": False, "properties": {
                            "name": {"type": "string"}, "image": {"type": "string"},
                            "command": {"type": "array", "items": {"type": "string"}},
                            "args": {"type": "array", "items": {"type": "string"}},
                            "env": {"type": "array", "items": {
                                "type": "object", "required": ["name"],
                                "properties": {"name": {"type": "string"},
                                               "value": {"type": "string"}}}},
                            "resources": {"type": "object", "properties": {
                                "requests": {"type": "object",
                                             "additionalProperties": QUANTITY},
                                "limits": {"type": "object",
                                           "additionalProperties": QUANTITY}}}}}}}}}}}},
    },
}


def test_k8s_job_manifest_matches_the_job_schema() -> None:
    import jsonschema

    manifest = k8s_job(_job(image="registry.example/vinework:1"))
    jsonschema.validate(manifest, K8S_JOB_SCHEMA)
    c = manifest["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:4] == ["vinework", "worker", "login1", "9123"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    with pytest.raises(ValueError, match="k8s_image"):
        k8s_job(_job(image=""))


def test_systems_not_installed_say_so_at_start(manager: vine.Manager,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    for bt, cmd in (("condor", "condor_submit"), ("pbs", "qsub"), ("lsf", "bsub"),
                    ("k8s", "kubectl")):
        f = vine.Factory(batch_type=bt, manager=manager)
        with pytest.raises(RuntimeError, match=f"{cmd} is not on PATH"):
            f.start()


# ---------------------------------------------------------------------- the command
def test_vinework_factory_command_runs_workers_until_sigterm(manager: vine.Manager,
                                                             tmp_path: Path) -> None:
    m = manager
    p = subprocess.Popen([sys.executable, "-m", "vinework", "factory", "-T", "local",
                          "127.0.0.1", str(m.port), "--min-workers", "1",
                          "--max-workers", "2", "--cores", "1", "--timeout", "30",
                          "-S", str(tmp_path / "scratch")],
                         stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        poll_until(lambda: m.stats.workers_connected == 1, 30, "the factory's worker")
        t = vine.Task("echo hi")
        m.submit(t)
        (done,) = wait_all(m, 1, 30)
        assert done.output == "hi\n"
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=30) == 0
        poll_until(lambda: m.stats.workers_connected == 0, 30, "its workers to end")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_vinework_factory_bad_arguments_exit_2() -> None:
    for argv in (["-T", "local"], ["-T", "nope", "h", "1"], ["-T", "slurm", "-M", "proj"],
                 ["-T", "local", "h", "99999"], ["-T", "local", "h", "1", "--env", "X"]):
        r = subprocess.run([sys.executable, "-m", "vinework", "factory", *argv],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
