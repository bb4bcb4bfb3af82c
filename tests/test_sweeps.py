"""The ``configs/experiment`` sweep presets, and a real ``submitit_local`` multirun collected by
the ``CollectResults`` callback."""
import csv
import glob
import json
import os

import pytest
from conftest import TINY_RUN, run_ugs_train
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from ugs_d2.cli.validate import CONFIG_DIR, validate_command_line
from ugs_d2.config import to_detectron2_cfg

# the paper's rows (l1 = Baseline) and the two controls that separate UR from re-weighting
TABLE6 = [
    "l1", "smooth_l1", "giou", "grad_clip", "kl", "ce_uniform", "ce_in", "ce_in_um", "full",
    "full_rho0", "ce_in_um_scaled",
]
# preset -> (base ugs preset, number of jobs per seed)
PRESETS = {
    "table6": (None, 11),
    "in_params_rpn": ("ce_in", 4),
    "in_grid_rpn": ("ce_in", 4),
    "in_params_roi": ("ce_in", 4),
    "in_grid_roi": ("ce_in", 3),
    "um_weight": ("ce_in_um", 3),
    "loss_weights": ("full", 12),
    "seeds": ("full", 5),
}


def _compose(overrides, hydra_config=False):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=hydra_config)
    finally:
        GlobalHydra.instance().clear()


def _expand(command_line):
    """The job override lists Hydra's basic sweeper makes of ``ugs-train -m COMMAND_LINE``."""
    parser = OverridesParser.create()
    plain = [o.input_line for o in parser.parse_overrides(list(command_line)) if not o.is_sweep_override()]
    cfg = _compose(plain, hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    overrides = parser.parse_overrides(params + list(command_line))
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    return cfg, batch


def test_every_preset_is_listed():
    on_disk = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(CONFIG_DIR, "experiment"))}
    # the paper_* cluster presets (other datasets, GPUs) are checked in test_paper_presets.py,
    # the embedded_* benchmark presets in test_embedded_benchmark.py
    assert {n for n in on_disk if not n.startswith(("paper_", "embedded_"))} == set(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_expands_and_every_job_converts(preset):
    base, per_seed = PRESETS[preset]
    cfg, jobs = _expand([f"+experiment={preset}", "seed=0,1"])
    assert cfg.name == preset
    assert cfg.hydra.callbacks.collect_results.results_dir == "results"
    assert len(jobs) == (2 if preset == "seeds" else per_seed * 2)  # seed=0,1 replaces the seeds sweep
    if base is not None:
        assert cfg.hydra.runtime.choices.ugs == base
    for job in jobs:  # every job composes and passes the value checks of the CfgNode bridge
        to_detectron2_cfg(_compose(job))
    assert validate_command_line(["-m", f"+experiment={preset}", "seed=0,1"]) is not None


def test_table6_rows_and_command_line_precedence():
    _, jobs = _expand(["+experiment=table6", "seed=0,1,2"])
    assert [j[0] for j in jobs[::3]] == [f"ugs={p}" for p in TABLE6]  # rows outer, seeds inner
    assert {j[-1] for j in jobs} == {"seed=0", "seed=1", "seed=2"}
    _, jobs = _expand(["+experiment=loss_weights", "ugs.um_weight=0.5"])  # a value narrows a sweep
    assert len(jobs) == 4 and all("ugs.um_weight=0.5" in j for j in jobs)
    cfg = _compose(["+experiment=in_params_rpn", "ugs=full", "ugs.rpn.range=3.0"])
    assert (cfg.ugs.ur_weight, cfg.ugs.rpn.range) == (0.5, 3.0)  # the command line wins


def test_submitit_local_multirun_is_collected(tiny_dataset, tmp_path):
    """Two tiny jobs through hydra-submitit-launcher's local executor; the callback's table."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "multirun" / "tiny_sweep"
    proc = run_ugs_train(
        ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
         "ugs=off,ce_in", "wandb.enabled=false", *TINY_RUN, f"dataset.root={tiny_dataset}", "name=tiny_sweep",
         f"hydra.sweep.dir={sweep_dir}", "hydra.callbacks.collect_results.results_dir=results"],
        cwd=str(tmp_path),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_dirs = sorted(os.path.dirname(os.path.dirname(p)) for p in glob.glob(f"{sweep_dir}/*/.hydra/overrides.yaml"))
    assert len(job_dirs) == 2
    for job in job_dirs:
        assert os.path.isfile(os.path.join(job, "done")), job
        with open(os.path.join(job, "results.json")) as f:
            assert "AP" in json.load(f)
    assert glob.glob(f"{sweep_dir}/.submitit/*")  # it really went through submitit

    for md in (sweep_dir / "results.md", tmp_path / "results" / "tiny_sweep.md"):
        text = md.read_text()
        assert "| ugs | n | AP | AP50 | AP75 | APs | APm | APl |" in text, text
        assert "\n| off | 1 | " in text and "\n| ce_in | 1 | " in text, text
        assert "2 of 2 jobs complete." in text
    with open(tmp_path / "results" / "tiny_sweep.csv", newline="") as f:
        assert [r["ugs"] for r in csv.DictReader(f)] == ["off", "ce_in"]
    assert (tmp_path / "results" / "tiny_sweep_ugs.png").is_file()
    assert (sweep_dir / "results_ugs.png").is_file()
