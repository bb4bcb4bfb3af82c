"""GFL V1 in detectron2 (ATSS, QFL, DFL, GIoU, integral decode), with UGS: the side-distance
distributions on the one-sided IN grid, UM, UR.

Builds on the core dense-head UGS mixin (``ugs_d2.modeling.dense``), shared with UGS RetinaNet
and UGS FCOS. Importing this package registers ``UGSGFL`` (META_ARCH_REGISTRY). Use::

    cfg = get_cfg()
    add_ugs_gfl_config(cfg)              # MODEL.GFL.* and the core MODEL.UGS
    cfg.merge_from_file("projects/UGS_GFL/configs/ugs_gfl_R_18_FPN.yaml")
    apply_gfl_architecture(cfg)
    model = build_model(cfg)

or through ``ugs-train model=gfl_r18_fpn ugs=off|full``.
"""
from .atss import atss_assign, location_boxes
from .config import PROJECT, GFLSchema, add_ugs_gfl_config, apply_gfl_architecture
from .gfl import UGSGFL, GFLHead, build_gfl_localization, gfl_grid
from .losses import distribution_focal_loss, quality_focal_loss

__all__ = [
    "add_ugs_gfl_config",
    "apply_gfl_architecture",
    "PROJECT",
    "GFLSchema",
    "atss_assign",
    "location_boxes",
    "GFLHead",
    "UGSGFL",
    "build_gfl_localization",
    "gfl_grid",
    "distribution_focal_loss",
    "quality_focal_loss",
]
