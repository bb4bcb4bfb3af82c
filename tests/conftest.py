"""Shared fixtures: a tiny generated dataset and a helper to run the real ``ugs-train`` CLI."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _importable_projects() -> None:
    """The detector projects are installed packages (setup.cfg's package_dir). An editable
    install made before that mapping existed cannot import them: for this test session only,
    put their folders on the path, in this process and in the ugs-train subprocesses. After
    ``pip install -e .`` this does nothing."""
    import importlib.util

    folders = [os.path.join(REPO, "projects", name) for name in ("UGS_RetinaNet", "UGS_FCOS", "UGS_Cascade", "UGS_GFL", "UGS_Rotated")]
    missing = [f for f in folders if importlib.util.find_spec(os.path.basename(f).lower()) is None]
    if missing:
        sys.path[:0] = missing
        os.environ["PYTHONPATH"] = os.pathsep.join(missing + [p for p in [os.environ.get("PYTHONPATH")] if p])


_importable_projects()

# Overrides that make any preset run in seconds on a CPU: tiny images, a few iterations.
TINY_RUN = [
    "schedule=smoke",
    "model.input.min_size_train=[128]",
    "model.input.max_size_train=128",
    "model.input.min_size_test=128",
    "model.input.max_size_test=128",
    "model.backbone.fpn_channels=32",
    "model.roi.fc_dim=64",
    "model.roi.batch_size_per_image=64",
    "model.rpn.post_nms_topk_test=100",
    "num_workers=0",
    "device=cpu",
]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """8 train / 4 val synthetic images of 128 px (generated once per test session)."""
    from ugs_d2.data import synth

    root = str(tmp_path_factory.mktemp("data") / "synth")
    synth.generate(root, num_train=8, num_val=4, seed=0, config=synth.SynthConfig(image_size=128))
    return root


def run_ugs_train(args, cwd, timeout=600):
    """Run ``python -m ugs_d2.train ARGS`` in ``cwd``; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    return subprocess.run(
        [sys.executable, "-m", "ugs_d2.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_sweep_job(sweep, name, overrides, num=None, results=None, metrics=None, failed=None):
    """A Hydra job directory as a multirun leaves it, for the readers of sweeps (ugs-results,
    ugs-gradvar --sweep, the embedded benchmark's summary): ``.hydra/overrides.yaml`` (+
    ``hydra.yaml`` with the job number when ``num`` is given), ``metrics.json`` records,
    ``results.json`` + ``done`` when ``results`` is given, a ``failed`` marker."""
    import json

    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if num is not None:
        (job / ".hydra" / "hydra.yaml").write_text(
            f"hydra:\n  job:\n    num: {num}\n    config:\n      override_dirname:\n"
            f"        exclude_keys: [name, wandb.mode]\n")
    if metrics is not None:
        (job / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))
        (job / "done").write_text("done\n")
    if failed is not None:
        (job / "failed").write_text(failed)
    return job
