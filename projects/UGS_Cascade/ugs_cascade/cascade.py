"""Cascade R-CNN with UGS: every cascade stage classifies its deltas over its own IN grid.

Each stage ``s`` encodes deltas with its own ``Box2BoxTransform`` weights ((10, 10, 5, 5),
(20, 20, 10, 10), (30, 30, 15, 15) by default) and trains on proposals matched at a higher IoU,
so its encoded targets span a different interval. Stage ``s`` therefore uses the core grid of
``MODEL.UGS.ROI`` (Eq. 9) times a range scale ``c_s``::

    grid_s = c_s * in_grid(RANGE, MODULATOR, NUM_INTERVALS)

(the same shape, ``b * a`` unchanged, in the stage's units). By default ``c_s`` is
:func:`stage_range_scales`: the largest encoded delta a proposal that passes the stage's IoU
threshold can need, relative to the first stage's (1, 1.47, 1.54 for the defaults). The box
predictor of every stage is the core :class:`~ugs_d2.modeling.roi_heads.UGSFastRCNNOutputLayers`
(bin cross-entropy, expectation decoding, UM), built with the stage's transform and grid.
UR (:class:`UGSCascadeRCNN`) recomputes the RPN's and all stages' losses on perturbed features.
"""
import math
from typing import List, Sequence

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads
from detectron2.utils.events import EventStorage, get_event_storage

from ugs_d2.bins import in_grid
from ugs_d2.modeling import UGSRCNN
from ugs_d2.modeling.meta_arch import ENTROPY_KEYS
from ugs_d2.modeling.roi_heads import ENTROPY_KEY as ROI_ENTROPY_KEY
from ugs_d2.modeling.roi_heads import UGSFastRCNNOutputLayers

__all__ = [
    "max_encoded_delta",
    "stage_range_scales",
    "cascade_range_scales",
    "UGSCascadeROIHeads",
    "UGSCascadeRCNN",
]


def max_encoded_delta(iou_threshold: float, weights: Sequence[float]) -> float:
    """The largest encoded delta a proposal with IoU >= ``t`` to its GT box can need, moving
    one coordinate at a time (``Box2BoxTransform`` with ``weights = (wx, wy, ww, wh)``).

    * shift by ``d`` of a box of width ``w``: IoU = (w - d) / (w + d), so
      ``d / w <= (1 - t) / (1 + t)`` and ``|dx| <= wx * (1 - t) / (1 + t)``;
    * scale by ``r``: IoU = 1 / r, so ``|dw| = ww * log(r) <= ww * log(1 / t)``.

    Returns:
        ``max(max(wx, wy) * (1 - t) / (1 + t), max(ww, wh) * log(1 / t))``.
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"need an IoU threshold in (0, 1], got {iou_threshold}")
    wx, wy, ww, wh = weights
    shift = max(wx, wy) * (1 - iou_threshold) / (1 + iou_threshold)
    scale = max(ww, wh) * math.log(1 / iou_threshold)
    return max(shift, scale)


def stage_range_scales(ious: Sequence[float], weights: Sequence[Sequence[float]]) -> List[float]:
    """Per stage, :func:`max_encoded_delta` relative to the first stage's (so the first is 1
    and MODEL.UGS.ROI.RANGE keeps its Faster R-CNN meaning there)."""
    if len(ious) != len(weights) or not ious:
        raise ValueError(f"need one IoU per stage's weights, got {len(ious)} and {len(weights)}")
    first = max_encoded_delta(ious[0], weights[0])
    return [max_encoded_delta(t, w) / first for t, w in zip(ious, weights)]


def cascade_range_scales(cfg) -> List[float]:
    """MODEL.ROI_BOX_CASCADE_HEAD.UGS_RANGE_SCALES, or :func:`stage_range_scales` when empty."""
    head = cfg.MODEL.ROI_BOX_CASCADE_HEAD
    scales = list(head.UGS_RANGE_SCALES)
    if not scales:
        return stage_range_scales(head.IOUS, head.BBOX_REG_WEIGHTS)
    if len(scales) != len(head.IOUS) or min(scales) <= 0:
        raise ValueError(
            f"MODEL.ROI_BOX_CASCADE_HEAD.UGS_RANGE_SCALES must be empty or {len(head.IOUS)} "
            f"numbers > 0, got {scales}"
        )
    return scales


@ROI_HEADS_REGISTRY.register()
class UGSCascadeROIHeads(CascadeROIHeads):
    """CascadeROIHeads whose stage predictors are :class:`UGSFastRCNNOutputLayers`.

    In training, the per-stage UR entropies (``ugs_entropy_roi_stage<k>``) are summed into the
    core's ``ugs_entropy_roi`` key, which :class:`UGSCascadeRCNN` (via ``UGSRCNN``) consumes.
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        node = cfg.MODEL.UGS.ROI
        weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        predictors = []
        for head, stage_weights, scale in zip(ret["box_heads"], weights, cascade_range_scales(cfg)):
            kwargs = UGSFastRCNNOutputLayers.from_config(cfg, head.output_shape)
            kwargs["box2box_transform"] = Box2BoxTransform(weights=stage_weights)
            if kwargs["mode"] == "bins":
                kwargs["grid"] = scale * in_grid(node.RANGE, node.MODULATOR, node.NUM_INTERVALS)
            predictors.append(UGSFastRCNNOutputLayers(**kwargs))
        ret["box_predictors"] = predictors
        return ret

    def _forward_box(self, features, proposals, targets=None):
        out = super()._forward_box(features, proposals, targets)
        if not self.training:
            return out
        stage_entropies = [k for k in out if k.startswith(ROI_ENTROPY_KEY + "_stage")]
        if stage_entropies:
            out[ROI_ENTROPY_KEY] = sum(out.pop(k) for k in stage_entropies)
        return out


@META_ARCH_REGISTRY.register()
class UGSCascadeRCNN(UGSRCNN):
    """UGSRCNN (UR, Eqs. 14-15) for a cascade: every stage returns its entropy when UR is on,
    and the refinement pass gives the stages the ground truth they re-match against."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for predictor in getattr(self.roi_heads, "box_predictor", []):
            if hasattr(predictor, "return_entropy"):
                predictor.return_entropy = self.ur_weight > 0

    def refinement_losses(self, images, features, gt_instances, sampled_proposals):
        """The RPN's and every stage's detection losses on (perturbed) ``features``.

        Stage 1 reuses the first pass's sampled proposals; stages 2.. match the boxes the
        previous stage predicts on ``features`` against ``gt_instances``, as in training.
        Statistics go to a private EventStorage; UM terms and entropies are left out.
        """
        with EventStorage(get_event_storage().iter):
            losses = {}
            if self.proposal_generator is not None:
                losses.update(self.proposal_generator(images, features, gt_instances)[1])
            losses.update(self.roi_heads._forward_box(features, sampled_proposals, gt_instances))
        return {
            k: v for k, v in losses.items() if not k.startswith("loss_um") and k not in ENTROPY_KEYS
        }
