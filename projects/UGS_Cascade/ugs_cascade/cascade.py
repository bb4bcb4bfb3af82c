"""Cascade R-CNN with UGS: every cascade stage classifies its deltas over its own IN grid.

Each stage ``s`` encodes deltas with its own ``Box2BoxTransform`` weights ((10, 10, 5, 5),
(20, 20, 10, 10), (30, 30, 15, 15) by default) and trains on proposals matched at a higher IoU,
so its encoded targets span a different interval. Stage ``s`` therefore uses the core grid of
``MODEL.UGS.ROI`` (Eq. 9) times a range scale ``c_s``::

    grid_s = c_s * in_grid(RANGE, MODULATOR, NUM_INTERVALS)

(the same shape, in the stage's units). By default ``c_s`` is :func:`stage_range_scales`: the
largest encoded delta a proposal that passes the stage's IoU threshold can need, relative to
the first stage's (1, 1.47, 1.54 for the defaults). The box predictor of every stage is the core
:class:`~ugs_d2.modeling.roi_heads.UGSFastRCNNOutputLayers` (bin cross-entropy, expectation
decoding, UM), built with the stage's transform and grid.

Stage ``s``'s losses are weighted by ``MODEL.ROI_BOX_CASCADE_HEAD.UGS_STAGE_WEIGHTS`` (default
1 / 0.5 / 0.25, MMDetection's ``stage_loss_weights``, for the baseline and UGS alike): with
1 / 1 / 1 three stages of bin CE + UM outweigh the RPN and the classifier.
UR (:class:`UGSCascadeRCNN`) recomputes the RPN's and all stages' losses on perturbed features.
"""
import math
import re
from typing import List, Sequence

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads

from ugs_d2.compat import forward_box
from ugs_d2.modeling import UGSRCNN
from ugs_d2.modeling.config import build_localization, stage_grid, stage_mode
from ugs_d2.modeling.roi_heads import ENTROPY_KEY as ROI_ENTROPY_KEY
from ugs_d2.modeling.roi_heads import UGSFastRCNNOutputLayers
from ugs_d2.modeling.stage import ENTROPY_PREFIX

__all__ = [
    "max_encoded_delta",
    "stage_range_scales",
    "cascade_range_scales",
    "cascade_stage_weights",
    "weight_stage_losses",
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


def cascade_stage_weights(cfg) -> List[float]:
    """MODEL.ROI_BOX_CASCADE_HEAD.UGS_STAGE_WEIGHTS, one weight > 0 per stage."""
    head = cfg.MODEL.ROI_BOX_CASCADE_HEAD
    weights = list(head.UGS_STAGE_WEIGHTS)
    if len(weights) != len(head.IOUS) or min(weights) <= 0:
        raise ValueError(
            f"MODEL.ROI_BOX_CASCADE_HEAD.UGS_STAGE_WEIGHTS must be {len(head.IOUS)} numbers > 0, "
            f"got {weights}"
        )
    return weights


_STAGE_KEY = re.compile(r"_stage(\d+)$")


def weight_stage_losses(losses: dict, weights: Sequence[float]) -> dict:
    """Multiply each ``<loss>_stage<k>`` by ``weights[k]``, in place (UR's entropy side outputs
    stay unweighted); returns ``losses``."""
    for key in list(losses):
        match = _STAGE_KEY.search(key)
        if match and not key.startswith(ENTROPY_PREFIX):
            losses[key] = losses[key] * weights[int(match.group(1))]
    return losses


@ROI_HEADS_REGISTRY.register()
class UGSCascadeROIHeads(CascadeROIHeads):
    """CascadeROIHeads whose stage predictors are :class:`UGSFastRCNNOutputLayers`, with the
    stage loss weights of MODEL.ROI_BOX_CASCADE_HEAD.UGS_STAGE_WEIGHTS (also for the baseline).

    In training, each stage emits its UR entropy as ``ugs_entropy_roi_stage<k>``; UR sums them
    with the RPN's (``ugs_d2.modeling.refinement.pop_uncertainty``).
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        bins = stage_mode(cfg, "ROI") == "bins"
        predictors = []
        for head, stage_weights, scale in zip(ret["box_heads"], weights, cascade_range_scales(cfg)):
            kwargs = UGSFastRCNNOutputLayers.from_config(cfg, head.output_shape)
            kwargs["box2box_transform"] = Box2BoxTransform(weights=stage_weights)
            kwargs["localization"] = build_localization(
                cfg,
                "ROI",
                grid=scale * stage_grid(cfg, "ROI") if bins else None,
                um_key="loss_um_roi",
                entropy_key=ROI_ENTROPY_KEY,
            )
            predictors.append(UGSFastRCNNOutputLayers(**kwargs))
        ret["box_predictors"] = predictors
        ret["stage_loss_weights"] = cascade_stage_weights(cfg)
        return ret

    @configurable
    def __init__(self, *, stage_loss_weights: Sequence[float] = (), **kwargs):
        super().__init__(**kwargs)
        self.stage_loss_weights = list(stage_loss_weights) or [1.0] * self.num_cascade_stages

    def _forward_box(self, features, proposals, targets=None):
        out = super()._forward_box(features, proposals, targets)
        if not self.training:
            return out
        return weight_stage_losses(out, self.stage_loss_weights)


@META_ARCH_REGISTRY.register()
class UGSCascadeRCNN(UGSRCNN):
    """UGSRCNN (UR, Eqs. 14-15) for a cascade: the refinement pass gives the stages the ground
    truth they re-match against."""

    def roi_refinement_losses(self, features, perturbed, eps, gt_instances, sampled, pooled):
        """Every stage's losses on ``perturbed``: stage 1 reuses the first pass's sampled
        proposals; stages 2.. match the boxes the previous stage predicts on ``perturbed``
        against ``gt_instances``, as in training (so ROIAlign's linearity does not apply)."""
        return forward_box(self.roi_heads, perturbed, sampled, gt_instances)
