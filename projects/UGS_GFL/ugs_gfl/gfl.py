"""GFL V1 (Li et al., NeurIPS 2020) on detectron2's dense-detector machinery, with UGS.

``UGSGFL`` is detectron2's ``RetinaNet`` with one anchor point per location, whose

* ``label_anchors`` is ATSS (:func:`~.atss.atss_assign`: top-9 per level by centre distance,
  IoU >= mean + std, centre inside the GT);
* ``losses`` are GFL's: Quality Focal Loss (:func:`~.losses.quality_focal_loss`, beta 2) on
  the joint class-IoU score over all locations, divided by the number of positives
  (``loss_gfl_cls``); GIoU (weight 2) on the integral-decoded boxes of the positives
  (``loss_gfl_giou``) and the distribution loss of their four side distances, in strides
  (``loss_gfl_dfl``: mean over the 4 sides, weight 0.25 = MODEL.UGS.DENSE), both weighted by
  the positive's detached predicted score (MMDetection's ``weight_targets``, the max over
  classes) and divided by the sum of those weights (at least 1);
* inference is detectron2's ``RetinaNet.forward_inference`` unchanged: sigmoid scores (the
  joint score needs no centerness), score threshold, top-k, per-class NMS; the
  :class:`~ugs_d2.modeling.stage.BinDecodingTransform` takes the integral (expectation) of the
  top-k locations' distributions only.

The distribution of a side is a :class:`~ugs_d2.modeling.stage.BinLocalization` over a grid
in stride units: GFL's uniform ``0, 1, ..., reg_max`` when ``MODEL.UGS.RPN.ENABLED`` is false
(its bin cross-entropy *is* DFL), or UGS's one-sided IN grid (``ugs_d2.bins.one_sided_in_grid``
over ``[0, UGS_RANGE_SCALE * MODEL.UGS.RPN.RANGE]``) when true; UM (Eq. 12, on the positives'
distributions, same weights and normaliser as DFL) and UR (Eqs. 14-15, on the FPN levels of
MODEL.UGS.UR_LEVELS) come from :class:`ugs_d2.modeling.dense.DenseUGSMixin`.

Shapes: N images, L levels, R_i locations of level i (one anchor each), R = sum R_i,
C classes, K grid points, F positives.
"""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransformLinear
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss
from torch import Tensor, nn

from ugs_d2.bins import one_sided_in_grid
from ugs_d2.modeling.config import stage_mode, validate_ugs_config
from ugs_d2.modeling.dense import DenseUGSMixin, head_norm, widen_box_conv
from ugs_d2.modeling.refinement import RefinementSettings
from ugs_d2.modeling.stage import BinLocalization

from .atss import atss_assign
from .losses import quality_focal_loss

__all__ = ["GFLHead", "UGSGFL", "gfl_grid", "build_gfl_localization"]


def gfl_grid(cfg) -> Tensor:
    """The side-distance grid in strides, Tensor[K]: ``arange(MODEL.GFL.REG_MAX + 1)`` (GFL),
    or with MODEL.UGS.RPN.ENABLED the one-sided IN grid of MODEL.UGS.RPN.{RANGE, MODULATOR,
    NUM_INTERVALS, GRID_FORM} times MODEL.GFL.UGS_RANGE_SCALE."""
    if stage_mode(cfg, "RPN") == "bins":
        node = cfg.MODEL.UGS.RPN
        return one_sided_in_grid(
            node.RANGE, node.MODULATOR, node.NUM_INTERVALS, cfg.MODEL.GFL.UGS_RANGE_SCALE, form=node.GRID_FORM
        )
    return torch.arange(cfg.MODEL.GFL.REG_MAX + 1, dtype=torch.float32)


def build_gfl_localization(cfg) -> BinLocalization:
    """GFL's box branch as a UGS stage: always bins (DFL is the two-hot bin cross-entropy),
    balanced by MODEL.UGS.DENSE (GFL: weight 0.25, mean over the 4 sides), UM from
    MODEL.UGS.UM_WEIGHT (refused without MODEL.UGS.RPN.ENABLED by ``validate_ugs_config``)."""
    return BinLocalization(
        "bins",
        gfl_grid(cfg),
        um_weight=cfg.MODEL.UGS.UM_WEIGHT,
        loc_weight=cfg.MODEL.UGS.DENSE.LOC_WEIGHT,
        coord_reduction=cfg.MODEL.UGS.DENSE.COORD_REDUCTION,
    )


class GFLHead(RetinaNetHead):
    """detectron2's ``RetinaNetHead`` with one anchor per location, a box conv of ``4*K``
    channels laid out ``(4, K)``, and GFL's learnable scale per level on the box logits.

    ``forward``: per level logits ``(N, C, Hi, Wi)`` and distribution logits ``(N, 4*K, Hi, Wi)``.
    """

    def __init__(self, *, input_shape: List[ShapeSpec], params_per_coord: int, **kwargs):
        super().__init__(input_shape=input_shape, num_anchors=1, **kwargs)
        self.bbox_pred = widen_box_conv(self.bbox_pred, params_per_coord)
        # GFL's Scale(1.0) per level: the levels share the head but not the logits' scale
        self.scales = nn.Parameter(torch.ones(len(input_shape)))

    def forward(self, features: List[Tensor]):
        logits, box_logits = super().forward(features)
        return logits, [x * scale for x, scale in zip(box_logits, self.scales)]


def _mean_over_workers(value: Tensor) -> float:
    """A scalar's mean over the training processes (MMDetection's ``reduce_mean``)."""
    if comm.get_world_size() > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value = value / comm.get_world_size()
    return value.item()


@META_ARCH_REGISTRY.register()
class UGSGFL(DenseUGSMixin, RetinaNet):
    """GFL V1 with the UGS box branch, UM and UR; see the module docstring."""

    @configurable
    def __init__(
        self,
        *,
        localization: BinLocalization,
        refinement: RefinementSettings = None,
        det_loss_scale: float = 1.0,
        atss_topk: int = 9,
        anchor_scale: float = 8.0,
        qfl_beta: float = 2.0,
        giou_weight: float = 2.0,
        **kwargs,
    ):
        """
        Args:
            localization: the side distributions' grid and DFL / UM balance.
            refinement: UR's settings (levels the head does not read are ignored).
            det_loss_scale: MODEL.UGS.DET_LOSS_SCALE.
            atss_topk, anchor_scale: ATSS's candidates per level, and its box side in strides.
            qfl_beta: QFL's exponent. giou_weight: the GIoU loss weight.
            kwargs: detectron2's ``RetinaNet`` arguments (``anchor_matcher`` unused: ATSS).
        """
        super().__init__(anchor_matcher=None, **kwargs)
        self.atss_topk = atss_topk
        self.anchor_scale = anchor_scale
        self.qfl_beta = qfl_beta
        self.giou_weight = giou_weight
        self._init_ugs(localization, refinement or RefinementSettings(), det_loss_scale)

    @classmethod
    def from_config(cls, cfg):
        validate_ugs_config(cfg)
        if stage_mode(cfg, "RPN") == "kl":
            raise ValueError("MODEL.UGS.RPN.REG_LOSS = kl is not implemented for GFL")
        g = cfg.MODEL.GFL
        localization = build_gfl_localization(cfg)
        backbone = build_backbone(cfg)
        shapes = [backbone.output_shape()[name] for name in g.IN_FEATURES]
        strides = [s.stride for s in shapes]
        head = GFLHead(
            input_shape=shapes,
            num_classes=g.NUM_CLASSES,
            conv_dims=[shapes[0].channels] * g.NUM_CONVS,
            norm=head_norm(g.HEAD_NORM),
            prior_prob=g.PRIOR_PROB,
            params_per_coord=localization.params_per_coord,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": g.IN_FEATURES,
            # one point per location; its "anchor" is the stride-sized square, so that
            # Box2BoxTransformLinear's distances are in strides
            "anchor_generator": DefaultAnchorGenerator(
                sizes=[[s] for s in strides], aspect_ratios=[[1.0]], strides=strides, offset=g.ANCHOR_OFFSET
            ),
            "box2box_transform": Box2BoxTransformLinear(normalize_by_size=True),
            "num_classes": g.NUM_CLASSES,
            "test_score_thresh": g.SCORE_THRESH_TEST,
            "test_topk_candidates": g.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": g.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
            "localization": localization,
            "refinement": RefinementSettings.from_config(cfg),
            "det_loss_scale": cfg.MODEL.UGS.DET_LOSS_SCALE,
            "atss_topk": g.ATSS_TOPK,
            "anchor_scale": g.ANCHOR_SCALE,
            "qfl_beta": g.QFL_BETA,
            "giou_weight": g.GIOU_WEIGHT,
        }

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances):
        """ATSS labels: N tensors (R,) of classes (``num_classes`` = background) and N tensors
        (R, 4) of the matched GT boxes (zeros for background)."""
        centers = [a.get_centers() for a in anchors]
        strides = self.anchor_generator.strides
        labels, boxes = [], []
        for gt in gt_instances:
            gt_boxes = gt.gt_boxes.tensor
            index = atss_assign(centers, strides, gt_boxes, self.atss_topk, self.anchor_scale)
            positive = index >= 0
            label = torch.full_like(index, self.num_classes)
            label[positive] = gt.gt_classes[index[positive]]
            matched = torch.zeros(len(index), 4, device=index.device)
            matched[positive] = gt_boxes[index[positive]]
            labels.append(label)
            boxes.append(matched)
        return labels, boxes

    def forward_training(self, images, features, predictions, gt_instances):
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)

        def detection_losses(predictions_on_levels):
            logits, params = self._transpose_dense_predictions(predictions_on_levels, [self.num_classes, 4])
            return self.losses(anchors, logits, gt_labels, params, gt_boxes)

        return self.ugs_training_losses(features, predictions, detection_losses)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """GFL's losses (+ ``loss_um`` with MODEL.UGS.UM_WEIGHT, and the entropy for UR).

        Args:
            anchors: L Boxes (R_i, 4), the stride-sized square of each location.
            pred_logits: L tensors (N, R_i, C).
            gt_labels: N tensors (R,); gt_boxes: N tensors (R, 4) (from :meth:`label_anchors`).
            pred_anchor_deltas: L tensors (N, R_i, 4*K) of distribution logits.

        Returns:
            ``loss_gfl_cls``, ``loss_gfl_giou``, ``loss_gfl_dfl`` and the stage's UM outputs.
        """
        labels = torch.stack(gt_labels)  # (N, R)
        fg_mask = labels != self.num_classes
        num_images = len(gt_labels)
        num_pos = fg_mask.sum()
        get_event_storage().put_scalar("num_pos_anchors", num_pos.item() / num_images)

        logits = cat(pred_logits, dim=1)  # (N, R, C)
        fg_params = cat(self.box_params(pred_anchor_deltas), dim=1)[fg_mask]  # (F, 4, K)
        fg_anchors = Boxes.cat(anchors).tensor.expand(num_images, -1, -1)[fg_mask]  # (F, 4)
        fg_gt = torch.stack(gt_boxes)[fg_mask]  # (F, 4)
        fg_boxes = self.box2box_transform.apply_deltas(self.localization.point(fg_params), fg_anchors)

        # QFL's soft target: the IoU of the (detached) decoded box at the positive's class
        quality = matched_pairwise_iou(Boxes(fg_boxes.detach()), Boxes(fg_gt)).clamp(min=0)
        targets = torch.zeros_like(logits)
        image_idx, location_idx = fg_mask.nonzero(as_tuple=True)
        targets[image_idx, location_idx, labels[fg_mask]] = quality
        num_pos_avg = max(_mean_over_workers(num_pos.float()), 1.0)
        loss_cls = quality_focal_loss(logits, targets, self.qfl_beta).sum() / num_pos_avg

        # box terms weighted by the predicted score, normalised by the weights' sum
        weights = logits.detach().sigmoid().max(dim=-1).values[fg_mask]  # (F,)
        weight_sum = max(_mean_over_workers(weights.sum()), 1.0)
        loss_giou = self.giou_weight * (giou_loss(fg_boxes, fg_gt, reduction="none") * weights).sum() / weight_sum
        fg_distances = self.box2box_transform.get_deltas(fg_anchors, fg_gt)  # (F, 4) in strides
        extra = self.localization.losses(fg_params, fg_distances, weight_sum, weights)
        losses = {"loss_gfl_cls": loss_cls, "loss_gfl_giou": loss_giou, "loss_gfl_dfl": extra.pop("loc")}
        losses.update(extra)
        return losses
