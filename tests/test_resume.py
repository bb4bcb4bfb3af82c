"""Resume: kill -9 during training, rerun the same command, and the run continues and ends at
the configured iteration; checkpoints are atomic and metrics.json is read deduplicated."""
import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY_RUN, run_ugs_train

from ugs_d2.engine.checkpoint import LAST_CHECKPOINT, TMP_PREFIX, AtomicCheckpointer
from ugs_d2.engine.wandb_writer import RUN_ID_FILE
from ugs_d2.evaluation.metrics import read_metrics, repair_truncated_tail

MAX_ITER = 8
PERIOD = 2


def _leftover_temp_files(run_dir):
    return [
        os.path.join(root, name)
        for root, _, files in os.walk(run_dir)
        for name in files
        if name.startswith(TMP_PREFIX)
    ]


def test_kill_9_then_rerun_resumes_to_the_configured_iteration(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = TINY_RUN + [
        f"dataset.root={tiny_dataset}",
        f"hydra.run.dir={run_dir}",
        f"schedule.max_iter={MAX_ITER}",
        f"schedule.checkpoint_period={PERIOD}",
        "schedule.steps=[6]",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ugs_d2.train", *args],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # kill once the second checkpoint (iteration 3) is tagged: mid-training
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            last = run_dir / LAST_CHECKPOINT
            tag = last.read_text().strip() if last.is_file() else ""
            if tag.startswith("model_0") and 2 * PERIOD - 1 <= int(tag[6:13]) < MAX_ITER - 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"training ended (rc={proc.returncode}) before it was killed"
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "done").exists()
    killed_at = (run_dir / LAST_CHECKPOINT).read_text().strip()
    assert killed_at != "model_final.pth"
    # detectron2 writes metrics.json every 20 iterations, more than this run has: add what a
    # kill after a write leaves behind, a record of an iteration the rerun trains again and a
    # line cut mid-write
    with open(run_dir / "metrics.json", "a") as f:
        f.write(json.dumps({"iteration": MAX_ITER - 1, "total_loss": 999.0}) + "\n")
        f.write('{"iteration": %d, "total_lo' % MAX_ITER)

    again = run_ugs_train(args, cwd=str(tmp_path))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = (run_dir / "log.txt").read_text()
    assert f"Resuming from {run_dir / killed_at}" in log
    resumed_at = int(killed_at[len("model_"):-len(".pth")]) + 1
    assert f"Starting training from iteration {resumed_at}" in log

    with open(run_dir / "results.json") as f:
        assert json.load(f)["iterations"] == MAX_ITER
    assert (run_dir / "done").is_file()
    assert (run_dir / LAST_CHECKPOINT).read_text().strip() == "model_final.pth"
    final = torch.load(run_dir / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == MAX_ITER - 1

    with open(run_dir / "metrics.json") as f:
        raw = [json.loads(line)["iteration"] for line in f]  # every line complete again
    assert raw.count(MAX_ITER - 1) == 2
    records = read_metrics(str(run_dir / "metrics.json"))
    iterations = [r["iteration"] for r in records]
    assert iterations == sorted(set(iterations))  # one record per iteration
    train = [r for r in records if "total_loss" in r]
    assert train[-1]["iteration"] == MAX_ITER - 1 and train[-1]["total_loss"] != 999.0
    assert any("bbox/AP" in r for r in records)  # the final evaluation
    assert _leftover_temp_files(run_dir) == []

    # the rerun continued the same W&B run (offline: a second run directory with the same id)
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    runs = sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*")))
    if importlib.util.find_spec("wandb") is not None:
        assert len(runs) == 2 and all(r.endswith(f"-{run_id}") for r in runs), runs


def test_read_metrics_keeps_the_last_record_per_iteration(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [
        {"iteration": 0, "total_loss": 3.0},
        {"iteration": 1, "total_loss": 2.0},
        {"iteration": 2, "total_loss": 1.9},  # trained again after the resume
        {"iteration": 1, "total_loss": 2.5},  # resumed from the checkpoint at iteration 0
        {"iteration": 2, "total_loss": 1.5},
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    path.write_text(text + '{"iteration": 3, "total_lo')  # cut by kill -9 mid-write
    records = read_metrics(str(path))
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert [r["total_loss"] for r in records] == [3.0, 2.5, 1.5]
    assert read_metrics(str(tmp_path)) == records  # a run directory works too
    assert read_metrics(str(tmp_path / "absent.json")) == []

    # a line cut mid-write, then the resumed run appending after it
    path.write_text(text + '{"iteration": 3, "total_lo' + json.dumps({"iteration": 3, "x": 1}) + "\n")
    assert [r["iteration"] for r in read_metrics(str(path))] == [0, 1, 2]

    # what the trainer does before appending: cut the partial line, keep the complete ones
    path.write_text(text + '{"iteration": 3, "total_lo')
    assert repair_truncated_tail(str(path)) and path.read_text() == text
    assert not repair_truncated_tail(str(path)) and path.read_text() == text


def test_atomic_checkpointer_leaves_no_partial_file(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    assert (tmp_path / LAST_CHECKPOINT).read_text() == "model_0000001.pth"
    assert ckpt.get_all_checkpoint_files() == [str(tmp_path / "model_0000001.pth")]

    def failing_save(obj, f):  # a crash half-way through writing
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000003")
    # the new file never appeared, the tag still names the complete previous checkpoint
    assert not (tmp_path / "model_0000003.pth").exists()
    assert (tmp_path / LAST_CHECKPOINT).read_text() == "model_0000001.pth"
    assert _leftover_temp_files(tmp_path) == []
    monkeypatch.undo()
    other = torch.nn.Linear(2, 2)
    AtomicCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(other.weight, model.weight)


def test_keep_last_checkpoints_counts_what_an_earlier_attempt_left(tmp_path):
    """schedule.checkpoints_to_keep: the newest N periodic checkpoints stay, model_final and the
    ones a preempted attempt left behind included in the count (fvcore alone forgets those)."""
    from detectron2.engine.hooks import IterationTimer, PeriodicCheckpointer

    from ugs_d2.engine.trainer import keep_last_checkpoints

    ckpt = AtomicCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    for name in ("model_0000001", "model_0000003"):  # the earlier attempt's
        ckpt.save(name)
    timer = IterationTimer()
    hooks = keep_last_checkpoints([timer, PeriodicCheckpointer(ckpt, 2)], ckpt, period=2, keep=2)
    assert hooks[0] is timer and isinstance(hooks[1], PeriodicCheckpointer)
    hooks[1].max_iter = 8
    for iteration in range(4, 8):
        hooks[1].step(iteration)
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".pth"))
    assert names == ["model_0000005.pth", "model_0000007.pth", "model_final.pth"]
    assert (tmp_path / LAST_CHECKPOINT).read_text() == "model_final.pth"
    assert _leftover_temp_files(tmp_path) == []


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_keeps_the_previous(tmp_path):
    """A real write failure (the process's file-size limit: EFBIG, as a full disk gives ENOSPC)
    half-way through the checkpoint: one-line CheckpointError, the tag and previous checkpoint
    intact, no temporary file left."""
    resource = pytest.importorskip("resource")
    from ugs_d2.engine.checkpoint import CheckpointError

    model = torch.nn.Linear(512, 512)  # ~1 MB of weights
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))  # Python ignores SIGXFSZ
    try:
        with pytest.raises(CheckpointError) as raised:
            ckpt.save("model_0000003")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'model_0000003.pth'}: checkpoint not written (File too large); ")
    assert f"{tmp_path / 'model_0000001.pth'} is intact" in message
    assert (tmp_path / LAST_CHECKPOINT).read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000003.pth").exists()
    assert _leftover_temp_files(tmp_path) == []


def _hold_lock(run_dir):
    """Hold the run directory's lock as a live `ugs-train` process would."""
    import fcntl

    from ugs_d2.train import LOCK_FILE

    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK_FILE, "a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.write("4242\n")
    f.flush()
    return f


def test_a_run_directory_in_training_is_not_trained_twice(tmp_path):
    # a single run refuses in one line; a sweep job skips it and the sweep goes on
    held = _hold_lock(tmp_path / "run")
    try:
        proc = run_ugs_train([f"hydra.run.dir={tmp_path / 'run'}", "wandb.enabled=false"], tmp_path)
        assert proc.returncode != 0
        assert proc.stderr.strip().splitlines()[-1] == (
            f"ugs-train: {tmp_path / 'run'} is being trained by another process (pid 4242); "
            "wait for it, or give this run another name="
        )
        sweep = tmp_path / "sweep"
        busy = _hold_lock(sweep / "job0")
        try:
            proc = run_ugs_train(
                ["-m", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job${seed}", "seed=0",
                 "wandb.enabled=false"], tmp_path,
            )
        finally:
            busy.close()
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"[ugs-train] skipped: {sweep / 'job0'} is being trained by another process" in proc.stdout
        assert not (sweep / "job0" / "metrics.json").exists()
    finally:
        held.close()
    # released (the holder closed it, or died): the lock is free for the next process
    from ugs_d2.train import RunDirLock

    lock = RunDirLock(str(tmp_path / "run"))
    assert lock.acquire() and not RunDirLock(str(tmp_path / "run")).acquire()
    lock.release()
    assert RunDirLock(str(tmp_path / "run")).acquire()
