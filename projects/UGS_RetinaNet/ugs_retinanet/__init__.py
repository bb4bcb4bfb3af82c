"""UGS for RetinaNet: IN-bin classification of the anchor deltas, UM, and UR on the FPN levels.

Importing this package registers ``UGSRetinaNet`` (META_ARCH_REGISTRY). Use with detectron2::

    cfg = get_cfg()
    add_ugs_retinanet_config(cfg)        # the core MODEL.UGS keys
    cfg.merge_from_file("projects/UGS_RetinaNet/configs/ugs_retinanet_R_18_FPN.yaml")
    apply_retinanet_architecture(cfg)    # UGSRetinaNet; checks the MODEL.UGS keys
    model = build_model(cfg)

or through ``ugs-train model=retinanet_r18_fpn ugs=full`` (``PROJECT`` registers its Hydra keys with the bridge).
"""
from .config import PROJECT, RetinaNetSchema, add_ugs_retinanet_config, apply_retinanet_architecture
from .retinanet import UGSRetinaNet, UGSRetinaNetHead

__all__ = [
    "add_ugs_retinanet_config",
    "apply_retinanet_architecture",
    "PROJECT",
    "RetinaNetSchema",
    "UGSRetinaNet",
    "UGSRetinaNetHead",
]
