"""The second embedded benchmark (ugs-bench embedded, results/embedded_v2): its plan, its
committed runs and the report regenerated from them alone.

Running it is hours of CPU; the tests check that every job of the plan starts with the
recipe the write-up describes, train one real tiny job through the runner (committed, then
skipped on a rerun), and regenerate the report from a copy of the committed files.
"""
import json
import os
import shutil

import pytest
from conftest import TINY_RUN, write_sweep_job
from omegaconf import OmegaConf
from test_paper_presets import _compose, _get

from ugs_d2.bench import embedded, embedded_report
from ugs_d2.bench.common import BenchError
from ugs_d2.cli import bench
from ugs_d2.config import load_project, to_detectron2_cfg

RECIPE = {"SOLVER.IMS_PER_BATCH": 8, "SOLVER.BASE_LR": 0.02, "SOLVER.WARMUP_ITERS": 50,
          "INPUT.MIN_SIZE_TRAIN": (256,), "INPUT.MAX_SIZE_TEST": 256, "DATALOADER.NUM_WORKERS": 1}


def test_the_plan_is_60_runs_in_priority_order():
    jobs = embedded.plan()
    assert len(jobs) == 60 and len(set(jobs)) == 60
    parts = [j.part for j in jobs]
    assert (parts.count("table6"), parts.count("detectors"), parts.count("cascade")) == (36, 18, 6)
    ugs = lambda job: dict(o.split("=", 1) for o in job.overrides)["ugs"]  # noqa: E731
    # the headline rows first (full UGS against both baselines), every row's 3 seeds together
    assert [ugs(j) for j in jobs[:9]] == ["l1"] * 3 + ["full"] * 3 + ["smooth_l1"] * 3
    assert [j.overrides[0] for j in jobs[:3]] == ["seed=0", "seed=1", "seed=2"]
    # the rows the issue lets one cut come last, the first to cut (second grid reading) last of all
    assert [ugs(j) for j in jobs[-9:]] == ["ce_uniform"] * 3 + ["giou"] * 3 + ["full"] * 3
    assert all(o in jobs[-1].overrides for o in embedded.NORMALIZED_GRID)
    table6 = {ugs(j) for j in jobs if j.part == "table6"}
    assert table6 == {"l1", "smooth_l1", "giou", "grad_clip", "kl", "ce_uniform", "ce_in", "ce_in_um", "full",
                      "full_rho0", "ce_in_um_scaled"}
    assert jobs[0].name == "seed=0,ugs=l1"
    assert jobs[0].command(("ugs-train",), "RUN") == ["ugs-train", "+experiment=embedded_v2_table6", "seed=0",
                                                       "ugs=l1", "hydra.run.dir='RUN'"]


def test_every_row_converts_with_the_recipe():
    rows = {(j.part, tuple(o for o in j.overrides if not o.startswith("seed="))) for j in embedded.plan([0])}
    architectures = set()
    for part, row in sorted(rows):
        cfg = _compose([f"+experiment=embedded_v2_{part}", *row, "seed=0"])
        assert cfg.dataset.root == "datasets/synth" and cfg.dataset.generate.image_size == 256
        assert cfg.gradvar.enabled == (part == "table6") and cfg.wandb.enabled is False
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        del cfg["hydra"]
        if cfg.model.get("project"):
            load_project(cfg.model.project)
        d2 = to_detectron2_cfg(cfg, "/tmp/unused", num_classes=6)
        for key, value in RECIPE.items():
            assert _get(d2, key) == value, (part, row, key)
        assert d2.SOLVER.MAX_ITER == cfg.schedule.max_iter and d2.TEST.EVAL_PERIOD == 100
        if part != "detectors":
            assert d2.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 128
        architectures.add(d2.MODEL.META_ARCHITECTURE)
    assert architectures == {"GeneralizedRCNN", "UGSRCNN", "UGSRetinaNet", "UGSFCOS", "UGSCascadeRCNN", "UGSGFL"}


def test_select_jobs_and_its_errors():
    jobs = embedded.plan()
    assert len(embedded.select_jobs(jobs, ["detectors", "cascade"], ["ugs=full"])) == 12
    with pytest.raises(BenchError, match="--parts: unknown part"):
        embedded.select_jobs(jobs, ["tabel6"])
    with pytest.raises(BenchError, match="no job of the plan"):
        embedded.select_jobs(jobs, None, ["ugs=nope"])


def test_thin_metrics_keeps_losses_ap_and_gradvar_only():
    records = [
        {"iteration": 19, "total_loss": 1.0, "loss_cls": 0.5, "lr": 0.01, "time": 1.9, "data_time": 0.03,
         "eta_seconds": 99.0, "fast_rcnn/cls_accuracy": 0.9},
        {"iteration": 99, "bbox/AP": 12.0, "gradvar_faithful/lt32/cv2": 0.5, "gradvar/lt32/var": 2.0},
        {"iteration": 100, "time": 2.0},   # nothing left but the iteration: dropped
    ]
    assert embedded.thin_metrics(records) == [
        {"iteration": 19, "total_loss": 1.0, "loss_cls": 0.5, "lr": 0.01},
        {"iteration": 99, "bbox/AP": 12.0, "gradvar_faithful/lt32/cv2": 0.5, "gradvar/lt32/var": 2.0},
    ]


def test_commit_run_refuses_an_unfinished_run_and_leaves_no_temp_dir(tmp_path):
    run = write_sweep_job(tmp_path / "work", "seed=0,ugs=l1", ["seed=0", "ugs=l1"])
    with pytest.raises(BenchError, match="not finished"):
        embedded.commit_run(str(run), str(tmp_path / "runs" / "table6" / "seed=0,ugs=l1"))
    assert not (tmp_path / "runs" / "table6").exists() or not os.listdir(tmp_path / "runs" / "table6")


@pytest.fixture(scope="module")
def one_real_job(tmp_path_factory, tiny_dataset):
    """The plan's first job (L1, seed 0) trained by the runner at the tiny test size."""
    root = tmp_path_factory.mktemp("embedded_v2")
    job = embedded.plan([0])[0]
    extra = (*TINY_RUN, f"dataset.root={tiny_dataset}", "gradvar.enabled=false", "schedule.eval_period=2")
    spec = embedded.EmbeddedSpec([job], str(root / "results"), str(root / "work"), lanes=1, threads=2,
                                 extra_overrides=extra)
    lines = []
    outcomes = embedded.run_plan(spec, lines.append)
    return spec, job, outcomes, lines


def test_the_runner_trains_commits_and_skips_on_a_rerun(one_real_job):
    spec, job, outcomes, lines = one_real_job
    assert [o.status for o in outcomes] == ["committed"], lines
    dest = os.path.join(spec.results_dir, "runs", "table6", job.name)
    names = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs)
    assert names == [".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "done",
                     "metrics.json", "results.json"]
    overrides = OmegaConf.load(os.path.join(dest, ".hydra", "overrides.yaml"))
    assert list(overrides)[:3] == ["+experiment=embedded_v2_table6", "seed=0", "ugs=l1"]
    hydra = OmegaConf.load(os.path.join(dest, ".hydra", "hydra.yaml")).hydra
    assert set(hydra) == {"job", "runtime"} and hydra.runtime.choices.ugs == "l1"  # no paths, no env
    records = [json.loads(line) for line in open(os.path.join(dest, "metrics.json"))]
    assert records and all("time" not in r and "eta_seconds" not in r for r in records)
    assert any("bbox/AP" in r for r in records) and any("total_loss" in r for r in records)
    assert not [n for n in os.listdir(os.path.dirname(dest)) if n.startswith(".tmp-")]
    again = embedded.run_plan(spec, lambda line: None)
    assert [(o.status, o.detail) for o in again] == [("skipped", "committed before")]


def test_the_report_regenerates_from_a_copy_of_the_committed_runs(one_real_job, tmp_path):
    spec, job, _, _ = one_real_job
    original = embedded_report.write_report(spec.results_dir, lambda line: None)
    copy = tmp_path / "copy"
    shutil.copytree(os.path.join(spec.results_dir, "runs"), copy / "runs")  # no work dir, no checkpoints
    text = embedded_report.write_report(str(copy), lambda line: None)
    assert text == original.replace(spec.results_dir, str(copy))
    assert "ugs=l1" in (copy / "table6.md").read_text()
    assert len((copy / "table6.csv").read_text().splitlines()) == 2  # header + the one row
    assert "Committed runs: table6 1, detectors 0, cascade 0." in text


def _committed(results, part, overrides, ap, aps, metrics=()):
    return write_sweep_job(results / "runs" / part, ",".join(sorted(overrides)),
                           [f"+experiment=embedded_v2_{part}", *sorted(overrides)],
                           results={"AP": ap, "AP50": 2 * ap, "AP75": ap / 2, "APs": aps, "APm": None},
                           metrics=list(metrics))


def _faithful(*cv2_per_window):
    """The faithful probe's records of windows ending at 99, 199, ... with these lt32 cv2 values."""
    return [{"iteration": 100 * k + 99, "bbox/AP": 1.0, "gradvar_faithful/lt32/cv2": cv2,
             "gradvar_faithful/lt32/var": cv2, "gradvar_faithful/lt32/mean": 1.0, "gradvar_faithful/lt32/count": 40}
            for k, cv2 in enumerate(cv2_per_window)]


def test_summary_pairs_seeds_and_states_the_targets(tmp_path):
    for seed, (l1, smooth, full) in enumerate([(10.0, 10.5, 13.0), (11.0, 11.0, 12.0), (12.0, 12.5, 14.0)]):
        _committed(tmp_path, "table6", ["ugs=l1", f"seed={seed}"], l1, l1 - 1, _faithful(4.0, 4.0))
        _committed(tmp_path, "table6", ["ugs=smooth_l1", f"seed={seed}"], smooth, smooth - 1, _faithful(6.0, 2.0))
        _committed(tmp_path, "table6", ["ugs=full", f"seed={seed}"], full, full - 1, _faithful(1.0, 1.0))
        _committed(tmp_path, "table6", ["ugs=full", f"seed={seed}", *embedded.NORMALIZED_GRID], full + 1, full)
        for ugs, ap in (("off", 5.0 + seed), ("full", 1.0 + seed)):
            _committed(tmp_path, "detectors", ["model=retinanet_r18_fpn", f"ugs={ugs}", f"seed={seed}"], ap, ap)
    text = embedded_report.write_report(str(tmp_path), lambda line: None)
    # paired by seed: APs gains 3, 1, 2 -> +2 +- 1
    assert ("| Faster R-CNN | l1 | 11.00 +- 1.00 | 13.00 +- 1.00 | +2.00 +- 1.00 | 10.00 +- 1.00 | "
            "12.00 +- 1.00 | +2.00 +- 1.00 |") in text
    assert "| RetinaNet | off | 6.00 +- 1.00 | 2.00 +- 1.00 | -4.00 +- 0.00 |" in text
    assert "| FCOS | off | - | - | - |" in text
    # the grid reading is its own row, not mistaken for ugs=full
    assert "| full (roi.grid_form=normalized,rpn.grid_form=normalized) | 14.00 +- 1.00 | +3.00 +- 1.00 |" in text
    assert "| full | 13.00 +- 1.00 | +2.00 +- 1.00 |" in text
    assert "Full UGS against smooth-L1 (paired): Δ AP +1.67 +- 0.76" in text
    assert "with paired std below the gain: +2.00 +- 1.00 -> **met**" in text
    assert "- RetinaNet: full UGS not worse than its baseline beyond one std (AP): **missed**" in text
    assert "- GFL V1: full UGS not worse than its baseline beyond one std (AP): **not established" in text
    # the paper's Table 6 order, the other grid reading after the listed rows
    section = text.split("## Table 6")[1].split("Full UGS against")[0]
    rows = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["| row", "| l1", "| smooth_l1", "| full", "| full (roi.grid_form=normalized,rpn.grid_form=normalized)"]
    # both readings of the paper's ratio: the last window (2) and the mean of the per-window ratios (6 and 2)
    assert "objects < 32 px, last window, 3 seed pair(s): 2 +- 0 (paper >= 2.9) -> **missed**" in text
    assert "objects < 32 px, mean over windows, 3 seed pair(s): 4 +- 0 (paper >= 2.9) -> **met**" in text
    assert "| l1 | 3 | lt32 | 4 +- 0 | 4 +- 0 |" in text
    assert "| baseline | 0-99 | 100-199 |\n|---|---:|---:|\n| l1 | 4 +- 0 | 4 +- 0 |\n| smooth_l1 | 6 +- 0 | 2 +- 0 |" in text
    for name in ("summary.md", "summary.png", "summary_curves.png", "summary_gradvar.png", "table6.md",
                 "table6.csv", "detectors.md", "gradvar_l1.md", "gradvar_smooth_l1.md"):
        assert (tmp_path / name).is_file(), name


def test_the_command_line(tmp_path, capsys):
    # its own work dir too: the repository's outputs/embedded_v2 may hold runs in progress
    status = bench.run_command_line(["embedded", "--status", "--results-dir", str(tmp_path),
                                     "--work-dir", str(tmp_path / "work"), "--parts", "detectors"])
    assert status["report"].startswith("18 jobs: 18 missing")
    assert "missing    detectors  model=retinanet_r18_fpn,seed=0,ugs=off" in status["report"]
    with pytest.raises(SystemExit, match=r"ugs-bench: override model.roi.fc_dim=8: only device=\.\.\."):
        bench.run_command_line(["embedded", "--status", "model.roi.fc_dim=8"])
    with pytest.raises(SystemExit, match="ugs-bench: --seeds a: expected comma-separated integers"):
        bench.run_command_line(["embedded", "--status", "--seeds", "a"])


def test_no_job_starts_after_stop_after(tmp_path):
    jobs = embedded.plan([0])[:2]
    spec = embedded.EmbeddedSpec(jobs, str(tmp_path / "results"), str(tmp_path / "work"), lanes=1,
                                 stop_after_s=0.0)
    outcomes = embedded.run_plan(spec, lambda line: None)
    assert [(o.status, o.detail) for o in outcomes] == [("not started", "past --stop-after")] * 2
    assert not os.path.exists(tmp_path / "work" / "table6")  # nothing was trained


def test_a_job_another_process_is_training_is_left_to_it(tmp_path, tiny_dataset):
    import fcntl

    job = embedded.plan([0])[0]
    run_dir = tmp_path / "work" / job.part / job.name
    run_dir.mkdir(parents=True)
    with open(run_dir / "train.lock", "a+") as held:   # what a running ugs-train holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        spec = embedded.EmbeddedSpec([job], str(tmp_path / "results"), str(tmp_path / "work"), lanes=1,
                                     extra_overrides=(*TINY_RUN, f"dataset.root={tiny_dataset}"))
        (outcome,) = embedded.run_plan(spec, lambda line: None)
    assert outcome.status == "busy" and "being trained by another process" in outcome.detail
    assert not (tmp_path / "results" / "runs").exists() or not os.listdir(tmp_path / "results" / "runs")


def test_no_verdict_before_every_seed_is_in(tmp_path):
    _committed(tmp_path, "table6", ["ugs=l1", "seed=0"], 10.0, 10.0, _faithful(4.0))
    _committed(tmp_path, "table6", ["ugs=full", "seed=0"], 14.0, 14.0, _faithful(1.0))
    _committed(tmp_path, "table6", ["ugs=smooth_l1", "seed=0"], 10.0, 10.0, _faithful(4.0))
    text = embedded_report.render_summary(embedded_report.summarize(str(tmp_path)), "cmd")
    assert "below the gain: +4.00 (n=1) -> **not established** (1 of 3 seed pairs)" in text
    assert "- Faster R-CNN: full UGS not worse than its baseline beyond one std (AP): **not established" in text
    assert "last window, 1 seed pair(s): 4 (paper >= 2.9) -> **not established**" in text
    assert "mean over windows, 1 seed pair(s): 4 (paper >= 2.9) -> **not established**" in text
