"""UGS for Cascade R-CNN: each cascade stage classifies its deltas over its own IN grid.

Importing this package registers ``UGSCascadeROIHeads`` (ROI_HEADS_REGISTRY) and
``UGSCascadeRCNN`` (META_ARCH_REGISTRY). Use with detectron2::

    cfg = get_cfg()
    add_ugs_cascade_config(cfg)          # MODEL.UGS and the per-stage range scales
    cfg.merge_from_file("projects/UGS_Cascade/configs/ugs_cascade_R_18_FPN.yaml")
    apply_cascade_architecture(cfg)      # (UGS)CascadeROIHeads, GeneralizedRCNN/UGSCascadeRCNN
    model = build_model(cfg)

or through ``ugs-train model=cascade_r18_fpn ugs=full``.
"""
from .cascade import (
    UGSCascadeRCNN,
    UGSCascadeROIHeads,
    cascade_range_scales,
    max_encoded_delta,
    stage_range_scales,
)
from .config import PROJECT, CascadeSchema, add_ugs_cascade_config, apply_cascade_architecture

__all__ = [
    "add_ugs_cascade_config",
    "apply_cascade_architecture",
    "PROJECT",
    "CascadeSchema",
    "UGSCascadeROIHeads",
    "UGSCascadeRCNN",
    "max_encoded_delta",
    "stage_range_scales",
    "cascade_range_scales",
]
