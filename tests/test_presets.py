"""Every ``ugs/`` preset trains a few iterations and evaluates, through one real Hydra multirun."""
import json
import os

import yaml
from conftest import TINY_RUN, run_ugs_train

from ugs_d2.bench.fixed_batches import available_presets

PRESETS = available_presets()  # every configs/ugs file, Table 6's order first

# loss keys each preset must log in metrics.json (beyond detectron2's objectness/class losses)
EXPECTED_LOSSES = {
    "off": {"loss_rpn_loc", "loss_box_reg"},
    "ce_in_um": {"loss_rpn_loc", "loss_box_reg", "loss_um_rpn", "loss_um_roi"},
    "full": {"loss_rpn_loc", "loss_box_reg", "loss_um_rpn", "loss_um_roi", "loss_ur"},
    "full_rho0": {"loss_rpn_loc", "loss_box_reg", "loss_um_rpn", "loss_um_roi", "loss_ur"},
    "ce_in_um_scaled": {"loss_rpn_loc", "loss_box_reg", "loss_um_rpn", "loss_um_roi"},
}
# detectron2 keys that tell the Table-6 rows apart where the loss names do not
EXPECTED_D2 = {
    "l1": {"RPN.SMOOTH_L1_BETA": 0.0, "ROI_BOX_HEAD.SMOOTH_L1_BETA": 0.0},
    "smooth_l1": {"RPN.SMOOTH_L1_BETA": 1.0, "ROI_BOX_HEAD.SMOOTH_L1_BETA": 1.0},
    "full_rho0": {"UGS.UR_RHO": 0.0, "UGS.UR_WEIGHT": 0.5},
    "ce_in_um_scaled": {"UGS.DET_LOSS_SCALE": 1.5, "UGS.UR_WEIGHT": 0.0},
}


def _model_key(d2, dotted):
    node = d2["MODEL"]
    for part in dotted.split("."):
        node = node[part]
    return node


def _metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_every_preset_trains_and_evaluates(tiny_dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_ugs_train(
        ["-m", f"ugs={','.join(PRESETS)}", *TINY_RUN, f"dataset.root={tiny_dataset}",
         f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.runtime.choices.ugs}"],
        cwd=str(tmp_path),
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for preset in PRESETS:
        run_dir = sweep_dir / preset
        assert (run_dir / "done").is_file(), preset
        with open(run_dir / "results.json") as f:
            results = json.load(f)
        assert {"AP", "AP50", "APs", "per_class_AP"} <= set(results), preset
        records = [r for r in _metrics(run_dir / "metrics.json") if "total_loss" in r]
        assert records, preset
        logged = set(records[-1])
        assert EXPECTED_LOSSES.get(preset, {"loss_rpn_loc", "loss_box_reg"}) <= logged, (preset, logged)
        with open(run_dir / "detectron2_config.yaml") as f:
            d2 = yaml.safe_load(f)
        for key, value in EXPECTED_D2.get(preset, {}).items():
            assert _model_key(d2, key) == value, (preset, key)
        assert os.path.isfile(run_dir / "inference" / "synth_test" / "coco_instances_results.json")
        # the jobs ran one after another in one process: each log.txt holds its own job only
        log = (run_dir / "log.txt").read_text()
        assert str(run_dir / "inference") in log, preset
        others = [p for p in PRESETS if p != preset and str(sweep_dir / p / "inference") in log]
        assert not others, (preset, others)
