"""Config of UGS Cascade R-CNN: its detectron2 key, its class selection and its Hydra preset keys.

The RPN reads ``MODEL.UGS.RPN`` exactly as in Faster R-CNN; every cascade stage reads
``MODEL.UGS.ROI`` with its grid scaled by ``MODEL.ROI_BOX_CASCADE_HEAD.UGS_RANGE_SCALES``.
"""
from dataclasses import dataclass
from typing import Any, List, Optional

from detectron2.config import CfgNode as CN
from omegaconf import MISSING, DictConfig

from ugs_d2.config import ConfigError, float_lists, with_hydra_keys
from ugs_d2.modeling import add_ugs_config, apply_ugs_architecture
from ugs_d2.projects import Project, register_project
from ugs_d2.schema import lists_of_numbers

from .cascade import cascade_range_scales, cascade_stage_weights

__all__ = ["add_ugs_cascade_config", "apply_cascade_architecture", "CascadeSchema", "PROJECT"]

# (Faster R-CNN class chosen by ugs_d2's apply_ugs_architecture, its cascade counterpart)
_CASCADE_NAMES = {
    # detectron2's CascadeROIHeads with the stage loss weights (UGSCascadeROIHeads is it when
    # MODEL.UGS.ROI is native)
    "StandardROIHeads": "UGSCascadeROIHeads",
    "UGSROIHeads": "UGSCascadeROIHeads",
    "UGSRCNN": "UGSCascadeRCNN",
}


def add_ugs_cascade_config(cfg: CN) -> None:
    """Add the core ``MODEL.UGS`` (if absent) and ``MODEL.ROI_BOX_CASCADE_HEAD.UGS_RANGE_SCALES``."""
    if "UGS" not in cfg.MODEL:
        add_ugs_config(cfg)
    # per stage, the factor on MODEL.UGS.ROI's grid; [] = derived from IOUS and BBOX_REG_WEIGHTS
    # (ugs_cascade.cascade.stage_range_scales: 1, 1.47, 1.54 for detectron2's defaults)
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.UGS_RANGE_SCALES = []
    # per stage, the factor on its losses (MMDetection's stage_loss_weights; detectron2: 1/1/1)
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.UGS_STAGE_WEIGHTS = [1.0, 0.5, 0.25]


def apply_cascade_architecture(cfg: CN) -> CN:
    """Pick the classes like ``ugs_d2.modeling.apply_ugs_architecture``, then their cascade
    versions (``CascadeROIHeads`` / ``UGSCascadeROIHeads``, ``UGSCascadeRCNN`` for UGSRCNN).
    ``cfg`` must be mutable.

    Raises:
        ValueError: naming the key, for settings a cascade cannot run.
    """
    apply_ugs_architecture(cfg)
    if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
        raise ValueError("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG must be true for a cascade")
    ious = list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
    if len(ious) != len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS):
        raise ValueError("MODEL.ROI_BOX_CASCADE_HEAD.IOUS and BBOX_REG_WEIGHTS need one entry per stage")
    if any(len(w) != 4 for w in cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS):
        raise ValueError("MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS needs 4 numbers per stage")
    cascade_range_scales(cfg)  # validates UGS_RANGE_SCALES
    cascade_stage_weights(cfg)  # validates UGS_STAGE_WEIGHTS
    # detectron2 matches stage 1 with ROI_HEADS.IOU_THRESHOLDS and asserts they agree
    cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS = [ious[0]]
    cfg.MODEL.ROI_HEADS.NAME = _CASCADE_NAMES.get(cfg.MODEL.ROI_HEADS.NAME, cfg.MODEL.ROI_HEADS.NAME)
    cfg.MODEL.META_ARCHITECTURE = _CASCADE_NAMES.get(
        cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.META_ARCHITECTURE
    )
    return cfg


@dataclass
class CascadeSchema:
    """``model.cascade`` of the ``model=cascade_*`` presets (configs/model/cascade_r18_fpn.yaml);
    the R-CNN keys (``model.rpn``, ``model.roi``) and ``ugs.*`` are the core bridge's."""

    ious: List[float] = MISSING  # stage k's foreground IoU
    bbox_reg_weights: List[Any] = MISSING  # per stage, 4 numbers (checked by the class selection)
    range_scales: Optional[List[float]] = None  # None: from ious / bbox_reg_weights
    stage_weights: List[float] = MISSING


_RENAMES = [
    ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "model.roi.cls_agnostic_bbox_reg"),
    ("MODEL.ROI_BOX_CASCADE_HEAD.UGS_RANGE_SCALES", "model.cascade.range_scales"),
    ("MODEL.ROI_BOX_CASCADE_HEAD.UGS_STAGE_WEIGHTS", "model.cascade.stage_weights"),
    ("MODEL.ROI_BOX_CASCADE_HEAD.IOUS and BBOX_REG_WEIGHTS", "model.cascade.ious and bbox_reg_weights"),
    ("MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "model.cascade.bbox_reg_weights"),
]


def _finish(typed: DictConfig, d2: CN, num_classes: Optional[int]) -> None:
    """The class selection (and its checks, named by the Hydra keys)."""
    try:
        apply_cascade_architecture(d2)
    except ValueError as e:  # name the Hydra key
        raise ConfigError(with_hydra_keys(str(e), _RENAMES)) from None


PROJECT = register_project(Project(
    name="UGS_Cascade",
    package=__name__.rpartition(".")[0],
    node="cascade",
    schema=CascadeSchema,
    bridge=(
        ("model.cascade.ious", "MODEL.ROI_BOX_CASCADE_HEAD.IOUS"),
        ("model.cascade.bbox_reg_weights", "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", float_lists),
        ("model.cascade.range_scales", "MODEL.ROI_BOX_CASCADE_HEAD.UGS_RANGE_SCALES", lambda v: v or []),
        ("model.cascade.stage_weights", "MODEL.ROI_BOX_CASCADE_HEAD.UGS_STAGE_WEIGHTS"),
    ),
    checks=(("model.cascade.bbox_reg_weights", lists_of_numbers, "a list of lists of numbers (one per stage)"),),
    add_config=add_ugs_cascade_config,
    finish=_finish,
))
