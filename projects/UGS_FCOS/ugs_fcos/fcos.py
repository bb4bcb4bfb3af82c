"""FCOS with UGS: IN-bin classification of the (l, t, r, b) distances on a one-sided grid.

detectron2's ``FCOS`` (``modeling/meta_arch/fcos.py``) has no ``from_config`` and is not
registered; ``UGSFCOS`` adds both, so the baseline (``MODEL.UGS.RPN.ENABLED`` false) is
detectron2's FCOS computation built from a yacs config, and with bins:

* ``loss_fcos_loc`` (detectron2: GIoU on the decoded boxes) becomes the bin cross-entropy
  (Eq. 10) of the foreground locations' stride-normalised distances (``Box2BoxTransformLinear``)
  on the one-sided grid (:func:`~.grid.one_sided_in_grid`), divided by detectron2's normaliser;
* ``loss_fcos_cls``, ``loss_fcos_ctr``: detectron2's (the centerness target comes from the GT);
* ``loss_um`` (Eq. 12) and ``loss_ur`` (Eqs. 14-15, on the levels of MODEL.UGS.UR_LEVELS the
  head reads): the core dense-head mechanics (:class:`ugs_d2.modeling.dense.DenseUGSMixin`),
  with GFL's balance (MODEL.UGS.DENSE: mean over the 4 sides, weight 0.25).

The head's box conv predicts ``4*K`` channels per location laid out ``(4, K)``. Inference is
detectron2's; only the top-k locations' expected distances are decoded (always in
``[0, scale * a]``, so detectron2's ReLU is a no-op).
"""
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead
from detectron2.structures import Boxes
from torch import Tensor

from ugs_d2.compat import fcos_labels_images_without_boxes, transpose_dense_predictions
from ugs_d2.modeling.config import build_localization, stage_mode, validate_ugs_config
from ugs_d2.modeling.dense import DenseUGSMixin, head_norm, widen_box_conv
from ugs_d2.modeling.refinement import RefinementSettings, scale_detection_losses
from ugs_d2.modeling.stage import BinLocalization

from .grid import one_sided_in_grid

__all__ = ["UGSFCOSHead", "UGSFCOS", "fcos_grid"]


def fcos_grid(cfg) -> Tensor:
    """The FCOS grid from MODEL.UGS.RPN.{RANGE, MODULATOR, NUM_INTERVALS, GRID_FORM} and
    MODEL.FCOS.UGS_RANGE_SCALE: Tensor[n + 1] over ``[0, scale * RANGE]``."""
    node = cfg.MODEL.UGS.RPN
    return one_sided_in_grid(
        node.RANGE,
        node.MODULATOR,
        node.NUM_INTERVALS,
        cfg.MODEL.FCOS.UGS_RANGE_SCALE,
        form=node.GRID_FORM,
    )


class UGSFCOSHead(FCOSHead):
    """FCOSHead whose box conv outputs ``4*P`` channels per location, laid out ``(4, P)``.

    ``forward`` is detectron2's: per level logits ``(N, C, Hi, Wi)``, box parameters
    ``(N, 4*P, Hi, Wi)``, centerness ``(N, 1, Hi, Wi)``.
    """

    def __init__(self, *, params_per_coord: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.params_per_coord = params_per_coord
        if params_per_coord != 1:
            self.bbox_pred = widen_box_conv(self.bbox_pred, params_per_coord)


@META_ARCH_REGISTRY.register()
class UGSFCOS(DenseUGSMixin, FCOS):
    """detectron2's FCOS, buildable from MODEL.FCOS, with the UGS box branch, UM and UR."""

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
            localization: the stage on the one-sided grid ("native": detectron2's GIoU).
            refinement: UR's settings (levels the head does not read are ignored).
            det_loss_scale: MODEL.UGS.DET_LOSS_SCALE.
            kwargs: detectron2's ``FCOS`` arguments.
        """
        super().__init__(**kwargs)
        self._init_ugs(localization, refinement or RefinementSettings(), det_loss_scale)

    @classmethod
    def from_config(cls, cfg):
        validate_ugs_config(cfg)
        mode = stage_mode(cfg, "RPN")
        if mode == "kl":
            raise ValueError("MODEL.UGS.RPN.REG_LOSS = kl is not implemented for FCOS")
        localization = build_localization(
            cfg, "RPN", dense=True, grid=fcos_grid(cfg) if mode == "bins" else None
        )
        f = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        shapes = [backbone.output_shape()[name] for name in f.IN_FEATURES]
        head = UGSFCOSHead(
            input_shape=shapes,
            conv_dims=[shapes[0].channels] * f.NUM_CONVS,
            num_classes=f.NUM_CLASSES,
            prior_prob=f.PRIOR_PROB,
            norm=head_norm(f.HEAD_NORM),
            params_per_coord=localization.params_per_coord,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": f.IN_FEATURES,
            "num_classes": f.NUM_CLASSES,
            "center_sampling_radius": f.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": f.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": f.FOCAL_LOSS_GAMMA,
            "test_score_thresh": f.SCORE_THRESH_TEST,
            "test_topk_candidates": f.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": f.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "localization": localization,
            "refinement": RefinementSettings.from_config(cfg),
            "det_loss_scale": cfg.MODEL.UGS.DET_LOSS_SCALE,
        }

    @torch.no_grad()
    def label_anchors(self, anchors, gt_instances):
        """detectron2's labels; on detectron2 0.6 also for images without any GT box.

        0.6's ``FCOS.match_anchors`` fails on such an image (a max over zero GT boxes), which
        real datasets and crops do produce: there, the images with boxes are labelled by
        detectron2 unchanged and the others background everywhere, with ``Boxes`` as 0.6's own
        labels. Upstream main labels them itself (``compat.fcos_labels_images_without_boxes``).

        Returns:
            N label tensors (R,) and N matched boxes (R, 4), of detectron2's types.
        """
        nonempty = [g for g in gt_instances if len(g) > 0]
        if len(nonempty) == len(gt_instances) or fcos_labels_images_without_boxes():
            return super().label_anchors(anchors, gt_instances)
        labelled = iter(zip(*super().label_anchors(anchors, nonempty))) if nonempty else iter(())
        num_anchors = sum(len(a) for a in anchors)
        device = anchors[0].tensor.device
        labels, boxes = [], []
        for gt in gt_instances:
            if len(gt) > 0:
                label, box = next(labelled)
            else:
                label = torch.full((num_anchors,), self.num_classes, dtype=torch.long, device=device)
                box = Boxes(torch.zeros(num_anchors, 4, device=device))
            labels.append(label)
            boxes.append(box)
        return labels, boxes

    def forward_training(self, images, features, predictions, gt_instances):
        if not self.uses_ugs:
            losses = super().forward_training(images, features, predictions, gt_instances)
            return scale_detection_losses(losses, self.det_loss_scale)
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)

        def detection_losses(predictions_on_levels):
            logits, params, ctr = transpose_dense_predictions(
                self, predictions_on_levels, [self.num_classes, 4, 1]
            )
            return self.losses(anchors, logits, gt_labels, params, gt_boxes, ctr)

        return self.ugs_training_losses(features, predictions, detection_losses)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness):
        """detectron2's FCOS losses with ``loss_fcos_loc`` = bin cross-entropy (+ ``loss_um``).

        Args:
            pred_anchor_deltas: with bins, L tensors (N, R_i, 4*K) of bin logits; otherwise
                detectron2's (N, R_i, 4) distances.
            others: as detectron2's ``FCOS.losses``.
        """
        if not self.uses_ugs:
            return super().losses(
                anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness
            )
        # the parent computes classification, centerness, the normaliser and the statistics; its
        # GIoU term, fed placeholders here, is replaced below
        placeholder = self.placeholder_deltas(pred_anchor_deltas)
        losses = super().losses(anchors, pred_logits, gt_labels, placeholder, gt_boxes, pred_centerness)
        labels = torch.stack(gt_labels)
        fg_mask = (labels >= 0) & (labels != self.num_classes)
        extra = self.bin_losses(anchors, pred_anchor_deltas, gt_boxes, fg_mask, self.loss_normalizer)
        losses["loss_fcos_loc"] = extra.pop("loc")
        losses.update(extra)
        return losses
