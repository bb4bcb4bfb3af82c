"""Distributed training: the launch arithmetic, and real DDP with 2 gloo processes on the CPU."""
import os
import re

import pytest
from conftest import TINY_RUN, run_ugs_train

from ugs_d2.engine.launch import LaunchConfigError, World, resolve_world, slurm_port


def test_slurm_port_is_deterministic_distinct_and_below_ephemeral_range():
    assert slurm_port("123456") == slurm_port("123456") == 15000 + 123456 % 15000
    assert slurm_port("4242_3") == slurm_port("4242")  # array task ids: the numeric job id
    ports = {slurm_port(str(job)) for job in range(1000, 1100)}
    assert len(ports) == 100 and all(15000 <= p < 30000 for p in ports)


def test_resolve_world_locally():
    assert resolve_world({"num_gpus": "auto"}, env={}) == World()
    assert resolve_world({"num_gpus": 2}, env={}) == World(num_processes=2)
    with pytest.raises(LaunchConfigError, match="launcher.num_gpus"):
        resolve_world({"num_gpus": 0}, env={})
    with pytest.raises(LaunchConfigError, match="launcher.dist_url"):
        resolve_world({"num_machines": 2}, env={})
    # a shell inside salloc is not a submitit job: local rules
    assert resolve_world({"num_gpus": "auto"}, env={"SLURM_JOB_ID": "7", "SLURM_NNODES": "4"}) == World()


def test_resolve_world_in_a_slurm_job():
    env = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "123457",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_NTASKS": "4",
        "SLURM_NODEID": "2",
        "SLURM_JOB_NODELIST": "gpu[07-10]",
        "SLURM_GPUS_ON_NODE": "8",
    }
    world = resolve_world({"num_gpus": "auto", "num_machines": "auto", "machine_rank": "auto", "dist_url": "auto"}, env)
    assert world == World(8, 4, 2, f"tcp://gpu07:{slurm_port('123457')}", None)
    # one task per GPU: this process is one rank, nothing is spawned
    per_task = resolve_world({}, dict(env, SLURM_NTASKS="32", SLURM_LOCALID="3"))
    assert (per_task.num_processes, per_task.machine_rank, per_task.local_rank) == (8, 2, 3)


def test_ddp_two_gloo_processes_end_with_identical_weights(tiny_dataset, tmp_path):
    """`launcher.num_gpus=2 device=cpu`: 2 processes, gloo, one run directory.

    Compared: every parameter (``weights_rank<r>.sha256``, written by each rank after training
    with ``launcher.check_weights=true``). BatchNorm running statistics are buffers, per rank in
    plain BN, and deliberately not compared.
    """
    run_dir = tmp_path / "run"
    args = TINY_RUN + [
        f"dataset.root={tiny_dataset}",
        f"hydra.run.dir={run_dir}",
        "launcher.num_gpus=2",
        "launcher.check_weights=true",
        "schedule.ims_per_batch=2",
        "wandb.enabled=false",
    ]
    proc = run_ugs_train(args, cwd=str(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"DDP: 2 process\(es\) here .* world size 2\), gloo", out), out[-4000:]
    digests = {r: (run_dir / f"weights_rank{r}.sha256").read_text().strip() for r in (0, 1)}
    assert len(digests[0]) == 64 and digests[0] == digests[1]
    assert not (run_dir / "weights_rank2.sha256").exists()
    # rank 0 alone writes results and the console log; rank 1 logs to its own file
    assert (run_dir / "done").is_file() and (run_dir / "results.json").is_file()
    assert os.path.isfile(run_dir / "log.txt.rank1")
    assert out.count("[ugs-train] bbox: AP") == 1


def test_a_failing_rank_is_reported_in_one_line(tmp_path):
    args = TINY_RUN + [f"dataset.root={tmp_path}/absent", "dataset.generate=null",
                       f"hydra.run.dir={tmp_path}/r", "launcher.num_gpus=2", "wandb.enabled=false"]
    proc = run_ugs_train(args, cwd=str(tmp_path))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ugs-train: dataset.root: directory") and "absent" in last, proc.stderr[-3000:]
