"""Detectron2 config keys of UGS (``MODEL.UGS.*``), their validation, and the class selection.

``add_ugs_config(cfg)`` adds the keys with defaults that switch UGS off (the detectron2
baseline). ``apply_ugs_architecture(cfg)`` then picks the registered classes that the chosen
keys need, so that a config never names them by hand.
"""
import math

from detectron2.config import CfgNode as CN
from torch import Tensor

from ..bins import GRID_FORMS, in_grid
from ..losses import UR_NORMS
from .refinement import UR_IMPLS, UR_LOSSES
from .stage import REDUCTIONS, BinLocalization

__all__ = [
    "add_ugs_config",
    "validate_ugs_config",
    "apply_ugs_architecture",
    "stage_mode",
    "stage_grid",
    "build_localization",
    "StageFromConfig",
    "params_per_coordinate",
    "REG_LOSSES",
    "UR_LEVEL_NAMES",
    "DENSE_FPN_LEVELS",
    "set_dense_fpn_levels",
    "add_detector_node",
]

#: ``model.<detector>.levels`` of the dense detectors (RetinaNet, FCOS, GFL) -> (backbone builder,
#: ResNet stages fed to the FPN, the head's levels)
DENSE_FPN_LEVELS = {
    # the Faster R-CNN presets' FPN: P2 (stride 4) keeps objects of a few pixels on a feature map
    "p2-p6": ("build_resnet_fpn_backbone", ["res2", "res3", "res4", "res5"], ["p2", "p3", "p4", "p5", "p6"]),
    # RetinaNet's own: P3-P5 from the FPN, P6-P7 strided convs on res5
    "p3-p7": ("build_retinanet_resnet_fpn_backbone", ["res3", "res4", "res5"], ["p3", "p4", "p5", "p6", "p7"]),
}


def add_detector_node(cfg: CN, node: str, defaults: dict) -> None:
    """Add the core ``MODEL.UGS`` (if absent) and ``MODEL.<node>.*`` with ``defaults`` for the
    keys not already there, in place: the config of a detector detectron2's yacs config lacks."""
    if "UGS" not in cfg.MODEL:
        add_ugs_config(cfg)
    if node not in cfg.MODEL:
        cfg.MODEL[node] = CN()
    for key, value in defaults.items():
        if key not in cfg.MODEL[node]:
            cfg.MODEL[node][key] = value


def set_dense_fpn_levels(cfg: CN, levels: str) -> list:
    """Set the backbone builder and the FPN's inputs for ``levels`` (a key of
    ``DENSE_FPN_LEVELS``) in ``cfg``; return the head's levels (its ``IN_FEATURES``)."""
    builder, stages, head_levels = DENSE_FPN_LEVELS[levels]
    cfg.MODEL.BACKBONE.NAME = builder
    cfg.MODEL.RESNETS.OUT_FEATURES = list(stages)
    cfg.MODEL.FPN.IN_FEATURES = list(stages)
    return list(head_levels)

#: localization losses of a stage whose bins are off: detectron2's own two, and He et al.'s KL
REG_LOSSES = ("smooth_l1", "giou", "kl")
#: FPN levels UR may perturb (detectron2's FPN output names; p7 exists in RetinaNet/FCOS's P3-P7)
UR_LEVEL_NAMES = ("p2", "p3", "p4", "p5", "p6", "p7")


def add_ugs_config(cfg: CN) -> None:
    """Add ``MODEL.UGS.*`` to a detectron2 config, in place. Defaults = plain detectron2."""
    cfg.MODEL.UGS = CN()
    for stage, value_range, num_intervals in (("RPN", 2.0, 10), ("ROI", 5.0, 5)):
        node = CN()
        # True: classification over IN bins (Eqs. 8-10) replaces delta regression in this stage
        node.ENABLED = False
        # used when ENABLED is False: detectron2's "smooth_l1" / "giou", or He et al.'s "kl"
        node.REG_LOSS = "smooth_l1"
        node.RANGE = value_range  # a in Eq. 9: the grid spans [-a, a] (in encoded-delta units)
        node.MODULATOR = 1.0  # b in Eq. 9: larger packs bins nearer 0; 0 = uniform grid
        node.NUM_INTERVALS = num_intervals  # n in Eq. 9: n + 1 bins per coordinate
        # reading of Eq. 9: "coupled" (b multiplies the unnormalised u, as printed) or
        # "normalized" (b acts on u / a, so RANGE and MODULATOR are independent); ugs_d2.bins
        node.GRID_FORM = "coupled"
        cfg.MODEL.UGS[stage] = node
    cfg.MODEL.UGS.UM_WEIGHT = 0.0  # weight of the entropy (UM) loss, Eq. 12 (paper best: 0.5)
    cfg.MODEL.UGS.UR_WEIGHT = 0.0  # gamma of the refinement (UR) loss, Eq. 14; 0 disables UR
    cfg.MODEL.UGS.UR_RHO = 0.5  # rho of Eq. 15 (its unit depends on UR_NORM)
    cfg.MODEL.UGS.UR_LEVELS = ["p2", "p3", "p4", "p5", "p6"]  # FPN levels that UR perturbs
    # scope of Eq. 15's norm (ugs_d2.losses.adversarial_perturbation): "relative" = rho times
    # ||P_l|| per image and level; "image" = rho absolute (inert against FPN feature norms);
    # "location" = rho times each position's own feature norm
    cfg.MODEL.UGS.UR_NORM = "relative"
    cfg.MODEL.UGS.UR_LOSSES = "all"  # Eq. 14 recomputes "all" detection losses or only "loc"
    cfg.MODEL.UGS.UR_IMPL = "lean"  # "lean" reuses pass 1's matching and ROIAlign; "plain" reruns
    # control of Table 6: every detection loss times this (1 + gamma with UR off separates UR's
    # perturbation from its re-weighting); 1 = off
    cfg.MODEL.UGS.DET_LOSS_SCALE = 1.0
    # dense heads (RetinaNet, FCOS): GFL-style balance of the bin terms. GFL weights its DFL
    # 0.25 and averages it over the 4 sides; summed over 4 coordinates, a bin CE with K = 11
    # starts at 9.6 per positive against a focal loss of ~1.1 and stalls the classifier.
    cfg.MODEL.UGS.DENSE = CN()
    cfg.MODEL.UGS.DENSE.LOC_WEIGHT = 0.25  # weight of the bin CE (and factor of UM)
    cfg.MODEL.UGS.DENSE.COORD_REDUCTION = "mean"  # "mean" (GFL) or "sum" over the 4 coordinates


def stage_mode(cfg: CN, stage: str) -> str:
    """How a stage ("RPN" or "ROI") localizes: "bins", "kl", or "native" (detectron2's own)."""
    node = cfg.MODEL.UGS[stage]
    if node.ENABLED:
        return "bins"
    return "kl" if node.REG_LOSS == "kl" else "native"


def params_per_coordinate(cfg: CN, stage: str) -> int:
    """P, the number of values a stage predicts per box coordinate: n+1 (bins), 2 (kl), 1."""
    mode = stage_mode(cfg, stage)
    if mode == "bins":
        return cfg.MODEL.UGS[stage].NUM_INTERVALS + 1
    return 2 if mode == "kl" else 1


def stage_grid(cfg: CN, stage: str) -> Tensor:
    """The IN grid (Eq. 9) of a stage ("RPN" or "ROI") from its RANGE, MODULATOR,
    NUM_INTERVALS and GRID_FORM."""
    node = cfg.MODEL.UGS[stage]
    return in_grid(node.RANGE, node.MODULATOR, node.NUM_INTERVALS, form=node.GRID_FORM)


def build_localization(cfg: CN, stage: str, *, dense: bool = False, grid: Tensor = None, **keys) -> BinLocalization:
    """The :class:`~.stage.BinLocalization` of a stage ("RPN" or "ROI").

    Args:
        dense: a dense head (RetinaNet, FCOS): loss weight and coordinate reduction from
            ``MODEL.UGS.DENSE``; otherwise detectron2's R-CNN convention (sum, weight 1).
        grid: overrides the stage's grid (FCOS's one-sided grid, a Cascade stage's scaled one).
        keys: ``um_key`` / ``entropy_key`` of the loss dict.
    """
    mode = stage_mode(cfg, stage)
    if mode == "bins" and grid is None:
        grid = stage_grid(cfg, stage)
    balance = {}
    if dense:
        balance = dict(
            loc_weight=cfg.MODEL.UGS.DENSE.LOC_WEIGHT,
            coord_reduction=cfg.MODEL.UGS.DENSE.COORD_REDUCTION,
        )
    return BinLocalization(
        mode, grid if mode == "bins" else None, um_weight=cfg.MODEL.UGS.UM_WEIGHT, **balance, **keys
    )


class StageFromConfig:
    """Mixin, before a detectron2 module, for the module of one UGS stage (UGSRPN: ``RPN``,
    UGSFastRCNNOutputLayers: ``ROI``): its ``from_config`` checks MODEL.UGS and adds the
    stage's ``localization`` to detectron2's arguments; ``mode`` / ``params_per_coord`` read it.

    Subclasses set ``UGS_STAGE``, and ``UM_KEY`` / ``ENTROPY_KEY`` (their loss-dict keys).
    """

    UGS_STAGE = ""
    UM_KEY = ""
    ENTROPY_KEY = ""

    @classmethod
    def from_config(cls, cfg, input_shape):
        validate_ugs_config(cfg)
        ret = super().from_config(cfg, input_shape)
        ret["localization"] = build_localization(
            cfg, cls.UGS_STAGE, um_key=cls.UM_KEY, entropy_key=cls.ENTROPY_KEY
        )
        return ret

    @property
    def mode(self) -> str:
        return self.localization.mode

    @property
    def params_per_coord(self) -> int:
        return self.localization.params_per_coord


def validate_ugs_config(cfg: CN) -> None:
    """Raise ``ValueError`` with a one-line message naming the first offending key."""
    ugs = cfg.MODEL.UGS
    for stage in ("RPN", "ROI"):
        node, key = ugs[stage], f"MODEL.UGS.{stage}"
        _check(node.RANGE > 0, f"{key}.RANGE must be > 0, got {node.RANGE!r}")
        _check(
            math.isfinite(node.MODULATOR),
            f"{key}.MODULATOR must be a finite number, got {node.MODULATOR!r}",
        )
        _check(
            isinstance(node.NUM_INTERVALS, int) and node.NUM_INTERVALS >= 1,
            f"{key}.NUM_INTERVALS must be an integer >= 1, got {node.NUM_INTERVALS!r}",
        )
        _check(
            node.REG_LOSS in REG_LOSSES,
            f"{key}.REG_LOSS must be one of {', '.join(REG_LOSSES)}, got {node.REG_LOSS!r}",
        )
        _check(
            node.GRID_FORM in GRID_FORMS,
            f"{key}.GRID_FORM must be one of {', '.join(GRID_FORMS)}, got {node.GRID_FORM!r}",
        )
    for name, allowed in (
        ("UR_NORM", UR_NORMS),
        ("UR_LOSSES", UR_LOSSES),
        ("UR_IMPL", UR_IMPLS),
        ("DENSE.COORD_REDUCTION", REDUCTIONS),
    ):
        value = ugs.DENSE.COORD_REDUCTION if name.startswith("DENSE") else ugs[name]
        _check(value in allowed, f"MODEL.UGS.{name} must be one of {', '.join(allowed)}, got {value!r}")
    for name in ("DET_LOSS_SCALE", "DENSE.LOC_WEIGHT"):
        value = ugs.DENSE.LOC_WEIGHT if name.startswith("DENSE") else ugs[name]
        _check(
            math.isfinite(value) and value > 0, f"MODEL.UGS.{name} must be a number > 0, got {value!r}"
        )
    for name in ("UM_WEIGHT", "UR_WEIGHT", "UR_RHO"):
        value = ugs[name]
        _check(value >= 0, f"MODEL.UGS.{name} must be >= 0, got {value!r}")
    for level in ugs.UR_LEVELS:
        _check(
            level in UR_LEVEL_NAMES,
            f"MODEL.UGS.UR_LEVELS has unknown level {level!r}; known: {', '.join(UR_LEVEL_NAMES)}",
        )
    # UM and UR act on the bin distributions: without bins they would silently do nothing.
    has_bins = ugs.RPN.ENABLED or ugs.ROI.ENABLED
    for name in ("UM_WEIGHT", "UR_WEIGHT"):
        _check(
            ugs[name] == 0 or has_bins,
            f"MODEL.UGS.{name} > 0 needs MODEL.UGS.RPN.ENABLED or MODEL.UGS.ROI.ENABLED",
        )
    _check(
        ugs.UR_WEIGHT == 0 or len(ugs.UR_LEVELS) > 0,
        "MODEL.UGS.UR_LEVELS must not be empty when MODEL.UGS.UR_WEIGHT > 0",
    )


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# (detectron2's class, UGS class) per config key that names a class
_RPN_HEAD = ("StandardRPNHead", "UGSRPNHead")
_PROPOSAL_GENERATOR = ("RPN", "UGSRPN")
_ROI_HEADS = ("StandardROIHeads", "UGSROIHeads")
_META_ARCH = ("GeneralizedRCNN", "UGSRCNN")


def apply_ugs_architecture(cfg: CN) -> CN:
    """Select the registered classes that the ``MODEL.UGS`` keys need; ``cfg`` must be mutable.

    * a stage with bins or the KL loss -> that stage's UGS class (``UGSRPN`` + ``UGSRPNHead``,
      ``UGSROIHeads``);
    * a stage with "smooth_l1"/"giou" -> detectron2's class, with the loss mirrored into
      detectron2's ``MODEL.RPN.BBOX_REG_LOSS_TYPE`` / ``MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE``;
    * UR on -> the UGS RPN and ROI heads even for a native stage (the lean UR pass reuses
      their first-pass anchor labels and pooled features);
    * any UGS class, UR or a ``DET_LOSS_SCALE`` != 1 -> ``UGSRCNN``, else ``GeneralizedRCNN``.

    A key naming some other class (e.g. ``CascadeROIHeads``) is left alone when its stage needs
    no UGS class; only names this function owns are switched back to detectron2's.

    Returns:
        ``cfg``, for chaining.
    """
    validate_ugs_config(cfg)
    ugs = cfg.MODEL.UGS
    # with UR on, both UGS classes are used even for a native stage: they keep the first pass's
    # anchor labels and pooled features for the lean UR pass (MODEL.UGS.UR_IMPL)
    ur = ugs.UR_WEIGHT > 0
    rpn_custom = stage_mode(cfg, "RPN") != "native" or ur
    roi_custom = stage_mode(cfg, "ROI") != "native" or ur
    if stage_mode(cfg, "RPN") == "native":
        cfg.MODEL.RPN.BBOX_REG_LOSS_TYPE = ugs.RPN.REG_LOSS
    if stage_mode(cfg, "ROI") == "native":
        cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = ugs.ROI.REG_LOSS
    cfg.MODEL.RPN.HEAD_NAME = _pick(cfg.MODEL.RPN.HEAD_NAME, _RPN_HEAD, rpn_custom)
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = _pick(
        cfg.MODEL.PROPOSAL_GENERATOR.NAME, _PROPOSAL_GENERATOR, rpn_custom
    )
    cfg.MODEL.ROI_HEADS.NAME = _pick(cfg.MODEL.ROI_HEADS.NAME, _ROI_HEADS, roi_custom)
    cfg.MODEL.META_ARCHITECTURE = _pick(
        cfg.MODEL.META_ARCHITECTURE, _META_ARCH, rpn_custom or roi_custom or ugs.DET_LOSS_SCALE != 1
    )
    return cfg


def _pick(current: str, names: tuple, use_ugs: bool) -> str:
    detectron2_name, ugs_name = names
    if use_ugs:
        return ugs_name
    return detectron2_name if current == ugs_name else current
