"""UGS for rotated Faster R-CNN (oriented boxes, SODA-A): five deltas over IN bins, the angle on
its own grid.

Importing this package registers ``UGSRRPN`` (PROPOSAL_GENERATOR_REGISTRY) and ``UGSRROIHeads``
(ROI_HEADS_REGISTRY). Needs detectron2 built from source (its rotated ops are compiled C++).
Use with detectron2::

    cfg = get_cfg()
    add_ugs_rotated_config(cfg)            # MODEL.UGS, the angle grids' ranges
    cfg.merge_from_file("projects/UGS_Rotated/configs/ugs_rotated_R_18_FPN.yaml")
    apply_rotated_architecture(cfg)        # RRPN/UGSRRPN, RROIHeads/UGSRROIHeads, ROIAlignRotated
    model = build_model(cfg)

or through ``ugs-train model=rotated_r18_fpn ugs=full dataset=synth_oriented``.
"""
from .config import (
    MISSING_OPS,
    PROJECT,
    RotatedSchema,
    add_ugs_rotated_config,
    apply_rotated_architecture,
    check_rotated_ops,
)
from .rotated import UGSRRPN, UGSRotatedFastRCNNOutputLayers, UGSRROIHeads, angle_grid

__all__ = [
    "add_ugs_rotated_config",
    "apply_rotated_architecture",
    "check_rotated_ops",
    "MISSING_OPS",
    "PROJECT",
    "RotatedSchema",
    "UGSRRPN",
    "UGSRotatedFastRCNNOutputLayers",
    "UGSRROIHeads",
    "angle_grid",
]
