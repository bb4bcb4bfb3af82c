"""Config of UGS FCOS: ``MODEL.FCOS.*`` (detectron2 0.6 configures FCOS only through LazyConfig),
its class, and its Hydra preset keys.

The UGS keys are the RPN's (FCOS's head is the dense, RPN-like one): ``MODEL.UGS.RPN.{ENABLED,
RANGE, MODULATOR, NUM_INTERVALS}`` and ``MODEL.UGS.{UM_WEIGHT, UR_WEIGHT, UR_RHO, UR_LEVELS}``.
The grid is one-sided, over ``[0, UGS_RANGE_SCALE * RANGE]`` strides.
"""
from typing import Any, Callable, Optional

from detectron2.config import CfgNode as CN
from omegaconf import DictConfig

from ugs_d2.config import ConfigError, value_types, with_hydra_keys
from ugs_d2.modeling import add_ugs_config
from ugs_d2.modeling.config import stage_mode, validate_ugs_config

__all__ = ["add_ugs_fcos_config", "apply_fcos_architecture", "from_hydra", "LEVELS"]

#: model.fcos.levels -> (backbone builder, ResNet stages fed to the FPN, head levels)
LEVELS = {
    "p2-p6": ("build_resnet_fpn_backbone", ["res2", "res3", "res4", "res5"], ["p2", "p3", "p4", "p5", "p6"]),
    "p3-p7": ("build_retinanet_resnet_fpn_backbone", ["res3", "res4", "res5"], ["p3", "p4", "p5", "p6", "p7"]),
}

# detectron2's FCOS defaults (its LazyConfig and the FCOS class's keyword defaults)
_FCOS_DEFAULTS = dict(
    NUM_CLASSES=80,
    IN_FEATURES=["p3", "p4", "p5", "p6", "p7"],
    NUM_CONVS=4,
    HEAD_NORM="GN",
    PRIOR_PROB=0.01,
    CENTER_SAMPLING_RADIUS=1.5,
    FOCAL_LOSS_ALPHA=0.25,
    FOCAL_LOSS_GAMMA=2.0,
    SCORE_THRESH_TEST=0.2,
    TOPK_CANDIDATES_TEST=1000,
    NMS_THRESH_TEST=0.6,
    # UGS: the one-sided grid spans [0, UGS_RANGE_SCALE * MODEL.UGS.RPN.RANGE] strides. FCOS
    # assigns an object to a level when its largest distance is 4-8 strides, so 4 * 2 = 8
    # covers every level but the last (clamped there).
    UGS_RANGE_SCALE=4.0,
)


def add_ugs_fcos_config(cfg: CN) -> None:
    """Add ``MODEL.FCOS.*`` (keys not already there) and the core ``MODEL.UGS``, in place."""
    if "UGS" not in cfg.MODEL:
        add_ugs_config(cfg)
    if "FCOS" not in cfg.MODEL:
        cfg.MODEL.FCOS = CN()
    for key, value in _FCOS_DEFAULTS.items():
        if key not in cfg.MODEL.FCOS:
            cfg.MODEL.FCOS[key] = value


def apply_fcos_architecture(cfg: CN) -> CN:
    """``MODEL.META_ARCHITECTURE = "UGSFCOS"`` (baseline or UGS: detectron2 registers no FCOS);
    checks that the UGS keys are ones FCOS can run. ``cfg`` must be mutable.

    Raises:
        ValueError: naming the key (KL loss; UM/UR without bins; a non-positive range scale).
    """
    validate_ugs_config(cfg)
    mode = stage_mode(cfg, "RPN")
    if mode == "kl":
        raise ValueError("MODEL.UGS.RPN.REG_LOSS = kl is not implemented for FCOS")
    if mode == "native":
        for name in ("UM_WEIGHT", "UR_WEIGHT"):
            if cfg.MODEL.UGS[name] > 0:
                raise ValueError(f"MODEL.UGS.{name} > 0 needs MODEL.UGS.RPN.ENABLED for FCOS")
    if not cfg.MODEL.FCOS.UGS_RANGE_SCALE > 0:
        raise ValueError(f"MODEL.FCOS.UGS_RANGE_SCALE must be > 0, got {cfg.MODEL.FCOS.UGS_RANGE_SCALE}")
    cfg.MODEL.META_ARCHITECTURE = "UGSFCOS"
    return cfg


def from_hydra(
    cfg: DictConfig, d2: CN, get: Callable[[str, Callable], Any], num_classes: Optional[int]
) -> None:
    """Set FCOS's detectron2 keys from the ``model=fcos_*`` preset (``ugs_d2.config``'s hook for
    ``model.project: UGS_FCOS``). Reads ``model.fcos.*``; ``ugs.rpn.reg_loss`` has no effect
    (FCOS's regression loss is GIoU), ``ugs.roi.*`` has no stage here.
    """
    vt = value_types
    add_ugs_fcos_config(d2)
    levels = get("model.fcos.levels", vt.string)
    if levels not in LEVELS:
        raise ConfigError(f"model.fcos.levels: expected {' or '.join(LEVELS)}, got {levels!r}")
    builder, stages, head_levels = LEVELS[levels]
    d2.MODEL.BACKBONE.NAME = builder
    d2.MODEL.RESNETS.OUT_FEATURES = list(stages)
    d2.MODEL.FPN.IN_FEATURES = list(stages)
    f = d2.MODEL.FCOS
    if num_classes is not None:
        f.NUM_CLASSES = num_classes
    f.IN_FEATURES = list(head_levels)
    f.NUM_CONVS = get("model.fcos.num_convs", vt.integer)
    f.HEAD_NORM = get("model.fcos.head_norm", vt.optional_string)
    f.CENTER_SAMPLING_RADIUS = get("model.fcos.center_sampling_radius", vt.number)
    f.UGS_RANGE_SCALE = get("model.fcos.range_scale", vt.number)
    f.SCORE_THRESH_TEST = get("model.fcos.score_thresh_test", vt.number)
    f.TOPK_CANDIDATES_TEST = get("model.fcos.topk_candidates_test", vt.integer)
    f.NMS_THRESH_TEST = get("model.fcos.nms_thresh_test", vt.number)
    d2.TEST.DETECTIONS_PER_IMAGE = get("model.fcos.detections_per_image", vt.integer)
    if f.NUM_CONVS < 1:
        raise ConfigError(f"model.fcos.num_convs: expected a positive integer, got {f.NUM_CONVS}")
    try:
        apply_fcos_architecture(d2)
    except ValueError as e:  # name the Hydra key
        renames = [("MODEL.FCOS.UGS_RANGE_SCALE", "model.fcos.range_scale")]
        raise ConfigError(with_hydra_keys(str(e), renames)) from None
