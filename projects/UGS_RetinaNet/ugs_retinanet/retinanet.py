"""RetinaNet with UGS: IN-bin classification of the anchor deltas, UM and UR on the FPN levels.

The head's box conv predicts ``K = n + 1`` bin logits per anchor coordinate instead of one
delta, laid out ``(A, 4, K)``. The UGS mechanics are the core package's: the stage
(:class:`ugs_d2.modeling.stage.BinLocalization`: grid, decode, losses) and the dense-head mixin
(:class:`ugs_d2.modeling.dense.DenseUGSMixin`: widened predictions, decode after top-k, UR).

Per training step with bins (``MODEL.UGS.RPN.ENABLED``; the dense head reads the RPN's keys:
same encoding, Box2BoxTransform weights (1, 1, 1, 1)):

* ``loss_cls``: detectron2's focal loss, unchanged;
* ``loss_box_reg``: ``MODEL.UGS.DENSE.LOC_WEIGHT`` (0.25) times the bin cross-entropy (Eq. 10)
  of the foreground anchors' encoded GT deltas averaged over the 4 coordinates (GFL's DFL
  balance), summed over anchors and divided by detectron2's normaliser (EMA of the number of
  foreground anchors);
* ``loss_um``: UM_WEIGHT * the entropy (Eq. 12) of the same distributions, same balance;
* ``loss_ur``: UR_WEIGHT * the terms of MODEL.UGS.UR_LOSSES recomputed on ``P_l + eps_l`` for
  each level of MODEL.UGS.UR_LEVELS the head reads (Eqs. 14-15).

Inference is detectron2's; only the top-k anchors' distributions are decoded.
"""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import Tensor

from ugs_d2.compat import transpose_dense_predictions
from ugs_d2.modeling.config import build_localization, validate_ugs_config
from ugs_d2.modeling.dense import DenseUGSMixin, head_norm, widen_box_conv
from ugs_d2.modeling.refinement import RefinementSettings, scale_detection_losses
from ugs_d2.modeling.stage import BinLocalization

__all__ = ["UGSRetinaNetHead", "UGSRetinaNet"]


class UGSRetinaNetHead(RetinaNetHead):
    """RetinaNetHead whose box conv outputs ``A*4*P`` channels per level, laid out ``(A, 4, P)``.

    ``forward`` is detectron2's: per level logits ``(N, A*C, Hi, Wi)`` and box parameters
    ``(N, A*4*P, Hi, Wi)``. With ``P = 1`` it is detectron2's head.
    """

    @configurable
    def __init__(self, *, params_per_coord: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.params_per_coord = params_per_coord
        if params_per_coord != 1:
            self.bbox_pred = widen_box_conv(self.bbox_pred, params_per_coord)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["norm"] = head_norm(ret["norm"])
        ret["params_per_coord"] = build_localization(cfg, "RPN", dense=True).params_per_coord
        return ret


@META_ARCH_REGISTRY.register()
class UGSRetinaNet(DenseUGSMixin, RetinaNet):
    """detectron2's RetinaNet with the UGS box branch, UM and UR (see the module docstring).

    With ``MODEL.UGS.RPN.ENABLED`` false (the baseline) every method is detectron2's
    ``RetinaNet``'s (``super()``), on a head equal to ``RetinaNetHead``; the class is used for
    the baseline too so that ``head_norm: GN`` works on detectron2 0.6 (see ``head_norm``).
    """

    @configurable
    def __init__(
        self,
        *,
        localization: BinLocalization,
        refinement: RefinementSettings = None,
        det_loss_scale: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            localization: the stage (MODEL.UGS.RPN with MODEL.UGS.DENSE's balance).
            refinement: UR's settings (MODEL.UGS.UR_*; levels the head does not read are
                ignored).
            det_loss_scale: MODEL.UGS.DET_LOSS_SCALE.
            kwargs: detectron2's ``RetinaNet`` arguments.
        """
        super().__init__(**kwargs)
        self._init_ugs(localization, refinement or RefinementSettings(), det_loss_scale)

    @classmethod
    def from_config(cls, cfg):
        validate_ugs_config(cfg)
        ret = super().from_config(cfg)
        shapes = ret["backbone"].output_shape()
        ret["head"] = UGSRetinaNetHead(cfg, [shapes[f] for f in cfg.MODEL.RETINANET.IN_FEATURES])
        localization = build_localization(cfg, "RPN", dense=True)
        if localization.mode == "kl":
            raise ValueError("MODEL.UGS.RPN.REG_LOSS = kl is not implemented for RetinaNet")
        ret.update(
            localization=localization,
            refinement=RefinementSettings.from_config(cfg),
            det_loss_scale=cfg.MODEL.UGS.DET_LOSS_SCALE,
        )
        return ret

    def forward_training(self, images, features, predictions, gt_instances):
        if not self.uses_ugs:
            losses = super().forward_training(images, features, predictions, gt_instances)
            return scale_detection_losses(losses, self.det_loss_scale)
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)

        def detection_losses(predictions_on_levels):
            logits, params = transpose_dense_predictions(self, predictions_on_levels, [self.num_classes, 4])
            return self.losses(anchors, logits, gt_labels, params, gt_boxes)

        return self.ugs_training_losses(features, predictions, detection_losses)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas: List[Tensor], gt_boxes):
        """detectron2's losses with ``loss_box_reg`` = bin cross-entropy (+ ``loss_um``).

        Args:
            pred_anchor_deltas: with bins, L tensors (N, R_i, 4*K) of bin logits; otherwise
                detectron2's (N, R_i, 4) deltas.
            others: as detectron2's ``RetinaNet.losses``.
        """
        if not self.uses_ugs:
            return super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        # The parent computes the focal loss, the normaliser and the statistics; its box term,
        # fed placeholders here, is replaced below.
        placeholder = self.placeholder_deltas(pred_anchor_deltas)
        losses = super().losses(anchors, pred_logits, gt_labels, placeholder, gt_boxes)
        labels = torch.stack(gt_labels)
        fg_mask = (labels >= 0) & (labels != self.num_classes)
        extra = self.bin_losses(anchors, pred_anchor_deltas, gt_boxes, fg_mask, self.loss_normalizer)
        losses["loss_box_reg"] = extra.pop("loc")
        losses.update(extra)
        return losses
