"""Interruptions through the real command lines: Ctrl-C (SIGINT) and SIGTERM end with one line
and exit 130 / 143, leave nothing half-written, and the same command continues; a refused
second ugs-train writes nothing into the running one's directory; divergence in the forward
pass is the one ``training diverged`` line."""
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cli_batch import run_batch
from conftest import TINY_RUN, run_ugs_train
from test_bad_inputs import assert_one_line_failure

from ugs_d2.engine.checkpoint import LAST_CHECKPOINT
from ugs_d2.evaluation.metrics import read_metrics
from ugs_d2.fileio import TMP_PREFIX

ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
SIGNALS = [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]


def _wait_for(predicate, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _stop(proc, signum):
    os.kill(proc.pid, signum)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("signum,rc,name", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_interrupted_ugs_data_synth_leaves_no_half_dataset(tmp_path, signum, rc, name):
    out = tmp_path / "synth"
    command = [sys.executable, "-m", "ugs_d2.cli.data", "synth", "--out", str(out), "--image-size", "96"]
    proc = subprocess.Popen(command + ["--train", "2000", "--val", "10"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stage = out / f"{TMP_PREFIX}synth" / "train"
    assert _wait_for(lambda: stage.is_dir() and len(os.listdir(stage)) > 20, proc), "never started writing"
    stopped = _stop(proc, signum)
    assert_one_line_failure(stopped, "ugs-data", f"interrupted ({name})", "rerun the same command", rc=rc)
    assert sorted(os.listdir(out)) == []  # no images, no json, no synth_config.json, no staging
    again = subprocess.run(command + ["--train", "3", "--val", "2"], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]  # no --force needed
    assert sorted(os.listdir(out)) == ["annotations", "synth_config.json", "train", "val"]


@pytest.mark.parametrize("signum,rc,name", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_interrupted_training_is_one_line_and_resumes(tiny_dataset, tmp_path, signum, rc, name):
    run_dir = tmp_path / "run"
    args = TINY_RUN + [f"dataset.root={tiny_dataset}", f"hydra.run.dir={run_dir}", "schedule.max_iter=8",
                       "schedule.steps=[6]", "wandb.enabled=false"]
    proc = subprocess.Popen([sys.executable, "-m", "ugs_d2.train", *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tag = run_dir / LAST_CHECKPOINT
    assert _wait_for(tag.is_file, proc), "no checkpoint before the end"
    stopped = _stop(proc, signum)
    assert_one_line_failure(stopped, "ugs-train", f"interrupted ({name})", "rerun the same command", rc=rc)
    assert not (run_dir / "done").exists()
    assert not [n for n in os.listdir(run_dir) if n.startswith(TMP_PREFIX)]
    again = run_ugs_train(args, cwd=str(tmp_path))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["iterations"] == 8
    assert "Resuming from" in (run_dir / "log.txt").read_text()
    records = read_metrics(str(run_dir / "metrics.json"))
    iterations = [r["iteration"] for r in records]
    assert iterations == sorted(set(iterations))  # one record per iteration
    assert [r for r in records if "total_loss" in r][-1]["iteration"] == 7


def test_refused_second_run_writes_nothing_into_the_running_one(tmp_path):
    """The lock is taken before .hydra/ is written: a refused command leaves the running run's
    config (and so ugs-results' view of it) untouched."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0  # the running job's\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    held = open(run_dir / "train.lock", "a+")
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("4242\n")
    held.flush()
    try:
        proc = run_batch([("ugs_d2.train", [f"hydra.run.dir={run_dir}", "seed=7", "wandb.enabled=false"], tmp_path)])[0]
    finally:
        held.close()
    assert_one_line_failure(proc, "ugs-train", str(run_dir), "being trained by another process (pid 4242)")
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "seed: 0  # the running job's\n"
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- seed=0\n"
    assert sorted(os.listdir(run_dir / ".hydra")) == ["config.yaml", "overrides.yaml"]


def test_divergence_in_the_forward_pass_is_one_line(tiny_dataset, tmp_path):
    """A huge learning rate makes the RPN's boxes NaN before any loss is computed (detectron2's
    FloatingPointError in find_top_rpn_proposals): still the one 'training diverged' line."""
    run_dir = tmp_path / "run"
    args = TINY_RUN + [f"dataset.root={tiny_dataset}", f"hydra.run.dir={run_dir}", "schedule.base_lr=1e6",
                       "schedule.warmup_iters=0", "schedule.max_iter=20", "wandb.enabled=false"]
    proc = run_batch([("ugs_d2.train", args, tmp_path)])[0]
    last = assert_one_line_failure(proc, "ugs-train", "training diverged:", "at iteration")
    assert "lower schedule.base_lr" in last or " = " in last  # the forward-pass or the loss path
    assert not (run_dir / "done").exists() and not (run_dir / "results.json").exists()


def test_written_hydra_files_are_the_ones_hydra_writes(tiny_dataset, tmp_path):
    """ugs-train writes .hydra/{config,hydra,overrides}.yaml itself (after the lock); the readers
    of sweeps read them as before."""
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    proc = run_ugs_train(TINY_RUN + [f"dataset.root={tiny_dataset}", f"hydra.run.dir={run_dir}", "seed=3",
                                     "wandb.enabled=false", "schedule.max_iter=1", "schedule.steps=[]"], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    hydra_dir = run_dir / ".hydra"
    assert OmegaConf.load(hydra_dir / "config.yaml").seed == 3
    assert "seed=3" in OmegaConf.load(hydra_dir / "overrides.yaml")
    hydra_cfg = OmegaConf.load(hydra_dir / "hydra.yaml")
    assert hydra_cfg.hydra.runtime.output_dir == str(run_dir)
    assert "name" in hydra_cfg.hydra.job.config.override_dirname.exclude_keys


def _large_coco_json(path, images=4000, boxes=300_000):
    """A COCO json big enough that reading and analysing it takes seconds (numpy, seeded)."""
    import numpy as np

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 900, size=(boxes, 2)).round(1)
    wh = rng.uniform(2, 90, size=(boxes, 2)).round(1)
    image_ids = rng.integers(1, images + 1, size=boxes)
    classes = rng.integers(1, 6, size=boxes)
    annotations = [
        {"id": k + 1, "image_id": int(i), "category_id": int(c), "bbox": [*map(float, p), *map(float, s)],
         "area": float(s[0] * s[1]), "iscrowd": 0}
        for k, (i, c, p, s) in enumerate(zip(image_ids, classes, xy, wh))
    ]
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 1000, "height": 1000} for i in range(1, images + 1)],
            "annotations": annotations, "categories": [{"id": i, "name": f"c{i}"} for i in range(1, 6)]}
    path.write_text(json.dumps(coco))
    return path


def _has_open(proc, path):
    """Whether ``proc`` holds ``path`` open: it is past argument parsing, inside the command's work."""
    fd_dir = f"/proc/{proc.pid}/fd"
    try:
        return any(os.readlink(os.path.join(fd_dir, fd)) == str(path) for fd in os.listdir(fd_dir))
    except OSError:  # the process ended, or an fd closed while we looked
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to see when the input is read")
@pytest.mark.parametrize("module,prog,args", [
    ("ugs_d2.cli.anchors", "ugs-anchors", ["--out", "{out}.yaml", "--generations", "100000", "--no-progress"]),
    ("ugs_d2.cli.health", "ugs-health", ["--out", "{out}"]),
    ("ugs_d2.cli.classes", "ugs-classes", ["--out", "{out}.json", "--drop", "c1"]),
], ids=["ugs-anchors", "ugs-health", "ugs-classes"])
def test_ctrl_c_in_the_dataset_tools_is_one_line_and_writes_nothing(tmp_path, module, prog, args):
    """Ctrl-C while the command reads its (large) input: one line, exit 130, no output, no temp file."""
    data = _large_coco_json(tmp_path / "train.json")
    out = tmp_path / "out"
    command = [sys.executable, "-m", module, str(data), *[a.format(out=out) for a in args]]
    proc = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: _has_open(proc, data), proc, timeout=120), "never opened its input"
    stopped = _stop(proc, signal.SIGINT)
    assert_one_line_failure(stopped, prog, "interrupted (Ctrl-C)", "rerun the same command", rc=130)
    assert sorted(os.listdir(tmp_path)) == ["train.json"]
