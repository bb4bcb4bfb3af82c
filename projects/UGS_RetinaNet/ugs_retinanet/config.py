"""Config of UGS RetinaNet: its detectron2 keys, its class selection, and its Hydra preset keys.

RetinaNet's dense head encodes anchor deltas like the RPN (Box2BoxTransform, weights
(1, 1, 1, 1)), so it reads the RPN's UGS keys: ``MODEL.UGS.RPN.{ENABLED, RANGE, MODULATOR,
NUM_INTERVALS, REG_LOSS}`` and the shared ``MODEL.UGS.{UM_WEIGHT, UR_WEIGHT, UR_RHO, UR_LEVELS}``.
No new detectron2 key is needed.
"""
from typing import Any, Callable, Optional

from detectron2.config import CfgNode as CN
from omegaconf import DictConfig

from ugs_d2.config import ConfigError, value_types, with_hydra_keys
from ugs_d2.modeling import add_ugs_config
from ugs_d2.modeling.config import stage_mode, validate_ugs_config

__all__ = ["add_ugs_retinanet_config", "apply_retinanet_architecture", "from_hydra", "LEVELS"]

#: model.retinanet.levels -> (backbone builder, ResNet stages fed to the FPN, head levels)
LEVELS = {
    # the Faster R-CNN presets' FPN: P2 (stride 4) keeps objects of a few pixels on a feature map
    "p2-p6": ("build_resnet_fpn_backbone", ["res2", "res3", "res4", "res5"], ["p2", "p3", "p4", "p5", "p6"]),
    # RetinaNet's own: P3-P5 from the FPN, P6-P7 strided convs on res5
    "p3-p7": ("build_retinanet_resnet_fpn_backbone", ["res3", "res4", "res5"], ["p3", "p4", "p5", "p6", "p7"]),
}


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


def from_hydra(
    cfg: DictConfig, d2: CN, get: Callable[[str, Callable], Any], num_classes: Optional[int]
) -> None:
    """Set RetinaNet's detectron2 keys from the ``model=retinanet_*`` preset (``ugs_d2.config``'s
    hook for ``model.project: UGS_RetinaNet``); the ``ugs.*`` keys are already in ``d2``.

    Reads ``model.anchors.*`` and ``model.retinanet.*``; ``ugs.roi.*`` has no stage here and is
    ignored.
    """
    vt = value_types
    add_ugs_retinanet_config(d2)
    levels = get("model.retinanet.levels", vt.string)
    if levels not in LEVELS:
        raise ConfigError(f"model.retinanet.levels: expected {' or '.join(LEVELS)}, got {levels!r}")
    builder, stages, head_levels = LEVELS[levels]
    d2.MODEL.BACKBONE.NAME = builder
    d2.MODEL.RESNETS.OUT_FEATURES = list(stages)
    d2.MODEL.FPN.IN_FEATURES = list(stages)
    sizes = get("model.anchors.sizes", vt.list_of(vt.list_of(vt.number)))
    if len(sizes) not in (1, len(head_levels)):
        raise ConfigError(
            f"model.anchors.sizes: expected 1 or {len(head_levels)} lists (one per level "
            f"{', '.join(head_levels)}), got {len(sizes)}"
        )
    d2.MODEL.ANCHOR_GENERATOR.SIZES = sizes
    d2.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = get(
        "model.anchors.aspect_ratios", vt.list_of(vt.list_of(vt.number))
    )
    r = d2.MODEL.RETINANET
    if num_classes is not None:
        r.NUM_CLASSES = num_classes
    r.IN_FEATURES = list(head_levels)
    r.NUM_CONVS = get("model.retinanet.num_convs", vt.integer)
    r.NORM = get("model.retinanet.head_norm", vt.optional_string)
    r.IOU_THRESHOLDS = get("model.retinanet.iou_thresholds", vt.list_of(vt.number))
    r.SCORE_THRESH_TEST = get("model.retinanet.score_thresh_test", vt.number)
    r.TOPK_CANDIDATES_TEST = get("model.retinanet.topk_candidates_test", vt.integer)
    r.NMS_THRESH_TEST = get("model.retinanet.nms_thresh_test", vt.number)
    d2.TEST.DETECTIONS_PER_IMAGE = get("model.retinanet.detections_per_image", vt.integer)
    if r.NUM_CONVS < 1:
        raise ConfigError(f"model.retinanet.num_convs: expected a positive integer, got {r.NUM_CONVS}")
    if len(r.IOU_THRESHOLDS) != 2 or not r.IOU_THRESHOLDS[0] <= r.IOU_THRESHOLDS[1]:
        raise ConfigError(
            f"model.retinanet.iou_thresholds: expected [background_below, foreground_from], "
            f"got {r.IOU_THRESHOLDS}"
        )
    try:
        apply_retinanet_architecture(d2)
    except ValueError as e:  # name the Hydra key
        raise ConfigError(with_hydra_keys(str(e))) from None

