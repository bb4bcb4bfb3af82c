"""Config of UGS rotated Faster R-CNN: its detectron2 keys, its class selection, its Hydra keys.

The R-CNN keys (``model.rpn``, ``model.roi``, ``model.anchors``) and ``ugs.*`` are the core
bridge's; ``model.rotated`` adds the anchor angles, the angle grids' ranges and the rotated
box-transform weights. The class selection is the core's (``apply_ugs_architecture``) mapped to
detectron2's rotated classes; it also sets ``INPUT.ORIENTED_BOXES``, which makes the trainer
read the datasets' oriented boxes (``rbox``) and evaluate with rotated IoU.

The rotated ops (rotated IoU, rotated NMS, ``ROIAlignRotated``) are compiled C++ in detectron2:
on the registry fallback, which has none, the config is refused with one line at the start.
"""
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from detectron2.config import CfgNode as CN
from omegaconf import DictConfig

from ugs_d2.config import ConfigError, float_lists, with_hydra_keys
from ugs_d2.modeling import add_ugs_config, apply_ugs_architecture
from ugs_d2.projects import Project, register_project
from ugs_d2.schema import lists_of_numbers

__all__ = ["add_ugs_rotated_config", "apply_rotated_architecture", "check_oriented_input", "check_rotated_ops",
           "RotatedSchema", "PROJECT", "MISSING_OPS"]

#: the default range of the angle delta's grid: 45 degrees in radians (the angle weight is 1), the
#: largest difference to the nearest of anchor angles 90 degrees apart
DEFAULT_ANGLE_RANGE = math.pi / 4

MISSING_OPS = (
    "oriented boxes need detectron2's compiled rotated ops (rotated IoU, rotated NMS, ROIAlignRotated), "
    "which the registry fallback lacks: install detectron2 from source (make install "
    "D2_SOURCE=/path/to/detectron2, docs/installation.md)"
)

# (class apply_ugs_architecture picks, its rotated counterpart)
_ROTATED_NAMES = {
    "RPN": "RRPN", "UGSRPN": "UGSRRPN",
    "StandardROIHeads": "RROIHeads", "UGSROIHeads": "UGSRROIHeads",
}


def add_ugs_rotated_config(cfg: CN) -> None:
    """Add the core ``MODEL.UGS`` (if absent), the angle grids' ranges
    ``MODEL.UGS.{RPN,ROI}.ANGLE_RANGE`` and ``INPUT.ORIENTED_BOXES``, in place."""
    if "UGS" not in cfg.MODEL:
        add_ugs_config(cfg)
    for stage in ("RPN", "ROI"):
        # a in Eq. 9 for the angle delta (radians x the transform's angle weight)
        cfg.MODEL.UGS[stage].ANGLE_RANGE = DEFAULT_ANGLE_RANGE
    cfg.INPUT.ORIENTED_BOXES = False  # True: the datasets' rbox, rotated mapper and evaluator


def check_rotated_ops() -> None:
    """Raise ``ValueError`` (:data:`MISSING_OPS`) unless detectron2 has its compiled ops."""
    from ugs_d2 import compat

    if not compat.HAS_COMPILED_OPS:
        raise ValueError(MISSING_OPS)


def check_oriented_input(cfg: CN) -> None:
    """Refuse what the oriented data pipeline cannot do yet (``ValueError`` naming the key):
    detectron2 transforms rotated boxes through resize and horizontal flip only, and tiled
    training and inference cut and merge axis-aligned boxes."""
    from ugs_d2.data.mapper import needs_augmenting_mapper

    if cfg.INPUT.RANDOM_FLIP == "vertical":
        raise ValueError("INPUT.RANDOM_FLIP vertical: detectron2 has no vertical flip of rotated boxes "
                         "(use horizontal)")
    if needs_augmenting_mapper(cfg):
        raise ValueError("augment.* (mosaic, crop, rotation) and input=native are not supported with "
                         "oriented boxes yet")
    tiling = cfg.get("TILING")
    if tiling is not None and (tiling.TRAIN.ENABLED or tiling.TEST.ENABLED):
        raise ValueError("tiling.train / tiling.test are not supported with oriented boxes yet (cut the "
                         "images beforehand with ugs-tile dataset, which cuts oriented boxes as polygons)")


def apply_rotated_architecture(cfg: CN) -> CN:
    """The core class selection mapped to detectron2's rotated classes (RRPN / UGSRRPN,
    RROIHeads / UGSRROIHeads), the rotated anchor generator and ROIAlignRotated;
    ``INPUT.ORIENTED_BOXES = True``. ``cfg`` must be mutable.

    Raises:
        ValueError: naming the key, for settings a rotated detector cannot run.
    """
    check_rotated_ops()
    check_oriented_input(cfg)
    for stage in ("RPN", "ROI"):
        if not cfg.MODEL.UGS[stage].ANGLE_RANGE > 0:
            raise ValueError(f"MODEL.UGS.{stage}.ANGLE_RANGE must be > 0, got {cfg.MODEL.UGS[stage].ANGLE_RANGE!r}")
        if not cfg.MODEL.UGS[stage].ENABLED and cfg.MODEL.UGS[stage].REG_LOSS == "giou":
            raise ValueError(f"MODEL.UGS.{stage}.REG_LOSS giou has no rotated version in detectron2")
    for key, weights in (("MODEL.RPN.BBOX_REG_WEIGHTS", cfg.MODEL.RPN.BBOX_REG_WEIGHTS),
                         ("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS)):
        if len(weights) != 5:
            raise ValueError(f"{key} needs 5 numbers (dx, dy, dw, dh, da), got {list(weights)}")
    apply_ugs_architecture(cfg)
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = _ROTATED_NAMES.get(cfg.MODEL.PROPOSAL_GENERATOR.NAME,
                                                           cfg.MODEL.PROPOSAL_GENERATOR.NAME)
    cfg.MODEL.ROI_HEADS.NAME = _ROTATED_NAMES.get(cfg.MODEL.ROI_HEADS.NAME, cfg.MODEL.ROI_HEADS.NAME)
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "RotatedAnchorGenerator"
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignRotated"
    cfg.INPUT.ORIENTED_BOXES = True
    return cfg


@dataclass
class RotatedSchema:
    """``model.rotated`` of the ``model=rotated_*`` presets (configs/model/rotated_r18_fpn.yaml)."""

    anchor_angles: List[Any] = field(default_factory=lambda: [[-60.0, -30.0, 0.0, 30.0, 60.0, 90.0]])
    rpn_angle_range: float = DEFAULT_ANGLE_RANGE  # the RPN's angle-delta grid spans [-a, a]
    roi_angle_range: float = DEFAULT_ANGLE_RANGE  # the box head's
    rpn_bbox_reg_weights: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0, 1.0])
    roi_bbox_reg_weights: List[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0, 1.0])
    # detectron2's rotated RPN cannot clip anchors at the image border (a legacy option)
    boundary_thresh: Optional[int] = -1


_RENAMES = [
    ("MODEL.UGS.RPN.ANGLE_RANGE", "model.rotated.rpn_angle_range"),
    ("MODEL.UGS.ROI.ANGLE_RANGE", "model.rotated.roi_angle_range"),
    ("MODEL.RPN.BBOX_REG_WEIGHTS", "model.rotated.rpn_bbox_reg_weights"),
    ("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", "model.rotated.roi_bbox_reg_weights"),
    ("INPUT.RANDOM_FLIP", "model.input.random_flip"),
]


def _finish(typed: DictConfig, d2: CN, num_classes: Optional[int]) -> None:
    """The class selection (and its checks, named by the Hydra keys)."""
    try:
        apply_rotated_architecture(d2)
    except ValueError as e:
        raise ConfigError(f"model.project UGS_Rotated: {with_hydra_keys(str(e), _RENAMES)}") from None


PROJECT = register_project(Project(
    name="UGS_Rotated",
    package=__name__.rpartition(".")[0],
    node="rotated",
    schema=RotatedSchema,
    bridge=(
        ("model.rotated.anchor_angles", "MODEL.ANCHOR_GENERATOR.ANGLES", float_lists),
        ("model.rotated.rpn_angle_range", "MODEL.UGS.RPN.ANGLE_RANGE"),
        ("model.rotated.roi_angle_range", "MODEL.UGS.ROI.ANGLE_RANGE"),
        ("model.rotated.rpn_bbox_reg_weights", "MODEL.RPN.BBOX_REG_WEIGHTS", tuple),
        ("model.rotated.roi_bbox_reg_weights", "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", tuple),
        ("model.rotated.boundary_thresh", "MODEL.RPN.BOUNDARY_THRESH"),
    ),
    checks=(("model.rotated.anchor_angles", lists_of_numbers, "a list of lists of angles in degrees"),),
    add_config=add_ugs_rotated_config,
    finish=_finish,
))
