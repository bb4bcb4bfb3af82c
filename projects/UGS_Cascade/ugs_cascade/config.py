"""Config of UGS Cascade R-CNN: its detectron2 key, its class selection and its Hydra preset keys.

The RPN reads ``MODEL.UGS.RPN`` exactly as in Faster R-CNN; every cascade stage reads
``MODEL.UGS.ROI`` with its grid scaled by ``MODEL.ROI_BOX_CASCADE_HEAD.UGS_RANGE_SCALES``.
"""
from typing import Any, Callable, Optional

from detectron2.config import CfgNode as CN
from omegaconf import DictConfig

from ugs_d2.config import ConfigError, value_types, with_hydra_keys
from ugs_d2.modeling import add_ugs_config, apply_ugs_architecture

from .cascade import cascade_range_scales, cascade_stage_weights

__all__ = ["add_ugs_cascade_config", "apply_cascade_architecture", "from_hydra"]

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


def from_hydra(
    cfg: DictConfig, d2: CN, get: Callable[[str, Callable], Any], num_classes: Optional[int]
) -> None:
    """Set the cascade's keys from the ``model=cascade_*`` preset (``ugs_d2.config``'s hook for
    ``model.project: UGS_Cascade``); the R-CNN keys (``model.rpn``, ``model.roi``) and ``ugs.*``
    are already in ``d2``. Reads ``model.cascade.{ious, bbox_reg_weights, range_scales, stage_weights}``.
    """
    vt = value_types
    add_ugs_cascade_config(d2)
    head = d2.MODEL.ROI_BOX_CASCADE_HEAD
    head.IOUS = get("model.cascade.ious", vt.list_of(vt.number))
    head.BBOX_REG_WEIGHTS = get("model.cascade.bbox_reg_weights", vt.list_of(vt.list_of(vt.number)))
    scales = get("model.cascade.range_scales", lambda v: [] if v is None else vt.list_of(vt.number)(v))
    head.UGS_RANGE_SCALES = scales
    head.UGS_STAGE_WEIGHTS = get("model.cascade.stage_weights", vt.list_of(vt.number))
    try:
        apply_cascade_architecture(d2)
    except ValueError as e:  # name the Hydra key
        renames = [
            ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "model.roi.cls_agnostic_bbox_reg"),
            ("MODEL.ROI_BOX_CASCADE_HEAD.UGS_RANGE_SCALES", "model.cascade.range_scales"),
            ("MODEL.ROI_BOX_CASCADE_HEAD.UGS_STAGE_WEIGHTS", "model.cascade.stage_weights"),
            ("MODEL.ROI_BOX_CASCADE_HEAD.IOUS and BBOX_REG_WEIGHTS", "model.cascade.ious and bbox_reg_weights"),
            ("MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "model.cascade.bbox_reg_weights"),
        ]
        raise ConfigError(with_hydra_keys(str(e), renames)) from None
