"""UGS for rotated Faster R-CNN (detectron2's ``RRPN`` + ``RROIHeads``): five deltas over IN bins.

detectron2's rotated boxes are ``XYWHA`` (centre, size, angle in degrees counter-clockwise) and
``Box2BoxTransformRotated`` encodes five deltas ``dx, dy, dw, dh, da``, with ``da`` the angle
difference normalised to [-180, 180) degrees, in radians, times the angle weight. The first four
are the axis-aligned deltas and use the stage's grid; ``da`` gets its own grid,
``in_grid(MODEL.UGS.<stage>.ANGLE_RANGE, MODULATOR, NUM_INTERVALS)`` (same density and number of
bins, another range: :class:`ugs_d2.modeling.stage.BinLocalization`'s angle grid).

The classes are the axis-aligned UGS ones stacked on detectron2's rotated ones, each overriding
only what differs: the localization (with the angle grid) and, for the RPN, the rotated NMS.
"""
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator.rrpn import RRPN, find_top_rrpn_proposals
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads.rotated_fast_rcnn import RotatedFastRCNNOutputLayers, RROIHeads

from ugs_d2.bins import in_grid
from ugs_d2.modeling import UGSRPN, UGSFastRCNNOutputLayers, UGSROIHeads
from ugs_d2.modeling.config import build_localization, stage_mode

__all__ = ["UGSRRPN", "UGSRotatedFastRCNNOutputLayers", "UGSRROIHeads", "angle_grid"]


def angle_grid(cfg, stage: str):
    """The IN grid of the angle delta of a stage ("RPN" or "ROI"): ``ANGLE_RANGE`` with the
    stage's modulator, number of intervals and grid form; None unless the stage has bins."""
    if stage_mode(cfg, stage) != "bins":
        return None
    node = cfg.MODEL.UGS[stage]
    return in_grid(node.ANGLE_RANGE, node.MODULATOR, node.NUM_INTERVALS, form=node.GRID_FORM)


def _rotated_localization(cls, cfg):
    return build_localization(cfg, cls.UGS_STAGE, um_key=cls.UM_KEY, entropy_key=cls.ENTROPY_KEY,
                              angle_grid=angle_grid(cfg, cls.UGS_STAGE))


@PROPOSAL_GENERATOR_REGISTRY.register()
class UGSRRPN(UGSRPN, RRPN):
    """detectron2's RRPN (rotated anchor matching, rotated NMS) with UGS's localization."""

    find_top_proposals = staticmethod(find_top_rrpn_proposals)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)  # RRPN's Box2BoxTransformRotated
        ret["localization"] = _rotated_localization(cls, cfg)
        return ret


class UGSRotatedFastRCNNOutputLayers(UGSFastRCNNOutputLayers, RotatedFastRCNNOutputLayers):
    """RotatedFastRCNNOutputLayers (rotated transform, rotated NMS) with UGS's box branch."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["localization"] = _rotated_localization(cls, cfg)
        return ret


@ROI_HEADS_REGISTRY.register()
class UGSRROIHeads(UGSROIHeads, RROIHeads):
    """RROIHeads (ROIAlignRotated, rotated matching) whose predictor is the UGS rotated one."""

    BOX_PREDICTOR = UGSRotatedFastRCNNOutputLayers
