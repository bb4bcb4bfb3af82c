"""``ugs-train-net``: detectron2's train_net.py convention on ugs-train's run."""
import glob
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, TINY_RUN, run_ugs_train

BASE_YAML = os.path.join(REPO, "configs", "Base-UGS.yaml")

# TINY_RUN (the Hydra route's tiny settings) as detectron2 KEY VALUE pairs
TINY_OPTS = [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "2",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu",
]


def run_train_net(args, cwd, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    return subprocess.run(
        [sys.executable, "-m", "ugs_d2.train_net", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def workdir(tmp_path, tiny_dataset):
    """A directory where dataset=synth's default root (datasets/synth) is the tiny dataset."""
    (tmp_path / "datasets").mkdir()
    os.symlink(tiny_dataset, tmp_path / "datasets" / "synth")
    return tmp_path


def _without_output_dir(path):
    with open(path) as f:
        return [line for line in f if not line.startswith("OUTPUT_DIR:")]


def test_train_net_matches_the_hydra_route(workdir):
    """A few iterations through ugs-train-net: the run directory of ugs-train, and the same
    detectron2 config as ugs-train with the same settings (OUTPUT_DIR aside)."""
    net = run_train_net(["--config-file", BASE_YAML, *TINY_OPTS, "OUTPUT_DIR", "net"], workdir)
    assert net.returncode == 0, net.stderr[-3000:]
    hydra = run_ugs_train([*TINY_RUN, "hydra.run.dir=hydra"], workdir)
    assert hydra.returncode == 0, hydra.stderr[-3000:]

    net_dir, hydra_dir = workdir / "net", workdir / "hydra"
    for name in ("results.json", "done", "model_final.pth", "metrics.json", "last_checkpoint"):
        assert (net_dir / name).is_file(), name
    assert glob.glob(str(net_dir / "wandb" / "offline-run-*")), "no W&B offline run"
    assert _without_output_dir(net_dir / "detectron2_config.yaml") == _without_output_dir(
        hydra_dir / "detectron2_config.yaml"
    )
    results = json.loads((net_dir / "results.json").read_text())
    assert results["iterations"] == 4
    assert results["overrides"][0] == f"--config-file={BASE_YAML}"
    assert "SOLVER.MAX_ITER=4" in results["overrides"]
    assert "[ugs-train] 4 iterations" in net.stdout

    # --resume on a finished run directory prints its results instead of training again
    again = run_train_net(["--config-file", BASE_YAML, "--resume", *TINY_OPTS, "OUTPUT_DIR", "net"], workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already done" in again.stdout

    # --eval-only with the trained weights: evaluates into its own run directory, trains nothing
    weights = str(net_dir / "model_final.pth")
    evaluated = run_train_net(["--config-file", BASE_YAML, "--eval-only", *TINY_OPTS, "MODEL.WEIGHTS", weights,
                               "OUTPUT_DIR", "eval"], workdir)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    eval_results = json.loads((workdir / "eval" / "results.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "per_class_AP"):  # the same weights and validation images
        assert eval_results[key] == results[key], key
    assert not glob.glob(str(workdir / "eval" / "model_*.pth"))


@pytest.mark.parametrize(
    "project, yaml, meta",
    [
        ("UGS_RetinaNet", "ugs_retinanet_R_18_FPN.yaml", "UGSRetinaNet"),
        ("UGS_FCOS", "ugs_fcos_R_18_FPN.yaml", "UGSFCOS"),
        ("UGS_Cascade", "ugs_cascade_R_18_FPN.yaml", "UGSCascadeRCNN"),
    ],
)
def test_project_yaml_chains_to_the_base(project, yaml, meta):
    """projects/*/configs/*.yaml: _BASE_ gives the datasets and solver; the project is taken
    from the file's folder and picks its classes; KEY VALUE pairs apply last."""
    from ugs_d2.train_net import argument_parser, setup

    path = os.path.join(REPO, "projects", project, "configs", yaml)
    cfg = setup(argument_parser().parse_args(["--config-file", path, "SOLVER.MAX_ITER", "7"]))
    assert cfg.UGS_PROJECT == project
    assert cfg.MODEL.META_ARCHITECTURE == meta
    assert cfg.DATASETS.TRAIN == ("synth_train",) and cfg.SOLVER.BASE_LR == 0.02  # from the base
    assert cfg.SOLVER.MAX_ITER == 7
    assert cfg.MODEL.UGS.UM_WEIGHT == 0.5  # the project file's own key


def test_base_yaml_runs_the_core_faster_rcnn():
    from ugs_d2.train_net import argument_parser, setup

    cfg = setup(argument_parser().parse_args(["--config-file", BASE_YAML, "MODEL.UGS.ROI.ENABLED", "True"]))
    assert cfg.UGS_PROJECT == ""
    assert cfg.MODEL.META_ARCHITECTURE == "UGSRCNN"  # apply_ugs_architecture picked the UGS class
    assert cfg.MODEL.ROI_HEADS.NAME == "UGSROIHeads"


def test_unknown_key_is_one_line_with_close_matches(tmp_path):
    proc = run_train_net(["--config-file", BASE_YAML, "SOLVER.MAX_ITERR", "4"], tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(  # above it: torch's import warnings
        "ugs-train-net: unknown config key 'SOLVER.MAX_ITERR' in the KEY VALUE options; did you mean SOLVER.MAX_ITER, "
    )


def test_dataset_names_map_to_the_dataset_presets():
    from ugs_d2.train_net import dataset_preset_for

    synth = dataset_preset_for(["synth_train"], ["synth_test"])
    assert synth.name == "synth" and synth.root == "datasets/synth"
    visdrone = dataset_preset_for(["visdrone_train"], ["visdrone_val"])
    assert visdrone.name == "visdrone" and list(visdrone.train) == ["visdrone_train"]
    assert visdrone.test == "visdrone_val"
    with pytest.raises(ValueError, match=r"^DATASETS.TRAIN/TEST: no configs/dataset/ preset registers mine_train.*synth_train"):
        dataset_preset_for(["mine_train"], ["synth_test"])


def test_num_classes_must_match_the_training_set():
    from ugs_d2.train_net import _check_num_classes, argument_parser, setup

    cfg = setup(argument_parser().parse_args(["--config-file", BASE_YAML, "MODEL.ROI_HEADS.NUM_CLASSES", "3"]))
    _check_num_classes(cfg, 3)
    with pytest.raises(ValueError, match=r"^MODEL.ROI_HEADS.NUM_CLASSES: 3, but synth_train has 6 categories"):
        _check_num_classes(cfg, 6)
