"""UGS ROI box head: IN-bin classification (or the KL loss) replaces the box-delta regression.

``bbox_pred`` predicts ``P`` values per box coordinate (``P = n + 1`` bin logits with
``MODEL.UGS.ROI.ENABLED``, ``P = 2`` mean and log-variance with ``REG_LOSS = "kl"``), laid out
``(C, 4, P)`` with ``C`` = NUM_CLASSES, or 1 with ``MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG``.
Everything downstream of the predictions (inference, ``train_on_pred_boxes``) sees ordinary
deltas ``(R, C*4)`` decoded from them. With neither option the classes are detectron2's.

The box dimension B is the box transform's (its weights): 4, or 5 for a rotated head
(``Box2BoxTransformRotated``), whose localization then has an angle grid; read 4 as B below.

Shapes: R proposals in the batch, F foreground proposals, K = n + 1.
"""
from contextlib import contextmanager
from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import nonzero_tuple
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    FastRCNNOutputLayers,
    StandardROIHeads,
)
from detectron2.structures import Instances
from torch import Tensor, nn

from ugs_d2.compat import forward_box

from .config import StageFromConfig
from .stage import ENTROPY_PREFIX, BinLocalization

__all__ = ["UGSFastRCNNOutputLayers", "UGSROIHeads"]

#: loss-dict key of the unweighted (normalised) entropy, emitted only for UR (never a loss)
ENTROPY_KEY = ENTROPY_PREFIX + "_roi"


class UGSFastRCNNOutputLayers(StageFromConfig, FastRCNNOutputLayers):
    """FastRCNNOutputLayers with a UGS box branch.

    ``forward`` is detectron2's and returns ``(scores (R, C+1), box_params (R, C*4*P))``.

    * bins: ``loss_box_reg`` = bin cross-entropy (Eq. 10) of the foreground proposals' encoded
      GT deltas (MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS) for their GT class, summed and divided by
      the number of sampled proposals, like detectron2's ``box_reg_loss``; ``loss_um_roi`` =
      UM_WEIGHT * entropy (Eq. 12) of those coordinates, normalised the same way (only when
      UM_WEIGHT > 0); boxes decode the expected deltas.
    * kl: ``loss_box_reg`` = KL loss of He et al., same normalisation; boxes decode the means
      (no variance voting).
    """

    UGS_STAGE = "ROI"
    UM_KEY = "loss_um_roi"
    ENTROPY_KEY = ENTROPY_KEY

    @configurable
    def __init__(self, input_shape, *, localization: BinLocalization, **kwargs):
        """
        Args:
            localization: the stage's grid, decode and losses (``MODEL.UGS.ROI``).
            input_shape, kwargs: detectron2's ``FastRCNNOutputLayers`` arguments.
        """
        super().__init__(input_shape, **kwargs)
        self.localization = localization
        self.box_dim = len(self.box2box_transform.weights)  # B: 4, or 5 (rotated)
        self.num_bbox_reg_classes = self.bbox_pred.out_features // self.box_dim  # C, before widening below
        P = localization.params_per_coord
        if P != 1:
            old = self.bbox_pred
            self.bbox_pred = nn.Linear(old.in_features, old.out_features * P)
            nn.init.normal_(self.bbox_pred.weight, std=0.001)  # detectron2's init
            nn.init.constant_(self.bbox_pred.bias, 0)

    def _box_params(self, box_params: Tensor) -> Tensor:
        """(R, C*B*P) -> (R, C, B, P)."""
        return box_params.view(-1, self.num_bbox_reg_classes, self.box_dim, self.params_per_coord)

    def point_deltas(self, box_params: Tensor) -> Tensor:
        """(R, C*4*P) head outputs -> (R, C*4) deltas: bin expectation, or the KL mean."""
        return self.localization.point(self._box_params(box_params)).flatten(1)

    def _fg_box_params(self, box_params: Tensor, gt_classes: Tensor) -> Tuple[Tensor, Tensor]:
        """Indices (F,) of foreground proposals and their GT class's parameters (F, 4, P)."""
        fg_inds = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        params = self._box_params(box_params)[fg_inds]  # (F, C, 4, P)
        cls = gt_classes[fg_inds] if params.shape[1] > 1 else torch.zeros_like(fg_inds)
        return fg_inds, params[torch.arange(len(fg_inds), device=params.device), cls]

    def box_reg_loss(self, proposal_boxes, gt_boxes, pred_deltas, gt_classes):
        """Localization loss over the foreground proposals / number of sampled proposals.

        Args:
            proposal_boxes, gt_boxes: (R, 4); gt_classes: (R,), as in detectron2.
            pred_deltas: (R, C*4*P), this head's box parameters (detectron2's deltas if native).
        """
        if self.mode == "native":
            return super().box_reg_loss(proposal_boxes, gt_boxes, pred_deltas, gt_classes)
        fg_inds, params = self._fg_box_params(pred_deltas, gt_classes)
        targets = self.box2box_transform.get_deltas(proposal_boxes[fg_inds], gt_boxes[fg_inds])
        # detectron2's normalisation: every sampled proposal counts, fg or not
        return self.localization.loc_loss(params, targets, max(gt_classes.numel(), 1.0))

    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, Tensor]:
        """detectron2's losses (``loss_box_reg`` from :meth:`box_reg_loss`) plus the UM loss."""
        losses = super().losses(predictions, proposals)
        if self.mode == "bins":
            box_params = predictions[1]
            gt_classes = (
                torch.cat([p.gt_classes for p in proposals])
                if len(proposals)
                else torch.empty(0, dtype=torch.long, device=box_params.device)
            )
            _, fg_logits = self._fg_box_params(box_params, gt_classes)  # (F, 4, K)
            losses.update(
                self.localization.uncertainty_losses(fg_logits, max(gt_classes.numel(), 1.0))
            )
        return losses

    def _point_predictions(self, predictions):
        scores, box_params = predictions[:2]
        if self.mode == "native":
            return scores, box_params
        return scores, self.point_deltas(box_params)

    def predict_boxes(self, predictions, proposals: List[Instances]):
        """detectron2's decoding, applied to the point deltas (R, C*4) of the box parameters."""
        return super().predict_boxes(self._point_predictions(predictions), proposals)

    def predict_boxes_for_gt_classes(self, predictions, proposals: List[Instances]):
        """As :meth:`predict_boxes`, for ``MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES``."""
        point_predictions = self._point_predictions(predictions)
        return super().predict_boxes_for_gt_classes(point_predictions, proposals)


@ROI_HEADS_REGISTRY.register()
class UGSROIHeads(StandardROIHeads):
    """StandardROIHeads whose box predictor is :class:`UGSFastRCNNOutputLayers` (``BOX_PREDICTOR``;
    a rotated subclass names its own).

    For the lean UR pass (:meth:`refinement_losses`) it uses that ROIAlign is linear in the
    features: ``ROIAlign(P + eps) = ROIAlign(P) + ROIAlign(eps)`` for the same boxes (the level
    assignment depends on the boxes only). The first pass's pooled features are kept
    (:meth:`keeping_pooled_features`), and the UR pass pools only the detached ``eps``: no
    second ROIAlign backward, the same values to float rounding.
    """

    BOX_PREDICTOR = UGSFastRCNNOutputLayers

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = cls.BOX_PREDICTOR(cfg, ret["box_head"].output_shape)
        return ret

    @contextmanager
    def keeping_pooled_features(self):
        """Inside, the box pooler's output is kept (yields the dict it lands in: "pooled")."""
        kept: Dict[str, Tensor] = {}
        handle = self.box_pooler.register_forward_hook(lambda m, i, out: kept.__setitem__("pooled", out))
        try:
            yield kept
        finally:
            handle.remove()

    def refinement_losses(
        self,
        features: Dict[str, Tensor],
        eps: Dict[str, Tensor],
        sampled_proposals: List[Instances],
        pooled: Tensor = None,
    ) -> Dict[str, Tensor]:
        """The box head's losses on ``features + eps`` for the first pass's sampled proposals.

        Args:
            features: the unperturbed levels (the first pass's).
            eps: the perturbation of each perturbed level (detached).
            sampled_proposals: the proposals the first pass sampled (with their GT).
            pooled: the first pass's pooled features; None: pool ``features + eps`` directly.
        """
        if pooled is None:
            perturbed = {k: v + eps[k] if k in eps else v for k, v in features.items()}
            return forward_box(self, perturbed, sampled_proposals)
        # eps of the levels without perturbation is 0: ROIAlign(0) = 0 adds nothing
        eps_levels = {k: eps[k] if k in eps else torch.zeros_like(features[k]) for k in self.box_in_features}
        handle = self.box_pooler.register_forward_hook(lambda m, i, out: pooled + out)
        try:
            return forward_box(self, eps_levels, sampled_proposals)
        finally:
            handle.remove()
