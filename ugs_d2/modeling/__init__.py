"""UGS for detectron2: config keys and the registered modules.

Importing this package registers ``UGSRPNHead`` (RPN_HEAD_REGISTRY), ``UGSRPN``
(PROPOSAL_GENERATOR_REGISTRY), ``UGSROIHeads`` (ROI_HEADS_REGISTRY) and ``UGSRCNN``
(META_ARCH_REGISTRY). Typical use::

    cfg = get_cfg()
    add_ugs_config(cfg)
    cfg.merge_from_file(...)
    apply_ugs_architecture(cfg)   # picks the classes the MODEL.UGS keys need
    model = build_model(cfg)
"""
from .config import add_ugs_config, apply_ugs_architecture, validate_ugs_config
from .meta_arch import UGSRCNN
from .roi_heads import UGSFastRCNNOutputLayers, UGSROIHeads
from .rpn import UGSRPN, UGSRPNHead

__all__ = [
    "add_ugs_config",
    "apply_ugs_architecture",
    "validate_ugs_config",
    "UGSRPNHead",
    "UGSRPN",
    "UGSFastRCNNOutputLayers",
    "UGSROIHeads",
    "UGSRCNN",
]
