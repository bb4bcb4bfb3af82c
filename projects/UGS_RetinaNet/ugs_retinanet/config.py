"""Config of UGS RetinaNet: its detectron2 keys, its class selection, and its Hydra preset keys.

RetinaNet's dense head encodes anchor deltas like the RPN (Box2BoxTransform, weights
(1, 1, 1, 1)), so it reads the RPN's UGS keys: ``MODEL.UGS.RPN.{ENABLED, RANGE, MODULATOR,
NUM_INTERVALS, REG_LOSS}`` and the shared ``MODEL.UGS.{UM_WEIGHT, UR_WEIGHT, UR_RHO, UR_LEVELS}``.
No new detectron2 key is needed.
"""
from dataclasses import dataclass
from typing import List, Optional

from detectron2.config import CfgNode as CN
from omegaconf import MISSING, DictConfig

from ugs_d2.config import ConfigError, float_lists, with_hydra_keys
from ugs_d2.modeling import add_ugs_config
from ugs_d2.modeling.config import DENSE_FPN_LEVELS, set_dense_fpn_levels, stage_mode, validate_ugs_config
from ugs_d2.projects import Project, register_project

__all__ = ["add_ugs_retinanet_config", "apply_retinanet_architecture", "RetinaNetSchema", "PROJECT", "LEVELS"]

#: model.retinanet.levels -> (backbone builder, ResNet stages fed to the FPN, head levels)
LEVELS = DENSE_FPN_LEVELS


def add_ugs_retinanet_config(cfg: CN) -> None:
    """Add the keys UGS RetinaNet reads (the core ``MODEL.UGS``) if absent, in place."""
    if "UGS" not in cfg.MODEL:
        add_ugs_config(cfg)


def apply_retinanet_architecture(cfg: CN) -> CN:
    """``MODEL.META_ARCHITECTURE = "UGSRetinaNet"`` (detectron2's RetinaNet computation when the
    UGS keys are off); a native stage's loss is mirrored into ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE``
    and unusable settings are rejected. ``cfg`` must be mutable.

    Raises:
        ValueError: naming the key, for settings RetinaNet cannot run (KL loss, UM/UR without bins).
    """
    validate_ugs_config(cfg)
    ugs = cfg.MODEL.UGS
    mode = stage_mode(cfg, "RPN")
    if mode == "kl":
        raise ValueError("MODEL.UGS.RPN.REG_LOSS = kl is not implemented for RetinaNet")
    if mode == "native":
        cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = ugs.RPN.REG_LOSS
        for name in ("UM_WEIGHT", "UR_WEIGHT"):
            if ugs[name] > 0:  # the ROI stage, which could carry them, does not exist here
                raise ValueError(f"MODEL.UGS.{name} > 0 needs MODEL.UGS.RPN.ENABLED for RetinaNet")
    cfg.MODEL.META_ARCHITECTURE = "UGSRetinaNet"
    return cfg


@dataclass
class RetinaNetSchema:
    """``model.retinanet`` of the ``model=retinanet_*`` presets (configs/model/retinanet_r18_fpn.yaml)."""

    levels: str = MISSING  # p2-p6 | p3-p7 (LEVELS)
    num_convs: int = MISSING
    head_norm: Optional[str] = None  # "" | GN | BN
    iou_thresholds: List[float] = MISSING  # [background below, foreground from]
    score_thresh_test: float = MISSING
    topk_candidates_test: int = MISSING
    nms_thresh_test: float = MISSING
    detections_per_image: int = MISSING


def _finish(typed: DictConfig, d2: CN, num_classes: Optional[int]) -> None:
    """The levels pick the backbone and bound the anchor lists; then the class selection.
    (``ugs.roi.*`` has no stage here and is ignored.)"""
    head_levels = set_dense_fpn_levels(d2, typed.model.retinanet.levels)
    sizes = d2.MODEL.ANCHOR_GENERATOR.SIZES
    if len(sizes) not in (1, len(head_levels)):
        raise ConfigError(
            f"model.anchors.sizes: expected 1 or {len(head_levels)} lists (one per level "
            f"{', '.join(head_levels)}), got {len(sizes)}"
        )
    if num_classes is not None:
        d2.MODEL.RETINANET.NUM_CLASSES = num_classes
    try:
        apply_retinanet_architecture(d2)
    except ValueError as e:  # name the Hydra key
        raise ConfigError(with_hydra_keys(str(e))) from None


PROJECT = register_project(Project(
    name="UGS_RetinaNet",
    package=__name__.rpartition(".")[0],
    node="retinanet",
    schema=RetinaNetSchema,
    bridge=(
        ("model.anchors.sizes", "MODEL.ANCHOR_GENERATOR.SIZES", float_lists),
        ("model.anchors.aspect_ratios", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", float_lists),
        ("model.retinanet.levels", "MODEL.RETINANET.IN_FEATURES", lambda v: LEVELS[v][2]),
        ("model.retinanet.num_convs", "MODEL.RETINANET.NUM_CONVS"),
        ("model.retinanet.head_norm", "MODEL.RETINANET.NORM", lambda v: v or ""),
        ("model.retinanet.iou_thresholds", "MODEL.RETINANET.IOU_THRESHOLDS"),
        ("model.retinanet.score_thresh_test", "MODEL.RETINANET.SCORE_THRESH_TEST"),
        ("model.retinanet.topk_candidates_test", "MODEL.RETINANET.TOPK_CANDIDATES_TEST"),
        ("model.retinanet.nms_thresh_test", "MODEL.RETINANET.NMS_THRESH_TEST"),
        ("model.retinanet.detections_per_image", "TEST.DETECTIONS_PER_IMAGE"),
    ),
    checks=(
        ("model.retinanet.levels", lambda v: v in LEVELS, " or ".join(LEVELS)),
        ("model.retinanet.num_convs", lambda v: v >= 1, "a positive integer"),
        ("model.retinanet.iou_thresholds", lambda v: len(v) == 2 and v[0] <= v[1],
         "[background_below, foreground_from]"),
    ),
    add_config=add_ugs_retinanet_config,
    finish=_finish,
))
