"""UGS for FCOS: IN-bin classification of the (l, t, r, b) distances on a one-sided grid, UM, UR.

Builds on ``projects/UGS_RetinaNet`` (its dense-head UGS mixin), as detectron2's FCOS head
builds on RetinaNet's. Importing this package registers ``UGSFCOS`` (META_ARCH_REGISTRY). Use::

    cfg = get_cfg()
    add_ugs_fcos_config(cfg)             # MODEL.FCOS.* and the core MODEL.UGS
    cfg.merge_from_file("projects/UGS_FCOS/configs/ugs_fcos_R_18_FPN.yaml")
    apply_fcos_architecture(cfg)
    model = build_model(cfg)

or through ``ugs-train model=fcos_r18_fpn ugs=full``.
"""
import os
import sys

try:
    import ugs_retinanet  # noqa: F401  (installed, or already on sys.path)
except ImportError:  # run from the repository: the sibling project projects/UGS_RetinaNet
    _PROJECTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.join(_PROJECTS, "UGS_RetinaNet"))

from .config import add_ugs_fcos_config, apply_fcos_architecture, from_hydra  # noqa: E402
from .fcos import UGSFCOS, UGSFCOSHead, fcos_grid  # noqa: E402
from .grid import one_sided_in_grid  # noqa: E402

__all__ = [
    "add_ugs_fcos_config",
    "apply_fcos_architecture",
    "from_hydra",
    "UGSFCOS",
    "UGSFCOSHead",
    "fcos_grid",
    "one_sided_in_grid",
]
