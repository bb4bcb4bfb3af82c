"""Config of UGS FCOS: ``MODEL.FCOS.*`` (detectron2 0.6 configures FCOS only through LazyConfig),
its class, and its Hydra preset keys (``model.fcos``, registered with ``ugs_d2.projects``).

The UGS keys are the RPN's (FCOS's head is the dense, RPN-like one): ``MODEL.UGS.RPN.{ENABLED,
RANGE, MODULATOR, NUM_INTERVALS}`` and ``MODEL.UGS.{UM_WEIGHT, UR_WEIGHT, UR_RHO, UR_LEVELS}``.
The grid is one-sided, over ``[0, UGS_RANGE_SCALE * RANGE]`` strides.
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

__all__ = ["add_ugs_fcos_config", "apply_fcos_architecture", "FCOSSchema", "PROJECT", "LEVELS"]

#: model.fcos.levels -> (backbone builder, ResNet stages fed to the FPN, head levels)
LEVELS = DENSE_FPN_LEVELS

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
    add_detector_node(cfg, "FCOS", _FCOS_DEFAULTS)


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


@dataclass
class FCOSSchema:
    """``model.fcos`` of the ``model=fcos_*`` presets (configs/model/fcos_r18_fpn.yaml)."""

    levels: str = MISSING  # p2-p6 | p3-p7 (LEVELS)
    num_convs: int = MISSING
    head_norm: Optional[str] = None  # "" | GN
    center_sampling_radius: float = MISSING
    range_scale: float = MISSING
    score_thresh_test: float = MISSING
    topk_candidates_test: int = MISSING
    nms_thresh_test: float = MISSING
    detections_per_image: int = MISSING


def _finish(typed: DictConfig, d2: CN, num_classes: Optional[int]) -> None:
    """The levels pick the backbone; the classes come from the data; then the class selection.
    (``ugs.rpn.reg_loss`` has no effect: FCOS's regression loss is GIoU; ``ugs.roi.*`` has no stage.)"""
    set_dense_fpn_levels(d2, typed.model.fcos.levels)
    if num_classes is not None:
        d2.MODEL.FCOS.NUM_CLASSES = num_classes
    try:
        apply_fcos_architecture(d2)
    except ValueError as e:  # name the Hydra key
        raise ConfigError(with_hydra_keys(str(e), [("MODEL.FCOS.UGS_RANGE_SCALE", "model.fcos.range_scale")])) from None


PROJECT = register_project(Project(
    name="UGS_FCOS",
    package=__name__.rpartition(".")[0],
    node="fcos",
    schema=FCOSSchema,
    bridge=(
        ("model.fcos.num_convs", "MODEL.FCOS.NUM_CONVS"),
        ("model.fcos.head_norm", "MODEL.FCOS.HEAD_NORM", lambda v: v or ""),
        ("model.fcos.center_sampling_radius", "MODEL.FCOS.CENTER_SAMPLING_RADIUS"),
        ("model.fcos.range_scale", "MODEL.FCOS.UGS_RANGE_SCALE"),
        ("model.fcos.score_thresh_test", "MODEL.FCOS.SCORE_THRESH_TEST"),
        ("model.fcos.topk_candidates_test", "MODEL.FCOS.TOPK_CANDIDATES_TEST"),
        ("model.fcos.nms_thresh_test", "MODEL.FCOS.NMS_THRESH_TEST"),
        ("model.fcos.detections_per_image", "TEST.DETECTIONS_PER_IMAGE"),
        ("model.fcos.levels", "MODEL.FCOS.IN_FEATURES", lambda v: LEVELS[v][2]),
    ),
    checks=(
        ("model.fcos.levels", lambda v: v in LEVELS, " or ".join(LEVELS)),
        ("model.fcos.num_convs", lambda v: v >= 1, "a positive integer"),
    ),
    add_config=add_ugs_fcos_config,
    finish=_finish,
))
