"""The paper-reproduction presets (projects/Paper_*): every sweep point composes and converts.

They are meant for a GPU cluster and never train here; what can be checked on a laptop is that
each job of each sweep would start: the command line composes, every swept combination gives a
valid detectron2 config with the paper's settings, and the SLURM preset they name resolves.
"""
import itertools

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from ugs_d2.cli.validate import CONFIG_DIR
from ugs_d2.config import to_detectron2_cfg

# experiment -> (number of classes of its dataset, expected detectron2 values)
PAPER_PRESETS = {
    "paper_table1": (10, {"INPUT.MIN_SIZE_TEST": 800, "INPUT.MAX_SIZE_TEST": 1333,
                          "SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02,
                          "SOLVER.MAX_ITER": 4860, "SOLVER.STEPS": (3240, 4455),
                          "SOLVER.WEIGHT_DECAY": 0.0001, "TEST.DETECTIONS_PER_IMAGE": 1500,
                          "DATASETS.TEST": ("visdrone_val",)}),
    "paper_table4_coco": (80, {"INPUT.MIN_SIZE_TEST": 800, "SOLVER.MAX_ITER": 90000,
                               "SOLVER.STEPS": (60000, 80000), "DATASETS.TEST": ("coco2017_val",)}),
    "paper_table4_voc": (20, {"INPUT.MIN_SIZE_TEST": 600, "INPUT.MAX_SIZE_TEST": 1000,
                              "SOLVER.BASE_LR": 0.01, "SOLVER.MAX_ITER": 12416,
                              "DATASETS.TEST": ("voc2007_test",)}),
}


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def _sweep_points(experiment):
    """Every combination of the experiment's ``hydra.sweeper.params``."""
    params = _compose([f"+experiment={experiment}"]).hydra.sweeper.params
    keys = list(params)
    values = [str(params[k]).split(",") for k in keys]
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)]


def _get(node, dotted):
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("experiment", sorted(PAPER_PRESETS))
def test_every_sweep_point_converts(experiment):
    num_classes, expected = PAPER_PRESETS[experiment]
    points = _sweep_points(experiment)
    assert len(points) >= 2, points  # at least UGS off and on
    for point in points:
        cfg = _compose([f"+experiment={experiment}", *point])
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        del cfg["hydra"]  # to_detectron2_cfg reads the job config only
        d2 = to_detectron2_cfg(cfg, "/tmp/unused", num_classes=num_classes)
        for key, value in expected.items():
            assert _get(d2, key) == value, (experiment, point, key)
        ugs_on = "ugs=full" in point
        assert d2.MODEL.UGS.UM_WEIGHT == (0.5 if ugs_on else 0.0), point
        # every detector reads the bin settings of ugs.rpn (dense heads and the RPNs)
        assert d2.MODEL.UGS.RPN.ENABLED == ugs_on, point


def test_table1_sweeps_the_five_detectors_and_ugs():
    points = _sweep_points("paper_table1")
    models = {p.split("=", 1)[1] for point in points for p in point if p.startswith("model=")}
    assert models == {"faster_rcnn_r50_fpn", "cascade_rcnn_r50_fpn", "retinanet_r50_fpn", "fcos_r50_fpn", "gfl_r50_fpn"}
    assert len(points) == 10


def test_slurm_4gpu_preset_resolves():
    cfg = _compose(["hydra/launcher=slurm_4gpu", "+experiment=paper_table1"])
    launcher = cfg.hydra.launcher
    assert launcher.gpus_per_node == 4 and launcher.nodes == 1 and launcher.tasks_per_node == 1
    assert launcher._target_.endswith("SlurmLauncher")

