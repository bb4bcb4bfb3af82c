"""The embedded benchmark (projects/embedded_benchmark): its presets and its runner.

Running it is two hours of CPU; what a test can check is that every one of its 48 jobs would
start with the recipe the write-up describes, and that run.sh runs every embedded sweep.
"""
import os
import re
import subprocess

import pytest
from conftest import write_sweep_job
from omegaconf import OmegaConf
from test_paper_presets import _compose, _get, _sweep_points

from ugs_d2.cli.validate import CONFIG_DIR
from ugs_d2.config import to_detectron2_cfg

ROOT = os.path.dirname(CONFIG_DIR)
RUN_SH = os.path.join(ROOT, "projects", "embedded_benchmark", "run.sh")
RECIPE = {"SOLVER.MAX_ITER": 360, "SOLVER.STEPS": (290, 340), "SOLVER.IMS_PER_BATCH": 8,
          "SOLVER.BASE_LR": 0.02, "SOLVER.WARMUP_ITERS": 20, "INPUT.RESIZE": "none",
          "DATALOADER.NUM_WORKERS": 1}
TWO_STAGE = {"MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64, "MODEL.RPN.POST_NMS_TOPK_TRAIN": 256}
# sweep -> (jobs, meta architectures, extra detectron2 values)
SWEEPS = {
    "embedded_table6": (24, {"GeneralizedRCNN", "UGSRCNN"}, TWO_STAGE),  # UGSRCNN: UR (ugs=full)
    "embedded_detectors": (12, {"UGSRetinaNet", "UGSFCOS"}, {}),
    # Cascade R-CNN: GeneralizedRCNN, or its UR subclass UGSCascadeRCNN with ugs=full
    "embedded_cascade": (6, {"GeneralizedRCNN", "UGSCascadeRCNN"}, TWO_STAGE),
    # GFL V1: its own sweep, so that embedded_detectors' committed 12 runs stay as they are
    "embedded_gfl": (6, {"UGSGFL"}, {}),
}


def test_the_benchmark_is_48_runs_of_3_seeds():
    on_disk = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(CONFIG_DIR, "experiment"))}
    # embedded_v2_*: the second benchmark (tests/test_embedded_benchmark_v2.py)
    first = {n for n in on_disk if n.startswith("embedded_") and not n.startswith("embedded_v2_")}
    assert first == set(SWEEPS) | {"embedded_base"}
    total = 0
    for sweep, (jobs, _, _) in SWEEPS.items():
        points = _sweep_points(sweep)
        assert len(points) == jobs, sweep
        assert {p for point in points for p in point if p.startswith("seed=")} == {
            "seed=0", "seed=1", "seed=2"}
        assert {p for point in points for p in point if p.startswith("ugs=")} >= {"ugs=off", "ugs=full"}
        total += len(points)
    assert total == 48


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_every_job_converts_with_the_recipe(sweep):
    _, architectures, extra = SWEEPS[sweep]
    seen = set()
    for point in _sweep_points(sweep):
        cfg = _compose([f"+experiment={sweep}", *point])
        assert cfg.dataset.root == "datasets/synth128" and cfg.dataset.generate.image_size == 128
        assert cfg.gradvar.enabled == (sweep == "embedded_table6")  # the probe: Faster R-CNN only
        assert cfg.hydra.callbacks.collect_results.results_dir == "results/embedded"
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        del cfg["hydra"]
        if cfg.model.get("project"):  # projects/ detectors register their classes on import
            from ugs_d2.config import load_project

            load_project(cfg.model.project)
        d2 = to_detectron2_cfg(cfg, "/tmp/unused", num_classes=6)
        for key, value in {**RECIPE, **extra}.items():
            assert _get(d2, key) == value, (sweep, point, key)
        seen.add(d2.MODEL.META_ARCHITECTURE)
    assert seen == architectures


def test_run_sh_runs_every_sweep_and_is_valid_bash():
    assert subprocess.run(["bash", "-n", RUN_SH]).returncode == 0
    text = open(RUN_SH).read()
    (listed,) = re.findall(r"^SWEEPS=\(([^)]*)\)", text, flags=re.M)
    assert {f"embedded_{s}" for s in listed.split()} == set(SWEEPS)
    assert os.access(RUN_SH, os.X_OK)


def _load_summarize():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "embedded_summarize", os.path.join(ROOT, "projects", "embedded_benchmark", "summarize.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finished_job(sweep_dir, overrides, ap, aps, metrics=()):
    results = {"AP": ap, "AP50": 2 * ap, "APs": aps, "APm": None}
    return write_sweep_job(sweep_dir, ",".join(overrides), overrides, results=results, metrics=list(metrics))


def test_summary_pairs_seeds_and_states_the_targets(tmp_path):
    summarize = _load_summarize()
    table6 = tmp_path / "embedded_table6"
    gv = lambda var: [{"iteration": 359, "gradvar/lt32/var": var, "gradvar/lt32/mean_abs": 1.0,  # noqa: E731
                       "gradvar/lt32/count": 50}]
    for seed, (off, full) in enumerate([(10.0, 13.0), (11.0, 12.0), (12.0, 14.0)]):
        _finished_job(table6, ["+experiment=embedded_table6", "ugs=off", f"seed={seed}"], off, off - 1, gv(6.0))
        _finished_job(table6, ["+experiment=embedded_table6", "ugs=full", f"seed={seed}"], full, full - 1, gv(2.0))
    _finished_job(table6, ["+experiment=embedded_table6", "ugs=kl", "seed=0"], 9.0, 8.0)
    dense = tmp_path / "embedded_detectors"  # RetinaNet: UGS clearly worse; FCOS: one seed only
    for seed, (off, full) in enumerate([(5.0, 1.0), (6.0, 2.0), (7.0, 3.0)]):
        for ugs, ap in (("off", off), ("full", full)):
            _finished_job(dense, ["+experiment=embedded_detectors", "model=retinanet_r18_fpn",
                                  f"ugs={ugs}", f"seed={seed}"], ap, ap)
    _finished_job(dense, ["+experiment=embedded_detectors", "model=fcos_r18_fpn", "ugs=off", "seed=0"], 4.0, 4.0)

    text = summarize.render(summarize.summarize(str(tmp_path)), "cmd")
    # paired by seed: APs gains 3, 1, 2 -> 2 +- 1; AP off 11 +- 1, UGS 13 +- 1
    assert "| Faster R-CNN | 11.00 +- 1.00 | 13.00 +- 1.00 | +2.00 +- 1.00 | 10.00 +- 1.00 | " \
           "12.00 +- 1.00 | +2.00 +- 1.00 | yes |" in text
    assert "| RetinaNet | 6.00 +- 1.00 | 2.00 +- 1.00 | -4.00 +- 0.00 |" in text and "| **no** |" in text
    assert "| FCOS | 4.00 (n=1) | - | - |" in text
    assert "| kl | 9.00 (n=1) | -1.00 (n=1) |" in text
    assert "APs gain >= 1.5: +2.00 +- 1.00 points -> **met**" in text
    assert "3 seed pair(s): 3 +- 0 (target >= 2.9) -> **met**" in text
    assert "- RetinaNet: UGS not worse than baseline beyond one std (AP): **missed**" in text
    assert "- Cascade R-CNN: UGS not worse than baseline beyond one std (AP): **not measured**" in text
