"""ugs-train through hydra-submitit-launcher against a real one-node SLURM cluster on localhost.

The session fixture installs Debian's slurm-wlm and munge when they are missing (CI runs as
root), starts munged/slurmctld/slurmd with ``launch/slurm/local_slurm.sh`` and stops them
afterwards (only if it started them).
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY_RUN, run_ugs_train

from ugs_d2.engine.launch import slurm_port

pytestmark = pytest.mark.slow

LOCAL_SLURM = os.path.join(REPO, "launch", "slurm", "local_slurm.sh")


def _script(*args, timeout=900):
    return subprocess.run(["bash", LOCAL_SLURM, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def local_slurm():
    """A running one-node SLURM; yields its SLURM_CONF (also exported to child processes)."""
    is_root = os.geteuid() == 0
    if shutil.which("sbatch") is None or shutil.which("slurmd") is None:
        if not is_root:
            pytest.skip("SLURM is not installed and installing slurm-wlm/munge needs root")
        proc = _script("install")
        assert proc.returncode == 0, f"installing slurm-wlm and munge failed:\n{proc.stderr[-3000:]}"
    if not is_root:
        pytest.skip("starting munged/slurmctld/slurmd needs root")
    started_here = _script("is-running").returncode != 0
    proc = _script("start", timeout=120)
    assert proc.returncode == 0, f"local SLURM did not start:\n{proc.stdout}{proc.stderr[-3000:]}"
    conf = _script("env").stdout.strip().split("=", 1)[1]
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        if started_here:
            _script("stop", timeout=120)


def _job_dirs(sweep_dir):
    return sorted(d for d in glob.glob(os.path.join(sweep_dir, "*")) if os.path.isdir(d))


def test_two_tiny_jobs_on_slurm(local_slurm, tiny_dataset, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=slurm_local", *TINY_RUN, f"dataset.root={tiny_dataset}",
            "wandb.enabled=false", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = run_ugs_train(args, cwd=str(tmp_path), timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    jobs = _job_dirs(sweep)
    assert len(jobs) == 2, jobs
    for job in jobs:
        with open(os.path.join(job, "results.json")) as f:
            assert json.load(f)["iterations"] == 4
        assert os.path.isfile(os.path.join(job, "done"))
    # the jobs really went through SLURM: submitit's sbatch script and per-job logs
    assert glob.glob(str(sweep / ".submitit" / "*" / "*_submission.sh"))


def test_requeued_ddp_job_resumes_from_its_checkpoint(local_slurm, tiny_dataset, tmp_path):
    """A 2-process (gloo) DDP job, requeued with `scontrol requeue` after its first checkpoint,
    runs again from its last checkpoint in the same run directory and completes."""
    sweep = tmp_path / "sweep"
    # long enough (about 0.13 s/iteration on 2 idle cores) that the requeue, issued at the
    # first checkpoint, always lands while the job is still training
    max_iter = 300
    args = ["-m", "hydra/launcher=slurm_local", *TINY_RUN, f"dataset.root={tiny_dataset}",
            "wandb.enabled=false", f"schedule.max_iter={max_iter}", "schedule.checkpoint_period=5",
            "launcher.num_gpus=2", "launcher.check_weights=true", f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    log_path = tmp_path / "ugs-train.out"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ugs_d2.train", *args], cwd=str(tmp_path),
                                env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 300
            while not glob.glob(str(sweep / "*" / "model_0000004.pth")):
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.time() < deadline, "no checkpoint after 300 s:\n" + log_path.read_text()[-4000:]
                time.sleep(0.5)
            # submitit's folder is named after the job id (one job: no array)
            (job_id,) = [os.path.basename(p) for p in glob.glob(str(sweep / ".submitit" / "*"))]
            requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
            assert requeue.returncode == 0, requeue.stderr
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    out = log_path.read_text()
    assert proc.returncode == 0, out[-4000:]
    (job,) = _job_dirs(sweep)
    with open(os.path.join(job, "results.json")) as f:
        assert json.load(f)["iterations"] == max_iter
    log_txt = open(os.path.join(job, "log.txt")).read()
    starts = [int(i) for i in re.findall(r"Starting training from iteration (\d+)", log_txt)]
    assert len(starts) == 2 and starts[0] == 0 and 5 <= starts[1] < max_iter, starts
    # both runs of the job rendezvoused on the port derived from its job id
    hydra_log = open(os.path.join(job, "train.log")).read()
    ports = [int(p) for p in re.findall(r"rendezvous tcp://[^:\s]+:(\d+)", hydra_log)]
    assert len(ports) == 2 and set(ports) == {slurm_port(job_id)}, hydra_log[-2000:]
    digests = {open(os.path.join(job, f"weights_rank{r}.sha256")).read() for r in (0, 1)}
    assert len(digests) == 1
