"""UGS for FCOS: IN-bin classification of the (l, t, r, b) distances on a one-sided grid, UM, UR.

Builds on the core dense-head UGS mixin (``ugs_d2.modeling.dense``), shared with UGS RetinaNet.
Importing this package registers ``UGSFCOS`` (META_ARCH_REGISTRY). Use::

    cfg = get_cfg()
    add_ugs_fcos_config(cfg)             # MODEL.FCOS.* and the core MODEL.UGS
    cfg.merge_from_file("projects/UGS_FCOS/configs/ugs_fcos_R_18_FPN.yaml")
    apply_fcos_architecture(cfg)
    model = build_model(cfg)

or through ``ugs-train model=fcos_r18_fpn ugs=full``.
"""
from .config import PROJECT, FCOSSchema, add_ugs_fcos_config, apply_fcos_architecture
from .fcos import UGSFCOS, UGSFCOSHead, fcos_grid
from .grid import one_sided_in_grid

__all__ = [
    "add_ugs_fcos_config",
    "apply_fcos_architecture",
    "PROJECT",
    "FCOSSchema",
    "UGSFCOS",
    "UGSFCOSHead",
    "fcos_grid",
    "one_sided_in_grid",
]
