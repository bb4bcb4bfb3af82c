"""Config of UGS GFL: ``MODEL.GFL.*`` (detectron2 has no GFL), its class, and its Hydra keys.

The UGS keys are the RPN's, as for the other dense heads: ``MODEL.UGS.RPN.{ENABLED, RANGE,
MODULATOR, NUM_INTERVALS, GRID_FORM}`` choose the side-distance grid (off: GFL's uniform
``0..REG_MAX``; on: the one-sided IN grid over ``[0, UGS_RANGE_SCALE * RANGE]`` strides),
``MODEL.UGS.DENSE`` is DFL's balance (weight 0.25, mean over the sides), and
``MODEL.UGS.{UM_WEIGHT, UR_WEIGHT, UR_RHO, UR_LEVELS, ...}`` UM and UR.
"""
from dataclasses import dataclass
from typing import Optional

from detectron2.config import CfgNode as CN
from omegaconf import MISSING, DictConfig

from ugs_d2.config import ConfigError, with_hydra_keys
from ugs_d2.modeling.config import (
    DENSE_FPN_LEVELS,
    add_detector_node,
    set_dense_fpn_levels,
    stage_mode,
    validate_ugs_config,
)
from ugs_d2.projects import Project, register_project

__all__ = ["add_ugs_gfl_config", "apply_gfl_architecture", "GFLSchema", "PROJECT", "LEVELS"]

#: model.gfl.levels -> (backbone builder, ResNet stages fed to the FPN, head levels)
LEVELS = DENSE_FPN_LEVELS

# GFL V1's published 1x recipe (MMDetection configs/gfl/gfl_r50_fpn_1x_coco.py)
_GFL_DEFAULTS = dict(
    NUM_CLASSES=80,
    IN_FEATURES=["p3", "p4", "p5", "p6", "p7"],
    NUM_CONVS=4,
    HEAD_NORM="GN",
    PRIOR_PROB=0.01,
    REG_MAX=16,            # the uniform grid 0, 1, ..., 16 strides
    ATSS_TOPK=9,
    ANCHOR_SCALE=8.0,      # ATSS's box per location: 8 strides square (octave_base_scale)
    ANCHOR_OFFSET=0.0,     # MMDetection's anchor centres sit at (i, j) * stride
    QFL_BETA=2.0,
    GIOU_WEIGHT=2.0,
    SCORE_THRESH_TEST=0.05,
    TOPK_CANDIDATES_TEST=1000,
    NMS_THRESH_TEST=0.6,
    # UGS: the one-sided grid spans [0, UGS_RANGE_SCALE * MODEL.UGS.RPN.RANGE] strides; 8 * 2 =
    # 16 = REG_MAX, GFL's own span
    UGS_RANGE_SCALE=8.0,
)


def add_ugs_gfl_config(cfg: CN) -> None:
    """Add ``MODEL.GFL.*`` (keys not already there) and the core ``MODEL.UGS``, in place."""
    add_detector_node(cfg, "GFL", _GFL_DEFAULTS)


def apply_gfl_architecture(cfg: CN) -> CN:
    """``MODEL.META_ARCHITECTURE = "UGSGFL"`` (baseline and UGS); checks the keys GFL reads.
    ``cfg`` must be mutable.

    Raises:
        ValueError: naming the key (KL loss, a bad REG_MAX, range scale, ATSS top-k, ...).
    """
    validate_ugs_config(cfg)
    if stage_mode(cfg, "RPN") == "kl":
        raise ValueError("MODEL.UGS.RPN.REG_LOSS = kl is not implemented for GFL")
    g = cfg.MODEL.GFL
    checks = [
        ("REG_MAX", isinstance(g.REG_MAX, int) and g.REG_MAX >= 1, "an integer >= 1"),
        ("NUM_CONVS", isinstance(g.NUM_CONVS, int) and g.NUM_CONVS >= 1, "an integer >= 1"),
        ("ATSS_TOPK", isinstance(g.ATSS_TOPK, int) and g.ATSS_TOPK >= 1, "an integer >= 1"),
        ("ANCHOR_SCALE", g.ANCHOR_SCALE > 0, "> 0"),
        ("ANCHOR_OFFSET", 0 <= g.ANCHOR_OFFSET < 1, "in [0, 1)"),
        ("QFL_BETA", g.QFL_BETA >= 0, ">= 0"),
        ("GIOU_WEIGHT", g.GIOU_WEIGHT >= 0, ">= 0"),
        ("UGS_RANGE_SCALE", g.UGS_RANGE_SCALE > 0, "> 0"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise ValueError(f"MODEL.GFL.{key} must be {expected}, got {g[key]!r}")
    cfg.MODEL.META_ARCHITECTURE = "UGSGFL"
    return cfg


@dataclass
class GFLSchema:
    """``model.gfl`` of the ``model=gfl_*`` presets (configs/model/gfl_r18_fpn.yaml)."""

    levels: str = MISSING  # p2-p6 | p3-p7 (LEVELS)
    num_convs: int = MISSING
    head_norm: Optional[str] = None  # "" | GN
    reg_max: int = MISSING
    atss_topk: int = MISSING
    anchor_scale: float = MISSING
    qfl_beta: float = MISSING
    giou_weight: float = MISSING
    range_scale: float = MISSING
    score_thresh_test: float = MISSING
    topk_candidates_test: int = MISSING
    nms_thresh_test: float = MISSING
    detections_per_image: int = MISSING


def _finish(typed: DictConfig, d2: CN, num_classes: Optional[int]) -> None:
    """The levels pick the backbone; the classes come from the data; then the class selection.
    (``ugs.rpn.reg_loss`` and ``smooth_l1_beta`` have no effect: GFL's box losses are GIoU + DFL;
    ``ugs.roi.*`` has no stage here.)"""
    set_dense_fpn_levels(d2, typed.model.gfl.levels)
    if num_classes is not None:
        d2.MODEL.GFL.NUM_CLASSES = num_classes
    try:
        apply_gfl_architecture(d2)
    except ValueError as e:  # name the Hydra key
        renames = [("MODEL.GFL.UGS_RANGE_SCALE", "model.gfl.range_scale")]
        renames += [(f"MODEL.GFL.{k}", f"model.gfl.{k.lower()}") for k in _GFL_DEFAULTS if k != "UGS_RANGE_SCALE"]
        raise ConfigError(with_hydra_keys(str(e), renames)) from None


PROJECT = register_project(Project(
    name="UGS_GFL",
    package=__name__.rpartition(".")[0],
    node="gfl",
    schema=GFLSchema,
    bridge=(
        ("model.gfl.num_convs", "MODEL.GFL.NUM_CONVS"),
        ("model.gfl.head_norm", "MODEL.GFL.HEAD_NORM", lambda v: v or ""),
        ("model.gfl.reg_max", "MODEL.GFL.REG_MAX"),
        ("model.gfl.atss_topk", "MODEL.GFL.ATSS_TOPK"),
        ("model.gfl.anchor_scale", "MODEL.GFL.ANCHOR_SCALE"),
        ("model.gfl.qfl_beta", "MODEL.GFL.QFL_BETA"),
        ("model.gfl.giou_weight", "MODEL.GFL.GIOU_WEIGHT"),
        ("model.gfl.range_scale", "MODEL.GFL.UGS_RANGE_SCALE"),
        ("model.gfl.score_thresh_test", "MODEL.GFL.SCORE_THRESH_TEST"),
        ("model.gfl.topk_candidates_test", "MODEL.GFL.TOPK_CANDIDATES_TEST"),
        ("model.gfl.nms_thresh_test", "MODEL.GFL.NMS_THRESH_TEST"),
        ("model.gfl.detections_per_image", "TEST.DETECTIONS_PER_IMAGE"),
        ("model.gfl.levels", "MODEL.GFL.IN_FEATURES", lambda v: LEVELS[v][2]),
    ),
    checks=(
        ("model.gfl.levels", lambda v: v in LEVELS, " or ".join(LEVELS)),
        ("model.gfl.num_convs", lambda v: v >= 1, "a positive integer"),
    ),
    add_config=add_ugs_gfl_config,
    finish=_finish,
))
